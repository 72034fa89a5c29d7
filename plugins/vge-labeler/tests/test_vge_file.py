"""The labeler's annotation file through the core's runner and reader
(core.labeling.run_labeler, core.data.annotations): fields, attach list, report and
meta survive the round trip; the attached masks reach the records."""

import numpy as np

from core.data.annotations import Annotations, attach
from reid_vge_labeler.labeler import VGELabeler

FAULTS = {"whole_body": 0.2, "tiny": 0.2, "missing": 0.1, "seed": 3}


def labeler():
    return VGELabeler(grounder={"name": "record_boxes", "faults": FAULTS}, parts=["head", "upper", "legs"],
                      grid=[8, 4], batch_size=5)


def test_the_file_round_trips_through_core_annotations(tmp_path, person_world, label_items):
    from core.labeling import run_labeler

    world = person_world(identities=5, images=4)
    items = label_items(world)
    out = tmp_path / "labels" / "parts.npz"
    written = run_labeler(labeler(), items, out, fingerprint={"test": 1}, ctx=None, name="vge",
                          provider="vge-labeler", version="0.1.0", progress=False, echo=lambda *_: None)
    loaded = Annotations.load(out)

    # what finalize made, computed directly, is what the file holds
    direct = labeler()
    records = [item.record for item in items]
    raw = direct.label_batch([None] * len(records), records)
    expected = direct.finalize(raw, records, None)
    assert loaded.keys == [item.key for item in items]
    assert sorted(loaded.fields) == sorted(expected.fields) == sorted(
        ["part_boxes_raw", "part_found", "part_boxes", "part_calibration", "part_masks", "part_fault"])
    for name, values in expected.fields.items():
        np.testing.assert_array_equal(loaded.fields[name], values, err_msg=name)
        assert loaded.fields[name].dtype == values.dtype, name
    assert loaded.fields["part_masks"].shape == (20, 3, 8, 4) and loaded.fields["part_masks"].dtype == np.uint8
    assert loaded.attach == ["part_masks"] and loaded.grid == (8, 4)
    assert loaded.meta["part_names"] == ["head", "upper", "legs"] and loaded.meta["grid"] == [8, 4]
    assert loaded.meta["report"] == expected.report
    assert loaded.meta["labeler"] == "vge" and loaded.meta["plugin"] == "vge-labeler"
    assert loaded.meta["grounder"] == "record_boxes"
    assert written.keys == loaded.keys


def test_attaching_the_file_puts_the_masks_and_only_them_on_the_records(tmp_path, person_world, label_items):
    from core.labeling import run_labeler

    world = person_world(identities=3, images=4)
    items = label_items(world)
    out = tmp_path / "parts.npz"
    run_labeler(labeler(), items, out, fingerprint={}, ctx=None, name="vge", progress=False, echo=lambda *_: None)
    annotations = Annotations.load(out)
    records = [item.record for item in items]
    truth = [r.extras["part_boxes"].copy() for r in records]
    count = attach(annotations, records, [item.key for item in items], where=str(out), required=True, grid=(8, 4))
    assert count == len(records)
    for i, record in enumerate(records):
        np.testing.assert_array_equal(record.extras["part_masks"], annotations.fields["part_masks"][i])
        np.testing.assert_array_equal(record.extras["part_boxes"], truth[i])  # the world's boxes untouched
        assert "part_boxes_raw" not in record.extras and "part_calibration" not in record.extras


def test_an_earlier_file_is_revoted_for_rendered_images_matched_by_key(tmp_path, person_world, label_items):
    """Records without image paths (the synthetic world renders them): the core passes the
    annotation keys to `label_batch`, so the box-file grounder re-votes an earlier run's
    raw boxes onto another grid by key, without grounding again."""
    from core.labeling import run_labeler

    world = person_world(identities=4, images=3)
    items = label_items(world)
    assert all(item.record.path is None for item in items)
    earlier = run_labeler(labeler(), items, tmp_path / "earlier.npz", fingerprint={}, ctx=None, name="vge",
                          progress=False, echo=lambda *_: None)
    again = VGELabeler(grounder={"name": "boxes", "file": str(tmp_path / "earlier.npz")},
                       parts=["head", "upper", "legs"], grid=[4, 2], batch_size=5)
    revoted = run_labeler(again, items, tmp_path / "revoted.npz", fingerprint={}, ctx=None, name="vge",
                          progress=False, echo=lambda *_: None)
    found = earlier.fields["part_found"].astype(bool)
    np.testing.assert_array_equal(revoted.fields["part_found"], earlier.fields["part_found"])
    np.testing.assert_array_equal(revoted.fields["part_boxes_raw"][found], earlier.fields["part_boxes_raw"][found])
    np.testing.assert_array_equal(revoted.fields["part_boxes"], earlier.fields["part_boxes"])  # same calibration
    assert revoted.fields["part_masks"].shape == (12, 3, 4, 2)

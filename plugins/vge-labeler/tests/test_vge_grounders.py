"""The light grounders (`stripes`, `record_boxes` with faults, `boxes` from JSON / CSV) and
choosing a grounder by name with its keys validated."""

import json

import numpy as np
import pytest
from PIL import Image

from core.records import Record
from reid_vge_labeler.grounders import Grounder, Grounding, build_grounder

PARTS = ["head", "upper body", "legs"]


# -- stripes

def test_stripes_are_the_default_windows_and_can_be_changed_per_part():
    g = build_grounder({"name": "stripes", "windows": {"legs": [0.25, 0.55, 0.75, 1.0]}}, PARTS)
    out = g.ground([None, None], [None, None])
    np.testing.assert_allclose(out.boxes[1], [[0, 0, 1, 0.3], [0, 0.2, 1, 0.6], [0.25, 0.55, 0.75, 1.0]])
    assert out.found.all() and out.boxes.shape == (2, 3, 4)


# -- record_boxes

def world_records(person_world, identities=20):
    return person_world(identities=identities, images=5).records("train")


def test_record_boxes_without_faults_are_the_records_boxes(person_world):
    records = world_records(person_world, 2)
    out = build_grounder("record_boxes", ["head", "upper", "legs"]).ground([None] * len(records), records)
    np.testing.assert_array_equal(out.boxes, np.stack([r.extras["part_boxes"] for r in records]))
    assert out.found.all() and not out.extras["part_fault"].any()


def test_faults_follow_their_definitions_and_rates(person_world):
    records = world_records(person_world, 40)  # 200 images, 600 boxes
    faults = {"whole_body": 0.3, "tiny": 0.2, "missing": 0.1, "seed": 5, "tiny_height": [0.02, 0.04]}
    out = build_grounder({"name": "record_boxes", "faults": faults}, ["head", "upper", "legs"]).ground(
        [None] * len(records), records)
    truth = np.stack([r.extras["part_boxes"] for r in records])
    code = out.extras["part_fault"]
    rates = [(code == c).mean() for c in range(4)]
    assert rates[1:] == pytest.approx([0.3, 0.2, 0.1], abs=0.05)
    person = np.concatenate([truth[:, :, :2].min(1), truth[:, :, 2:].max(1)], axis=1)
    for i, p in zip(*np.nonzero(code == 1)):
        np.testing.assert_allclose(out.boxes[i, p], person[i])
    tiny = code == 2
    h = out.boxes[..., 3] - out.boxes[..., 1]
    assert ((h[tiny] >= 0.02 - 1e-6) & (h[tiny] <= 0.04 + 1e-6)).all()
    assert (out.boxes[tiny][:, :2] >= truth[tiny][:, :2] - 1e-6).all()  # inside the true box
    assert (out.boxes[tiny][:, 2:] <= truth[tiny][:, 2:] + 1e-6).all()
    assert not out.found[code == 3].any() and out.found[code != 3].all()
    np.testing.assert_array_equal(out.boxes[code == 0], truth[code == 0])


def test_faults_depend_on_the_record_not_on_the_batch(person_world):
    records = world_records(person_world, 10)
    g = build_grounder({"name": "record_boxes", "faults": {"tiny": 0.5, "seed": 2}}, ["head", "upper", "legs"])
    whole = g.ground([None] * len(records), records)
    parts = [g.ground([None] * 7, records[i:i + 7]) for i in range(0, len(records), 7)]
    np.testing.assert_array_equal(whole.boxes, np.concatenate([p.boxes for p in parts]))
    other = build_grounder({"name": "record_boxes", "faults": {"tiny": 0.5, "seed": 3}}, ["head", "upper", "legs"])
    assert not np.array_equal(other.ground([None] * len(records), records).boxes, whole.boxes)


def test_record_boxes_errors_name_the_record_and_what_is_expected():
    g = build_grounder("record_boxes", PARTS)
    with pytest.raises(ValueError, match=r"pid 7 \(a\.jpg\) has no 'part_boxes' extra .*records have: caption"):
        g.ground([None], [Record(path="a.jpg", pid=7, camid=0, extras={"caption": "x"})])
    with pytest.raises(ValueError, match=r"has shape \(2, 4\); expected \(3, 4\)"):
        g.ground([None], [Record(path="a.jpg", pid=7, camid=0, extras={"part_boxes": np.zeros((2, 4))})])
    with pytest.raises(ValueError, match="add up to 1.2 > 1"):
        build_grounder({"name": "record_boxes", "faults": {"whole_body": 0.6, "tiny": 0.6}}, PARTS)
    with pytest.raises(ValueError, match="unknown key 'tiniest'; valid keys: whole_body, tiny, missing"):
        build_grounder({"name": "record_boxes", "faults": {"tiniest": 0.1}}, PARTS)


# -- boxes (a file another tool wrote)

def sample(tmp_path):
    """Two 100 x 200 (w x h) images under a dataset root; boxes of the first in pixels."""
    records = [Record(path=str(tmp_path / "market" / "bounding_box_train" / name), pid=1, camid=0)
               for name in ("0001_c1s1_01.jpg", "0001_c2s1_02.jpg")]
    images = [Image.new("RGB", (100, 200)) for _ in records]
    return records, images


def test_json_boxes_matched_by_relative_path_in_pixels_with_several_boxes_and_nulls(tmp_path):
    records, images = sample(tmp_path)
    data = {"images": {
        "bounding_box_train/0001_c1s1_01.jpg": {"head": [30, 10, 70, 50], "upper body": None,
                                                "legs": [[10, 100, 45, 196], [55, 100, 90, 198]]},
        "market/bounding_box_train/0001_c2s1_02.jpg": {"head": [20, 0, 60, 40]},
        "0001_c2s1_02.jpg": {"head": [0, 0, 100, 200]},  # a shorter key also matches: the longest wins
    }}
    file = tmp_path / "boxes.json"
    file.write_text(json.dumps(data))
    g = build_grounder({"name": "boxes", "file": str(file), "units": "pixels", "pick": "union"}, PARTS)
    out = g.ground(images, records)
    np.testing.assert_allclose(out.boxes[0, 0], [0.3, 0.05, 0.7, 0.25])
    np.testing.assert_allclose(out.boxes[0, 2], [0.1, 0.5, 0.9, 0.99])  # the union of the two legs
    np.testing.assert_allclose(out.boxes[1, 0], [0.2, 0.0, 0.6, 0.2])
    np.testing.assert_array_equal(out.found, [[1, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(out.extras["part_box_count"], [[1, 0, 2], [1, 0, 0]])


def test_csv_boxes_read_as_the_same_boxes(tmp_path):
    records, images = sample(tmp_path)
    file = tmp_path / "boxes.csv"
    file.write_text("image,part,x0,y0,x1,y1,score\n"
                    "bounding_box_train/0001_c1s1_01.jpg,head,0.3,0.05,0.7,0.25,0.9\n"
                    "bounding_box_train/0001_c1s1_01.jpg,legs,0.1,0.5,0.45,0.98,0.8\n"
                    "bounding_box_train/0001_c1s1_01.jpg,legs,0.55,0.5,0.9,0.99,0.7\n"
                    "bounding_box_train/0001_c1s1_01.jpg,upper body,,,,,\n"
                    f"{records[1].path},upper body,0.1,0.2,0.9,0.6,1\n")
    out = build_grounder({"name": "boxes", "file": str(file)}, PARTS).ground(images, records)
    np.testing.assert_allclose(out.boxes[0, 2], [0.1, 0.5, 0.45, 0.98])  # pick: first
    np.testing.assert_allclose(out.boxes[1, 1], [0.1, 0.2, 0.9, 0.6])    # an absolute path key
    np.testing.assert_array_equal(out.found, [[1, 0, 1], [0, 1, 0]])


def test_box_file_errors(tmp_path):
    records, images = sample(tmp_path)
    file = tmp_path / "boxes.json"
    file.write_text(json.dumps({"bounding_box_train/0001_c1s1_01.jpg": {"head": [0, 0, 1, 1]}}))
    g = build_grounder({"name": "boxes", "file": str(file)}, PARTS)
    with pytest.raises(ValueError, match=r"no entry for 1 of 2 images .*0001_c2s1_02\.jpg.*on_missing: not_found"):
        g.ground(images, records)
    lenient = build_grounder({"name": "boxes", "file": str(file), "on_missing": "not_found"}, PARTS)
    assert lenient.ground(images, records).found.tolist() == [[True, False, False], [False, False, False]]
    file.write_text(json.dumps({"a.jpg": {"arm": [0, 0, 1, 1]}}))
    with pytest.raises(ValueError, match="unknown part 'arm'; the labeler's parts are head, upper body, legs"):
        build_grounder({"name": "boxes", "file": str(file)}, PARTS).ground(images, records)
    bad = tmp_path / "bad.csv"
    bad.write_text("image,part,x0,y0\n")
    with pytest.raises(ValueError, match="the CSV header lacks x1, y1"):
        build_grounder({"name": "boxes", "file": str(bad)}, PARTS).ground(images, records)
    with pytest.raises(FileNotFoundError, match="box file not found"):
        build_grounder({"name": "boxes", "file": str(tmp_path / "nope.json")}, PARTS).ground(images, records)
    with pytest.raises(ValueError, match="no keys, and the record of pid 3 has no path .*export the images"):
        g.ground(images[:1], [Record(path=None, pid=3, camid=0)])


# -- choosing a grounder

class HalfGrounder(Grounder):
    """A user's own grounder: the left half of the image for every part."""

    def __init__(self, parts, width: float = 0.5):
        super().__init__(parts)
        self.width = width

    def ground(self, images, records):
        n = len(images)
        boxes = np.tile(np.asarray([0, 0, self.width, 1], np.float32), (n, len(self.parts), 1))
        return Grounding(boxes=boxes, found=np.ones((n, len(self.parts)), bool))


def test_a_grounder_named_by_module_and_class_with_its_own_keys():
    g = build_grounder({"name": f"{__name__}:HalfGrounder", "width": 0.25}, PARTS)
    assert isinstance(g, HalfGrounder) and g.width == 0.25 and g.parts == PARTS


def test_grounder_names_and_keys_are_validated_with_helpful_errors():
    with pytest.raises(ValueError, match="unknown grounder 'stripe'. Did you mean 'stripes'?"):
        build_grounder("stripe", PARTS)
    with pytest.raises(ValueError, match=r"grounder.threshhold: unknown key 'threshhold' for grounder 'stripes'"):
        build_grounder({"name": "stripes", "threshhold": 1}, PARTS)
    with pytest.raises(ValueError, match=r"grounder.file: missing value: grounder 'boxes' needs 'file'"):
        build_grounder({"name": "boxes"}, PARTS)
    with pytest.raises(ValueError, match=r"grounder.field: wrong type for grounder 'record_boxes': expected str"):
        build_grounder({"name": "record_boxes", "field": 3}, PARTS)
    with pytest.raises(ValueError, match="not a reid_vge_labeler Grounder subclass"):
        build_grounder({"name": "json:dumps"}, PARTS)


def test_an_earlier_vge_file_is_regrounded_from_its_raw_boxes_onto_another_grid(tmp_path):
    """Changing the backbone changes the grid: the raw boxes of the earlier run are voted
    again without running the (expensive) grounder."""
    from core.data.annotations import Annotations

    records, images = sample(tmp_path)
    raw = np.asarray([[[0.3, 0.05, 0.7, 0.25], [0, 0, 0, 0], [0.1, 0.5, 0.9, 0.99]],
                      [[0.2, 0.0, 0.6, 0.2], [0.1, 0.2, 0.9, 0.6], [0, 0, 0, 0]]], dtype=np.float32)
    found = np.asarray([[1, 0, 1], [1, 1, 0]], dtype=np.uint8)
    earlier = tmp_path / "earlier.npz"
    Annotations(keys=["market:bounding_box_train/0001_c1s1_01.jpg", "market:bounding_box_train/0001_c2s1_02.jpg"],
                fields={"part_boxes_raw": raw, "part_found": found,
                        "part_masks": np.zeros((2, 3, 16, 8), np.uint8)},
                attach=["part_masks"], meta={"part_names": PARTS}).save(earlier)
    out = build_grounder({"name": "boxes", "file": str(earlier)}, PARTS).ground(images, records)
    np.testing.assert_array_equal(out.boxes, raw)
    np.testing.assert_array_equal(out.found, found.astype(bool))
    with pytest.raises(ValueError, match=r"holds the parts \['head', 'upper body', 'legs'\]; the labeler's parts"):
        build_grounder({"name": "boxes", "file": str(earlier)}, ["head", "upper", "legs"]).ground(images, records)

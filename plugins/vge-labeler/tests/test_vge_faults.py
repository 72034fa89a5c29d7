"""The issue's experiment in miniature: label synthetic people with a grounder that returns
the world's true boxes plus injected faults (whole-body boxes, tiny fragments, missing
boxes); the calibrated masks agree with the truth (the world's boxes voted onto the same
grid) better than the raw ones. scripts/calibration_iou.py runs it at full size."""

import numpy as np

from core.data.spatial import boxes_to_patch_masks
from core.labeling import run_labeler
from reid_vge_labeler.calibration import KEPT, MISSING, TOO_SHORT, TOO_TALL
from reid_vge_labeler.grounders.record_boxes import FAULT_NAMES
from reid_vge_labeler.labeler import VGELabeler
from reid_vge_labeler.metrics import mask_iou

GRID = (16, 8)
FAULTS = {"whole_body": 0.15, "tiny": 0.1, "missing": 0.05, "seed": 1}


def test_calibrated_masks_beat_raw_masks_against_the_true_parts(tmp_path, person_world, label_items):
    world = person_world(identities=30, images=6)  # 180 people
    items = label_items(world)
    labeler = VGELabeler(grounder={"name": "record_boxes", "faults": FAULTS}, parts=["head", "upper", "legs"],
                         grid=list(GRID), batch_size=60)
    ann = run_labeler(labeler, items, tmp_path / "parts.npz", fingerprint={}, ctx=None, name="vge", progress=False,
                      echo=lambda *_: None)
    records = [item.record for item in items]
    truth = boxes_to_patch_masks(np.stack([r.extras["part_boxes"] for r in records]), GRID)
    raw = boxes_to_patch_masks(ann.fields["part_boxes_raw"], GRID)
    iou_raw = mask_iou(raw, truth)
    iou_cal = mask_iou(ann.fields["part_masks"], truth)

    assert iou_cal.mean() > iou_raw.mean() + 0.02
    assert (iou_cal.mean(0)[1:] > iou_raw.mean(0)[1:]).all()  # upper body and legs each
    assert iou_cal.mean(0)[0] >= iou_raw.mean(0)[0] - 1e-9     # the head: stripes are wide, no loss

    fault = ann.fields["part_fault"]
    codes = ann.fields["part_calibration"]
    for name in FAULT_NAMES:
        assert (fault == FAULT_NAMES.index(name)).any(), f"no {name} fault drawn"
    # exactly which boxes the calibration replaced, and why
    assert (codes[fault == FAULT_NAMES.index("tiny")] == TOO_SHORT).all()
    assert (codes[fault == FAULT_NAMES.index("missing")] == MISSING).all()
    assert (codes[fault == FAULT_NAMES.index("none")] == KEPT).all()  # the floor holds the 2nd percentile
    whole = fault == FAULT_NAMES.index("whole_body")
    height = ann.fields["part_boxes_raw"][..., 3] - ann.fields["part_boxes_raw"][..., 1]
    limit = np.asarray(labeler.max_h)[None, :].repeat(len(records), 0)
    np.testing.assert_array_equal(codes[whole] == TOO_TALL, height[whole] > limit[whole])
    assert (codes[whole] == TOO_TALL).any() and (codes[whole] == KEPT).any()  # people span 65-98 % of the height

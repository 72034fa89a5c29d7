"""The calibration (MUVA Figure 5; our rule, METHODS.md): exactly which boxes of a
constructed population are replaced by the part's stripe, and why."""

import numpy as np
import pytest

from core.records import Record
from reid_vge_labeler.calibration import KEPT, MISSING, TOO_SHORT, TOO_TALL, calibrate, min_height
from reid_vge_labeler.labeler import VGELabeler

PARTS = ["head", "upper body", "legs"]
STRIPES = {"head": [0.0, 0.0, 1.0, 0.3], "upper body": [0.0, 0.2, 1.0, 0.6], "legs": [0.0, 0.5, 1.0, 1.0]}


def population():
    """54 images. Heights (fractions of the image height; every box starts at y = 0):
    head:       [0.06, 0.08, 48 values 0.10..0.50, 0.75, 0.9375, missing, missing]
    upper body: [10 fragments 0.01..0.04, 0.05, 41 values 0.2..0.5, missing, 0.25]
    legs:       [0.15, 0.19, 0.20, 0.94, 0.96, 49 x 0.4]"""
    head = [0.06, 0.08, *np.linspace(0.10, 0.50, 48), 0.75, 0.9375, None, None]
    upper = [*np.linspace(0.01, 0.04, 10), 0.05, *np.linspace(0.2, 0.5, 41), None, 0.25]
    legs = [0.15, 0.19, 0.20, 0.94, 0.96, *[0.4] * 49]
    n = len(head)
    assert len(upper) == len(legs) == n == 54
    boxes = np.zeros((n, 3, 4), dtype=np.float32)
    found = np.zeros((n, 3), dtype=np.uint8)
    for p, heights in enumerate((head, upper, legs)):
        for i, h in enumerate(heights):
            if h is not None:
                boxes[i, p] = [0.25, 0.0, 0.75, h]
                found[i, p] = 1
    return boxes, found


def finalize(labeler, boxes, found):
    records = [Record(path=None, pid=i, camid=0) for i in range(len(boxes))]
    return labeler.finalize({"part_boxes_raw": boxes, "part_found": found}, records, None)


def test_exactly_the_implausible_and_missing_boxes_are_replaced_by_their_stripes():
    boxes, found = population()
    labeler = VGELabeler(grounder="stripes", parts=PARTS, grid=[4, 2], max_h={"head": 0.75}, min_h={"legs": 0.2})
    labels = finalize(labeler, boxes, found)
    codes = labels.fields["part_calibration"]
    expected = np.full((54, 3), KEPT)
    # head: percentile rule. Found boxes not too tall: 51 heights, the 2nd percentile sits
    # at sorted position 50 * 0.02 = 1 -> 0.08, above the 0.05 floor: min_h = 0.08, strict.
    expected[0, 0] = TOO_SHORT          # 0.06 < 0.08; 0.08 itself is kept
    expected[50, 0] = KEPT              # 0.75 is not taller than max_h 0.75
    expected[51, 0] = TOO_TALL          # 0.9375 > 0.75
    expected[52:, 0] = MISSING
    # upper body: the ten fragments hold the 2nd percentile (< 0.05): the floor 0.05 decides
    expected[:10, 1] = TOO_SHORT        # 0.01..0.04; 0.05 itself is kept
    expected[52, 1] = MISSING
    # legs: min_h given (0.2), max_h default 0.95
    expected[:2, 2] = TOO_SHORT         # 0.15, 0.19; 0.20 is kept
    expected[4, 2] = TOO_TALL           # 0.96; 0.94 is kept
    np.testing.assert_array_equal(codes, expected)

    replaced = codes != KEPT
    stripes = np.asarray([STRIPES[p] for p in PARTS], dtype=np.float32)
    out = labels.fields["part_boxes"]
    np.testing.assert_array_equal(out[replaced], np.broadcast_to(stripes, out.shape)[replaced])
    np.testing.assert_array_equal(out[~replaced], boxes[~replaced])
    np.testing.assert_array_equal(labels.fields["part_boxes_raw"], boxes)


def test_the_report_gives_the_fraction_replaced_per_part_and_why():
    boxes, found = population()
    labeler = VGELabeler(grounder="stripes", parts=PARTS, grid=[4, 2], max_h={"head": 0.75}, min_h={"legs": 0.2})
    report = finalize(labeler, boxes, found).report
    assert report["head"] == {"replaced": 4 / 54, "too_tall": 1 / 54, "too_short": 1 / 54, "missing": 2 / 54,
                              "max_h": 0.75, "min_h": pytest.approx(0.08, abs=1e-6)}
    assert report["upper body"]["replaced"] == 11 / 54 and report["upper body"]["too_short"] == 10 / 54
    assert report["upper body"]["min_h"] == 0.05
    assert report["legs"]["too_tall"] == 1 / 54 and report["legs"]["max_h"] == 0.95
    assert report["replaced"] == pytest.approx((4 + 11 + 3) / (54 * 3))
    assert report["images"] == 54


def test_default_height_limits_are_0_9_and_0_95_for_legs():
    labeler = VGELabeler(grounder="stripes", parts=PARTS, grid=[4, 2])
    assert labeler.max_h == [0.9, 0.9, 0.95]
    boxes = np.zeros((3, 3, 4), dtype=np.float32)
    boxes[:, :, 2] = 1.0
    boxes[:, :, 3] = [[0.5, 0.5, 0.5], [0.92, 0.92, 0.92], [0.5, 0.5, 0.97]]
    codes = finalize(labeler, boxes, np.ones((3, 3), np.uint8)).fields["part_calibration"]
    np.testing.assert_array_equal(codes[1], [TOO_TALL, TOO_TALL, KEPT])
    np.testing.assert_array_equal(codes[2], [KEPT, KEPT, TOO_TALL])


def test_without_calibration_raw_boxes_are_kept_and_missing_parts_get_empty_masks():
    boxes, found = population()
    labeler = VGELabeler(grounder="stripes", parts=PARTS, grid=[4, 2], calibrate=False)
    labels = finalize(labeler, boxes, found)
    np.testing.assert_array_equal(labels.fields["part_boxes"], boxes)
    assert not labels.fields["part_calibration"].any()
    assert not labels.fields["part_masks"][52, 0].any()     # head missing: nothing
    assert labels.fields["part_masks"][51, 0].any()         # the too-tall head stays
    assert labels.report["head"]["missing"] == 2 / 54 and labels.report["replaced"] == 0.0


def test_min_height_is_the_percentile_but_at_least_the_floor():
    assert min_height(np.asarray([0.1, 0.2, 0.3]), 50, 0.05) == pytest.approx(0.2)
    assert min_height(np.asarray([0.01, 0.02, 0.03]), 50, 0.05) == 0.05
    assert min_height(np.zeros(0), 2, 0.05) == 0.05


def test_calibrate_alone_on_a_tiny_case():
    boxes = np.asarray([[[0, 0, 1, 0.5]], [[0, 0, 1, 0.99]], [[0, 0, 1, 0.01]], [[0, 0, 0, 0]]], dtype=np.float32)
    found = np.asarray([[1], [1], [1], [0]], dtype=bool)
    cal = calibrate(boxes, found, np.asarray([[0, 0.5, 1, 1]]), max_h=[0.9], min_h=[None])
    np.testing.assert_array_equal(cal.codes[:, 0], [KEPT, TOO_TALL, TOO_SHORT, MISSING])
    np.testing.assert_array_equal(cal.boxes[1:, 0], [[0, 0.5, 1, 1]] * 3)


def test_bad_thresholds_and_windows_are_errors_naming_the_key():
    with pytest.raises(ValueError, match=r"max_h: 'arms' is not one of the parts"):
        VGELabeler(grounder="stripes", parts=PARTS, grid=[4, 2], max_h={"arms": 0.5})
    with pytest.raises(ValueError, match=r"min_h: the value for 'head' must be a fraction"):
        VGELabeler(grounder="stripes", parts=PARTS, grid=[4, 2], min_h=1.5)
    with pytest.raises(ValueError, match=r"stripes.legs: a window is \[y0, y1\]"):
        VGELabeler(grounder="stripes", parts=PARTS, grid=[4, 2], stripes={"legs": [0.9, 0.5]})
    with pytest.raises(ValueError, match=r"part 'tail' has no default stripe window"):
        VGELabeler(grounder="stripes", parts=["head", "tail"], grid=[4, 2])


def test_each_training_set_is_calibrated_from_its_own_box_heights():
    """Set A: 49 head boxes 0.3 high and one 0.1 high; set B: 50 boxes 0.1 high. Apart,
    A's min_h is its 2nd percentile, 0.1 + 0.98 * (0.3 - 0.1) = 0.296, so its short box is
    replaced, and B's is 0.1 (strict <: all kept); pooled, the 2nd percentile is 0.1 and
    nothing is short."""
    heights = [0.3] * 49 + [0.1] + [0.1] * 50
    boxes = np.zeros((100, 3, 4), np.float32)
    boxes[:, :, 2] = 1.0
    boxes[:, 0, 3] = heights
    boxes[:, 1, 1], boxes[:, 1, 3] = 0.2, 0.6
    boxes[:, 2, 1], boxes[:, 2, 3] = 0.5, 1.0
    found = np.ones((100, 3), np.uint8)
    records = [Record(path=None, pid=i, camid=0, domain="a" if i < 50 else "b") for i in range(100)]
    raw = {"part_boxes_raw": boxes, "part_found": found}
    apart = VGELabeler(grounder="stripes", grid=[4, 2]).finalize(raw, records, None)
    codes = apart.fields["part_calibration"][:, 0]
    assert codes[49] == 2 and (np.delete(codes, 49) == 0).all()  # 2 = too short
    assert abs(apart.report["a"]["head"]["min_h"] - 0.296) < 1e-4 and apart.report["b"]["head"]["min_h"] == 0.1
    assert apart.meta["calibrate_per"] == "dataset"
    pooled = VGELabeler(grounder="stripes", grid=[4, 2], calibrate_per="all").finalize(raw, records, None)
    assert (pooled.fields["part_calibration"][:, 0] == 0).all() and pooled.report["head"]["min_h"] == 0.1
    with pytest.raises(ValueError, match="calibrate_per must be one of dataset, all"):
        VGELabeler(grounder="stripes", grid=[4, 2], calibrate_per="domain")

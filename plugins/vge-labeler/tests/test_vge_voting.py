"""Binary voting of calibrated boxes onto the backbone's patch grid (MUVA Figure 6), through
the labeler's finalize: hand cases, patch-boundary boxes, non-square grids, and the grid
it votes on. (The rule itself, core.data.spatial.boxes_to_patch_masks, is the core's.)"""

import numpy as np
import pytest

from core.context import BuildContext
from core.records import Record
from reid_vge_labeler.labeler import VGELabeler


def vote(boxes, grid=None, ctx=None, coverage=0.5):
    """Masks of found, uncalibrated boxes (N, P, 4) -> (N, P, rows, cols)."""
    boxes = np.asarray(boxes, dtype=np.float32)
    n, p = boxes.shape[:2]
    labeler = VGELabeler(grounder="stripes", parts=["head", "upper body", "legs"][:p], calibrate=False,
                         coverage=coverage, grid=grid)
    labels = labeler.finalize({"part_boxes_raw": boxes, "part_found": np.ones((n, p), np.uint8)},
                              [Record(path=None, pid=i, camid=0) for i in range(n)], ctx)
    return labels.fields["part_masks"]


def test_a_box_on_one_patch_marks_that_patch_only():
    masks = vote([[[0.0, 0.0, 0.5, 0.25]]], grid=[4, 2])
    expected = np.zeros((4, 2), np.uint8)
    expected[0, 0] = 1
    np.testing.assert_array_equal(masks[0, 0], expected)
    assert masks.dtype == np.uint8 and masks.shape == (1, 1, 4, 2)


def test_a_box_on_a_patch_boundary_covering_half_of_two_patches_marks_both_at_coverage_one_half():
    box = [[[0.0, 0.125, 0.5, 0.375]]]  # rows 0 and 1 of column 0, half of each
    np.testing.assert_array_equal(vote(box, grid=[4, 2])[0, 0, :, 0], [1, 1, 0, 0])
    np.testing.assert_array_equal(vote(box, grid=[4, 2], coverage=0.6)[0, 0], np.zeros((4, 2)))


def test_a_patch_just_under_the_coverage_is_left_out():
    # covers 0.49 of patch (0, 1) and all of patch (0, 0)
    masks = vote([[[0.0, 0.0, 0.745, 0.25]]], grid=[4, 2])
    np.testing.assert_array_equal(masks[0, 0, 0], [1, 0])
    masks = vote([[[0.0, 0.0, 0.755, 0.25]]], grid=[4, 2])
    np.testing.assert_array_equal(masks[0, 0, 0], [1, 1])


def test_non_square_grid_from_the_backbone():
    ctx = BuildContext(patch_grid=(3, 5))  # patches 1/3 high, 1/5 wide
    masks = vote([[[0.2, 0.0, 0.6, 1 / 3], [0.0, 0.5, 1.0, 1.0]]], ctx=ctx)
    assert masks.shape == (1, 2, 3, 5)
    head = np.zeros((3, 5), np.uint8)
    head[0, 1:3] = 1
    np.testing.assert_array_equal(masks[0, 0], head)
    # legs from half the height: row 1 is covered exactly half (0.5..2/3 of 1/3..2/3), row 2 fully
    legs = np.zeros((3, 5), np.uint8)
    legs[1:] = 1
    np.testing.assert_array_equal(masks[0, 1], legs)


def test_row_major_flattening_lines_up_with_patch_index_r_times_cols_plus_c():
    masks = vote([[[0.8, 2 / 3, 1.0, 1.0]]], grid=[3, 5])  # the bottom-right patch
    flat = masks.reshape(1, 1, -1)
    assert flat[0, 0].nonzero()[0].tolist() == [2 * 5 + 4]


def test_calibrated_boxes_are_what_is_voted():
    # a missing head becomes the head stripe (0-0.3, full width): rows 0 and 1 of 4 at
    # coverage 0.5 (row 1 is covered 0.05/0.25 = 20 %: out)
    labeler = VGELabeler(grounder="stripes", grid=[4, 2])
    labels = labeler.finalize({"part_boxes_raw": np.zeros((1, 3, 4), np.float32),
                               "part_found": np.zeros((1, 3), np.uint8)}, [Record(path=None, pid=0, camid=0)], None)
    np.testing.assert_array_equal(labels.fields["part_masks"][0, 0, :, 0], [1, 0, 0, 0])
    np.testing.assert_array_equal(labels.fields["part_masks"][0, 2, :, 0], [0, 0, 1, 1])  # legs 0.5-1.0
    assert labels.attach == ["part_masks"]


def test_a_backbone_without_a_patch_grid_is_a_clear_error_unless_grid_is_given():
    with pytest.raises(ValueError, match=r"this backbone has none .*give `grid: \[rows, cols\]`"):
        VGELabeler(grounder="stripes", ctx=BuildContext(patch_grid=None))
    with pytest.raises(ValueError, match="this backbone has none"):
        vote([[[0, 0, 1, 1]]], ctx=BuildContext(patch_grid=None))
    assert vote([[[0, 0, 1, 1]]], grid=[2, 2], ctx=BuildContext(patch_grid=None)).shape == (1, 1, 2, 2)


def test_a_grid_other_than_the_backbones_is_an_error():
    with pytest.raises(ValueError, match=r"grid is \[4, 2\] but the backbone's patch grid is \[16, 8\]"):
        VGELabeler(grounder="stripes", grid=[4, 2], ctx=BuildContext(patch_grid=(16, 8)))
    with pytest.raises(ValueError, match=r"grid is \[rows, cols\]"):
        VGELabeler(grounder="stripes", grid=[4])

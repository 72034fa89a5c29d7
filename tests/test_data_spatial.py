"""Spatial extras (core.data.spatial): the voting rule on hand cases, and part boxes and
part masks moving with the image through the sample's transform."""

import numpy as np
import pytest
import torch
from PIL import Image

from core.data.loading import ImageSamples, collate
from core.data.spatial import boxes_to_patch_masks
from core.data.table import RecordTable
from core.data.transforms import build_transform
from core.interfaces import Dataset
from core.records import Record


def test_voting_takes_patches_covered_at_least_half():
    # 2 x 2 grid: the box covers the left column fully and 40% of the right column's width
    masks = boxes_to_patch_masks(np.array([0.0, 0.0, 0.7, 1.0]), (2, 2))
    assert masks.tolist() == [[True, False], [True, False]]
    # exactly half of a patch counts (>= coverage), on a patch boundary
    assert boxes_to_patch_masks(np.array([0.0, 0.0, 0.75, 0.5]), (2, 2)).tolist() == [[True, True], [False, False]]
    # a box inside one patch covering a quarter of it votes for nothing; coverage 0.25 takes it
    small = np.array([0.0, 0.0, 0.25, 0.25])
    assert not boxes_to_patch_masks(small, (2, 2)).any()
    assert boxes_to_patch_masks(small, (2, 2), coverage=0.25).tolist() == [[True, False], [False, False]]


def test_voting_on_a_non_square_grid_is_row_major_over_rows_then_columns():
    # 4 rows x 2 cols (a 256x128 image with 64-pixel patches): the top half of the left column
    masks = boxes_to_patch_masks(np.array([[0.0, 0.0, 0.5, 0.5]]), (4, 2))
    assert masks.shape == (1, 4, 2)
    assert masks[0].reshape(-1).tolist() == [True, False, True, False, False, False, False, False]
    # a box spanning rows 1..2 fully and 60% of the right column
    m = boxes_to_patch_masks(np.array([0.2, 0.25, 1.0, 0.75]), (4, 2))
    assert m.tolist() == [[False, False], [True, True], [True, True], [False, False]]


def test_voting_rejects_bad_shapes_and_coverage():
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        boxes_to_patch_masks(np.zeros((3, 3)), (2, 2))
    with pytest.raises(ValueError, match="coverage"):
        boxes_to_patch_masks(np.zeros(4), (2, 2), coverage=0.0)


class OneImage(Dataset):
    """A 40x20 image whose left quarter is white; its part box and mask mark that quarter."""

    def __init__(self, extras):
        self.extras = extras

    def records(self, split):
        return [Record(path=None, pid=0, camid=0, extras=dict(self.extras))]

    def load_image(self, record):
        pixels = np.zeros((40, 20, 3), dtype=np.uint8)
        pixels[:, :5] = 255
        return Image.fromarray(pixels)


def sample(extras, **transform):
    dataset = OneImage(extras)
    table = RecordTable.build([("one", dataset.records("train"))], relabel=True)
    return ImageSamples(table, [dataset], build_transform(**transform))


def test_a_flip_moves_the_part_box_and_the_part_mask_with_the_image():
    grid = (4, 4)
    box = np.array([[0.0, 0.0, 0.25, 1.0]], dtype=np.float32)
    masks = boxes_to_patch_masks(box, grid).astype(np.uint8)  # the left column
    samples = sample({"part_boxes": box, "part_masks": masks}, train=True, size=[40, 20], pad=0, flip=1.0)
    out = samples[(0, 7, 0)]
    image, fields = out["image"], out["extras"]
    white = image.mean(0).mean(0) > 0  # normalised: white columns are positive
    assert white[-5:].all() and not white[:-5].any()  # the image was flipped
    assert torch.allclose(fields["part_boxes"], torch.tensor([[0.75, 0.0, 1.0, 1.0]]))
    expected = torch.from_numpy(masks[:, :, ::-1].copy()).float().flatten(1)  # the right column
    assert torch.equal(fields["part_masks"], expected)


def test_without_random_geometry_the_mask_round_trip_is_exact_on_any_grid():
    rng = np.random.default_rng(0)
    for grid in [(4, 2), (5, 3), (8, 4)]:
        masks = (rng.random((3, *grid)) > 0.5).astype(np.uint8)
        samples = sample({"part_masks": masks}, train=False, size=[64, 32])
        got = samples[0]["extras"]["part_masks"]
        assert got.shape == (3, grid[0] * grid[1])
        assert torch.equal(got, torch.from_numpy(masks).float().flatten(1)), grid


def test_a_crop_shifts_boxes_and_they_stay_clipped_to_the_image():
    box = np.array([[0.0, 0.0, 0.25, 1.0]], dtype=np.float32)
    samples = sample({"part_boxes": box}, train=True, size=[40, 20], pad=4, flip=0.0)
    for seed in range(5):
        boxes = samples[(0, seed, 0)]["extras"]["part_boxes"]
        assert (boxes >= 0).all() and (boxes <= 1).all()
        # the white quarter and its box move together: the box's right edge sits on the
        # last white column of the crop
        image = samples[(0, seed, 0)]["image"].mean(0).mean(0)
        last_white = int((image > 0).nonzero().max()) + 1 if (image > 0).any() else 0
        assert abs(float(boxes[0, 2]) * 20 - last_white) <= 1e-4, seed


def test_the_same_seed_gives_the_same_image_and_parts():
    box = np.array([[0.1, 0.2, 0.6, 0.9]], dtype=np.float32)
    samples = sample({"part_boxes": box, "part_masks": boxes_to_patch_masks(box, (4, 2)).astype(np.uint8)},
                     train=True, size=[40, 20], pad=4, flip=0.5, erasing=0.5)
    a, b = samples[(0, 3, 0)], samples[(0, 3, 0)]
    assert torch.equal(a["image"], b["image"])
    assert torch.equal(a["extras"]["part_boxes"], b["extras"]["part_boxes"])
    assert torch.equal(a["extras"]["part_masks"], b["extras"]["part_masks"])
    batch = collate([samples[(0, s, 0)] for s in range(4)])
    assert batch.extras["part_masks"].shape == (4, 1, 8) and batch.extras["part_boxes"].shape == (4, 1, 4)


def test_a_mask_that_is_not_on_a_grid_is_refused():
    samples = sample({"part_masks": np.zeros(8, dtype=np.uint8)}, train=False, size=[40, 20])
    with pytest.raises(ValueError, match=r"\(parts, rows, cols\)"):
        samples[0]

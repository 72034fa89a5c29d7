"""`core explain` pictures show an instruction-conditioned query's instruction (an
Instruct-ReID caption or attribute sentence) in a line under the picture, as the
ranked-list pictures of `core search` do (tests/test_tools_pictures_instruction.py): the
heat maps of such a query answer that instruction, and without it they could not be read."""

import numpy as np
import torch
from PIL import Image

LINE = 13  # pixels per caption line (core.tools.pictures)


def ink_rows(picture) -> np.ndarray:
    """Rows of the picture holding any non-white pixel."""
    return np.flatnonzero((np.asarray(picture) < 250).any(axis=(1, 2)))


def columns():
    from core.tools.explain_maps import Column
    from core.tools.pictures import BLUE, GREEN

    image = Image.new("RGB", (16, 32), (90, 120, 200))
    heat = torch.rand(32, 16, generator=torch.Generator().manual_seed(0))
    return [Column(image, BLUE, "query", ["pid 3"], heat, None),
            Column(image, GREEN, "1", ["0.12", "pid 3"], heat, None)]


def test_a_heat_map_picture_of_an_instructed_query_writes_the_instruction_under_it():
    from core.tools.explain_maps import explain_picture

    rows = ["image", "attention rollout"]
    plain = explain_picture(columns(), rows, (32, 16), "query q.jpg")
    instructed = explain_picture(columns(), rows, (32, 16), "query q.jpg", note="instruction: a man in a red coat")
    assert instructed.width == plain.width and instructed.height == plain.height + LINE
    assert ink_rows(instructed)[-1] > plain.height - 6  # ink in the added line, below the captions
    assert np.array_equal(np.asarray(instructed)[:plain.height - 6], np.asarray(plain)[:plain.height - 6])


def test_a_long_instruction_wraps_within_the_heat_map_picture():
    from core.tools.explain_maps import explain_picture

    rows = ["image", "attention rollout"]
    plain = explain_picture(columns(), rows, (32, 16))
    long = explain_picture(columns(), rows, (32, 16), note="instruction: " + " ".join(["coat"] * 200))
    assert long.width == plain.width and long.height == plain.height + 4 * LINE


def test_a_part_mask_picture_of_an_instructed_image_writes_the_instruction_under_it():
    from core.tools.overlays import overlay_picture

    image = Image.new("RGB", (16, 32), (90, 120, 200))
    masks = torch.rand(3, 4, 2, generator=torch.Generator().manual_seed(1))
    plain = overlay_picture(image, masks, (32, 16), "q.jpg")
    instructed = overlay_picture(image, masks, (32, 16), "q.jpg", note="instruction: a man in a red coat")
    assert instructed.width == plain.width and instructed.height == plain.height + LINE
    assert ink_rows(instructed)[-1] > plain.height - 6

"""The ResNet stem's max-pool as fast-reid builds it (`backbone.stem_maxpool: ceil`,
MaxPool2d(3, 2, padding 0, ceil_mode) since its commit 9c667d1) or as torchvision / timm
and fast-reid before it do (`padded`, the default): their released weights compute their
function only under their own stem."""

from __future__ import annotations

import pytest
import torch

from core.context import BuildContext
from core.models.resnet import ReIDResNet


def stem(stem_maxpool: str) -> torch.nn.Module:
    return ReIDResNet(BuildContext(), arch="resnet18", stem_maxpool=stem_maxpool).model.maxpool


def test_ceil_mode_stem_windows_start_at_the_first_pixel():
    """fast-reid's MaxPool2d(3, 2, ceil_mode=True): windows [0..2], [2..4], ...; the padded
    one's are [-1..1], [1..3], ... A peak at row/column 2 shows in outputs 0 and 1 with
    ceil mode, in output 1 only when padded."""
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 2, 2] = 1.0
    ceil = stem("ceil")(x)[0, 0]
    padded = stem("padded")(x)[0, 0]
    assert ceil.shape == padded.shape == (4, 4)
    assert ceil[:2, :2].eq(1).all() and ceil.sum() == 4
    assert padded[1, 1] == 1 and padded.sum() == 1


def test_an_unknown_stem_maxpool_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"stem_maxpool must be one of padded, ceil"):
        ReIDResNet(BuildContext(), arch="resnet18", stem_maxpool="same")

"""The folder layout's camera-token rule is about evaluation: a query named without its
`c<N>` token gets camera 0 beside gallery images of cameras 1..3, and the same-camera
exclusion compares the wrong cameras. Training images play no part in that exclusion, so
a train/ folder named without tokens (images from another source) beside query/ and
gallery/ folders named with them is a valid tree; and query/gallery images without any
token are the case the warning is for, whatever train/ is named."""

from __future__ import annotations

import re

import pytest

from core.data.layouts import FolderDataset
from layout_fixtures import images  # registered by conftest.py


def test_train_images_without_tokens_beside_named_test_images_are_read(tmp_path):
    images(tmp_path / "train" / "zebra" / "1", "crawl-0001.jpg", "crawl-0002.jpg")
    images(tmp_path / "query" / "zebra" / "7", "z7_c1_0.jpg")
    images(tmp_path / "gallery" / "zebra" / "7", "z7_c2_1.jpg", "z7_c3_2.jpg")
    ds = FolderDataset(str(tmp_path))
    assert [r.camid for r in ds.records("train")] == [0, 0]  # no token: camera 0, as the module doc says
    assert [r.camid for r in ds.records("query")] == [1]
    assert sorted(r.camid for r in ds.records("gallery")) == [2, 3]


def test_a_mix_within_the_test_splits_is_still_an_error(tmp_path):
    images(tmp_path / "train" / "zebra" / "1", "crawl-0001.jpg")
    images(tmp_path / "query" / "zebra" / "7", "z7-0.jpg")
    images(tmp_path / "gallery" / "zebra" / "7", "z7_c1_1.jpg", "z7_c2_2.jpg")
    ds = FolderDataset(str(tmp_path))
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'query' / 'zebra' / '7' / 'z7-0.jpg'} has no "
                                                   "camera token") + r".*2 of 3 images of category 'zebra'"):
        ds.records("gallery")


def test_a_mix_within_train_is_still_an_error(tmp_path):
    images(tmp_path / "train" / "zebra" / "1", "z1_c1_0.jpg", "z1-1.jpg")
    images(tmp_path / "query" / "zebra" / "7", "z7_c1_0.jpg")
    images(tmp_path / "gallery" / "zebra" / "7", "z7_c2_1.jpg")
    with pytest.raises(ValueError, match="z1-1.jpg has no camera token"):
        FolderDataset(str(tmp_path)).records("train")


def test_test_images_without_any_token_are_warned_of_though_train_has_them(tmp_path, caplog):
    images(tmp_path / "train" / "zebra" / "1", "z1_c1_0.jpg", "z1_c2_1.jpg")
    images(tmp_path / "query" / "zebra" / "7", "zebra7-cam1-0.jpg")
    images(tmp_path / "gallery" / "zebra" / "7", "zebra7-cam2-1.jpg")
    ds = FolderDataset(str(tmp_path))
    with caplog.at_level("WARNING", logger="core.data.layouts.folder"):
        ds.records("query")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "no query or gallery image name has a camera token" in warnings[0]
    assert "exclude_same_camera: false" in warnings[0] and "zebra7-cam1-0.jpg" in warnings[0]

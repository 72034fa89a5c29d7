"""The `msmt17_market` reader: MSMT17 re-packed in Market-1501's folders, the copy the
domain-generalization codebases (MUVA's among them) read, on a tiny tree in that layout."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from core.data.layouts.msmt17_market import MSMT17Market


def tree(root: Path, extra: tuple[str, ...] = ()) -> Path:
    files = {"bounding_box_train": ["0000_c1_0001.jpg", "0000_c14_0002.jpg", "0005_c15_0003.jpg"],
             "query": ["0001_c3_0004.jpg"],
             "bounding_box_test": ["0001_c7_0005.jpg", "-1_c2_0006.jpg", "0002_c10_0007.jpg", *extra]}
    for folder, names in files.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            Image.new("RGB", (8, 16)).save(root / folder / name)
    return root


def test_pids_and_zero_based_cameras_from_market_style_names(tmp_path):
    data = MSMT17Market(str(tree(tmp_path / "MSMT17")))
    train = data.records("train")
    assert [(r.pid, r.camid) for r in train] == [(0, 13), (0, 0), (5, 14)]  # sorted file names: c14 < c1_
    assert {r.domain for r in train} == {"msmt17_market"} and {r.split for r in train} == {"train"}
    assert [(r.pid, r.camid) for r in data.records("query")] == [(1, 2)]
    assert [(r.pid, r.camid) for r in data.records("gallery")] == [(1, 6), (2, 9)]  # junk -1 dropped


def test_the_archive_folder_inside_root_is_found(tmp_path):
    tree(tmp_path / "MSMT17_V2")
    assert len(MSMT17Market(str(tmp_path)).records("train")) == 3


def test_a_camera_outside_1_to_15_names_the_file(tmp_path):
    data = MSMT17Market(str(tree(tmp_path / "MSMT17", extra=("0003_c16_0008.jpg",))))
    with pytest.raises(ValueError, match=r"0003_c16_0008.jpg names camera 16, but MSMT17Market has cameras c1-c15"):
        data.records("gallery")


def test_a_missing_root_names_the_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="bounding_box_train/, query/, bounding_box_test/"):
        MSMT17Market(str(tmp_path / "nowhere"))


def test_the_pipeline_name_builds_the_reader(tmp_path):
    from core.registry import build_registry

    registry = build_registry()
    root = str(tree(tmp_path / "MSMT17"))
    assert isinstance(registry.build("dataset", "msmt17_market", root=root), MSMT17Market)
    assert registry.get("dataset", "msmt17-market").name == "msmt17_market"

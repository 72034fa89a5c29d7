"""A camera token outside the dataset's cameras is refused with one line naming the file and
the valid range, as torchreid and fast-reid assert (`assert 1 <= camid <= 6` for Market-1501):
`c0` would become camid -1 and `c7` a camera Market-1501 does not have, and either silently
changes which gallery images the same-camera exclusion of the evaluation drops. Junk images
(pid -1) are left out before their camera is read, as torchreid does. Fixtures in each
release's real layout."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.data.layouts import CUHK03NP, MSMT17, DukeMTMC, Market1501, VeRi776
from core.data.layouts.ltcc import LTCC
from core.data.layouts.msmt17_market import MSMT17Market
from core.data.layouts.occluded_duke import OccludedDuke
from core.data.layouts.vc_clothes import VCClothes
from layout_fixtures import image_folders, images  # registered by conftest.py

MARKET_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")


def market_style(root: Path, query: str, gallery: str = "0001_c2s1_000301_01.jpg",
                 train: str = "0002_c1s1_000451_03.jpg", folders=MARKET_FOLDERS) -> Path:
    return image_folders(root, dict(zip(folders, ([train], [query], [gallery]))))


def refused(reader, root: Path, split: str, name: str, valid: str) -> None:
    with pytest.raises(ValueError) as caught:
        reader(str(root)).records(split)
    message = str(caught.value)
    assert "\n" not in message
    assert name in message and re.search(valid, message), message


@pytest.mark.parametrize("name", ["0002_c0s1_000451_01.jpg", "0002_c7s1_000451_01.jpg"])
def test_market_camera_outside_c1_to_c6_names_the_file_and_the_range(tmp_path, name):
    refused(Market1501, market_style(tmp_path, name), "query", name, r"cameras c1-c6")


def test_market_cameras_c1_and_c6_are_camids_0_and_5(tmp_path):
    root = market_style(tmp_path, "0002_c6s1_000451_01.jpg", gallery="0002_c1s1_000301_01.jpg")
    data = Market1501(str(root))
    assert [r.camid for r in data.records("query")] == [5]
    assert [r.camid for r in data.records("gallery")] == [0]


def test_market_junk_is_dropped_before_its_camera_is_read(tmp_path):
    root = market_style(tmp_path, "0001_c1s1_001051_00.jpg")
    images(root / "bounding_box_test", "-1_c0s1_000401_03.jpg")
    assert [r.pid for r in Market1501(str(root)).records("gallery")] == [1]


def test_market_500k_distractor_with_camera_c9_is_refused(tmp_path):
    root = market_style(tmp_path, "0001_c1s1_001051_00.jpg")
    images(root / "images", "0000_c9s1_100000_00.jpg")
    with pytest.raises(ValueError, match=r"0000_c9s1_100000_00\.jpg.*cameras c1-c6"):
        Market1501(str(root), distractors=True).records("gallery")


@pytest.mark.parametrize("reader", [DukeMTMC, OccludedDuke])
def test_duke_camera_outside_c1_to_c8_names_the_file(tmp_path, reader):
    root = market_style(tmp_path, "0001_c9_f0046182.jpg", gallery="0001_c8_f0046183.jpg",
                        train="0002_c1_f0046184.jpg")
    refused(reader, root, "query", "0001_c9_f0046182.jpg", r"cameras c1-c8")
    assert [r.camid for r in reader(str(root)).records("gallery")] == [7]


def test_msmt17_market_camera_outside_c1_to_c15_names_the_file(tmp_path):
    root = market_style(tmp_path, "0000_c0_0001.jpg")
    refused(MSMT17Market, root, "query", "0000_c0_0001.jpg", r"cameras c1-c15")


def test_veri776_camera_outside_c001_to_c020_names_the_file(tmp_path):
    folders = ("image_train", "image_query", "image_test")
    root = market_style(tmp_path, "0005_c021_00077090_0.jpg", gallery="0005_c020_00078760_0.jpg",
                        train="0001_c001_00016450_0.jpg", folders=folders)
    refused(VeRi776, root, "query", "0005_c021_00077090_0.jpg", r"cameras c1-c20")
    assert [r.camid for r in VeRi776(str(root)).records("gallery")] == [19]


def test_cuhk03np_view_other_than_c1_or_c2_names_the_file(tmp_path):
    folders = ("detected/bounding_box_train", "detected/query", "detected/bounding_box_test")
    root = market_style(tmp_path, "0003_c3_1.png", gallery="0003_c2_6.png", train="0001_c1_1.png",
                        folders=folders)
    refused(CUHK03NP, root, "query", "0003_c3_1.png", r"cameras c1-c2")


def test_ltcc_camera_outside_c1_to_c12_names_the_file(tmp_path):
    root = image_folders(tmp_path, {"train": ["094_1_c9_015923.png"], "query": ["001_1_c0_000001.png"],
                                    "test": ["001_1_c12_000002.png"]})
    refused(LTCC, root, "query", "001_1_c0_000001.png", r"cameras c1-c12")
    assert [r.camid for r in LTCC(str(root)).records("gallery")] == [11]


def test_vc_clothes_camera_outside_1_to_4_names_the_file(tmp_path):
    root = image_folders(tmp_path, {"train": ["0001-01-01-01.jpg"], "query": ["0002-05-01-01.jpg"],
                                    "gallery": ["0002-04-01-02.jpg"]})
    refused(VCClothes, root, "query", "0002-05-01-01.jpg", r"cameras c1-c4")


def msmt17_v1(root: Path, query_line: str) -> Path:
    lists = {"list_train.txt": ("train", "0000/0000_000_01_0303morning_0015_0.jpg 0"),
             "list_val.txt": ("train", "0001/0001_001_02_0303morning_0042_2.jpg 1"),
             "list_query.txt": ("test", query_line),
             "list_gallery.txt": ("test", "0000/0000_004_15_0113noon_0101_1.jpg 0")}
    for list_name, (folder, line) in lists.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / list_name).write_text(line + "\n", encoding="utf-8")
        path = root / folder / line.split()[0]
        images(path.parent, path.name)
    return root


def test_msmt17_list_entry_with_camera_outside_1_to_15_names_the_list_line(tmp_path):
    root = msmt17_v1(tmp_path, "0000/0000_000_16_0113morning_0011_0.jpg 0")
    with pytest.raises(ValueError) as caught:
        MSMT17(str(root)).records("query")
    message = str(caught.value)
    assert "\n" not in message and "list_query.txt:1" in message and "0000_000_16_0113morning_0011_0.jpg" in message
    assert "cameras 1-15" in message
    assert [r.camid for r in MSMT17(str(root)).records("gallery")] == [14]


def test_a_listing_cached_before_the_camera_check_is_read_again(tmp_path, monkeypatch):
    """The record cache (core.data.cache) keys a listing by its folders and the reader's
    options; a listing cached by a reader that took any camera is not served to one that
    checks the range, which then reads the folder again and refuses c0."""
    monkeypatch.setenv("REID_CORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REID_CORE_CACHE_MIN_ROWS", "0")
    root = market_style(tmp_path / "market", "0002_c0s1_000451_01.jpg")
    monkeypatch.setattr(Market1501, "cameras", None)  # the reader before the check
    assert [r.camid for r in Market1501(str(root)).records("query")] == [-1]
    assert list((tmp_path / "cache").rglob("*.arrow"))  # the listing was cached
    monkeypatch.setattr(Market1501, "cameras", 6)
    refused(Market1501, root, "query", "0002_c0s1_000451_01.jpg", r"cameras c1-c6")

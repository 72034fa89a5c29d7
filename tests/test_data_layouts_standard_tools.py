"""The readers against the standard tools (torchreid, fast-reid) and the datasets' released
layouts: what they leave out (macOS AppleDouble twins, the 500k distractors outside the gallery)
and the test-size lists of VehicleID and VERI-Wild."""

from __future__ import annotations

from pathlib import Path

from core.data.layouts import Market1501, VehicleID, VeRiWild
from layout_fixtures import image_folders, images

MARKET = {"bounding_box_train": ["0002_c1s1_000451_03.jpg", "0007_c3s3_064744_02.jpg"],
          "query": ["0001_c1s1_001051_00.jpg", "0003_c6s1_002901_00.jpg"],
          "bounding_box_test": ["0000_c1s1_000151_01.jpg", "0001_c2s1_000301_01.jpg", "0003_c1s1_004576_02.jpg"]}


def pids_cams(records):
    return [(r.pid, r.camid) for r in records]


# --- M06: macOS AppleDouble twins (`._<name>`) are not images -----------------------------
# torchreid/fast-reid list `glob(dir/*.jpg)`, and glob's `*` never matches a leading dot,
# so an archive unpacked on macOS (which adds `._0002_c1s1_000451_03.jpg` beside each
# image) reads the same as a clean one.

def test_market_ignores_appledouble_twins_like_torchreids_glob(tmp_path):
    clean = Market1501(str(image_folders(tmp_path / "clean", MARKET)))
    root = image_folders(tmp_path / "mac", MARKET)
    for folder, names in MARKET.items():
        for name in names:
            (root / folder / f"._{name}").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble magic
    mac = Market1501(str(root))
    for split in ("train", "query", "gallery"):
        assert pids_cams(mac.records(split)) == pids_cams(clean.records(split))


# --- M07: Market-1501+500k distractors join the gallery, never the query -------------------
# torchreid market1501_500k: `gallery += self.process_dir(self.extra_gallery_dir)`; train
# and query are untouched.

def test_market_500k_distractors_leave_train_and_query_alone(tmp_path):
    root = image_folders(tmp_path, MARKET)
    images(root / "images", "0000_c3s1_100000_00.jpg", "0000_c4s2_100001_01.jpg")
    plain, extended = Market1501(str(root)), Market1501(str(root), distractors=True)
    assert pids_cams(extended.records("query")) == pids_cams(plain.records("query")) == [(1, 0), (3, 5)]
    assert pids_cams(extended.records("train")) == pids_cams(plain.records("train"))
    assert len(extended.records("gallery")) == len(plain.records("gallery")) + 2


# --- M25: VehicleID's test size picks its own list ----------------------------------------
# fast-reid SmallVehicleID / MediumVehicleID / LargeVehicleID read
# train_test_split/test_list_800.txt / test_list_1600.txt / test_list_2400.txt.

def vehicleid_tree(root: Path) -> Path:
    base = root / "VehicleID_V1.0"
    images(base / "image", *[f"{i:07d}.jpg" for i in range(1, 13)])
    lists = base / "train_test_split"
    lists.mkdir(parents=True)
    (lists / "train_list.txt").write_text("0000001 1\n0000002 1\n")
    # nested lists as released (the larger test sets contain the smaller vehicles)
    (lists / "test_list_800.txt").write_text("0000003 10\n0000004 10\n")
    (lists / "test_list_1600.txt").write_text("0000003 10\n0000004 10\n0000005 20\n0000006 20\n")
    (lists / "test_list_2400.txt").write_text("0000003 10\n0000004 10\n0000005 20\n0000006 20\n"
                                             "0000007 30\n0000008 30\n")
    return root


def test_vehicleid_test_size_reads_its_own_list(tmp_path):
    root = str(vehicleid_tree(tmp_path))
    for size, vehicles in ((800, [10]), (1600, [10, 20]), (2400, [10, 20, 30])):
        data = VehicleID(root, test_size=size)
        assert sorted({r.pid for r in data.records("gallery")}) == vehicles, size
        assert len(data.records("gallery")) + len(data.records("query")) == 2 * len(vehicles)


# --- M39: VERI-Wild's test size picks its own query and gallery lists ----------------------
# fast-reid Small/Medium/LargeVeRiWild read test_3000(_query).txt / test_5000(...) / test_10000(...).

def test_veriwild_test_size_reads_its_own_lists(tmp_path):
    base = tmp_path / "VERI-Wild"
    info = ["id/image;Camera ID;Time;Model;Type;Color", "00001/000001;001;t;m;t;c"]
    images(base / "images" / "00001", "000001.jpg")
    for size, vid in ((3000, 30001), (5000, 30002), (10000, 30003)):
        images(base / "images" / f"{vid}", "400001.jpg", "400002.jpg")
        info += [f"{vid}/400001;0{size // 1000:02d};t;m;t;c", f"{vid}/400002;099;t;m;t;c"]
    lists = base / "train_test_split"
    lists.mkdir(parents=True)
    (lists / "vehicle_info.txt").write_text("\n".join(info) + "\n")
    (lists / "train_list.txt").write_text("00001/000001\n")
    for size, vid in ((3000, 30001), (5000, 30002), (10000, 30003)):
        (lists / f"test_{size}_query.txt").write_text(f"{vid}/400001\n")
        (lists / f"test_{size}.txt").write_text(f"{vid}/400002\n")
    for size, vid in ((3000, 30001), (5000, 30002), (10000, 30003)):
        data = VeRiWild(str(tmp_path), test_size=size)
        assert pids_cams(data.records("query")) == [(vid, size // 1000)]
        assert pids_cams(data.records("gallery")) == [(vid, 99)]

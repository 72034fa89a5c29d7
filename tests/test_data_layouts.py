"""Readers of the standard ReID layouts and the generic folder tree: each dataset's own
naming and conventions, and errors that name the path, the file and what was expected."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from core.data.layouts import CUHK03NP, MSMT17, DukeMTMC, FolderDataset, Market1501, VeRi776
from core.data.table import RecordTable
from layout_fixtures import image_folders, images  # registered by conftest.py


def market_tree(root: Path) -> Path:
    images(root / "bounding_box_train", "0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg",
           "0007_c1s6_028546_01.jpg", "0007_c3s3_064744_02.jpg")
    images(root / "query", "0001_c1s1_001051_00.jpg", "0003_c6s1_002901_00.jpg")
    images(root / "bounding_box_test", "-1_c1s1_000401_03.jpg", "0000_c1s1_000151_01.jpg",
           "0000_c5s1_000551_02.jpg", "0001_c2s1_000301_01.jpg", "0003_c1s1_004576_02.jpg")
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"\0\1")
    return root


def veri_tree(root: Path) -> Path:
    images(root / "image_train", "0001_c001_00016450_0.jpg", "0001_c002_00017050_1.jpg",
           "0002_c019_00030600_0.jpg", "0002_c020_00030800_0.jpg")
    images(root / "image_query", "0005_c003_00077090_0.jpg")
    images(root / "image_test", "0005_c004_00078760_0.jpg", "0006_c003_00080120_1.jpg")
    return root


def msmt_tree(root: Path, train: str = "train", test: str = "test") -> Path:
    lists = {
        "list_train.txt": (train, ["0000/0000_000_01_0303morning_0015_0.jpg 0",
                                   "0000/0000_001_05_0303noon_0330_1.jpg 0",
                                   "0001/0001_000_15_0303afternoon_0761_0.jpg 1"]),
        "list_val.txt": (train, ["0001/0001_001_02_0303morning_0042_2.jpg 1"]),
        "list_query.txt": (test, ["0000/0000_000_03_0113morning_0011_0.jpg 0"]),
        "list_gallery.txt": (test, ["0000/0000_004_07_0113noon_0101_1.jpg 0",
                                    "0002/0002_001_03_0113noon_0201_0.jpg 2"]),
    }
    for list_name, (folder, lines) in lists.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / list_name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        for line in lines:
            path = root / folder / line.split()[0]
            images(path.parent, path.name)
    return root


def cuhk03_tree(root: Path) -> Path:
    for subset, boxes in (("detected", 2), ("labeled", 3)):
        images(root / subset / "bounding_box_train", *[f"0001_c1_{i}.png" for i in range(1, boxes + 1)],
               "0001_c2_6.png", "0005_c2_7.png")
        images(root / subset / "query", "0003_c1_1.png")
        images(root / subset / "bounding_box_test", "0003_c2_6.png", "0004_c1_2.png")
    return root


def ids(records):
    return [(r.pid, r.camid) for r in records]


# --- Market-1501 -------------------------------------------------------------------------

def test_market_lists_own_pids_and_zero_based_cameras(tmp_path):
    ds = Market1501(str(market_tree(tmp_path / "market")))
    train = ds.records("train")
    assert ids(train) == [(2, 0), (2, 1), (7, 0), (7, 2)]
    assert {(r.category, r.domain, r.split) for r in train} == {("person", "market1501", "train")}
    assert train[0].path == str(tmp_path / "market" / "bounding_box_train" / "0002_c1s1_000451_03.jpg")
    assert ids(ds.records("query")) == [(1, 0), (3, 5)]
    assert {r.split for r in ds.records("query")} == {"query"}


def test_market_drops_junk_and_keeps_distractors_in_the_gallery_like_torchreid(tmp_path):
    gallery = Market1501(str(market_tree(tmp_path))).records("gallery")
    assert ids(gallery) == [(0, 0), (0, 4), (1, 1), (3, 0)]  # -1 gone, 0000 kept, Thumbs.db ignored
    assert {r.split for r in gallery} == {"gallery"}


def test_market_accepts_the_archive_folder_inside_root(tmp_path):
    market_tree(tmp_path / "Market-1501-v15.09.15")
    ds = Market1501(str(tmp_path))
    assert ds.root == tmp_path / "Market-1501-v15.09.15"
    assert len(ds.records("train")) == 4


def test_market_500k_distractors_join_the_gallery_only_when_asked(tmp_path):
    root = market_tree(tmp_path)
    images(root / "images", "0000_c3s1_100000_00.jpg", "0000_c4s2_100001_01.jpg")
    assert len(Market1501(str(root)).records("gallery")) == 4
    gallery = Market1501(str(root), distractors=True).records("gallery")
    assert ids(gallery)[-2:] == [(0, 2), (0, 3)] and len(gallery) == 6


def test_market_500k_without_its_folder_names_it(tmp_path):
    root = market_tree(tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "images"))):
        Market1501(str(root), distractors=True)


def test_records_come_in_sorted_file_order(tmp_path):
    root = images(tmp_path / "bounding_box_train", "0010_c1s1_0_01.jpg", "0002_c3s1_0_01.jpg",
                  "0002_c1s1_0_01.jpg").parent
    images(root / "query")
    images(root / "bounding_box_test")
    assert ids(Market1501(str(root)).records("train")) == [(2, 0), (2, 2), (10, 0)]


def test_records_are_listed_once_and_cached(tmp_path):
    root = market_tree(tmp_path)
    ds = Market1501(str(root))
    first = ds.records("query")
    images(root / "query", "0009_c2s1_000001_00.jpg")
    assert ds.records("query") == first


def test_listing_does_not_decode_images_and_load_image_names_the_file(tmp_path):
    root = market_tree(tmp_path)
    broken = root / "query" / "0004_c1s1_000001_00.jpg"
    broken.write_bytes(b"not a jpeg")
    ds = Market1501(str(root))
    record = next(r for r in ds.records("query") if r.pid == 4)
    from core.data.image_check import UndecodableImageError

    with pytest.raises(UndecodableImageError, match=re.escape(str(broken))):  # bad input (exit 2), not a crash
        ds.load_image(record)
    assert ds.load_image(ds.records("query")[0]).size == (8, 16)


def test_missing_root_names_the_path_and_the_expected_folders(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        Market1501(str(missing))
    message = str(err.value)
    assert str(missing) in message
    for folder in ("bounding_box_train/", "query/", "bounding_box_test/", "Market-1501-v15.09.15/"):
        assert folder in message


def test_a_missing_root_at_a_relative_path_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        Market1501("data/market")
    assert (f"Market1501: dataset root not found: data/market (looked at {tmp_path / 'data' / 'market'}; data paths "
            "are relative to the folder core runs in, not to the pipeline file); expected the layout "
            ) in str(err.value)


def test_missing_split_folder_names_it_and_what_was_found(tmp_path):
    root = market_tree(tmp_path)
    (root / "query").rename(root / "queries")
    with pytest.raises(FileNotFoundError) as err:
        Market1501(str(root))
    message = str(err.value)
    assert str(root / "query") in message and "found in" in message and "queries/" in message


def test_unparsable_file_name_names_the_file_and_the_pattern(tmp_path):
    root = market_tree(tmp_path)
    images(root / "query", "person1.jpg")
    with pytest.raises(ValueError) as err:
        Market1501(str(root)).records("query")
    assert str(root / "query" / "person1.jpg") in str(err.value)
    assert "<pid>_c<camera>s<sequence>_<frame>_<box>.jpg (e.g. 0002_c1s1_000451_03.jpg)" in str(err.value)


def test_unknown_split_lists_the_valid_splits(tmp_path):
    with pytest.raises(ValueError, match="Market1501: unknown split 'test'; valid splits: train, query, gallery"):
        Market1501(str(market_tree(tmp_path))).records("test")


# --- DukeMTMC-reID -----------------------------------------------------------------------

def test_duke_reads_market_naming_inside_its_archive_folder(tmp_path):
    image_folders(tmp_path / "DukeMTMC-reID", {"bounding_box_train": ["0001_c2_f0046182.jpg", "0001_c5_f0051341.jpg"],
                                               "query": ["0005_c2_f0046985.jpg"],
                                               "bounding_box_test": ["0005_c8_f0058478.jpg", "0019_c1_f0056212.jpg"]})
    ds = DukeMTMC(str(tmp_path))
    assert ids(ds.records("train")) == [(1, 1), (1, 4)]
    assert ids(ds.records("gallery")) == [(5, 7), (19, 0)]
    assert {(r.category, r.domain) for r in ds.records("query")} == {("person", "dukemtmc")}


def test_duke_bad_file_name_names_the_duke_pattern(tmp_path):
    images(tmp_path / "bounding_box_train", "cam2_0001.jpg")
    images(tmp_path / "query")
    images(tmp_path / "bounding_box_test")
    with pytest.raises(ValueError, match=r"cam2_0001\.jpg; expected <pid>_c<camera>_f<frame>\.jpg"):
        DukeMTMC(str(tmp_path)).records("train")


# --- MSMT17 ------------------------------------------------------------------------------

def test_msmt17_v1_reads_the_list_files_with_cameras_from_file_names(tmp_path):
    root = msmt_tree(tmp_path / "MSMT17_V1")
    ds = MSMT17(str(tmp_path))
    assert ds.version == "v1" and ds.root == root
    train = ds.records("train")
    assert ids(train) == [(0, 0), (0, 4), (1, 14), (1, 1)]  # list_train then list_val
    assert train[0].path == str(root / "train" / "0000" / "0000_000_01_0303morning_0015_0.jpg")
    assert ids(ds.records("query")) == [(0, 2)]
    assert ids(ds.records("gallery")) == [(0, 6), (2, 2)]
    assert ds.records("gallery")[1].path == str(root / "test" / "0002" / "0002_001_03_0113noon_0201_0.jpg")
    assert {(r.category, r.domain) for r in train} == {("person", "msmt17")}
    assert {r.split for r in ds.records("gallery")} == {"gallery"}


def test_msmt17_trains_on_list_train_alone_without_combine(tmp_path):
    ds = MSMT17(str(msmt_tree(tmp_path)), combine_train_val=False)
    assert ids(ds.records("train")) == [(0, 0), (0, 4), (1, 14)]


def test_msmt17_v2_is_detected_by_its_masked_folders(tmp_path):
    root = msmt_tree(tmp_path, train="mask_train_v2", test="mask_test_v2")
    ds = MSMT17(str(root))
    assert ds.version == "v2"
    assert ds.records("query")[0].path.startswith(str(root / "mask_test_v2"))
    assert MSMT17(str(root), version="v2").version == "v2"


def test_msmt17_with_both_versions_asks_which(tmp_path):
    msmt_tree(tmp_path / "MSMT17_V1")
    msmt_tree(tmp_path / "MSMT17_V2", train="mask_train_v2", test="mask_test_v2")
    with pytest.raises(ValueError, match="found both versions.*set version: v1 or v2"):
        MSMT17(str(tmp_path))
    assert MSMT17(str(tmp_path), version="v1").root == tmp_path / "MSMT17_V1"


def test_msmt17_without_image_folders_lists_what_it_found(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        MSMT17(str(tmp_path))
    message = str(err.value)
    assert str(tmp_path) in message and "found: images/" in message
    for expected in ("train/", "test/", "mask_train_v2/", "mask_test_v2/", "list_query.txt"):
        assert expected in message


def test_msmt17_explicit_version_that_is_absent_is_an_error(tmp_path):
    msmt_tree(tmp_path)
    with pytest.raises(FileNotFoundError, match="no v2 image folders"):
        MSMT17(str(tmp_path), version="v2")


def test_msmt17_missing_list_file_names_it(tmp_path):
    root = msmt_tree(tmp_path)
    (root / "list_gallery.txt").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"list file not found: {root / 'list_gallery.txt'}")):
        MSMT17(str(root))


def test_msmt17_list_file_that_is_a_folder_says_so(tmp_path, monkeypatch):
    """A folder standing where a list file belongs was reported as 'not found', a path the
    user can see; a missing one at a relative root says where it looked."""
    root = msmt_tree(tmp_path)
    (root / "list_gallery.txt").unlink()
    (root / "list_gallery.txt").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(f"list file is a folder, not a file: {root}/list_gallery")):
        MSMT17(str(root))
    (root / "list_gallery.txt").rmdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(f"(looked at {root / 'list_gallery.txt'};")):
        MSMT17(str(root.relative_to(tmp_path)))


def test_msmt17_bad_list_line_names_file_and_line(tmp_path):
    root = msmt_tree(tmp_path)
    (root / "list_query.txt").write_text("0000/0000_000_03_0113morning_0011_0.jpg 0\nbroken\n")
    with pytest.raises(ValueError, match=re.escape(f"{root / 'list_query.txt'}:2: expected '<image path> <pid>'")):
        MSMT17(str(root)).records("query")


def test_msmt17_unparsable_image_name_names_file_list_line_and_pattern(tmp_path):
    root = msmt_tree(tmp_path)
    (root / "list_query.txt").write_text("0000/query_a.jpg 0\n")
    with pytest.raises(ValueError) as err:
        MSMT17(str(root)).records("query")
    message = str(err.value)
    assert "0000/query_a.jpg" in message and f"{root / 'list_query.txt'}:1" in message
    assert "<pid>_<index>_<camera>_" in message


# --- CUHK03-NP ---------------------------------------------------------------------------

def test_cuhk03np_reads_detected_boxes_by_default_and_labeled_on_request(tmp_path):
    cuhk03_tree(tmp_path / "cuhk03-np")
    detected = CUHK03NP(str(tmp_path))
    labeled = CUHK03NP(str(tmp_path), labeled=True)
    assert ids(detected.records("train")) == [(1, 0), (1, 0), (1, 1), (5, 1)]
    assert len(labeled.records("train")) == 5
    assert "/labeled/" in labeled.records("query")[0].path and "/detected/" in detected.records("query")[0].path
    assert ids(detected.records("gallery")) == [(3, 1), (4, 0)]
    assert {(r.category, r.domain) for r in labeled.records("train")} == {("person", "cuhk03np")}


def test_cuhk03np_missing_subset_names_its_folders(tmp_path):
    root = tmp_path / "cuhk03-np"
    images(root / "labeled" / "bounding_box_train")
    with pytest.raises(FileNotFoundError) as err:
        CUHK03NP(str(tmp_path))
    assert str(root / "detected" / "bounding_box_train") in str(err.value)
    assert "detected/query/" in str(err.value)


# --- VeRi-776 ----------------------------------------------------------------------------

def test_veri776_vehicles_with_three_digit_cameras(tmp_path):
    ds = VeRi776(str(veri_tree(tmp_path)))
    assert ids(ds.records("train")) == [(1, 0), (1, 1), (2, 18), (2, 19)]
    assert ids(ds.records("query")) == [(5, 2)]
    assert ids(ds.records("gallery")) == [(5, 3), (6, 2)]
    assert {(r.category, r.domain) for r in ds.records("train")} == {("vehicle", "veri776")}


def test_veri776_missing_root_names_its_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not found: .*nope; expected the layout image_train/, "
                                                r"image_query/, image_test/"):
        VeRi776(str(tmp_path / "nope"))


# --- the folder tree ---------------------------------------------------------------------

def folder_tree(root: Path) -> Path:
    images(root / "train" / "person" / "0003", "0003_c1_a.jpg", "0003_c2_b.jpg")
    images(root / "train" / "vehicle" / "0010", "x.png", "y.png")
    images(root / "query" / "person" / "0004", "0004_c1.jpg")
    images(root / "gallery" / "person" / "0004", "0004_c2.jpg")
    images(root / "gallery" / "person" / "0005", "c3_q.jpg")
    return root


def test_folder_tree_categories_pids_and_cameras_from_names(tmp_path):
    ds = FolderDataset(str(folder_tree(tmp_path / "mine")))
    train = ds.records("train")
    assert [(r.category, r.pid, r.camid) for r in train] == [
        ("person", 3, 1), ("person", 3, 2), ("vehicle", 10, 0), ("vehicle", 10, 0)]
    assert train[2].path == str(tmp_path / "mine" / "train" / "vehicle" / "0010" / "x.png")
    assert ids(ds.records("gallery")) == [(4, 2), (5, 3)]
    assert {(r.domain, r.split) for r in ds.records("query")} == {("mine", "query")}


def test_folder_tree_named_identities_share_a_stable_index_across_splits(tmp_path):
    images(tmp_path / "train" / "dog" / "rex", "a.jpg")
    images(tmp_path / "train" / "cat" / "tom", "a.jpg")
    images(tmp_path / "query" / "cat" / "felix", "a.jpg")
    images(tmp_path / "gallery" / "cat" / "felix", "b.jpg")
    ds = FolderDataset(str(tmp_path))
    assert [(r.category, r.pid) for r in ds.records("train")] == [("cat", 1), ("dog", 2)]
    assert ds.records("query")[0].pid == ds.records("gallery")[0].pid == 0


def test_folder_tree_numbers_shared_by_two_categories_get_distinct_pids(tmp_path):
    images(tmp_path / "train" / "person" / "1", "a.jpg")
    images(tmp_path / "train" / "vehicle" / "1", "a.jpg")
    pids = [r.pid for r in FolderDataset(str(tmp_path)).records("train")]
    assert len(set(pids)) == 2


def test_folder_tree_reads_one_category_on_request(tmp_path):
    ds = FolderDataset(str(folder_tree(tmp_path)), category="vehicle")
    assert {r.category for r in ds.records("train")} == {"vehicle"}
    assert ds.records("query") == []


def test_folder_tree_unknown_category_lists_those_found(tmp_path):
    with pytest.raises(ValueError, match="category 'animal'.*categories found: person, vehicle"):
        FolderDataset(str(folder_tree(tmp_path)), category="animal")


def test_folder_tree_without_query_and_gallery_is_a_training_set(tmp_path):
    images(tmp_path / "train" / "person" / "7", "a.jpg")
    ds = FolderDataset(str(tmp_path))
    assert len(ds.records("train")) == 1 and ds.records("gallery") == []


def test_folder_tree_stray_split_folder_is_an_error(tmp_path):
    folder_tree(tmp_path)
    (tmp_path / "galery").mkdir()
    with pytest.raises(ValueError, match=r"galery is not a split folder; expected <root>/<split>/<category>"):
        FolderDataset(str(tmp_path))


def test_folder_tree_image_at_the_wrong_depth_names_it(tmp_path):
    images(tmp_path / "train" / "0001", "a.jpg")  # <split>/<identity>/<image>: no category level
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "train" / "0001" / "a.jpg"))):
        FolderDataset(str(tmp_path))


def test_folder_tree_category_with_and_without_camera_tokens_is_an_error(tmp_path):
    """A query named without its `c<N>` token got camera 0 beside gallery images of cameras
    1..3 of one identity: the evaluator's same-camera exclusion then kept the query's own
    camera in the gallery (an easier, inflated score), silently."""
    images(tmp_path / "train" / "zebra" / "1", "z1_c1_0.jpg", "z1_c2_1.jpg")
    images(tmp_path / "query" / "zebra" / "7", "z7-0.jpg")  # renamed without its camera
    images(tmp_path / "gallery" / "zebra" / "7", "z7_c1_1.jpg", "z7_c2_2.jpg")
    ds = FolderDataset(str(tmp_path))
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'query' / 'zebra' / '7' / 'z7-0.jpg'} has no "
                                                   "camera token")
                       + r".*2 of 3 images of category 'zebra' in query/ and gallery/ have"):
        ds.records("gallery")


def test_folder_tree_without_any_camera_token_warns_once(tmp_path, caplog):
    """Names like 'zebra7-cam1-0.jpg' carry a camera the reader cannot see: every image is
    camera 0, and the evaluator's same-camera exclusion would drop every positive."""
    images(tmp_path / "train" / "zebra" / "1", "zebra1-cam1-0.jpg")
    images(tmp_path / "query" / "zebra" / "7", "zebra7-cam1-0.jpg")
    images(tmp_path / "gallery" / "zebra" / "7", "zebra7-cam2-1.jpg")
    ds = FolderDataset(str(tmp_path))
    with caplog.at_level("WARNING", logger="core.data.layouts.folder"):
        assert {r.camid for s in ("train", "query", "gallery") for r in ds.records(s)} == {0}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "no image name has a camera token" in warnings[0]
    assert "exclude_same_camera: false" in warnings[0] and "zebra1-cam1-0.jpg" in warnings[0]


def test_folder_tree_images_in_a_format_it_does_not_list_are_an_error(tmp_path):
    """.webp (or .tif, .gif) images were left out silently: their identities vanished from
    training, and a gallery identity's queries were then skipped by the evaluator."""
    images(tmp_path / "train" / "zebra" / "1", "z1_c1_0.jpg")
    images(tmp_path / "gallery" / "zebra" / "7", "z7_c2_1.jpg")
    (tmp_path / "gallery" / "zebra" / "7" / "z7_c1_2.webp").write_bytes(b"RIFF")
    (tmp_path / "train" / "zebra" / "1" / "notes.txt").write_text("not an image: ignored")
    ds = FolderDataset(str(tmp_path))
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "gallery" / "zebra" / "7" / "z7_c1_2.webp"))
                       + r" is an image this reader does not list \(it lists .bmp, .jpeg, .jpg, .png\)"):
        ds.records("train")


def test_folder_tree_query_category_missing_from_the_gallery_is_an_error(tmp_path):
    """query/zebras/ beside gallery/zebra/ (a typo): identities are matched by (category,
    identity folder), so no query could match, and the run ended at evaluation in 'no valid
    query ... set exclude_same_camera: false for single-camera data', blaming the cameras."""
    images(tmp_path / "train" / "zebra" / "1", "z1_c1_0.jpg")
    images(tmp_path / "query" / "zebras" / "7", "z7_c1_0.jpg")
    images(tmp_path / "gallery" / "zebra" / "7", "z7_c2_1.jpg")
    images(tmp_path / "gallery" / "horse" / "8", "h8_c2_1.jpg")  # gallery-only categories are distractors: fine
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'query' / 'zebras'} has no gallery counterpart")
                       + r".*gallery categories: horse, zebra"):
        FolderDataset(str(tmp_path))


def test_folder_tree_of_empty_identity_folders_lists_nothing(tmp_path):
    (tmp_path / "train" / "zebra" / "1").mkdir(parents=True)
    assert len(FolderDataset(str(tmp_path)).records("train")) == 0


def test_folder_tree_missing_root_names_path_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not found: .*absent; expected the layout "
                                                r"<root>/<split>/<category>/<identity>/<image>"):
        FolderDataset(str(tmp_path / "absent"))


# --- with the rest of the core -----------------------------------------------------------

def test_registered_names_build_these_readers():
    from core.registry import build_registry

    registry = build_registry()
    expected = {"market1501": Market1501, "dukemtmc": DukeMTMC, "dukemtmc-reid": DukeMTMC, "msmt17": MSMT17,
                "cuhk03np": CUHK03NP, "cuhk03-np": CUHK03NP, "veri776": VeRi776, "veri": VeRi776,
                "folder": FolderDataset}
    assert {name: registry.get("dataset", name).load() for name in expected} == expected


def test_market_and_veri_train_together_with_globally_unique_pids(tmp_path):
    m = Market1501(str(market_tree(tmp_path / "market")))
    v = VeRi776(str(veri_tree(tmp_path / "veri")))
    table = RecordTable.build([("market1501", m.records("train")), ("veri776", v.records("train"))], relabel=True)
    assert table.pids.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]  # Market 2, 7 and VeRi 1, 2: no collision
    assert [r.category for r in table.records] == ["person"] * 4 + ["vehicle"] * 4
    assert table.identities_per_category() == {"person": 2, "vehicle": 2}
    assert table.domain_names == ["market1501", "veri776"]
    np.testing.assert_array_equal(table.source_ids, [0, 0, 0, 0, 1, 1, 1, 1])


def test_a_pipeline_names_market1501_by_its_yaml_name(tmp_path):
    from core.config.loading import load_pipeline
    from core.pipeline import build_pipeline
    from core.testing import TINY_PIPELINE

    root = market_tree(tmp_path / "market")
    images(root / "bounding_box_train", "0009_c4s2_000001_01.jpg", "0009_c5s2_000002_01.jpg")
    config = {**TINY_PIPELINE, "data": {"train": [{"dataset": "market1501", "root": str(root)}],
                                        "test": [{"dataset": "market1501", "root": str(root)}],
                                        "transform": TINY_PIPELINE["data"]["transform"]},
              "sampler": {"name": "pk", "batch_size": 6, "k": 2}}
    path = tmp_path / "market.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    pipeline = build_pipeline(load_pipeline(path))
    assert len(pipeline.train) == 6 and pipeline.ctx.num_identities == 3
    assert pipeline.train.category_names == ["person"]
    test, = pipeline.test_sets
    assert test.name == "market1501" and len(test.query) == 2 and len(test.gallery) == 4
    assert test.gallery.pids.tolist() == [0, 0, 1, 3]  # the dataset's own pids at test time
    assert pipeline.provenance["data.train.0"] == {"name": "market1501", "plugin": "core", "version": "0.1.0"}


def test_a_pipeline_with_a_wrong_root_names_the_key_and_the_path(tmp_path):
    from core.config.loading import ConfigError, load_pipeline
    from core.pipeline import build_pipeline
    from core.testing import TINY_PIPELINE

    config = {**TINY_PIPELINE, "data": {"train": [{"dataset": "veri", "root": str(tmp_path / "VeRi")}]}}
    path = tmp_path / "veri.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"data\.train\.0: dataset 'veri' could not be built: .*VeRi"):
        build_pipeline(load_pipeline(path))


def market_pipeline(tmp_path: Path, train_root: Path, test_root: Path | None = None) -> Path:
    from core.testing import TINY_PIPELINE

    data = {"train": [{"dataset": "market1501", "root": str(train_root)}],
            "transform": TINY_PIPELINE["data"]["transform"]}
    if test_root is not None:
        data["test"] = [{"dataset": "market1501", "root": str(test_root)}]
    config = {**TINY_PIPELINE, "data": data, "sampler": {"name": "pk", "batch_size": 4, "k": 2}}
    path = tmp_path / "market.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.mark.parametrize("command", [["validate"], ["validate", "--data"], ["run"]])
def test_a_badly_named_image_is_one_line_naming_the_pipeline_key_and_file(tmp_path, capsys, command):
    from core.cli import main

    root = market_tree(tmp_path / "market")
    images(root / "bounding_box_train", "person_photo.jpg")
    path = market_pipeline(tmp_path, root)
    assert main([*command, str(path)]) == 2  # bad input, not a crash
    err = capsys.readouterr().err.strip()
    bad = root / "bounding_box_train" / "person_photo.jpg"
    assert err.startswith(f"error: {path}: data.train.0: dataset 'market1501' could not be listed: ")
    assert f"cannot parse the file name of {bad}; expected <pid>_c<camera>" in err
    assert err.endswith("rename or remove it") and "\n" not in err and "--debug" not in err


def test_a_badly_named_image_of_a_test_set_names_its_data_test_key(tmp_path, capsys):
    from core.cli import main

    test_root = market_tree(tmp_path / "test")
    images(test_root / "query", "probe.jpg")
    path = market_pipeline(tmp_path, market_tree(tmp_path / "train"), test_root)
    assert main(["validate", "--data", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: data.test.0: dataset 'market1501' could not be listed: " in err
    assert f"{test_root / 'query' / 'probe.jpg'}" in err


def test_a_badly_named_query_image_of_a_train_set_standing_in_as_test_set_names_data_train(tmp_path, capsys):
    """data.test not given: the training dataset's query and gallery are the test set, so the
    key that declares it is data.train.0 (there is no data.test to look in)."""
    from core.cli import main

    root = market_tree(tmp_path / "market")
    images(root / "query", "probe.jpg")
    path = market_pipeline(tmp_path, root)
    assert main(["validate", "--data", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: data.train.0: dataset 'market1501' could not be listed: " in err
    assert f"{root / 'query' / 'probe.jpg'}" in err and "data.test" not in err

"""Readers of CUHK03 (new protocol, torchreid's prepared layout), VehicleID, VERI-Wild and
Occluded-Duke, each on a tiny fixture written in the real layout."""

import json
from pathlib import Path

import numpy as np
import pytest

from core.data.layouts import CUHK03, OccludedDuke, VehicleID, VeRiWild
from layout_fixtures import deny_reading, image_folders, images  # registered by conftest.py


def ids(records):
    return [(Path(r.path).name, r.pid, r.camid) for r in records]


# --- CUHK03 -----------------------------------------------------------------------------------

def cuhk03_images(root: Path, subset: str) -> Path:
    return images(root / "cuhk03" / f"images_{subset}", "1_001_1_01.png", "1_001_2_06.png", "1_002_1_02.png",
                  "1_002_2_07.png", "2_001_1_01.png", "2_001_2_08.png")


def test_cuhk03_reads_torchreids_split_json_finding_images_by_name(tmp_path):
    cuhk03_images(tmp_path, "labeled")
    other = "/home/someone/data/cuhk03/images_labeled"  # paths of the machine that prepared the file
    split = [{"train": [[f"{other}/1_001_1_01.png", 0, 0], [f"{other}/1_001_2_06.png", 0, 1]],
              "query": [[f"{other}/1_002_1_02.png", 7, 0]],
              "gallery": [[f"{other}/1_002_2_07.png", 7, 1], [f"{other}/2_001_2_08.png", 9, 1]],
              "num_train_pids": 1}]
    (tmp_path / "cuhk03" / "splits_new_labeled.json").write_text(json.dumps(split))
    data = CUHK03(str(tmp_path), labeled=True)
    assert ids(data.records("train")) == [("1_001_1_01.png", 0, 0), ("1_001_2_06.png", 0, 1)]
    assert ids(data.records("query")) == [("1_002_1_02.png", 7, 0)]
    assert ids(data.records("gallery")) == [("1_002_2_07.png", 7, 1), ("2_001_2_08.png", 9, 1)]
    assert Path(data.records("query")[0].path).parent == tmp_path / "cuhk03" / "images_labeled"


def test_cuhk03_reads_the_new_protocol_mat_when_there_is_no_json(tmp_path):
    from scipy.io import savemat

    cuhk03_images(tmp_path, "detected")
    files = np.array([["1_001_1_01.png"], ["1_001_2_06.png"], ["1_002_1_02.png"], ["1_002_2_07.png"],
                      ["2_001_2_08.png"]], dtype=object)
    savemat(tmp_path / "cuhk03" / "cuhk03_new_protocol_config_detected.mat",
            {"filelist": files, "labels": np.array([[1], [1], [2], [2], [3]]),
             "train_idx": np.array([[1], [2]]), "query_idx": np.array([[3]]), "gallery_idx": np.array([[4], [5]])})
    data = CUHK03(str(tmp_path / "cuhk03"))  # the cuhk03/ folder itself as root
    assert ids(data.records("train")) == [("1_001_1_01.png", 1, 0), ("1_001_2_06.png", 1, 1)]
    assert ids(data.records("query")) == [("1_002_1_02.png", 2, 0)]
    assert ids(data.records("gallery")) == [("1_002_2_07.png", 2, 1), ("2_001_2_08.png", 3, 1)]


def test_cuhk03_without_a_split_file_names_both(tmp_path):
    cuhk03_images(tmp_path, "detected")
    with pytest.raises(FileNotFoundError, match="splits_new_detected.json nor cuhk03_new_protocol_config_detected.mat"):
        CUHK03(str(tmp_path))


def test_cuhk03_without_images_says_how_to_extract_them(tmp_path):
    (tmp_path / "cuhk03").mkdir()
    (tmp_path / "cuhk03" / "splits_new_labeled.json").write_text("[]")
    with pytest.raises(FileNotFoundError, match="images_labeled.*cuhk-03.mat"):
        CUHK03(str(tmp_path), labeled=True)


def test_cuhk03_bad_image_name_names_the_json_entry(tmp_path):
    cuhk03_images(tmp_path, "detected")
    split = [{"train": [["x/0001_c1_1.png", 0, 0]], "query": [], "gallery": []}]
    (tmp_path / "cuhk03" / "splits_new_detected.json").write_text(json.dumps(split))
    with pytest.raises(ValueError, match=r"0001_c1_1\.png.*splits_new_detected\.json:train\[0\].*<pair>_<pid>"):
        CUHK03(str(tmp_path)).records("train")


def pipeline_on(tmp_path: Path, dataset: dict) -> Path:
    """A tiny pipeline file training on `dataset` (what `core validate` reads)."""
    import yaml

    from core.testing import TINY_PIPELINE

    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({**TINY_PIPELINE, "data": {**TINY_PIPELINE["data"], "train": [dataset]}}))
    return path


def new_protocol_mat(tmp_path: Path, **fields) -> Path:
    from scipy.io import savemat

    cuhk03_images(tmp_path, "detected")
    files = np.array([["1_001_1_01.png"], ["1_001_2_06.png"], ["1_002_1_02.png"], ["1_002_2_07.png"],
                      ["2_001_2_08.png"]], dtype=object)
    path = tmp_path / "cuhk03" / "cuhk03_new_protocol_config_detected.mat"
    savemat(path, {"filelist": files, "labels": np.array([[1], [1], [2], [2], [3]]), "train_idx": np.array([[1], [2]]),
                   "query_idx": np.array([[3]]), "gallery_idx": np.array([[4], [5]]), **fields})
    return path


@pytest.mark.parametrize("damage", ["cut in half", "cut to 100 bytes", "empty", "an HTML page"])
def test_a_cut_or_foreign_new_protocol_mat_is_one_line_naming_the_file_and_key(tmp_path, capsys, damage):
    from core.cli import main

    mat = new_protocol_mat(tmp_path)
    data = mat.read_bytes()
    mat.write_bytes({"cut in half": data[: len(data) // 2], "cut to 100 bytes": data[:100], "empty": b"",
                     "an HTML page": b"<html><body>404 Not Found</body></html>" * 8}[damage])
    path = pipeline_on(tmp_path, {"dataset": "cuhk03", "root": str(tmp_path)})
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: data.train.0: dataset 'cuhk03' could not be listed: CUHK03: {mat} is "
                          "not a readable MATLAB file (")
    assert "copy it again" in err and "splits_new_detected.json" in err and err.count("\n") == 1


def test_a_new_protocol_index_beyond_the_file_list_names_the_entry(tmp_path):
    new_protocol_mat(tmp_path, gallery_idx=np.array([[4], [9]]))
    with pytest.raises(ValueError, match=r"detected\.mat:gallery_idx\[1\] is 9, but filelist has 5 entries"):
        CUHK03(str(tmp_path)).records("gallery")


@pytest.mark.parametrize("index, labels", [(6, 5), (5, 4), (0, 5)],
                         ids=["one past filelist", "past a shorter labels", "zero"])
def test_a_new_protocol_index_just_outside_either_list_names_the_entry(tmp_path, index, labels):
    """1-based MATLAB indices: with 5 files, 1..5 are positions; 6 is one past the end, 5 is
    past labels when labels holds 4, and 0 would read as Python's -1, the last file, and
    give a record of another image silently."""
    new_protocol_mat(tmp_path, gallery_idx=np.array([[4], [index]]),
                     labels=np.array([[1], [1], [2], [2], [3]][:labels]))
    with pytest.raises(ValueError,
                       match=rf"gallery_idx\[1\] is {index}, but filelist has 5 entries and labels {labels};"):
        CUHK03(str(tmp_path)).records("gallery")


def test_every_new_protocol_index_within_both_lists_is_read(tmp_path):
    new_protocol_mat(tmp_path, gallery_idx=np.array([[1], [5]]))
    assert ids(CUHK03(str(tmp_path)).records("gallery")) == [("1_001_1_01.png", 1, 0), ("2_001_2_08.png", 3, 1)]


def test_a_split_file_that_cannot_be_read_is_one_line_naming_it_and_the_key(tmp_path, capsys, monkeypatch):
    from core.cli import main

    cuhk03_images(tmp_path, "labeled")
    split = tmp_path / "cuhk03" / "splits_new_labeled.json"
    split.write_text(json.dumps([{"train": [["x/1_001_1_01.png", 0, 0]], "query": [], "gallery": []}]))
    path = pipeline_on(tmp_path, {"dataset": "cuhk03", "root": str(tmp_path), "labeled": True})
    deny_reading(monkeypatch, split)
    assert main(["validate", str(path)]) == 2
    assert capsys.readouterr().err == (f"error: {path}: data.train.0: dataset 'cuhk03' could not be listed: cannot "
                                       f"read {split}: permission denied; the user running core needs read access "
                                       "to it\n")


# --- VehicleID --------------------------------------------------------------------------------

def vehicleid_tree(root: Path) -> Path:
    base = root / "VehicleID_V1.0"
    names = ["0000001", "0000002", "0000003", "0000004", "0000005", "0000006", "0000007"]
    images(base / "image", *[n + ".jpg" for n in names])
    lists = base / "train_test_split"
    lists.mkdir(parents=True)
    (lists / "train_list.txt").write_text("0000001 1\n0000002 1\n0000003 2\n")
    for size in (800, 1600, 2400):
        (lists / f"test_list_{size}.txt").write_text("0000004 5\n0000005 5\n0000006 5\n0000007 8\n")
    return root


def test_vehicleid_picks_one_gallery_image_per_vehicle_and_queries_the_rest(tmp_path):
    data = VehicleID(str(vehicleid_tree(tmp_path)), test_size=1600, seed=3)
    assert ids(data.records("train")) == [("0000001.jpg", 1, 0), ("0000002.jpg", 1, 0), ("0000003.jpg", 2, 0)]
    gallery, query = data.records("gallery"), data.records("query")
    assert sorted(r.pid for r in gallery) == [5, 8]
    assert all(r.camid == 1 for r in gallery) and all(r.camid == 0 for r in query)
    assert sorted(Path(r.path).name for r in gallery + query) == [f"000000{i}.jpg" for i in (4, 5, 6, 7)]
    assert [r.pid for r in query] == [5, 5]  # vehicle 8 has one image: gallery only
    assert all(r.category == "vehicle" for r in gallery)


def test_vehicleid_draw_depends_on_the_seed_only(tmp_path):
    root = str(vehicleid_tree(tmp_path))
    draws = {tuple(Path(r.path).name for r in VehicleID(root, seed=s).records("gallery")) for s in range(12)}
    assert len(draws) > 1
    assert ids(VehicleID(root, seed=4).records("gallery")) == ids(VehicleID(root, seed=4).records("gallery"))


def test_vehicleid_bad_line_and_bad_size_are_named(tmp_path):
    root = vehicleid_tree(tmp_path)
    with pytest.raises(ValueError, match="800, 1600, 2400"):
        VehicleID(str(root), test_size=1000)
    (root / "VehicleID_V1.0" / "train_test_split" / "train_list.txt").write_text("0000001 1\n0000002\n")
    with pytest.raises(ValueError, match=r"train_list.txt:2: expected '<image id> <vehicle id>'"):
        VehicleID(str(root)).records("train")


def test_vehicleid_list_file_that_is_a_folder_says_so(tmp_path):
    lists = vehicleid_tree(tmp_path) / "VehicleID_V1.0" / "train_test_split"
    (lists / "train_list.txt").unlink()
    (lists / "train_list.txt").mkdir()
    with pytest.raises(FileNotFoundError, match="list file is a folder, not a file: .*train_list.txt"):
        VehicleID(str(tmp_path)).records("train")


# --- VERI-Wild --------------------------------------------------------------------------------

def veriwild_tree(root: Path) -> Path:
    base = root / "VERI-Wild"
    images(base / "images" / "00001", "000001.jpg", "000002.jpg")
    images(base / "images" / "00002", "000010.jpg")
    images(base / "images" / "30001", "400001.jpg", "400002.jpg")
    lists = base / "train_test_split"
    lists.mkdir(parents=True)
    (lists / "vehicle_info.txt").write_text(
        "id/image;Camera ID;Time;Model;Type;Color\n"
        "00001/000001;027;2018-03-11 10:17:12;Audi;SUV;white\n"
        "00001/000002;139;2018-03-11 10:29:40;Audi;SUV;white\n"
        "00002/000010;005;2018-03-12 08:01:00;BYD;sedan;red\n"
        "30001/400001;012;2018-04-01 09:00:00;VW;sedan;black\n"
        "30001/400002;013;2018-04-01 09:05:00;VW;sedan;black\n")
    (lists / "train_list.txt").write_text("00001/000001\n00001/000002\n00002/000010\n")
    for size in (3000, 5000, 10000):
        (lists / f"test_{size}_query.txt").write_text("30001/400001\n")
        (lists / f"test_{size}.txt").write_text("30001/400002\n")
    return root


def test_veriwild_reads_lists_with_cameras_from_vehicle_info(tmp_path):
    data = VeRiWild(str(veriwild_tree(tmp_path)), test_size=5000)
    assert ids(data.records("train")) == [("000001.jpg", 1, 27), ("000002.jpg", 1, 139), ("000010.jpg", 2, 5)]
    assert ids(data.records("query")) == [("400001.jpg", 30001, 12)]
    assert ids(data.records("gallery")) == [("400002.jpg", 30001, 13)]
    assert Path(data.records("query")[0].path) == tmp_path / "VERI-Wild" / "images" / "30001" / "400001.jpg"


def test_veriwild_image_without_info_line_names_list_and_line(tmp_path):
    root = veriwild_tree(tmp_path)
    (root / "VERI-Wild" / "train_test_split" / "train_list.txt").write_text("00001/000001\n00009/000099\n")
    with pytest.raises(ValueError, match=r"train_list.txt:2: image 00009/000099 has no line in vehicle_info.txt"):
        VeRiWild(str(root)).records("train")


# --- Occluded-Duke ------------------------------------------------------------------------------

def test_occluded_duke_reads_duke_naming_inside_its_folder(tmp_path):
    image_folders(tmp_path / "Occluded_Duke", {"bounding_box_train": ["0001_c2_f0046182.jpg", "0001_c5_f0051341.jpg"],
                                               "query": ["0005_c2_f0046985.jpg"],
                                               "bounding_box_test": ["0005_c5_f0051781.jpg", "0019_c1_f0056133.jpg"]})
    data = OccludedDuke(str(tmp_path))
    assert ids(data.records("train")) == [("0001_c2_f0046182.jpg", 1, 1), ("0001_c5_f0051341.jpg", 1, 4)]
    assert ids(data.records("query")) == [("0005_c2_f0046985.jpg", 5, 1)]
    assert data.records("query")[0].domain == "occluded_duke"


def test_new_readers_are_registered_under_their_yaml_names():
    from core.plugins import get_plugin_manager
    from core.registry import build_registry

    registry = build_registry(get_plugin_manager())
    for name, cls in (("cuhk03", CUHK03), ("vehicleid", VehicleID), ("veriwild", VeRiWild),
                      ("occluded_duke", OccludedDuke)):
        assert registry.get("dataset", name).load() is cls

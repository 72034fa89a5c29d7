"""Readers of MGOR's object-generalized data sets (CVPR 2026), each on a tiny fixture
written in its official release layout (the READMEs / archives named in each reader):
iPanda-50, ATRW, University-1652, PetFace, ELPephants. Errors name the file and what was
expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.data.layouts.atrw import ATRW
from core.data.layouts.elpephants import ELPephants
from core.data.layouts.ipanda50 import IPanda50
from core.data.layouts.petface import PetFace
from core.data.layouts.university1652 import University1652
from core.data.table import RecordTable
from layout_fixtures import images  # registered by conftest.py


def summary(records):
    return sorted((Path(r.path).name, r.pid, r.camid, r.category) for r in records)


# ---- iPanda-50 ---------------------------------------------------------------------

def ipanda_tree(root: Path) -> Path:
    images(root / "iPanda50-images" / "00_aibang", "a1.jpg", "a2.jpg")
    images(root / "iPanda50-images" / "49_yuanrun", "y1.jpg", "熊猫.jpg")  # UTF-8 names exist in the release
    split = root / "iPanda50-split"
    split.mkdir()
    (split / "split0_train.txt").write_text("00_aibang/a1.jpg\n49_yuanrun/熊猫.jpg\n\n", encoding="utf-8")
    (split / "split0_test.txt").write_text("00_aibang/a2.jpg\n49_yuanrun/y1.jpg\n", encoding="utf-8")
    return root


def test_ipanda50_reads_every_image_with_the_folder_label(tmp_path):
    ds = IPanda50(str(ipanda_tree(tmp_path / "iPanda-50")))
    assert summary(ds.records("train")) == [("a1.jpg", 0, 0, "panda"), ("a2.jpg", 0, 0, "panda"),
                                            ("y1.jpg", 49, 0, "panda"), ("熊猫.jpg", 49, 0, "panda")]


def test_ipanda50_split_k_trains_on_its_training_list_and_accepts_the_wrapper(tmp_path):
    ipanda_tree(tmp_path / "iPanda-50")
    ds = IPanda50(str(tmp_path), split="split0")  # root above the single-zip wrapper
    assert summary(ds.records("train")) == [("a1.jpg", 0, 0, "panda"), ("熊猫.jpg", 49, 0, "panda")]


def test_ipanda50_offers_no_query_and_names_bad_lines(tmp_path):
    root = ipanda_tree(tmp_path / "p")
    with pytest.raises(ValueError, match="unknown split 'query'; valid splits: train"):
        IPanda50(str(root)).records("query")
    (root / "iPanda50-split" / "split1_train.txt").write_text("00_aibang/missing.jpg\n", encoding="utf-8")
    with pytest.raises(ValueError, match="split1_train.txt:1 names '00_aibang/missing.jpg'"):
        IPanda50(str(root), split="split1").records("train")
    with pytest.raises(ValueError, match="valid: all, split0"):
        IPanda50(str(root), split="split9")


# ---- ATRW -------------------------------------------------------------------------

def atrw_tree(root: Path) -> Path:
    images(root / "atrw_reid_train" / "train", "000000.jpg", "000004.jpg", "003004.jpg")
    anno = root / "atrw_anno_reid_train"
    anno.mkdir(parents=True)
    (anno / "reid_list_train.csv").write_text("0,003004.jpg\n2,000000.jpg\n2,000004.jpg\n")
    (anno / "reid_keypoints_train.json").write_text("{}")
    return root


def test_atrw_reads_the_entity_ids_of_the_training_list_in_order(tmp_path):
    ds = ATRW(str(atrw_tree(tmp_path)))
    got = [(Path(r.path).name, r.pid, r.category) for r in ds.records("train")]
    assert got == [("003004.jpg", 0, "tiger"), ("000000.jpg", 2, "tiger"), ("000004.jpg", 2, "tiger")]


def test_atrw_errors_name_the_line_and_the_layout(tmp_path):
    root = atrw_tree(tmp_path / "a")
    (root / "atrw_anno_reid_train" / "reid_list_train.csv").write_text("0;003004.jpg\n")
    with pytest.raises(ValueError, match=r"reid_list_train.csv:1: expected '<entity id>,<file name>'"):
        ATRW(str(root)).records("train")
    with pytest.raises(FileNotFoundError, match="missing folder.*atrw_anno_reid_train"):
        ATRW(str(images(tmp_path / "b" / "atrw_reid_train" / "train", "1.jpg").parent.parent))


# ---- University-1652 --------------------------------------------------------------

def university_tree(root: Path) -> Path:
    for view, files in {"satellite": ["0839.jpg"], "drone": ["image-01.jpeg", "image-02.jpeg"],
                        "street": ["1.jpg"], "google": ["g1.png"]}.items():
        images(root / "train" / view / "0839", *[f.replace(".jpeg", ".jpg") for f in files])
    images(root / "test" / "query_satellite" / "0001", "0001.jpg")
    images(root / "test" / "query_satellite" / "0002", "0002.jpg")
    images(root / "test" / "gallery_drone" / "0001", "image-01.jpg", "image-02.jpg")
    images(root / "test" / "gallery_drone" / "0005", "image-01.jpg")  # a distractor building
    images(root / "test" / "query_drone" / "0001", "image-03.jpg")
    images(root / "test" / "gallery_satellite" / "0001", "0001.jpg")
    images(root / "test" / "4K_drone" / "0001", "image-01.jpg")
    return root


def test_university1652_default_is_satellite_to_drone_with_views_as_cameras(tmp_path):
    ds = University1652(str(university_tree(tmp_path / "University-Release").parent))
    assert summary(ds.records("query")) == [("0001.jpg", 1, 0, "building"), ("0002.jpg", 2, 0, "building")]
    assert summary(ds.records("gallery")) == [("image-01.jpg", 1, 1, "building"), ("image-01.jpg", 5, 1, "building"),
                                              ("image-02.jpg", 1, 1, "building")]
    train = ds.records("train")
    assert {r.camid for r in train} == {0, 1, 2, 3} and {r.pid for r in train} == {839} and len(train) == 5


def test_university1652_other_direction_and_views(tmp_path):
    ds = University1652(str(university_tree(tmp_path)), query="drone", gallery="satellite",
                        train_views=["satellite", "drone"])
    assert summary(ds.records("query")) == [("image-03.jpg", 1, 1, "building")]
    assert summary(ds.records("gallery")) == [("0001.jpg", 1, 0, "building")]
    assert {r.camid for r in ds.records("train")} == {0, 1}
    with pytest.raises(ValueError, match="query must be one of satellite, drone, street, got 'google'"):
        University1652(str(tmp_path), query="google")


def test_university1652_table_keeps_cross_view_matches(tmp_path):
    ds = University1652(str(university_tree(tmp_path)))
    table = RecordTable.build([("u", ds.records("query") + ds.records("gallery"))], relabel=False)
    assert set(table.camids.tolist()) == {0, 1}


# ---- PetFace ----------------------------------------------------------------------

def petface_tree(root: Path) -> Path:
    for species, ids in {"cat": ["000000", "000001"], "dog": ["000000"]}.items():
        for identity in ids:
            images(root / "images" / species / identity, "00.png", "01.png", "02.png")
        split = root / "split" / species
        split.mkdir(parents=True)
        train = ["filename,label"] + [f"{species}/{i}/0{j}.png,{int(i)}" for i in ids for j in (0, 1)]
        (split / "train.csv").write_text("\n".join(train) + "\n")
        (split / "reidentification.csv").write_text(
            "filename,label\n" + "".join(f"{species}/{i}/02.png,{int(i)}\n" for i in ids))
        (split / "verification.csv").write_text("filename1,filename2,label\n")
    (root / "annotations").mkdir()
    return root


def test_petface_queries_are_reidentification_images_searched_among_training_images(tmp_path):
    ds = PetFace(str(petface_tree(tmp_path / "PetFace").parent))
    query, gallery = ds.records("query"), ds.records("gallery")
    # cat labels 0..1, dog labels offset by the cats' 2 labels
    assert [(r.category, r.pid, r.camid) for r in query] == [("cat", 0, 0), ("cat", 1, 0), ("dog", 2, 0)]
    assert sorted((r.category, r.pid, r.camid) for r in gallery) == [
        ("cat", 0, 1), ("cat", 0, 1), ("cat", 1, 1), ("cat", 1, 1), ("dog", 2, 1), ("dog", 2, 1)]
    assert Path(query[2].path) == tmp_path / "PetFace" / "images" / "dog" / "000000" / "02.png"
    assert len(ds.records("train")) == 6


def test_petface_species_filter_and_errors(tmp_path):
    root = petface_tree(tmp_path)
    assert {r.category for r in PetFace(str(root), species=["dog"]).records("query")} == {"dog"}
    with pytest.raises(ValueError, match="species hamster not under .*present: cat, dog"):
        PetFace(str(root), species=["hamster"])
    (root / "split" / "cat" / "train.csv").write_text("file,id\nx.png,0\n")
    with pytest.raises(ValueError, match="train.csv: expected the header 'filename,label'"):
        PetFace(str(root)).records("train")


# ---- ELPephants -------------------------------------------------------------------

def elpephants_tree(root: Path) -> Path:
    folder = images(root / "ELPephant (elephant ID system)" / "images",
                    "157_Dorothy left Jun2012.jpg", "157_Dorothy right.jpg", "158_Ella front.jpg",
                    "158_Ella left.jpg", "157_Dorothy front.jpg")
    (folder.parent / "train.txt").write_text("0\t157_Dorothy left Jun2012.jpg\n0\t157_Dorothy right.jpg\n"
                                             "1\t158_Ella front.jpg\n")
    (folder.parent / "val.txt").write_text("0\t157_Dorothy front.jpg\n1\t158_Ella left.jpg\n")
    (folder.parent / "class_mapping.txt").write_text("157\t0\n158\t1\n")
    return root


def test_elpephants_queries_are_the_val_list_searched_among_the_train_list(tmp_path):
    ds = ELPephants(str(elpephants_tree(tmp_path)))
    assert summary(ds.records("query")) == [("157_Dorothy front.jpg", 157, 0, "elephant"),
                                            ("158_Ella left.jpg", 158, 0, "elephant")]
    assert summary(ds.records("gallery")) == [("157_Dorothy left Jun2012.jpg", 157, 1, "elephant"),
                                              ("157_Dorothy right.jpg", 157, 1, "elephant"),
                                              ("158_Ella front.jpg", 158, 1, "elephant")]
    assert [r.pid for r in ds.records("train")] == [157, 157, 158]


def test_elpephants_errors_name_the_line(tmp_path):
    root = elpephants_tree(tmp_path / "e")
    (root / "ELPephant (elephant ID system)" / "val.txt").write_text("0\t159_not_there.jpg\n")
    with pytest.raises(FileNotFoundError, match="val.txt:1 lists '159_not_there.jpg'"):
        ELPephants(str(root)).records("query")
    (tmp_path / "f").mkdir()
    with pytest.raises(FileNotFoundError, match="train.txt not found under"):
        ELPephants(str(tmp_path / "f"))


@pytest.mark.parametrize("name, cls", [("ipanda50", IPanda50), ("atrw", ATRW), ("university1652", University1652),
                                       ("petface", PetFace), ("elpephants", ELPephants)])
def test_readers_are_registered_under_their_yaml_names(name, cls):
    from core.registry import build_registry

    assert build_registry().get("dataset", name).load() is cls

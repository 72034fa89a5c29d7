"""Readers of the clothes-changing sets of Instruct-ReID (LTCC, PRCC, VC-Clothes) on tiny
fixtures in their released layouts: identities, cameras, clothes ids, splits, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.data.layouts.ltcc import LTCC
from core.data.layouts.prcc import PRCC
from core.data.layouts.vc_clothes import VCClothes
from layout_fixtures import image_folders, images  # registered by conftest.py


def test_ltcc_reads_pid_clothes_and_camera(tmp_path):
    root = tmp_path / "LTCC_ReID"
    image_folders(root, {"train": ["094_1_c9_015923.png", "094_2_c3_000111.png"], "query": ["001_1_c1_000001.png"],
                         "test": ["001_1_c2_000002.png", "001_3_c4_000003.png"]})
    data = LTCC(str(tmp_path))  # the archive's folder is found inside the root
    train = data.records("train")
    assert [(r.pid, r.camid, r.extras["clothes_id"]) for r in train] == [(94, 8, 1), (94, 2, 2)]
    assert [r.extras["clothes_id"] for r in data.records("gallery")] == [1, 3]
    assert data.records("query")[0].domain == "ltcc"
    images(root / "test", "bad.png")
    with pytest.raises(ValueError, match=r"bad\.png.*<pid>_<clothes>_c<camera>_<frame>\.png"):
        LTCC(str(root)).records("gallery")


def test_vc_clothes_reads_pid_camera_and_clothes(tmp_path):
    root = tmp_path / "VC-Clothes"
    image_folders(root, {"train": ["0001-01-01-01.jpg", "0001-03-02-04.jpg"], "query": ["0002-02-01-01.jpg"],
                         "gallery": ["0002-03-02-01.jpg"]})
    data = VCClothes(str(root))
    assert [(r.pid, r.camid, r.extras["clothes_id"]) for r in data.records("train")] == [(1, 0, 1), (1, 2, 2)]
    assert data.records("gallery")[0].extras["clothes_id"] == 2
    with pytest.raises(FileNotFoundError, match="gallery"):
        (root / "gallery" / "0002-03-02-01.jpg").unlink()
        (root / "gallery").rmdir()
        VCClothes(str(root))


def test_vc_clothes_settings_keep_the_papers_test_cameras(tmp_path):
    """Simple-CCReID's VC-Clothes modes: 'sc' keeps cameras 2 and 3, 'cc' cameras 3 and 4,
    in query and gallery alike; training keeps every camera."""
    root = tmp_path / "VC-Clothes"
    names = [f"0002-{c:02d}-01-01.jpg" for c in (1, 2, 3, 4)]
    image_folders(root, {"train": [f"0001-{c:02d}-01-01.jpg" for c in (1, 2, 3, 4)], "query": names,
                         "gallery": [n.replace("-01.jpg", "-02.jpg") for n in names]})
    for setting, cameras in (("all", [1, 2, 3, 4]), ("same-clothes", [2, 3]), ("clothes-changing", [3, 4])):
        data = VCClothes(str(root), setting=setting)
        for split in ("query", "gallery"):
            assert [r.camid + 1 for r in data.records(split)] == cameras, (setting, split)
        assert [r.camid + 1 for r in data.records("train")] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="setting must be one of all, same-clothes, clothes-changing"):
        VCClothes(str(root), setting="sc")


def prcc_tree(root: Path) -> Path:
    images(root / "rgb" / "train" / "001", "A_cropped_rgb001.jpg", "C_cropped_rgb010.jpg")
    images(root / "rgb" / "val" / "002", "B_cropped_rgb003.jpg")
    for camera, names in (("A", ["cropped_rgb1.jpg"]), ("B", ["cropped_rgb2.jpg"]), ("C", ["cropped_rgb3.jpg"])):
        images(root / "rgb" / "test" / camera / "150", *names)
    return root


def test_prcc_protocol_gallery_a_query_c(tmp_path):
    data = PRCC(str(prcc_tree(tmp_path / "prcc")))
    train = data.records("train")
    assert [(r.pid, r.camid, r.extras["clothes_id"]) for r in train] == [(1, 0, 0), (1, 2, 1)]
    (q,), (g,) = data.records("query"), data.records("gallery")
    assert (q.pid, q.camid, q.extras["clothes_id"]) == (150, 2, 1)
    assert (g.pid, g.camid, g.extras["clothes_id"]) == (150, 0, 0)
    same = PRCC(str(tmp_path / "prcc"), setting="same-clothes", combine_train_val=True)
    assert same.records("query")[0].camid == 1 and len(same.records("train")) == 3
    with pytest.raises(ValueError, match="setting"):
        PRCC(str(tmp_path / "prcc"), setting="cc")
    images(tmp_path / "prcc" / "rgb" / "train" / "001", "X_bad.jpg")
    with pytest.raises(ValueError, match=r"X_bad\.jpg.*<A\|B\|C>_cropped_rgb"):
        PRCC(str(tmp_path / "prcc")).records("train")


def test_instruct_reids_readers_are_registered_under_their_yaml_names():
    from core.data.layouts.omnireid import OmniReIDList
    from core.registry import build_registry

    registry = build_registry()
    for name, cls in (("ltcc", LTCC), ("prcc", PRCC), ("vc_clothes", VCClothes), ("vc-clothes", VCClothes),
                      ("omnireid", OmniReIDList)):
        assert registry.get("dataset", name).load() is cls, name

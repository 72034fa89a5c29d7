"""Every reader outside the split-folder family (MSMT17, OmniReID++ datalists, CUHK03,
the folder tree, ATRW, ELPephants, iPanda-50, PetFace, PRCC, University-1652, VehicleID,
VERI-Wild) returns the columnar table (core.data.columns), through the record cache
(core.data.cache): on each reader's fixture, in its release layout, the columns hold the
records an independent plain re-reading of the files gives (os.walk / str.split / csv /
json written here, not the readers' code); a second start reads the memory-mapped cache
without reading the files again; a changed list file, an added image or a changed
side file invalidates the entry."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

import core.data.layouts.common as common
from core.data.columns import RecordColumns
from core.data.layouts import CUHK03, MSMT17, FolderDataset, VehicleID, VeRiWild
from core.data.layouts.atrw import ATRW
from core.data.layouts.elpephants import ELPephants
from core.data.layouts.ipanda50 import IPanda50
from core.data.layouts.omnireid import OmniReIDList
from core.data.layouts.petface import PetFace
from core.data.layouts.prcc import PRCC
from core.data.layouts.university1652 import University1652
from core.data.table import RecordTable
from layout_fixtures import images  # registered by conftest.py
from tests.test_baseline_layouts import cuhk03_images, vehicleid_tree, veriwild_tree
from tests.test_data_layout_omnireid import real2_tree
from tests.test_data_layouts import folder_tree, msmt_tree
from tests.test_data_layouts_clothes_changing import prcc_tree
from tests.test_data_layouts_mgor import atrw_tree, elpephants_tree, ipanda_tree, petface_tree, university_tree

SPLITS = ("train", "query", "gallery")
IMAGE = re.compile(r"\.(jpe?g|png|bmp)$", re.IGNORECASE)


def row(path, pid, camid, category, domain, split, **extras):
    return (str(path), pid, camid, category, domain, split, extras)


def as_rows(records) -> list[tuple]:
    """Records as plain tuples, with the Python type of every value (3 != 3.0 != '3')."""
    out = []
    for r in records:
        fields = (r.path, r.pid, r.camid, r.category, r.domain, r.split)
        out.append((fields, tuple(type(v).__name__ for v in fields),
                    sorted((k, v, type(v).__name__) for k, v in r.extras.items())))
    return out


def plain(rows: list[tuple]) -> list[tuple]:
    return as_rows([type("R", (), {"path": p, "pid": i, "camid": c, "category": cat, "domain": d, "split": s,
                                   "extras": x})() for p, i, c, cat, d, s, x in rows])


def files(folder) -> list[str]:
    """Image file names directly in `folder`, sorted (hidden files skipped)."""
    return sorted(n for n in next(os.walk(folder))[2] if IMAGE.search(n) and not n.startswith("."))


def dirs(folder) -> list[str]:
    return sorted(n for n in next(os.walk(folder))[1] if not n.startswith("."))


def lines(path) -> list[list[str]]:
    return [ln.split() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]


def bump(path) -> None:
    """Move `path`'s mtime a second on: an edit within one clock tick of the first read."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


# -- independent re-readings of each release layout -------------------------------------------

def ref_msmt17(root: Path, split: str) -> list[tuple]:
    keys = {"train": ["list_train.txt", "list_val.txt"], "query": ["list_query.txt"],
            "gallery": ["list_gallery.txt"]}[split]
    folder = root / ("train" if split == "train" else "test")
    return [row(folder / rel, int(pid), int(os.path.basename(rel).split("_")[2]) - 1, "person", "msmt17", split)
            for key in keys for rel, pid in lines(root / key)]


def ref_omnireid(root: Path, split: str, lists: dict, texts: str | None, mode: str, name: str) -> list[tuple]:
    if split not in lists:
        return []
    captions = json.loads((root / texts).read_text()) if texts else {}
    out = []
    for fields in lines(root / lists[split]):
        extras = {"instruction_ref": fields[1], "clothes_id": int(fields[3])}
        if mode == "text":
            extras["caption"] = captions[fields[1]]
        if mode == "image":
            extras["instruction_image"] = fields[1]
        camid = int(fields[4]) if len(fields) == 5 else int(split == "gallery")
        out.append(row(root / fields[0], int(fields[2]), camid, "person", name, split, **extras))
    return out


def ref_cuhk03(root: Path, split: str) -> list[tuple]:
    entries = json.loads((root / "cuhk03" / "splits_new_labeled.json").read_text())[0][split]
    return [row(root / "cuhk03" / "images_labeled" / p.split("/")[-1], pid, int(p.split("/")[-1].split("_")[2]) - 1,
                "person", "cuhk03", split) for p, pid, _ in entries]


def ref_folder(root: Path, split: str) -> list[tuple]:
    out = []
    if not (root / split).is_dir():
        return out
    for category in dirs(root / split):
        for identity in dirs(root / split / category):  # the fixture's identities are numbers
            for name in files(root / split / category / identity):
                cam = re.search(r"(?:^|_)c(\d+)", Path(name).stem)
                out.append(row(root / split / category / identity / name, int(identity), int(cam.group(1)) if cam else 0,
                               category, root.name, split))
    return out


def ref_atrw(root: Path, split: str) -> list[tuple]:
    with open(root / "atrw_anno_reid_train" / "reid_list_train.csv") as f:
        return [row(root / "atrw_reid_train" / "train" / name, int(pid), 0, "tiger", "atrw", "train")
                for pid, name in csv.reader(f) if name]


def ref_elpephants(root: Path, split: str) -> list[tuple]:
    where = {n: os.path.join(d, n) for d, _, fs in os.walk(root) for n in fs}
    listed = "val.txt" if split == "query" else "train.txt"
    text = Path(where[listed]).read_text().splitlines()
    return [row(where[ln.split("\t")[1]], int(ln.split("\t")[1].split("_")[0]), int(split != "query"), "elephant",
                "elpephants", split) for ln in text if ln.strip()]


def ref_ipanda(root: Path, split: str) -> list[tuple]:
    base = root / "iPanda50-images"
    return [row(base / d / n, int(d.split("_")[0]), 0, "panda", "ipanda50", "train") for d in dirs(base)
            for n in files(base / d)]


def ref_petface(root: Path, split: str) -> list[tuple]:
    base = root / "PetFace"
    out, offset = [], 0
    for species in dirs(base / "split"):
        def read(name):
            with open(base / "split" / species / name, newline="") as f:
                return [(r["filename"], int(r["label"])) for r in csv.DictReader(f)]
        name = "reidentification.csv" if split == "query" else "train.csv"
        out += [row(base / "images" / fn, offset + label, int(split != "query"), species, "petface", split)
                for fn, label in read(name)]
        offset += max(label for _, label in read("train.csv")) + 1
    return out


def ref_prcc(root: Path, split: str) -> list[tuple]:
    rgb = root / "rgb"
    cameras = {"A": 0, "B": 1, "C": 2}
    if split == "train":
        return [row(rgb / "train" / p / n, int(p), cameras[n[0]], "person", "prcc", split, clothes_id=int(n[0] == "C"))
                for p in dirs(rgb / "train") for n in files(rgb / "train" / p)]
    cam = "A" if split == "gallery" else "C"
    return [row(rgb / "test" / cam / p / n, int(p), cameras[cam], "person", "prcc", split, clothes_id=int(cam == "C"))
            for p in dirs(rgb / "test" / cam) for n in files(rgb / "test" / cam / p)]


def ref_university(root: Path, split: str) -> list[tuple]:
    base = root / "University-Release"
    views = ["satellite", "drone", "street", "google"]
    folders = ([(base / "train" / v, v) for v in views] if split == "train" else
               [(base / "test" / ("query_satellite" if split == "query" else "gallery_drone"),
                 "satellite" if split == "query" else "drone")])
    return [row(folder / b / n, int(b), views.index(view), "building", "university1652", split)
            for folder, view in folders for b in dirs(folder) for n in files(folder / b)]


def ref_vehicleid(root: Path, split: str) -> list[tuple]:
    base = root / "VehicleID_V1.0"
    lists = base / "train_test_split"
    path = lambda image: base / "image" / f"{image}.jpg"  # noqa: E731
    if split == "train":
        return [row(path(i), int(v), 0, "vehicle", "vehicleid", split) for i, v in lines(lists / "train_list.txt")]
    by_vid: dict = {}
    for image, vid in lines(lists / "test_list_800.txt"):
        by_vid.setdefault(int(vid), []).append(image)
    rng = np.random.default_rng(0)  # the protocol's draw: one gallery image per vehicle, in list order
    query, gallery = [], []
    for vid, names in by_vid.items():
        pick = int(rng.integers(len(names)))
        gallery.append(row(path(names[pick]), vid, 1, "vehicle", "vehicleid", "gallery"))
        query += [row(path(n), vid, 0, "vehicle", "vehicleid", "query") for k, n in enumerate(names) if k != pick]
    return query if split == "query" else gallery


def ref_veriwild(root: Path, split: str) -> list[tuple]:
    lists = root / "VERI-Wild" / "train_test_split"
    info = (lists / "vehicle_info.txt").read_text().splitlines()[1:]
    cams = {ln.split(";")[0]: int(ln.split(";")[1]) for ln in info if ln.strip()}
    name = {"train": "train_list.txt", "query": "test_3000_query.txt", "gallery": "test_3000.txt"}[split]
    return [row(root / "VERI-Wild" / "images" / (k[0] + ".jpg"), int(k[0].split("/")[0]), cams[k[0]], "vehicle",
                "veriwild", split) for k in lines(lists / name)]


# -- each reader: its fixture, its reference, and an edit of one of its inputs ------------------

OMNI = {"query": "datalist/query.txt", "gallery": "datalist/gallery.txt"}
OMNI_TEXT = {"query": "datalist/query_attr.txt"}


def cuhk03_fixture(root: Path) -> Path:
    cuhk03_images(root, "labeled")
    split = [{"train": [["/x/1_001_1_01.png", 0, 0], ["/x/1_001_2_06.png", 0, 1]],
              "query": [["/x/1_002_1_02.png", 7, 0]], "gallery": [["/x/1_002_2_07.png", 7, 1]]}]
    (root / "cuhk03" / "splits_new_labeled.json").write_text(json.dumps(split))
    return root


def edit_text(path: Path, old: str, new: str) -> Path:
    path.write_text(path.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
    bump(path)
    return path


def add_image(folder: Path, name: str) -> None:
    images(folder, name)
    bump(folder)


def move_image(source: Path, folder: Path) -> None:
    """Move an image into another (new) folder: only folder mtimes change."""
    folder.mkdir(exist_ok=True)
    os.rename(source, folder / source.name)
    bump(folder)
    bump(source.parent)


def pedes_tree(root: Path) -> Path:
    """CUHK-PEDES-style lists: no camera field (queries and gallery get cameras 0 and 1)."""
    images(root / "imgs", "a.jpg", "b.jpg", "c.jpg")
    (root / "test_query.txt").write_text("imgs/a.jpg 0 7 0\n")
    (root / "test_gallery.txt").write_text("imgs/b.jpg 1 7 0\nimgs/c.jpg 2 9 1\n")
    (root / "caption.json").write_text(json.dumps({"0": "a man in red", "1": "a man in red shoes", "2": "a cat"}))
    return root


PEDES = {"query": "test_query.txt", "gallery": "test_gallery.txt"}


READERS = {
    # name: (fixture, make, reference, splits, edits: each of one input, each changing the records)
    "msmt17": (msmt_tree, lambda r: MSMT17(str(r)), ref_msmt17, SPLITS,
               [lambda r: edit_text(r / "list_gallery.txt", "2\n", "5\n"),
                lambda r: edit_text(r / "list_val.txt", " 1\n", " 3\n")]),
    "omnireid-image": (real2_tree, lambda r: OmniReIDList(str(r), instruction="image", name="cocas", **OMNI),
                       lambda r, s: ref_omnireid(r, s, OMNI, None, "image", "cocas"), SPLITS,
                       [lambda r: edit_text(r / "datalist" / "gallery.txt", " 40 1 2", " 41 1 2")]),
    "omnireid-text": (real2_tree, lambda r: OmniReIDList(str(r), instruction="text", texts="attr.json", **OMNI_TEXT),
                      lambda r, s: ref_omnireid(r, s, OMNI_TEXT, "attr.json", "text", r.name), SPLITS,
                      [lambda r: edit_text(r / "attr.json", "grey", "blue")]),  # the texts file is an input too
    "omnireid-no-camera": (pedes_tree, lambda r: OmniReIDList(str(r), instruction="text", texts="caption.json",
                                                              **PEDES),
                           lambda r, s: ref_omnireid(r, s, PEDES, "caption.json", "text", r.name), SPLITS,
                           [lambda r: edit_text(r / "test_gallery.txt", "2 9 1", "2 9 4")]),
    "cuhk03": (cuhk03_fixture, lambda r: CUHK03(str(r), labeled=True), ref_cuhk03, SPLITS,
               [lambda r: edit_text(r / "cuhk03" / "splits_new_labeled.json", "7, 1]", "8, 1]")]),
    "folder": (folder_tree, lambda r: FolderDataset(str(r)), ref_folder, SPLITS,
               [lambda r: add_image(r / "gallery" / "person" / "0005", "0005_c7.jpg"),  # an identity folder
                lambda r: images(r / "train" / "person" / "0011", "0011_c4.jpg")]),  # a new identity: pids
    "atrw": (atrw_tree, lambda r: ATRW(str(r)), ref_atrw, ("train",),
             [lambda r: edit_text(r / "atrw_anno_reid_train" / "reid_list_train.csv", "0,003004", "9,003004")]),
    "elpephants": (elpephants_tree, lambda r: ELPephants(str(r)), ref_elpephants, SPLITS,
                   [lambda r: edit_text(r / "ELPephant (elephant ID system)" / "val.txt", "1\t158_Ella left.jpg\n", ""),
                    lambda r: move_image(r / "ELPephant (elephant ID system)" / "images" / "157_Dorothy front.jpg",
                                         r / "ELPephant (elephant ID system)" / "more")]),
    "ipanda50": (ipanda_tree, lambda r: IPanda50(str(r)), ref_ipanda, ("train",),
                 [lambda r: add_image(r / "iPanda50-images" / "49_yuanrun", "y9.jpg")]),
    "petface": (lambda r: petface_tree(r / "PetFace").parent, lambda r: PetFace(str(r)), ref_petface, SPLITS,
                [lambda r: edit_text(r / "PetFace" / "split" / "dog" / "reidentification.csv", "02.png", "01.png"),
                 lambda r: edit_text(r / "PetFace" / "split" / "cat" / "train.csv", ",1\n", ",3\n")]),  # offsets
    "prcc": (prcc_tree, lambda r: PRCC(str(r)), ref_prcc, SPLITS,
             [lambda r: add_image(r / "rgb" / "test" / "C" / "150", "cropped_rgb9.jpg"),
              lambda r: add_image(r / "rgb" / "train" / "001", "B_cropped_rgb020.jpg")]),
    "university1652": (lambda r: university_tree(r / "University-Release").parent,
                       lambda r: University1652(str(r)), ref_university, SPLITS,
                       [lambda r: add_image(r / "University-Release" / "test" / "gallery_drone" / "0005",
                                            "image-02.jpg")]),
    "vehicleid": (vehicleid_tree, lambda r: VehicleID(str(r)), ref_vehicleid, SPLITS,
                  [lambda r: edit_text(r / "VehicleID_V1.0" / "train_test_split" / "test_list_800.txt",
                                       "0000007 8\n", "0000007 9\n")]),
    "veriwild": (veriwild_tree, lambda r: VeRiWild(str(r)), ref_veriwild, SPLITS,
                 [lambda r: edit_text(r / "VERI-Wild" / "train_test_split" / "vehicle_info.txt", ";013;", ";014;"),
                  lambda r: edit_text(r / "VERI-Wild" / "train_test_split" / "test_3000_query.txt", "1\n",
                                      "1\n30001/400002\n")]),
}


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("REID_CORE_CACHE", str(folder))
    monkeypatch.setenv("REID_CORE_CACHE_MIN_ROWS", "0")  # the fixtures are tiny: cache them all
    return folder


@pytest.mark.parametrize("name", list(READERS))
def test_columns_hold_what_a_plain_reading_gives(tmp_path, monkeypatch, name):
    monkeypatch.setenv("REID_CORE_CACHE", "off")
    fixture, make, reference, splits, _ = READERS[name]
    root = fixture(tmp_path / "data")
    dataset = make(root)
    for split in splits:
        got = dataset.records(split)
        assert isinstance(got, RecordColumns), f"{name} {split}: {type(got).__name__}"
        expected = reference(root, split)
        assert as_rows(got) == plain(expected), f"{name} {split}"
        assert dataset.records(split) is got  # listed once per reader
    train = RecordTable.build([(name, dataset.records("train"))], relabel=True)
    ref = reference(root, "train")
    first: dict = {}
    np.testing.assert_array_equal(train.pids, [first.setdefault(r[1], len(first)) for r in ref])
    np.testing.assert_array_equal(train.camids, [r[2] for r in ref])


@pytest.mark.parametrize("name", list(READERS))
def test_the_second_start_reads_the_cache_and_an_edited_input_invalidates_it(tmp_path, cache_dir, monkeypatch, name):
    fixture, make, reference, splits, edits = READERS[name]
    root = fixture(tmp_path / "data")
    first = {s: as_rows(make(root).records(s)) for s in splits}
    entries = set(cache_dir.glob("layout-*.arrow"))
    assert len(entries) == len([s for s in splits if first[s]])  # one entry per non-empty split

    real = common.cached

    def only_cached(kind, inputs, params, build):
        def refuse():
            raise AssertionError(f"{name}: read again although the cache holds {params['split']}")
        return real(kind, inputs, params, refuse)

    with monkeypatch.context() as patch:
        patch.setattr(common, "cached", only_cached)
        again = make(root)
        for split in splits:
            if first[split]:
                assert as_rows(again.records(split)) == first[split] == plain(reference(root, split))
    for k, edit in enumerate(edits):
        before = {s: plain(reference(root, s)) for s in splits}
        for split in splits:  # every split of the unedited files is in the cache
            make(root).records(split)
        entries = set(cache_dir.glob("layout-*.arrow"))
        edit(root)
        after = {s: plain(reference(root, s)) for s in splits}
        assert after != before, f"edit {k} must change what the files say"
        changed = make(root)
        for split in splits:
            assert as_rows(changed.records(split)) == after[split], f"{name} {split} after edit {k}"
        assert set(cache_dir.glob("layout-*.arrow")) > entries  # new entries beside the stale ones


def test_reader_options_key_the_cache_apart(tmp_path, cache_dir):
    """The same files read with other options (VehicleID's seed, MSMT17 without val) are
    another entry, not the first one's records."""
    root = vehicleid_tree(tmp_path / "v")
    draws = {seed: as_rows(VehicleID(str(root), seed=seed).records("gallery")) for seed in range(8)}
    for seed, rows in draws.items():
        assert as_rows(VehicleID(str(root), seed=seed).records("gallery")) == rows
    assert len({tuple(map(str, r)) for r in draws.values()}) > 1
    msmt = msmt_tree(tmp_path / "m")
    assert len(MSMT17(str(msmt)).records("train")) == 4
    assert len(MSMT17(str(msmt), combine_train_val=False).records("train")) == 3


def test_msmt17_and_omnireid_share_one_list_parser_with_named_errors(tmp_path):
    bad = tmp_path / "list.txt"
    bad.write_text("a.jpg 1\n\nb.jpg x\n")
    with pytest.raises(ValueError, match=re.escape(f"{bad}:3: expected <two fields>, got 'b.jpg x'")):
        common.read_list_file(bad, (2,), 1, "<two fields>")
    bad.write_text("a.jpg ref 1 2\nb.jpg ref 1 2 3 4\n")
    with pytest.raises(ValueError, match=re.escape(f"{bad}:2:")):
        common.read_list_file(bad, (4, 5), 2, "<omni>")
    bad.write_text("a b 1 -2\n\n c  d 3 4 \n")
    assert common.read_list_file(bad, (4,), 2, "") == [(1, ["a", "b", "1", "-2"]), (3, ["c", "d", "3", "4"])]


@pytest.mark.parametrize("base", ["/data/root", "/data/root/", "rel", ".", "/", "./x", "x/."])
def test_list_paths_are_joined_as_pathlib_joins_them(base):
    """The string fast path of the list readers gives pathlib's text, with each odd entry
    (which pathlib rewrites) among ordinary ones, and without any."""
    odd = ["./a.jpg", "a//b.jpg", "a/./b.jpg", "a/", "a/.", "/abs/x.jpg", ".", "", ".//a", "a/.//"]
    fine = ["a/b.jpg", "..", "../x.jpg", "a/../b.jpg", ".hidden/x.jpg", "x.", "a/.b", "a b/c d.jpg", "0000/0_1.jpg"]
    for batch in [fine] + [fine[:4] + [entry] + fine[4:] for entry in odd]:
        assert common.join_paths(base, batch) == [str(Path(base) / e) for e in batch]

"""The Wildlife71 reader on a tiny fixture in the layout of the public training release
(github.com/JiaoBL1234/wildlife README: images ID_Cam_Frame.jpg, `partitions.pkl` with
train_im_names and train_im_sourceid). Expected pids follow the README's naming: the
8-digit identity X of the file name, kept apart per source id (source x 10^8 + X)."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.layouts.wildlife71 import Wildlife71

JPEG = io.BytesIO()
Image.new("RGB", (8, 8), (120, 90, 30)).save(JPEG, format="JPEG")

#: (file name, source id) in the order of the fixture's partitions.pkl
ENTRIES = [("00000007_0001_00000001.jpg", 3), ("00000007_0001_00000002.jpg", 3),
           ("00000012_0001_00000001.jpg", 3), ("00000007_0001_00000009.jpg", 40),
           ("00000031_0002_00000001.jpg", 40)]


def tree(root: Path, numpy_arrays: bool = False, protocol: int = 2) -> Path:
    images = root / "wildlife71_train" / "train"  # the README names no folder: any depth
    images.mkdir(parents=True)
    for name, _ in ENTRIES:
        (images / name).write_bytes(JPEG.getvalue())
    names = [n for n, _ in ENTRIES]
    sources = [s for _, s in ENTRIES]
    data = {"train_im_names": np.array(names) if numpy_arrays else names,
            "train_im_sourceid": np.array(sources, dtype=np.int64) if numpy_arrays else sources}
    (root / "wildlife71_train" / "partitions.pkl").write_bytes(pickle.dumps(data, protocol=protocol))
    return root


def rows(records):
    return [(Path(r.path).name, r.pid, r.camid, r.category, r.split) for r in records]


EXPECTED = [  # written out from the file names and source ids above
    ("00000007_0001_00000001.jpg", 300000007, 0, "species3", "train"),
    ("00000007_0001_00000002.jpg", 300000007, 0, "species3", "train"),
    ("00000012_0001_00000001.jpg", 300000012, 0, "species3", "train"),
    ("00000007_0001_00000009.jpg", 4000000007, 0, "species40", "train"),
    ("00000031_0002_00000001.jpg", 4000000031, 1, "species40", "train"),
]


@pytest.mark.parametrize("numpy_arrays, protocol", [(False, 2), (True, 2), (True, pickle.HIGHEST_PROTOCOL)])
def test_reads_identity_camera_and_species_from_the_release_in_list_order(tmp_path, numpy_arrays, protocol):
    ds = Wildlife71(str(tree(tmp_path, numpy_arrays, protocol)))
    got = ds.records("train")
    assert rows(got) == EXPECTED
    assert all(os.path.isfile(r.path) for r in got)


def test_same_number_in_two_species_is_two_identities(tmp_path):
    pids = [r.pid for r in Wildlife71(str(tree(tmp_path))).records("train")]
    assert pids[0] == pids[1] and pids[0] != pids[3]  # 00000007 of source 3 vs of source 40
    assert {p % 10 ** 8 for p in pids} == {7, 12, 31}


def test_sources_filter(tmp_path):
    root = tree(tmp_path)
    assert rows(Wildlife71(str(root), sources=[40]).records("train")) == EXPECTED[3:]
    with pytest.raises(ValueError, match="sources 9 not in .*present: 3, 40"):
        Wildlife71(str(root), sources=[9]).records("train")


def test_only_the_published_training_split(tmp_path):
    with pytest.raises(ValueError, match="unknown split 'query'; valid splits: train"):
        Wildlife71(str(tree(tmp_path))).records("query")


class _RunsCode:
    def __reduce__(self):
        return (os.remove, (self.target,))


def test_a_partitions_file_that_would_run_code_is_refused_without_running_it(tmp_path):
    root = tree(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("still here")
    payload = _RunsCode()
    payload.target = str(victim)
    (root / "wildlife71_train" / "partitions.pkl").write_bytes(
        pickle.dumps({"train_im_names": [ENTRIES[0][0]], "train_im_sourceid": [payload]}, protocol=2))
    with pytest.raises(ValueError, match=r"partitions.pkl: refused or unreadable \(posix.remove is not allowed\)"):
        Wildlife71(str(root)).records("train")
    assert victim.read_text() == "still here"


def test_errors_name_the_file_the_entry_and_what_was_expected(tmp_path):
    def write(root, data):
        (root / "wildlife71_train" / "partitions.pkl").write_bytes(pickle.dumps(data, protocol=2))

    root = tree(tmp_path / "a")
    write(root, {"train_im_names": ["00000007_0001_00000001.jpg"], "train_im_sourceid": [3, 3]})
    with pytest.raises(ValueError, match="train_im_names has 1 entries but train_im_sourceid has 2"):
        Wildlife71(str(root)).records("train")
    write(root, {"train_im_names": ["cat_01.jpg"], "train_im_sourceid": [3]})
    with pytest.raises(ValueError, match=r"train_im_names\[0\] = 'cat_01.jpg' does not follow ID_Cam_Frame.jpg"):
        Wildlife71(str(root)).records("train")
    write(root, {"train_im_names": ["00000099_0001_00000001.jpg"], "train_im_sourceid": [3]})
    with pytest.raises(FileNotFoundError, match=r"train_im_names\[0\] = '00000099_0001_00000001.jpg': no image"):
        Wildlife71(str(root)).records("train")
    write(root, {"names": []})
    with pytest.raises(ValueError, match="expected a dict with keys train_im_names and train_im_sourceid, got names"):
        Wildlife71(str(root)).records("train")
    write(root, {"train_im_names": ["00000007_0001_00000001.jpg"], "train_im_sourceid": ["three"]})
    with pytest.raises(ValueError, match=r"train_im_sourceid\[0\] is 'three', expected an integer"):
        Wildlife71(str(root)).records("train")

    (tmp_path / "b").mkdir()
    with pytest.raises(FileNotFoundError, match="partitions.pkl not found under"):
        Wildlife71(str(tmp_path / "b"))


def test_relative_paths_and_ambiguous_names(tmp_path):
    root = tree(tmp_path)
    again = root / "copy"
    again.mkdir()
    (again / ENTRIES[0][0]).write_bytes(JPEG.getvalue())  # the same file name twice in the tree
    with pytest.raises(ValueError, match="2 images of that name"):
        Wildlife71(str(root)).records("train")
    (root / "wildlife71_train" / "partitions.pkl").write_bytes(pickle.dumps(
        {"train_im_names": ["train/" + ENTRIES[0][0]], "train_im_sourceid": [3]}, protocol=2))
    got = Wildlife71(str(root)).records("train")  # a path relative to partitions.pkl resolves the clash
    assert rows(got) == EXPECTED[:1]
    assert Path(got[0].path) == root / "wildlife71_train" / "train" / ENTRIES[0][0]


def test_registered_under_its_yaml_name():
    from core.registry import build_registry

    assert build_registry().get("dataset", "wildlife71").load() is Wildlife71


def test_training_table_counts_the_four_identities(tmp_path):
    from core.data.table import RecordTable

    table = RecordTable.build([("w", Wildlife71(str(tree(tmp_path))).records("train"))], relabel=True)
    assert sorted(table.pids.tolist()) == [0, 0, 1, 2, 3]  # 7@3 twice, 12@3, 7@40, 31@40


def test_a_pipeline_training_on_it_alone_has_no_test_set_rather_than_an_unknown_split(tmp_path, capsys):
    """data.test not given: each train dataset is its own test set; a train-only layout has none."""
    import yaml

    from core.cli import main
    from core.testing import TINY_PIPELINE

    config = {**TINY_PIPELINE, "data": {"train": [{"dataset": "wildlife71", "root": str(tree(tmp_path / "w"))}],
                                        "transform": TINY_PIPELINE["data"]["transform"]}}
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["validate", "--data", str(path)]) == 0
    assert "data.train.0 (wildlife71) train: 5 images" in capsys.readouterr().out


def test_a_pipeline_naming_it_in_data_test_is_told_it_has_no_test_split(tmp_path, capsys):
    """data.test given: the user asked to evaluate on it; a train-only layout cannot be a test
    set, said as such (not as an empty query and gallery to look for in its root)."""
    import yaml

    from core.cli import main
    from core.testing import TINY_PIPELINE

    root = str(tree(tmp_path / "w"))
    config = {**TINY_PIPELINE, "data": {**TINY_PIPELINE["data"], "test": [{"dataset": "wildlife71", "root": root}]}}
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["validate", "--data", str(path)]) == 2
    assert capsys.readouterr().err == (f"error: {path}: data.test.0: dataset 'wildlife71' has no query split (its "
                                       "splits: train), so it cannot be a test set; name it in data.train only\n")

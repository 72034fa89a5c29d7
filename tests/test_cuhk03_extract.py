"""Extraction of CUHK03's images from the official `cuhk-03.mat` (MATLAB v7.3 / HDF5).

The fixture is written the way MATLAB stores the release: `labeled` / `detected` hold a
1 x 5 array of object references (here 2 pairs), each pair a (10 x persons) cell array
stored transposed, i.e. an HDF5 dataset of shape (10, persons) whose references point at
images stored as (channels, width, height); empty cells are 2-element arrays. Expected
names follow the release convention independently of the code: pair_person_view_shot,
shots 1-5 from view 1 and 6-10 from view 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

h5py = pytest.importorskip("h5py")

from core.data.layouts import CUHK03  # noqa: E402
from core.data.layouts.cuhk03_extract import extract_images  # noqa: E402


def image(pair: int, person: int, shot: int, height: int = 7, width: int = 4) -> np.ndarray:
    """A distinct, non-square (height, width, 3) image per cell, so a missing transpose or a
    swapped index shows."""
    rng = np.random.default_rng(1000 * pair + 10 * person + shot)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def write_release(path: Path, persons_per_pair=(3, 2), empty=((0, 1, 7),)) -> None:
    refs_dtype = h5py.special_dtype(ref=h5py.Reference)
    with h5py.File(path, "w") as f:
        cells = f.create_group("#refs#")
        for subset in ("labeled", "detected"):
            pair_refs = []
            for pair, persons in enumerate(persons_per_pair):
                grid = np.empty((10, persons), dtype=object)
                for person in range(persons):
                    for shot in range(10):
                        name = f"{subset}_{pair}_{person}_{shot}"
                        if (pair, person, shot) in empty:
                            data = np.zeros(2, dtype=np.uint64)  # how MATLAB stores an empty cell
                        else:
                            pixels = image(pair, person, shot) if subset == "labeled" else 255 - image(pair, person, shot)
                            data = pixels.T  # column-major: (3, width, height)
                        grid[shot, person] = cells.create_dataset(name, data=data).ref
                pair_refs.append(f.create_dataset(f"{subset}_pair{pair}", data=grid, dtype=refs_dtype).ref)
            f.create_dataset(subset, data=np.array([pair_refs], dtype=object), dtype=refs_dtype)


def test_extracts_every_non_empty_cell_with_the_release_names_and_pixels(tmp_path):
    raw = tmp_path / "cuhk-03.mat"
    write_release(raw)
    out = tmp_path / "images_labeled"
    written = extract_images(raw, out, "labeled")
    names = sorted(p.name for p in out.iterdir())
    expected = sorted(f"{pair + 1}_{person + 1:03d}_{1 if shot < 5 else 2}_{shot + 1:02d}.png"
                      for pair, persons in enumerate((3, 2)) for person in range(persons) for shot in range(10)
                      if (pair, person, shot) != (0, 1, 7))
    assert names == expected and written == len(expected) == 49
    assert "1_002_2_08.png" not in names  # the empty cell
    for pair, person, shot in ((0, 0, 0), (1, 1, 9), (0, 2, 5)):
        got = np.asarray(Image.open(out / f"{pair + 1}_{person + 1:03d}_{1 if shot < 5 else 2}_{shot + 1:02d}.png"))
        np.testing.assert_array_equal(got, image(pair, person, shot))
    assert not (tmp_path / "images_labeled.partial").exists()


def test_detected_subset_reads_its_own_entry(tmp_path):
    raw = tmp_path / "cuhk-03.mat"
    write_release(raw)
    extract_images(raw, tmp_path / "images_detected", "detected")
    got = np.asarray(Image.open(tmp_path / "images_detected" / "2_001_1_03.png"))
    np.testing.assert_array_equal(got, 255 - image(1, 0, 2))


def test_reader_extracts_on_first_use_then_reads_the_new_protocol_split(tmp_path):
    root = tmp_path / "cuhk03"
    (root / "cuhk03_release").mkdir(parents=True)
    write_release(root / "cuhk03_release" / "cuhk-03.mat")
    split = [{"train": [["/elsewhere/1_001_1_01.png", 0, 0], ["/elsewhere/1_001_2_06.png", 0, 1]],
              "query": [["/elsewhere/2_002_1_01.png", 5, 0]],
              "gallery": [["/elsewhere/2_002_2_10.png", 5, 1]]}]
    (root / "splits_new_labeled.json").write_text(json.dumps(split))
    data = CUHK03(str(tmp_path), labeled=True)
    train = data.records("train")
    assert [(Path(r.path).name, r.pid, r.camid) for r in train] == [("1_001_1_01.png", 0, 0), ("1_001_2_06.png", 0, 1)]
    assert all(Path(r.path).is_file() for r in train + data.records("query") + data.records("gallery"))
    np.testing.assert_array_equal(np.asarray(Image.open(train[1].path)), image(0, 0, 5))


def test_a_file_without_the_subset_names_what_it_holds_and_leaves_no_folder(tmp_path):
    raw = tmp_path / "cuhk-03.mat"
    with h5py.File(raw, "w") as f:
        f.create_dataset("something", data=np.zeros(3))
    with pytest.raises(ValueError, match=r"cuhk-03\.mat has no 'labeled' entry.*found: something"):
        extract_images(raw, tmp_path / "images_labeled", "labeled")
    assert not (tmp_path / "images_labeled").exists() and not (tmp_path / "images_labeled.partial").exists()


def release_and_pipeline(tmp_path) -> tuple[Path, Path]:
    """(the release file, a pipeline training on it): a cuhk03/ tree before its first use,
    with the release in cuhk03_release/ and the new-protocol split of the labeled subset."""
    import yaml

    from core.testing import TINY_PIPELINE

    root = tmp_path / "cuhk03"
    (root / "cuhk03_release").mkdir(parents=True)
    raw = root / "cuhk03_release" / "cuhk-03.mat"
    write_release(raw)
    (root / "splits_new_labeled.json").write_text(json.dumps([{"train": [], "query": [], "gallery": []}]))
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({**TINY_PIPELINE, "data": {**TINY_PIPELINE["data"], "train": [
        {"dataset": "cuhk03", "root": str(tmp_path), "labeled": True}]}}))
    return raw, path


def test_a_cut_release_file_is_one_line_naming_it_and_the_key(tmp_path, capsys):
    from core.cli import main

    raw, path = release_and_pipeline(tmp_path)
    root = raw.parents[1]
    raw.write_bytes(raw.read_bytes()[: raw.stat().st_size // 2])  # an interrupted download
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: data.train.0: dataset 'cuhk03' could not be built: CUHK03: {raw} is not "
                          "a readable cuhk-03.mat (OSError: ")
    assert "copy it again" in err and err.count("\n") == 1
    assert not (root / "images_labeled").exists() and not (root / "images_labeled.partial").exists()


def test_a_dataset_folder_it_cannot_write_to_is_one_line_about_writing(tmp_path, capsys, monkeypatch):
    """The first use extracts the images beside the release file; where that folder is read-only
    the line says it cannot write there (it said 'cannot read: ... needs read access', the
    reading fault's words, once the pipeline turned every PermissionError into those)."""
    import core.data.layouts.cuhk03 as layout
    from core.cli import main

    raw, path = release_and_pipeline(tmp_path)
    root = raw.parents[1]

    def read_only(raw, images, subset):  # what the OS says to a user without write access (tests run as root)
        raise PermissionError(13, "Permission denied", str(images))

    monkeypatch.setattr(layout, "extract_images", read_only)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: data.train.0: dataset 'cuhk03' could not be built: CUHK03: cannot write "
                          f"the extracted images to {root / 'images_labeled'} (Permission denied); extract once where "
                          "the dataset is writable"), err
    assert "read access" not in err and err.count("\n") == 1

"""The manifest dataset: CSV and JSON lines, splits, extras, and errors that name the
file, the line and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from core.data.manifest import ManifestDataset


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_rows_become_records_with_defaults_and_extras(tmp_path):
    m = write(tmp_path / "set.csv", "path,pid,camid,split,category,caption\n"
                                    "a.jpg,1,0,train,person,red coat\n"
                                    "b.jpg,1,2,query,,\n"
                                    "c.jpg,2,1,gallery,vehicle,\n")
    ds = ManifestDataset(str(m))
    train, = ds.records("train")
    assert train.path == str(tmp_path / "a.jpg")
    assert (train.pid, train.camid, train.category, train.domain) == (1, 0, "person", "set")
    assert train.extras == {"caption": "red coat"}
    query, = ds.records("query")
    assert query.category == "object" and query.extras == {}
    assert [r.path for r in ds.records("gallery")] == [str(tmp_path / "c.jpg")]


def test_jsonl_rows_keep_their_types_and_skip_blank_lines(tmp_path):
    rows = [{"path": "x/a.png", "pid": 7, "camid": 3, "domain": "d1", "parts": [[0, 0, 1, 1]]},
            {"path": "/abs/b.png", "pid": 8, "camid": 0, "split": "gallery"}]
    m = write(tmp_path / "set.jsonl", json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    ds = ManifestDataset(str(m), root="/data")
    train, = ds.records("train")
    assert train.path == "/data/x/a.png" and train.domain == "d1"
    assert train.extras == {"parts": [[0, 0, 1, 1]]}
    assert ds.records("gallery")[0].path == "/abs/b.png"


def test_format_is_sniffed_when_the_suffix_is_unknown(tmp_path):
    m = write(tmp_path / "list.txt", '{"path": "a.jpg", "pid": 1, "camid": 0}\n')
    assert ManifestDataset(str(m)).records("train")[0].pid == 1


def test_missing_manifest_names_the_path(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        ManifestDataset(str(missing))


def test_missing_pid_names_file_line_and_field(tmp_path):
    m = write(tmp_path / "set.csv", "path,pid,camid\na.jpg,1,0\nb.jpg,,0\n")
    with pytest.raises(ValueError, match=r"set\.csv:3: missing field 'pid'; required fields: path, pid, camid"):
        ManifestDataset(str(m))


def test_missing_required_column_names_the_header(tmp_path):
    m = write(tmp_path / "set.csv", "path,pid\na.jpg,1\n")
    with pytest.raises(ValueError, match=r"set\.csv:1: .*camid"):
        ManifestDataset(str(m))


@pytest.mark.parametrize("camid", ['"x"', "1.5", "true"])
def test_non_integer_camid_names_file_line_and_field(tmp_path, camid):
    m = write(tmp_path / "set.jsonl", '{"path": "a.jpg", "pid": 1, "camid": 0}\n'
                                      f'{{"path": "a.jpg", "pid": 1, "camid": {camid}}}\n')
    with pytest.raises(ValueError, match=r"set\.jsonl:2: field 'camid' must be an integer"):
        ManifestDataset(str(m))


def test_unknown_split_lists_the_valid_values(tmp_path):
    m = write(tmp_path / "set.csv", "path,pid,camid,split\na.jpg,1,0,val\n")
    with pytest.raises(ValueError, match=r"set\.csv:2: field 'split' .*'val'; valid values: train, query, gallery"):
        ManifestDataset(str(m))


def test_invalid_json_names_the_line(tmp_path):
    m = write(tmp_path / "set.jsonl", '{"path": "a.jpg", "pid": 1, "camid": 0}\n{"path": \n')
    with pytest.raises(ValueError, match=r"set\.jsonl:2: not valid JSON"):
        ManifestDataset(str(m))


def test_records_of_an_unknown_split_is_an_error(tmp_path):
    ds = ManifestDataset(str(write(tmp_path / "set.csv", "path,pid,camid\na.jpg,1,0\n")))
    with pytest.raises(ValueError, match="valid splits: train, query, gallery"):
        ds.records("test")


def test_load_image_decodes_relative_paths_and_names_missing_files(tmp_path):
    Image.new("RGB", (8, 16), (255, 0, 0)).save(tmp_path / "a.png")
    ds = ManifestDataset(str(write(tmp_path / "set.csv", "path,pid,camid\na.png,1,0\nb.png,2,0\n")))
    first, second = ds.records("train")
    assert ds.load_image(first).size == (8, 16)
    with pytest.raises(FileNotFoundError, match="b.png"):
        ds.load_image(second)


def test_a_missing_manifest_at_a_relative_path_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        ManifestDataset("data/m.csv")
    assert str(err.value) == (f"manifest file not found: data/m.csv (looked at {tmp_path / 'data' / 'm.csv'}; data "
                              "paths are relative to the folder core runs in, not to the pipeline file)")

"""Test sets that flatter every metric: test identities seen in training (the ReID protocol
tests unseen individuals), warned about at build where the reader keeps one pid namespace
across its splits (core.data.protocol_checks)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml
from layout_fixtures import images  # registered by conftest.py

from core.data.columns import as_columns
from core.testing import TINY_PIPELINE


def leaky_folder(root: Path) -> Path:
    """person 0003 is in train/ and in query/ + gallery/; 0004 is a test identity only."""
    images(root / "train" / "person" / "0003", "0003_c1_a.jpg", "0003_c2_b.jpg")
    images(root / "train" / "person" / "0006", "0006_c1_a.jpg", "0006_c2_b.jpg")
    images(root / "query" / "person" / "0003", "0003_c1_q.jpg")
    images(root / "gallery" / "person" / "0003", "0003_c2_g.jpg")
    images(root / "query" / "person" / "0004", "0004_c1_q.jpg")
    images(root / "gallery" / "person" / "0004", "0004_c2_g.jpg")
    return root


def build(tmp_path: Path, data: dict) -> list[str]:
    """Build the pipeline (model on the meta device) and return its messages."""
    from core.config.loading import load_pipeline
    from core.pipeline import build_pipeline

    config = {**copy.deepcopy(TINY_PIPELINE), "data": {**data, "transform": TINY_PIPELINE["data"]["transform"]},
              "sampler": {"name": "pk", "batch_size": 4, "k": 2}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    messages: list[str] = []
    build_pipeline(load_pipeline(path), echo=messages.append, meta=True)
    return messages


def seen_warnings(messages: list[str]) -> list[str]:
    return [m for m in messages if "also training identities" in m]


def test_a_folder_tree_with_a_test_identity_in_train_is_warned_about_once_with_counts_and_an_example(tmp_path):
    root = leaky_folder(tmp_path / "mine")
    warning, = seen_warnings(build(tmp_path, {"train": [{"dataset": "folder", "root": str(root)}]}))
    assert warning.startswith("warning: test set 'folder': 1 of 2 test identities (query/gallery) are also "
                              "training identities of 'folder' (e.g. person pid 3)")
    assert "seen_identities: true` on data.train.0" in warning


def test_the_same_folder_named_again_in_data_test_is_compared_too(tmp_path):
    root = leaky_folder(tmp_path / "mine")
    warning, = seen_warnings(build(tmp_path, {"train": [{"dataset": "folder", "root": str(root)}],
                                              "test": [{"dataset": "folder", "root": str(root)}]}))
    assert "1 of 2 test identities" in warning and "on data.test.0" in warning


def test_seen_identities_true_silences_the_warning(tmp_path):
    root = leaky_folder(tmp_path / "mine")
    data = {"train": [{"dataset": "folder", "root": str(root), "seen_identities": True}]}
    assert seen_warnings(build(tmp_path, data)) == []


def test_seen_identities_that_is_not_a_bool_names_the_key(tmp_path):
    from core.config.loading import ConfigError

    root = leaky_folder(tmp_path / "mine")
    with pytest.raises(ConfigError, match=r"data\.train\.0\.seen_identities: expected true or false"):
        build(tmp_path, {"train": [{"dataset": "folder", "root": str(root), "seen_identities": "yes"}]})


def test_a_folder_tree_with_disjoint_identities_is_not_warned_about(tmp_path):
    root = leaky_folder(tmp_path / "mine")
    for split in ("query", "gallery"):
        (root / split / "person" / "0003").rename(root / split / "person" / "0009")
    assert seen_warnings(build(tmp_path, {"train": [{"dataset": "folder", "root": str(root)}]})) == []


def test_a_manifest_with_one_pid_in_train_and_query_is_warned_about(tmp_path):
    images(tmp_path / "img", "a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg")
    rows = ["path,pid,camid,split", "img/a.jpg,7,0,train", "img/b.jpg,7,1,train", "img/c.jpg,8,0,train",
            "img/d.jpg,8,1,train", "img/e.jpg,7,0,query", "img/f.jpg,7,1,gallery"]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    warning, = seen_warnings(build(tmp_path, {"train": [{"dataset": "manifest", "path": str(tmp_path / "m.csv")}]}))
    assert "1 of 1 test identities" in warning and "object pid 7" in warning


def test_the_synthetic_world_keeps_test_identities_unseen(tmp_path):
    """Its test identities come after the training ones (world.py): nothing to warn about."""
    assert seen_warnings(build(tmp_path, copy.deepcopy(TINY_PIPELINE["data"]))) == []


def test_a_synthetic_test_world_of_the_same_seed_reusing_training_identities_is_warned_about(tmp_path):
    """Train identities 0..7; a test world with identities=4 tests 4..7: the same individuals."""
    train = copy.deepcopy(TINY_PIPELINE["data"]["train"])
    test = [{**train[0], "identities": 4}]
    warning, = seen_warnings(build(tmp_path, {"train": train, "test": test}))
    assert "8 of 8 test identities" in warning  # 4 persons + 4 vehicles


def test_market_style_pids_numbered_per_split_are_not_compared(tmp_path):
    """The synthetic world's Market export numbers train and test pids 1..N separately: pid 1
    in bounding_box_train and in query are different individuals (core.data.synthetic.export)."""
    root = tmp_path / "market"
    images(root / "bounding_box_train", "0001_c1s1_000001_00.jpg", "0001_c2s1_000002_00.jpg",
           "0002_c1s1_000001_00.jpg", "0002_c2s1_000002_00.jpg")
    images(root / "query", "0001_c1s1_000001_00.jpg")
    images(root / "bounding_box_test", "0001_c2s1_000002_00.jpg")
    assert seen_warnings(build(tmp_path, {"train": [{"dataset": "market1501", "root": str(root)}]})) == []


def test_core_data_stats_shows_the_test_identities_seen_in_training(tmp_path, capsys):
    import json

    from core.cli import main

    root = leaky_folder(tmp_path / "mine")
    assert main(["data", "stats", str(root)]) == 0
    assert ("warning: test identities seen in training: 1 of 2 (e.g. person pid 3)"
            in capsys.readouterr().out)
    assert main(["data", "stats", str(root), "--json"]) == 0
    (_, got), = json.loads(capsys.readouterr().out).items()
    assert got["seen_identities"] == {"identities": 1, "of": 2, "examples": ["person pid 3"]}


# -- a query image that is also in the gallery ---------------------------------------------------

def query_in_gallery_warnings(messages: list[str]) -> list[str]:
    return [m for m in messages if "also in the gallery" in m]


def two_manifest_rows(tmp_path: Path, query_paths: list[str], gallery_paths: list[str]) -> dict:
    images(tmp_path / "img", "a.jpg", "b.jpg", "c.jpg", "d.jpg", "q1.jpg", "q2.jpg", "g1.jpg", "g2.jpg")
    rows = ["path,pid,camid,split", "img/a.jpg,1,0,train", "img/b.jpg,1,1,train", "img/c.jpg,2,0,train",
            "img/d.jpg,2,1,train"]
    rows += [f"{p},{5 + i},0,query" for i, p in enumerate(query_paths)]
    rows += [f"{p},{5 + i},1,gallery" for i, p in enumerate(gallery_paths)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {"train": [{"dataset": "manifest", "path": str(tmp_path / "m.csv")}]}


def test_a_query_image_listed_in_the_gallery_too_is_warned_about_with_the_count_and_the_path(tmp_path):
    """q1.jpg is a query and, written another way (./img/q1.jpg), a gallery image."""
    data = two_manifest_rows(tmp_path, ["img/q1.jpg", "img/q2.jpg"], ["./img/q1.jpg", "img/g2.jpg"])
    warning, = query_in_gallery_warnings(build(tmp_path, data))
    assert warning.startswith(f"warning: test set 'manifest': 1 of 2 query images are also in the gallery "
                              f"(the same path: {tmp_path / 'img' / 'q1.jpg'})")


def test_distinct_query_and_gallery_images_are_not_warned_about(tmp_path):
    data = two_manifest_rows(tmp_path, ["img/q1.jpg", "img/q2.jpg"], ["img/g1.jpg", "img/g2.jpg"])
    assert query_in_gallery_warnings(build(tmp_path, data)) == []


def test_rendered_images_without_paths_are_not_compared(tmp_path):
    assert query_in_gallery_warnings(build(tmp_path, copy.deepcopy(TINY_PIPELINE["data"]))) == []


def validate_output(tmp_path: Path, data: dict, capsys) -> str:
    from core.cli import main

    config = {**copy.deepcopy(TINY_PIPELINE), "data": data}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["validate", "--data", str(path)]) == 0  # warnings: the data can be read
    return capsys.readouterr().out


def test_core_validate_data_reports_test_identities_seen_in_training(tmp_path, capsys):
    out = validate_output(tmp_path, {"train": [{"dataset": "folder", "root": str(leaky_folder(tmp_path / "m"))}]},
                          capsys)
    assert "data OK" in out and "  warning: test set 'folder': 1 of 2 test identities" in out


def test_core_validate_data_reports_query_images_in_the_gallery(tmp_path, capsys):
    out = validate_output(tmp_path, two_manifest_rows(tmp_path, ["img/q1.jpg", "img/q2.jpg"],
                                                      ["img/q1.jpg", "img/g2.jpg"]), capsys)
    assert "data OK" in out and "  warning: test set 'manifest': 1 of 2 query images are also in the gallery" in out


# -- the same check at scale: normalised over the column, not path by path ---------------------

AWKWARD_PATHS = ["a/b.jpg", "./a/b.jpg", "a//b.jpg", "a/./b.jpg", "a/x/../b.jpg", "../up/c.jpg", "/abs/d.jpg",
                 "/abs//d.jpg", "/abs/./e/../d.jpg", "//two/leading.jpg", "/two/leading.jpg", "dir/",
                 "dir", "é/ü.jpg", "./é/ü.jpg", "a/b.jpg.", "a/.hidden.jpg", "a/..b.jpg", "a/b..jpg"]


def plain_query_in_gallery(query: list, gallery: list) -> list[str]:
    """The definition: normpath(abspath(path)) of each side, intersected, sorted."""
    def norm(records):
        return {os.path.normpath(os.path.abspath(r.path)) for r in records if r.path}
    return sorted(norm(query) & norm(gallery))


def path_records(paths: list, split: str) -> list:
    from core.records import Record

    return [Record(path=p, pid=i, camid=0, category="person", domain="d", split=split) for i, p in enumerate(paths)]


@pytest.mark.parametrize("working_folder", ["tmp", "/"])
def test_query_in_gallery_matches_the_definition_for_every_way_of_writing_a_path(tmp_path, monkeypatch,
                                                                                  working_folder):
    from core.data.protocol_checks import query_paths_in_gallery

    monkeypatch.chdir(tmp_path if working_folder == "tmp" else "/")
    absolute = [os.path.join(os.getcwd(), p) for p in ("a/b.jpg", "a/../up/c.jpg", "é/ü.jpg")]
    everything = AWKWARD_PATHS + absolute + ["", None]
    for q_paths, g_paths in ((everything, everything), (AWKWARD_PATHS[::2] + absolute[:1], AWKWARD_PATHS[1::2]),
                             (AWKWARD_PATHS[1::2] + [None], absolute + AWKWARD_PATHS[::3])):
        query, gallery = path_records(q_paths, "query"), path_records(g_paths, "gallery")
        got = query_paths_in_gallery(query, gallery)
        assert got == plain_query_in_gallery(query, gallery), (q_paths, g_paths)
        assert query_paths_in_gallery(as_columns(query), as_columns(gallery)) == got


def test_paths_already_normalised_are_not_normalised_one_by_one(monkeypatch):
    """A million-record test set is checked at each build: only paths that normalisation
    rewrites (here 2 of 2,002) may go through os.path.normpath."""
    import posixpath

    from core.data.protocol_checks import query_paths_in_gallery

    calls = []
    real = posixpath.normpath
    monkeypatch.setattr(posixpath, "normpath", lambda p: calls.append(p) or real(p))
    query = path_records([f"/data/q/{i}.jpg" for i in range(1000)] + ["/data/g//7.jpg"], "query")
    gallery = path_records([f"/data/g/{i}.jpg" for i in range(1000)] + ["./rel/x.jpg"], "gallery")
    assert query_paths_in_gallery(as_columns(query), as_columns(gallery)) == ["/data/g/7.jpg"]
    assert len(calls) <= 2 * 2, len(calls)  # abspath normalises too: at most two calls per rewritten path

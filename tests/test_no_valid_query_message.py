"""The 'no valid query' error of a run on a tree read from file names: one line (no type
name, no traceback hint) that names the test set's records and says where the cameras
came from -- the folder layout's `c<N>` token -- with one query file and the camera read."""

from __future__ import annotations

from layout_fixtures import images  # registered by conftest.py

from core.testing import TINY_PIPELINE


def single_camera_test_tree(root):
    """Every gallery image of a query's identity is on the query's camera (c1): with the
    same-camera exclusion on, no query keeps a match."""
    for pid in range(4):
        images(root / "train" / "thing" / f"{pid}", f"{pid}_c1_0.jpg", f"{pid}_c2_0.jpg")
    for pid in (10, 11):
        images(root / "query" / "thing" / f"{pid}", f"{pid}_c1_0.jpg")
        images(root / "gallery" / "thing" / f"{pid}", f"{pid}_c1_1.jpg")
    return root


def test_no_valid_query_says_the_cameras_come_from_the_file_names_in_one_line(tmp_path, capsys):
    import yaml

    from core.cli import main

    root = single_camera_test_tree(tmp_path / "things")
    config = {**TINY_PIPELINE, "data": {"train": [{"dataset": "folder", "root": str(root)}],
                                        "transform": {"size": [32, 16], "pad": 2}},
              "sampler": {"name": "pk", "batch_size": 4, "k": 2}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run")]) == 2  # bad input (core/exit_codes.py)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    line, = err
    # which pipeline key (not "error: ValueError: ..."): a training dataset's own query/gallery here
    assert line.startswith(f"error: {path}: data.train.0 (test set 'folder'): no valid query in the query set"), line
    assert "--debug" not in line
    assert "query images of 'things'" in line
    assert f"query images of 'things' under {root / 'query' / 'thing'}" in line, line
    assert f"gallery images under {root / 'gallery' / 'thing'}" in line, line
    assert ("a query is valid when the gallery holds an image of its identity taken by another camera "
            "(exclude_same_camera: true)") in line, line
    assert "cameras come from the image file names" in line and "`c<N>` token" in line
    assert f"{root / 'query' / 'thing' / '10' / '10_c1_0.jpg'} has camid 1" in line


def test_the_error_is_still_a_value_error_for_code_that_catches_one():
    import numpy as np
    import pytest

    from core.evaluation.ranking import rank_metrics

    d = np.zeros((1, 1), dtype=np.float32)
    with pytest.raises(ValueError, match="no valid query"):
        rank_metrics(d, np.array([1]), np.array([1]), np.array([0]), np.array([0]))


def market_feature_set(root, names):
    """A FeatureSet of Market-1501 records read from `names` under `root` (their pid and camera)."""
    import numpy as np
    import torch

    from core.interfaces import FeatureSet
    from core.records import Record

    records = [Record(path=str(root / n), pid=int(n[:4]), camid=int(n[6]) - 1, category="person",
                      domain="market1501", split="query") for n in names]
    return FeatureSet(embeddings=torch.eye(len(names), 4), pids=np.array([r.pid for r in records]),
                      camids=np.array([r.camid for r in records]), records=records)


def test_without_camera_exclusion_a_valid_query_only_needs_its_identity_in_the_gallery(tmp_path):
    import pytest

    from core.evaluation.reid import ReIDEvaluator
    from core.evaluation.ranking import NoValidQuery

    query = market_feature_set(tmp_path / "query", ["0001_c1s1_001051_00.jpg"])
    gallery = market_feature_set(tmp_path / "bounding_box_test", ["0002_c2s1_000301_01.jpg"])
    with pytest.raises(NoValidQuery) as caught:
        ReIDEvaluator(exclude_same_camera=False).evaluate(query, gallery)
    message = str(caught.value)
    assert "a query is valid when the gallery holds an image of its identity;" in message, message
    assert "another camera" not in message and "\n" not in message
    assert f"gallery images under {tmp_path / 'bounding_box_test'}" in message


def test_no_valid_query_is_bad_input_by_the_exit_code_conventions():
    from core.evaluation.ranking import NoValidQuery
    from core.exit_codes import exit_code

    assert exit_code(NoValidQuery("no valid query in the query set")) == 2


def test_the_folder_named_is_the_one_every_image_lies_under():
    from core.evaluation.reid import _common_folder
    from core.records import Record

    def records(*paths):
        return [Record(path=p, pid=0, camid=0, category="person") for p in paths]

    assert _common_folder(records("/d/q/1.jpg", "/d/q/2.jpg", None)) == "/d/q"
    assert _common_folder(records("/d/a/y.jpg", "/d/a-b/x.jpg", "/d/a/z/w.jpg")) == "/d"  # '-' sorts before '/'
    assert _common_folder(records("/d/ab/1.jpg", "/d/ac/2.jpg")) == "/d"  # folders, not characters
    assert _common_folder(records("/d/q/1.jpg")) == "/d/q"
    assert _common_folder(records(None)) == "" and _common_folder(records("rel/1.jpg", "/abs/2.jpg")) == ""

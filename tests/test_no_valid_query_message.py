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
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run")]) != 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    line, = err
    assert line.startswith("error: no valid query in the query set"), line  # not "error: ValueError: ..."
    assert "--debug" not in line
    assert "query images of 'things'" in line
    assert "cameras come from the image file names" in line and "`c<N>` token" in line
    assert f"{root / 'query' / 'thing' / '10' / '10_c1_0.jpg'} is camera 1" in line


def test_the_error_is_still_a_value_error_for_code_that_catches_one():
    import numpy as np
    import pytest

    from core.evaluation.ranking import rank_metrics

    d = np.zeros((1, 1), dtype=np.float32)
    with pytest.raises(ValueError, match="no valid query"):
        rank_metrics(d, np.array([1]), np.array([1]), np.array([0]), np.array([0]))

"""Queries the standard protocol leaves out (no gallery item of their identity from another
camera: Market-1501's evaluation, torchreid, fast-reid skip them) must be visible: the
table's numbers are over the valid queries alone. The expected counts come from the tree's
own file names, not from the evaluator."""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

from core.testing import TINY_PIPELINE


def _tree(root):
    """A `folder`-layout tree: 3 query identities on camera 1; identities 10 and 11 have
    gallery images on camera 2, identity 12 only on camera 1 (so its query has no valid
    match). Expected: 1 of 3 queries skipped."""
    rng = np.random.default_rng(0)

    def image(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)).save(path)

    for pid in range(4):
        for cam in (1, 2):
            for n in range(2):
                image(root / "train" / "thing" / f"{pid}" / f"{pid}_c{cam}_{n}.jpg")
    for pid in (10, 11, 12):
        image(root / "query" / "thing" / f"{pid}" / f"{pid}_c1_0.jpg")
    for pid, cam in ((10, 2), (11, 2), (12, 1), (13, 2)):
        image(root / "gallery" / "thing" / f"{pid}" / f"{pid}_c{cam}_0.jpg")
    return root


def test_skipped_queries_are_warned_of_and_stated_in_the_report(tmp_path, run_tiny_pipeline, caplog):
    root = _tree(tmp_path / "things")
    config = {**TINY_PIPELINE, "data": {"train": [{"dataset": "folder", "root": str(root)}],
                                        "transform": {"size": [32, 16], "pad": 2}},
              "sampler": {"name": "pk", "batch_size": 8, "k": 2}}
    with caplog.at_level(logging.WARNING):
        result = run_tiny_pipeline(config)
    run_dir = tmp_path / "run-pipeline"
    report = (run_dir / "report.md").read_text()
    assert "1 of 3 queries have no gallery item of their identity" in report, report
    assert "the numbers are over the other 2" in report
    warned = [r.getMessage() for r in caplog.records if "queries have no gallery item" in r.getMessage()]
    assert len(warned) == 1 and "1 of 3" in warned[0], warned  # once, though evaluated twice
    del result


def test_no_sentence_when_every_query_counts(tmp_path, run_tiny_pipeline):
    root = _tree(tmp_path / "things")
    (root / "query" / "thing" / "12" / "12_c1_0.jpg").unlink()
    (root / "query" / "thing" / "12").rmdir()
    config = {**TINY_PIPELINE, "data": {"train": [{"dataset": "folder", "root": str(root)}],
                                        "transform": {"size": [32, 16], "pad": 2}},
              "sampler": {"name": "pk", "batch_size": 8, "k": 2}}
    run_tiny_pipeline(config)
    assert "left out of every metric" not in (tmp_path / "run-pipeline" / "report.md").read_text()

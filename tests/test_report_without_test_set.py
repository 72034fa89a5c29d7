"""A run without a test set (a train-only folder tree) has no metrics: report.md says so in
words, where it printed an empty table (`| |  |`)."""

from __future__ import annotations

from layout_fixtures import images  # registered by conftest.py

from core.testing import TINY_PIPELINE
from core.training.report import format_report


def test_a_report_without_evaluations_says_there_is_no_test_set_and_has_no_table():
    text = format_report("mine", [])
    assert "no test set" in text
    assert "|" not in text  # no table at all, not an empty one


def test_a_train_only_folder_tree_writes_a_report_that_says_there_is_no_test_set(tmp_path, run_tiny_pipeline):
    root = tmp_path / "things"
    for pid in range(4):
        images(root / "train" / "thing" / f"{pid}", f"{pid}_c1_0.jpg", f"{pid}_c2_0.jpg")
    config = {**TINY_PIPELINE, "data": {"train": [{"dataset": "folder", "root": str(root)}],
                                        "transform": {"size": [32, 16], "pad": 2}},
              "sampler": {"name": "pk", "batch_size": 4, "k": 2}}
    run_tiny_pipeline(config)
    report = (tmp_path / "run-pipeline" / "report.md").read_text()
    assert "no test set" in report and "| |" not in report, report

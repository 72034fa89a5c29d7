"""A gallery .npz that `core extract` wrote from a run's own split keeps pids, cameras and
paths, not the records' extras an evaluator's rule may read (a task, a clothes id). When
rows were left out (--skip-bad-images), `core.tools.ranked_items` finds each row's record
of the run's split by its path; a .npz from another run is not the run's split at all.
The reference here is the records as written: which path carries which task."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from core.data.table import RecordTable
from core.interfaces import Evaluator, RankedGallery
from core.records import Record
from core.tools.images import ImageSet

TASKS = ["a", "b", "b", "a", "b", "a"]  # gallery record i: path /g/i.jpg, task TASKS[i]


def table(records: list[Record]) -> RecordTable:
    n = len(records)
    return RecordTable(records=records, source_ids=np.zeros(n, np.int64), sources=["toy"],
                       pids=np.asarray([r.pid for r in records]), camids=np.asarray([r.camid for r in records]),
                       category_ids=np.zeros(n, np.int64), category_names=["object"],
                       domain_ids=np.zeros(n, np.int64), domain_names=["default"])


class TaskBEvaluator(Evaluator):
    """Ranks only the gallery items whose record's task is not 'b' (read from records' extras)."""

    def evaluate(self, query, gallery):
        return {}

    def ranked_gallery(self, query, gallery):
        hide = np.asarray([r.extras.get("task") == "b" for r in gallery.records])
        return RankedGallery(ranked=lambda rows: np.tile(~hide, (len(rows), 1)), rule="task a only")


def setup(tmp_path: Path, monkeypatch, run_dir: Path, kept_rows: list[int]):
    import core.tools.images as images

    split_records = [Record(f"/g/{i}.jpg", pid=i % 3, camid=1 + i % 2, split="gallery", extras={"task": t})
                     for i, t in enumerate(TASKS)]
    split = ImageSet(table(split_records), [], "run:gallery")
    monkeypatch.setattr(images, "run_split", lambda run, spec: split)
    # the .npz's rows: some of the split's, in order, without extras (as load_features gives them)
    npz_records = [Record(f"/g/{i}.jpg", pid=i % 3, camid=1 + i % 2, split="gallery") for i in kept_rows]
    gallery_set = ImageSet(table(npz_records), [], "g.npz")
    gallery = tmp_path / "g.npz"
    np.savez(gallery, meta=np.asarray(json.dumps({"source": "run:gallery", "run_dir": str(run_dir.resolve())})))
    query_set = ImageSet(table([Record("/q/0.jpg", pid=0, camid=3, split="query")]), [], "run:query")
    run = SimpleNamespace(run_dir=tmp_path.resolve(), pipeline=SimpleNamespace(evaluator=TaskBEvaluator()))
    return run, gallery, query_set, gallery_set


def test_a_gallery_npz_with_rows_left_out_is_ranked_by_each_rows_own_record(tmp_path, monkeypatch):
    from core.tools.ranked_items import search_rule

    kept_rows = [0, 2, 3, 5]  # rows 1 and 4 left out: the .npz is not the split row for row
    run, gallery, query_set, gallery_set = setup(tmp_path, monkeypatch, tmp_path, kept_rows)
    rule = search_rule(run, "run:query", gallery, query_set, gallery_set, None)
    want = [TASKS[i] != "b" for i in kept_rows]  # by path: /g/0 a, /g/2 b, /g/3 a, /g/5 a
    assert rule.protocol is not None and rule.ranked(np.array([0])).tolist() == [want]


def test_a_gallery_npz_of_another_run_gets_the_tools_camera_rule(tmp_path, monkeypatch):
    from core.tools.ranked_items import search_rule

    other = tmp_path / "another-run"
    other.mkdir()
    run, gallery, query_set, gallery_set = setup(tmp_path, monkeypatch, other, list(range(len(TASKS))))
    rule = search_rule(run, "run:query", gallery, query_set, gallery_set, None)
    # not this run's split: the whole gallery (no flag, not the run's own splits)
    assert rule.protocol is None and rule.ranked(np.array([0])).tolist() == [[True] * len(TASKS)]

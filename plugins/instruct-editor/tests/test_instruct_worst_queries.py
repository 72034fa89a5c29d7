"""The tools on an Instruct-ReID run rank what the `instruct_reid` evaluator ranks
(`ranked_gallery`, from the same task blocks as `evaluate`): each query's task gallery,
less its identity in its camera and, for clothes-changing queries, in its clothes.
`core search --worst` ranked every query against the whole gallery under the core's rule,
so its per-query APs and mAP were none of `core eval`'s numbers, and search showed items
of other tasks, which evaluation never ranks."""

from pathlib import Path

import numpy as np
import pytest
import torch

from core.interfaces import FeatureSet
from core.runner import evaluate_run, run
from reid_instruct_editor.tasks import CLOTHES_CHANGING
from reid_instruct_editor.testing import TINY_TWIN

PIPELINE = Path(__file__).resolve().parents[3] / "pipelines" / "irm_synthetic.yaml"
#: three test people per task: a task gallery with negatives, and clothes changes
WORST_TWIN = [*TINY_TWIN, "data.test.0.world.test_identities=18"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def irm_run(tmp_path_factory):
    return run(PIPELINE, WORST_TWIN, run_dir=tmp_path_factory.mktemp("irm-worst") / "run").run_dir


def embedded(run_dir):
    """(run, query set, gallery set, query FeatureSet, gallery FeatureSet) under the tools' embedding."""
    from core.tools.extract import embed
    from core.tools.images import run_split
    from core.tools.loading import load_run

    loaded = load_run(run_dir, device="cpu")
    sets = run_split(loaded, "query"), run_split(loaded, "gallery")
    features = [FeatureSet(torch.from_numpy(embed(loaded, s, progress=False)), s.table.pids, s.table.camids,
                           records=s.table.records) for s in sets]
    return (loaded, *sets, *features)


def task_of(records) -> np.ndarray:
    return np.asarray([str(r.extras["task"]) for r in records])


def test_worst_ap_mean_is_the_evaluators_map_per_task_then_over_tasks(irm_run):
    from core.tools.ranked_items import evaluation_rule, protocol_map
    from core.tools.search import protocol_average_precision

    loaded, query, gallery, q_feats, g_feats = embedded(irm_run)
    evaluator = loaded.pipeline.evaluator
    metrics = evaluator.evaluate(q_feats, g_feats)
    rule = evaluation_rule(evaluator, query, gallery)
    valid, ap, _ = protocol_average_precision(q_feats.embeddings.numpy(), g_feats.embeddings.numpy(), loaded.metric,
                                              rule.ranked, query.table.pids, gallery.table.pids)
    tasks = task_of(query.table.records)
    assert len(set(tasks)) == 6
    for task in set(tasks):
        mine = valid & (tasks == task)
        assert 100 * ap[mine].mean() == pytest.approx(metrics[f"{task}/mAP"], abs=1e-6), task
    value, how = protocol_map(rule.protocol, ap, valid)
    assert 100 * value == pytest.approx(metrics["mAP"], abs=1e-6)
    assert rule.protocol.key == "mAP" and "6 tasks" in how


def test_each_worst_ap_is_the_one_the_evaluator_ranks_in_its_task_block(irm_run):
    """Query by query, not only the mean: `--worst`'s AP over the whole gallery under the
    hook's mask is the AP the evaluator's own call (`per_query_metrics` on the query's
    task block, with its clothes groups) gives that query."""
    from core.evaluation.distances import blocked_rows, distance_to
    from core.evaluation.ranking import per_query_metrics
    from core.tools.ranked_items import evaluation_rule
    from core.tools.search import protocol_average_precision

    loaded, query, gallery, q_feats, g_feats = embedded(irm_run)
    evaluator = loaded.pipeline.evaluator
    rule = evaluation_rule(evaluator, query, gallery)
    valid, ap, first = protocol_average_precision(q_feats.embeddings.numpy(), g_feats.embeddings.numpy(),
                                                  loaded.metric, rule.ranked, query.table.pids, gallery.table.pids)
    seen, grouped = 0, False
    for _, q_rows, g_rows, groups in evaluator._task_blocks(q_feats, g_feats, "task-specific"):
        g_emb = g_feats.embeddings[torch.as_tensor(g_rows)]
        want = per_query_metrics(blocked_rows(distance_to(g_emb, loaded.metric), q_feats.embeddings[q_rows],
                                              len(g_rows)),
                                 q_feats.pids[q_rows], g_feats.pids[g_rows], q_feats.camids[q_rows],
                                 g_feats.camids[g_rows], exclude_same_camera=evaluator.exclude_same_camera, **groups)
        assert valid[q_rows].tolist() == want.valid.tolist()
        np.testing.assert_allclose(ap[q_rows], want.average_precision, rtol=0, atol=1e-12)
        assert first[q_rows].tolist() == want.first_rank.tolist()
        seen, grouped = seen + len(q_rows), grouped or bool(groups)
    assert seen == len(query) and grouped  # every query, the clothes rule among them


def test_the_rule_is_the_task_gallery_less_same_camera_and_same_clothes_items(irm_run):
    """A plain loop over the records: item j is ranked for query i when it is of i's task
    and not (i's identity and (i's camera, or i's clothes for a clothes-changing query))."""
    from core.tools.ranked_items import evaluation_rule

    loaded, query, gallery, _, _ = embedded(irm_run)
    q, g = query.table.records, gallery.table.records
    mask = evaluation_rule(loaded.pipeline.evaluator, query, gallery).ranked(np.arange(len(q)))
    clothes_removed = 0
    for i, a in enumerate(q):
        for j, b in enumerate(g):
            same_task = a.extras["task"] == b.extras["task"]
            same_clothes = a.extras["task"] == CLOTHES_CHANGING and a.extras["clothes_id"] == b.extras["clothes_id"]
            removed = a.pid == b.pid and (a.camid == b.camid or same_clothes)
            clothes_removed += same_task and a.pid == b.pid and a.camid != b.camid and same_clothes
            assert mask[i, j] == (same_task and not removed), (i, j)
    assert clothes_removed  # the clothes rule is exercised, not only the camera's


def test_worst_prints_core_evals_map_and_search_keeps_to_the_task_gallery(irm_run, tmp_path):
    from core.tools.search import search, worst_queries

    printed = []
    worst_queries(irm_run, count=3, top=4, out=tmp_path / "worst", device="cpu", progress=False,
                  echo=printed.append)
    line = next(p for p in printed if p.startswith("instruct: "))
    assert "= core eval's 'instruct/mAP'" in line and "6 tasks" in line
    assert float(line.split("mAP ")[1].split("%")[0]) == round(evaluate_run(irm_run)["instruct/mAP"], 1)
    _, query, gallery, _, _ = embedded(irm_run)
    q_tasks, g_tasks = task_of(query.table.records), task_of(gallery.table.records)
    results = search(irm_run, "run:query", "run:gallery", top=len(gallery), device="cpu", progress=False,
                     echo=lambda text: None)
    assert all(r.gallery.size and set(g_tasks[r.gallery]) == {q_tasks[r.query]} for r in results)


def test_with_itm_reranking_the_tools_do_not_claim_evaluations_number():
    """The tools rank text-to-image queries by plain distances; evaluation re-ranks their
    top k by the ITM head: `differs` says so, and `setting: task-free` names free/mAP."""
    from core.records import Record
    from reid_instruct_editor.evaluator import InstructReIDEvaluator

    def features(tasks):
        records = [Record(path=None, pid=i % 2, camid=i, category="person", extras={"task": t})
                   for i, t in enumerate(tasks)]
        return FeatureSet(torch.zeros(len(tasks), 0), np.arange(len(tasks)) % 2, np.arange(len(tasks)),
                          records=records)

    query, gallery = features(["text-to-image", "traditional"]), features(["text-to-image"] * 2 + ["traditional"] * 2)
    specific = InstructReIDEvaluator().ranked_gallery(query, gallery)
    assert specific.differs == "" and specific.key == "mAP"
    # query i: pid i % 2, camera i; gallery j: pid j % 2, camera j (item i: the query's identity and camera)
    assert specific.ranked(np.arange(2)).tolist() == [[False, True, False, False], [False, False, True, True]]
    assert "itm_rerank" in InstructReIDEvaluator(itm_rerank=4).ranked_gallery(query, gallery).differs
    free = InstructReIDEvaluator(setting="task-free").ranked_gallery(query, gallery)
    assert free.key == "free/mAP" and free.ranked(np.arange(2)).tolist() == [[False, True, True, True],
                                                                            [True, False, True, True]]

"""mAP-tau (paper Fig. 4) and the task-specific / task-free settings of `instruct_reid`."""

import math

import numpy as np
import pytest
import torch

from core.interfaces import FeatureSet
from core.records import Record
from reid_instruct_editor.evaluator import InstructReIDEvaluator
from reid_instruct_editor.tasks import CLOTHES_CHANGING
from reid_instruct_editor.map_tau import per_query_metrics_tau


def unit(*cosines_and_rest):
    v = torch.tensor(cosines_and_rest, dtype=torch.float32)
    return v / v.norm()


def features(embeddings, pids, cams, instructions, tasks=None):
    n = len(pids)
    records = [Record(path=None, pid=p, camid=c, extras={"task": t} if tasks else {})
               for p, c, t in zip(pids, cams, tasks or [None] * n)]
    return FeatureSet(embeddings=torch.as_tensor(embeddings, dtype=torch.float32), pids=np.asarray(pids),
                      camids=np.asarray(cams), extras={"reference_instruction_embedding": torch.stack(instructions)},
                      records=records)


@pytest.fixture
def figure4():
    """One query (identity 1, camera 0, instruction e1) and a gallery ranked by distance:
    rank 1: identity 1, instruction similarity 0.9     positive (both metrics)
    rank 2: identity 2                                  negative
    rank 3: identity 1, similarity 0.3                  positive for mAP, negative for mAP-tau (tau 0.5)
    rank 4: identity 1, similarity 0.7                  positive
    rank 5: identity 3                                  negative
    rank 6: identity 1, camera 0 (the query's camera)   junk: removed from both rankings
    """
    q = features([[0.0]], [1], [0], [unit(1, 0)])
    sims = [0.9, 0.1, 0.3, 0.7, 0.1, 0.95]
    g = features([[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]], [1, 2, 1, 1, 3, 1], [1, 1, 1, 2, 1, 0],
                 [unit(c, math.sqrt(1 - c * c)) for c in sims])
    return q, g


def test_figure4_hand_worked_ranked_list(figure4):
    q, g = figure4
    m = InstructReIDEvaluator(setting="task-free", tau=0.5, metric="euclidean", ranks=[1, 2]).evaluate(q, g)
    # mAP: positives at ranks 1, 3, 4 of the kept list -> (1/1 + 2/3 + 3/4) / 3
    assert math.isclose(m["free/mAP"], 100 * (1 + 2 / 3 + 3 / 4) / 3, rel_tol=1e-9)
    # mAP-tau: the rank-3 item's instruction is too far (0.3 < 0.5): a negative -> (1/1 + 2/4) / 2
    assert math.isclose(m["free/mAP_tau"], 100 * (1 + 2 / 4) / 2, rel_tol=1e-9)
    assert m["free/mINP"] == pytest.approx(100 * 3 / 4) and m["free/mINP_tau"] == pytest.approx(100 * 2 / 4)
    assert m["free/rank-1"] == m["free/rank-1_tau"] == 100.0


def test_a_first_hit_with_another_instruction_is_a_miss_under_tau(figure4):
    q, g = figure4
    g.extras["reference_instruction_embedding"][0] = unit(0.2, math.sqrt(1 - 0.04))  # the rank-1 item now disagrees
    m = InstructReIDEvaluator(setting="task-free", tau=0.5, metric="euclidean", ranks=[1, 5]).evaluate(q, g)
    assert m["free/rank-1"] == 100.0 and m["free/rank-1_tau"] == 0.0
    assert math.isclose(m["free/mAP_tau"], 100 * (1 / 4), rel_tol=1e-9)  # one positive left, at rank 4


def test_tau_below_every_similarity_gives_plain_map():
    rng = np.random.default_rng(0)
    n_q, n_g = 25, 70
    instructions = torch.nn.functional.normalize(torch.as_tensor(rng.normal(size=(n_q + n_g, 4))).float(), dim=1)
    q = features(rng.normal(size=(n_q, 6)), rng.integers(0, 6, n_q), rng.integers(0, 3, n_q), list(instructions[:n_q]))
    g = features(rng.normal(size=(n_g, 6)), rng.integers(0, 6, n_g), rng.integers(0, 3, n_g), list(instructions[n_q:]))
    m = InstructReIDEvaluator(setting="task-free", tau=-1.0).evaluate(q, g)
    for key in ("mAP", "mINP", "rank-1", "rank-5", "num_valid_queries"):
        assert m[f"free/{key}"] == m[f"free/{key}_tau"], key
    strict = InstructReIDEvaluator(setting="task-free", tau=0.3).evaluate(q, g)
    assert strict["free/num_valid_queries_tau"] < strict["free/num_valid_queries"]


def reference(d, q_pids, g_pids, q_cams, g_cams, sim, tau, q_clothes=None, g_clothes=None):
    """A straightforward per-query loop: stable sort, drop same identity + camera (and +
    clothes, when given), the positives are the remaining same-identity items with
    similarity >= tau."""
    out = []
    for i in range(len(q_pids)):
        order = np.argsort(d[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i]))
        if q_clothes is not None:
            keep &= ~((g_pids[order] == q_pids[i]) & (g_clothes[order] == q_clothes[i]))
        order = order[keep]
        hits = (g_pids[order] == q_pids[i]) & (sim[i, order] >= tau)
        if not hits.any():
            out.append(None)
            continue
        ranks = np.flatnonzero(hits) + 1
        ap = np.mean(np.arange(1, len(ranks) + 1) / ranks)
        out.append((ranks[0], ap, len(ranks) / ranks[-1]))
    return out


@pytest.mark.parametrize("clothes", [False, True])
def test_matches_a_per_query_reference_loop_on_random_data(clothes):
    rng = np.random.default_rng(1)
    n_q, n_g = 40, 150
    q_pids, g_pids = rng.integers(0, 8, n_q), rng.integers(0, 8, n_g)
    q_cams, g_cams = rng.integers(0, 3, n_q), rng.integers(0, 3, n_g)
    d = rng.random((n_q, n_g)).round(2)  # rounded: plenty of ties, ordered by gallery index
    qi = torch.nn.functional.normalize(torch.as_tensor(rng.normal(size=(n_q, 3))), dim=1)
    gi = torch.nn.functional.normalize(torch.as_tensor(rng.normal(size=(n_g, 3))), dim=1)
    sim = (qi @ gi.t()).numpy()
    tau = 0.1
    groups = {}
    if clothes:  # the clothes-changing protocol: the query's identity in its own clothes is removed
        groups = {"q_groups": q_pids * 2 + rng.integers(0, 2, n_q), "g_groups": g_pids * 2 + rng.integers(0, 2, n_g)}
    got = per_query_metrics_tau(lambda rows: (lambda a, b: torch.as_tensor(d[rows][a:b])), q_pids, g_pids,
                                q_cams, g_cams, lambda a, b: sim[a, b], tau, **groups)
    want = reference(d, q_pids, g_pids, q_cams, g_cams, sim, tau, groups.get("q_groups"), groups.get("g_groups"))
    assert sum(w is not None for w in want) > 15
    for i, w in enumerate(want):
        assert bool(got.valid[i]) == (w is not None), i
        if w is not None:
            assert got.first_rank[i] == w[0]
            assert abs(got.average_precision[i] - w[1]) < 1e-9
            assert abs(got.inverse_negative_penalty[i] - w[2]) < 1e-9


def test_task_specific_ranks_each_query_against_its_tasks_gallery_only():
    same = unit(1, 0)
    # the query (task A) has its identity's task-B item nearer than its task-A item
    q = features([[0.0]], [1], [0], [same], tasks=["A"])
    g = features([[1.0], [2.0], [3.0], [4.0]], [1, 2, 1, 2], [1, 1, 1, 1], [same] * 4, tasks=["B", "A", "A", "B"])
    m = InstructReIDEvaluator(setting="both", metric="euclidean", ranks=[1]).evaluate(q, g)
    # task-specific: gallery = items 1, 2 (task A): the positive is at rank 2
    assert m["A/mAP"] == pytest.approx(50.0) and m["A/rank-1"] == 0.0
    assert m["mAP"] == pytest.approx(50.0)  # the mean over tasks (one task here)
    # task-free: every item; positives at ranks 1 and 3
    assert m["free/A/mAP"] == pytest.approx(100 * (1 + 2 / 3) / 2) and m["free/A/rank-1"] == 100.0


def test_means_over_tasks_and_missing_instruction_output():
    e = unit(1, 0)
    q = features([[0.0], [0.0]], [1, 2], [0, 0], [e, e], tasks=["A", "B"])
    g = features([[1.0], [2.0], [1.0], [3.0]], [1, 2, 2, 1], [1, 1, 1, 1], [e] * 4, tasks=["A", "A", "B", "B"])
    m = InstructReIDEvaluator(setting="task-specific", metric="euclidean", ranks=[1]).evaluate(q, g)
    assert m["A/mAP"] == 100.0 and m["B/mAP"] == 100.0 and m["mAP"] == 100.0
    assert m["num_valid_queries"] == 2
    g.extras.clear()
    with pytest.raises(KeyError, match="reference_instruction_embedding"):
        InstructReIDEvaluator().evaluate(q, g)
    assert InstructReIDEvaluator(reference_output="instr").outputs == ("instr",)
    with pytest.raises(ValueError, match="trainable"):
        InstructReIDEvaluator(reference_output="instruction_embedding")
    with pytest.raises(ValueError, match="setting"):
        InstructReIDEvaluator(setting="free")


def test_clothes_changing_queries_do_not_count_the_person_in_the_same_clothes():
    """The clothes-changing task's protocol (LTCC / PRCC): the query's identity in the
    query's clothes is removed from its ranking; other tasks keep it."""
    same = unit(1, 0)

    def sets(task, with_clothes=True):
        q = features([[0.0]], [1], [0], [same], tasks=[task])
        g = features([[1.0], [2.0], [3.0]], [1, 2, 1], [1, 1, 1], [same] * 3, tasks=[task] * 3)
        if with_clothes:
            q.records[0].extras["clothes_id"] = 10
            for record, clothes in zip(g.records, [10, 20, 11]):
                record.extras["clothes_id"] = clothes
        return q, g

    evaluator = InstructReIDEvaluator(setting="task-specific", metric="euclidean", ranks=[1])
    # item 0 (same clothes, nearest) is removed: the other-clothes positive is at rank 2
    assert evaluator.evaluate(*sets(CLOTHES_CHANGING))["mAP"] == pytest.approx(50.0)
    assert evaluator.evaluate(*sets(CLOTHES_CHANGING))["mAP_tau"] == pytest.approx(50.0)
    # another task, no clothes ids (auto), or exclude_same_clothes false: both positives count
    both = 100 * (1 + 2 / 3) / 2
    assert evaluator.evaluate(*sets("traditional"))["mAP"] == pytest.approx(both)
    assert evaluator.evaluate(*sets(CLOTHES_CHANGING, with_clothes=False))["mAP"] == pytest.approx(both)
    never = InstructReIDEvaluator(setting="task-specific", metric="euclidean", ranks=[1], exclude_same_clothes=False)
    assert never.evaluate(*sets(CLOTHES_CHANGING))["mAP"] == pytest.approx(both)
    required = InstructReIDEvaluator(setting="task-specific", metric="euclidean", exclude_same_clothes=True)
    with pytest.raises(ValueError, match=r"clothes-changing query record 0 \(pid 1, no path\) has no extras 'clothes_id'"):
        required.evaluate(*sets(CLOTHES_CHANGING, with_clothes=False))

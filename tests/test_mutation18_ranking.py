"""The ranking protocol (core.evaluation.ranking) against references written apart from
both the code and tests/evaluation_helpers.py: the Market-1501 definitions as a plain
Python walk down each query's ranked list, and scikit-learn's average precision.

Definitions (Zheng et al. 2015; Ye et al. 2021 for mINP): per query, drop the gallery
items of the query's identity AND camera; walk the rest in (distance, gallery index)
order; the i-th match at 1-based position r_i contributes i / r_i to AP (averaged over
ALL matches); CMC@k is 1 when r_1 <= k; INP = (number of matches) / r_last. Queries
without a match are skipped.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import core.evaluation.ranking as ranking
from core.evaluation import pairwise_distance, rank_metrics
from core.evaluation.ranking import per_query_metrics


def walk_reference(d, q_pids, g_pids, q_cams, g_cams, ranks, exclude_same_camera=True):
    """Each query's ranked list built with Python's sorted() on (distance, index) keys,
    then walked item by item."""
    firsts, aps, inps = [], [], []
    for i, row in enumerate(np.asarray(d, dtype=np.float64).tolist()):
        ranked = sorted(range(len(row)), key=lambda j: (row[j], j))
        position, matches, precisions, last = 0, 0, [], None
        for j in ranked:
            same_id = g_pids[j] == q_pids[i]
            if exclude_same_camera and same_id and g_cams[j] == q_cams[i]:
                continue  # junk: neither counted nor ranked
            position += 1
            if same_id:
                matches += 1
                precisions.append(matches / position)
                last = position
                if matches == 1:
                    firsts.append(position)
        if matches:
            aps.append(sum(precisions) / matches)
            inps.append(matches / last)
    out = {f"rank-{k}": 100.0 * sum(f <= k for f in firsts) / len(firsts) for k in ranks}
    out.update({"mAP": 100.0 * sum(aps) / len(aps), "mINP": 100.0 * sum(inps) / len(inps),
                "num_valid_queries": len(aps)})
    return out


def tied_problem(seed, num_q=25, num_g=120, num_ids=6, num_cams=3, levels=6):
    """Distances on a few levels (many ties), few identities and cameras: each query has
    several positives, several junk items and ties between all of them."""
    rng = np.random.default_rng(seed)
    d = rng.integers(0, levels, (num_q, num_g)).astype(np.float32) / levels
    return (d, rng.integers(0, num_ids, num_q), rng.integers(0, num_ids, num_g),
            rng.integers(0, num_cams, num_q), rng.integers(0, num_cams, num_g))


PATHS = pytest.mark.parametrize("max_bins, list_fraction", [(1, 2.0), (8192, 2.0), (8192, -1.0), (3, -1.0)])


@PATHS
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("exclude", [True, False])
def test_tied_distances_match_the_walk_reference_on_every_path(monkeypatch, max_bins, list_fraction, seed, exclude):
    monkeypatch.setattr(ranking, "_MAX_BINS", max_bins)
    monkeypatch.setattr(ranking, "_LIST_FRACTION", list_fraction)
    d, qp, gp, qc, gc = tied_problem(seed)
    ranks = (1, 2, 3, 5, 10)
    ours = rank_metrics(torch.from_numpy(d), qp, gp, qc, gc, ranks=ranks, exclude_same_camera=exclude, chunk_size=7)
    expected = walk_reference(d, qp, gp, qc, gc, ranks, exclude_same_camera=exclude)
    assert ours == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_feature_distances_match_the_walk_reference(metric):
    rng = np.random.default_rng(5)
    qp, gp = rng.integers(0, 10, 40), rng.integers(0, 12, 200)
    qc, gc = rng.integers(0, 4, 40), rng.integers(0, 4, 200)
    centres = 2.0 * rng.standard_normal((12, 8))
    q = torch.tensor(centres[qp] + rng.standard_normal((40, 8)), dtype=torch.float32)
    g = torch.tensor(centres[gp] + rng.standard_normal((200, 8)), dtype=torch.float32)
    d = pairwise_distance(q, g, metric)
    ranks = (1, 5, 10, 20)
    assert rank_metrics(d, qp, gp, qc, gc, ranks=ranks) == pytest.approx(
        walk_reference(d.numpy(), qp, gp, qc, gc, ranks), abs=1e-9)


def test_average_precision_equals_scikit_learn_on_untied_distances():
    """sklearn's average_precision_score over a query's kept items (scores = -distance,
    labels = same identity) is the protocol's AP when no two distances tie."""
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(11)
    num_q, num_g = 30, 150
    d = rng.permutation(num_q * num_g).reshape(num_q, num_g).astype(np.float64)  # all distinct
    qp, gp = rng.integers(0, 5, num_q), rng.integers(0, 5, num_g)
    qc, gc = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    per_query = per_query_metrics(torch.from_numpy(d), qp, gp, qc, gc)
    for i in range(num_q):
        kept = ~((gp == qp[i]) & (gc == qc[i]))
        labels = gp[kept] == qp[i]
        assert per_query.valid[i] == labels.any()
        if labels.any():
            assert per_query.average_precision[i] == pytest.approx(average_precision_score(labels, -d[i, kept]))
            assert per_query.num_positives[i] == labels.sum()


def test_hand_worked_ties_junk_and_inp():
    """Query pid 7, camera 2. Gallery (distance, pid, camera):
        g0 (0.5, 7, 1) g1 (0.2, 3, 2) g2 (0.2, 7, 2) junk g3 (0.2, 7, 0) g4 (0.9, 7, 2) junk g5 (0.5, 4, 2)
        g6 (0.9, 7, 1)
    Kept, in (distance, index) order: g1 (0.2), g3 (0.2), g0 (0.5), g5 (0.5), g6 (0.9):
    matches at positions 2, 3, 5. AP = (1/2 + 2/3 + 3/5) / 3 = 53/90; INP = 3/5;
    first match at 2. With the camera filter off: g1, g2, g3, g0, g5, g4, g6: matches at
    2, 3, 4, 6, 7: AP = (1/2 + 2/3 + 3/4 + 4/6 + 5/7) / 5, INP = 5/7."""
    d = torch.tensor([[0.5, 0.2, 0.2, 0.2, 0.9, 0.5, 0.9]])
    args = (np.array([7]), np.array([7, 3, 7, 7, 7, 4, 7]), np.array([2]), np.array([1, 2, 2, 0, 2, 2, 1]))
    out = rank_metrics(d, *args, ranks=[1, 2])
    assert out == pytest.approx({"rank-1": 0.0, "rank-2": 100.0, "mAP": 100 * 53 / 90, "mINP": 60.0,
                                 "num_valid_queries": 1})
    out = rank_metrics(d, *args, ranks=[1, 2], exclude_same_camera=False)
    ap = (1 / 2 + 2 / 3 + 3 / 4 + 4 / 6 + 5 / 7) / 5
    assert out == pytest.approx({"rank-1": 0.0, "rank-2": 100.0, "mAP": 100 * ap, "mINP": 100 * 5 / 7,
                                 "num_valid_queries": 1})


def test_queries_without_a_kept_match_leave_every_average():
    """Query 0's only match is junk: it is skipped, so the averages are query 1's alone
    (match at position 2 of g0 (0.1, pid 9), g1 (0.3, pid 1)): rank-1 0, AP 1/2, INP 1/2."""
    d = torch.tensor([[0.5, 0.3, 0.1], [0.1, 0.3, 0.5]])
    out = rank_metrics(d, np.array([5, 1]), np.array([9, 1, 5]), np.array([0, 0]), np.array([1, 1, 0]),
                       ranks=[1, 2])
    assert out == pytest.approx({"rank-1": 0.0, "rank-2": 100.0, "mAP": 50.0, "mINP": 50.0,
                                 "num_valid_queries": 1})

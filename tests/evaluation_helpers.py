"""Shared by the evaluation tests (tests/test_evaluation.py, tests/test_eval_blocked.py,
tests/test_eval_on_disk.py, tests/test_tools_ranked_items.py, ...): the plain per-query
reference of the ReID protocol, seeded random problems, the evaluator's feature sets, and
`masked_average_precision`, the sort-based per-query AP under a `RankedGallery` mask that
`core search --worst`'s ranking is checked against (and bench/worst_queries.py's baseline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.interfaces import FeatureSet

RANKS = (1, 5, 10)


def reference_metrics(distmat, q_pids, g_pids, q_camids, g_camids, ranks=RANKS,
                      exclude_same_camera=True, q_groups=None, g_groups=None):
    """torchreid's / fast-reid's Python eval_market1501, one query at a time, with the
    tie rule made explicit: a stable argsort, i.e. order by (distance, gallery index)."""
    distmat = np.asarray(distmat)
    all_first, all_ap, all_inp = [], [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        if exclude_same_camera:
            remove = (g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i])
        else:
            remove = np.zeros(len(order), dtype=bool)
        if q_groups is not None:  # clothes-changing: the query's identity in its own clothes is removed too
            remove |= (g_pids[order] == q_pids[i]) & (g_groups[order] == q_groups[i])
        raw_cmc = (g_pids[order] == q_pids[i]).astype(np.int32)[~remove]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        max_pos_idx = np.max(np.where(raw_cmc == 1))
        all_inp.append(cmc[max_pos_idx] / (max_pos_idx + 1.0))
        tmp_cmc = np.asarray([x / (k + 1.0) for k, x in enumerate(cmc)]) * raw_cmc
        all_ap.append(tmp_cmc.sum() / raw_cmc.sum())
        all_first.append(np.argmax(raw_cmc) + 1)
    if not all_ap:
        raise ValueError("no valid query")
    first = np.asarray(all_first)
    out = {f"rank-{k}": 100.0 * np.mean(first <= k) for k in ranks}
    out.update({"mAP": 100.0 * np.mean(all_ap), "mINP": 100.0 * np.mean(all_inp),
                "num_valid_queries": len(all_ap)})
    return out


def random_problem(seed, num_q=60, num_g=400, dim=16, num_ids=30, num_cams=4, clustered=False):
    rng = np.random.default_rng(seed)
    q_pids, g_pids = rng.integers(0, num_ids, num_q), rng.integers(0, num_ids + 5, num_g)
    q_cams, g_cams = rng.integers(0, num_cams, num_q), rng.integers(0, num_cams, num_g)
    if clustered:  # positives rank high, as with a trained model
        centres = 3 * rng.standard_normal((num_ids + 5, dim))
        q = centres[q_pids] + rng.standard_normal((num_q, dim))
        g = centres[g_pids] + rng.standard_normal((num_g, dim))
    else:
        q, g = rng.standard_normal((num_q, dim)), rng.standard_normal((num_g, dim))
    q, g = torch.tensor(q, dtype=torch.float32), torch.tensor(g, dtype=torch.float32)
    return q, g, q_pids, g_pids, q_cams, g_cams


def assert_metrics_equal(ours, expected, tol=1e-6):
    assert set(ours) == set(expected)
    for key in expected:
        assert ours[key] == pytest.approx(expected[key], abs=tol), key


def feature_sets(seed=11, categories=False, num_q=60, num_g=400):
    """(query, gallery) FeatureSets of a clustered random problem; with `categories`, the
    queries cycle through three named categories."""
    q, g, qp, gp, qc, gc = random_problem(seed, num_q=num_q, num_g=num_g, clustered=True)
    query, gallery = FeatureSet(q, qp, qc), FeatureSet(g, gp, gc)
    if categories:
        query.categories = np.arange(len(qp)) % 3
        query.category_names = ["person", "vehicle", "animal"]
    return query, gallery


def masked_average_precision(distances: torch.Tensor | np.ndarray, ranked: np.ndarray, q_pids: np.ndarray,
                             g_pids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(valid, AP, first rank) of c queries from their (c, G) distances and (c, G) `ranked`
    mask: the items sorted by (distance, gallery index), those not ranked skipped, the
    positives the ranked items of the query's identity; a query without one is not valid
    (AP 0, first rank 0)."""
    d = torch.as_tensor(distances).detach().cpu().double()
    order = torch.sort(d, dim=1, stable=True).indices.numpy()
    kept = np.take_along_axis(np.asarray(ranked, dtype=bool), order, 1)
    same = np.asarray(g_pids)[order] == np.asarray(q_pids)[:, None]
    positive = same & kept
    rank_among_kept = np.cumsum(kept, axis=1)
    hits = np.cumsum(positive, axis=1)
    num_pos = positive.sum(1)
    precision = np.where(positive, hits / np.maximum(rank_among_kept, 1), 0.0)
    valid = num_pos > 0
    ap = np.where(valid, precision.sum(1) / np.maximum(num_pos, 1), 0.0)
    first = np.where(valid, np.take_along_axis(rank_among_kept, positive.argmax(1)[:, None], 1)[:, 0], 0)
    return valid, ap, first

"""mAP-tau (Instruct-ReID++ Sec. "OmniReID++", Fig. 4): the standard protocol, except that
a gallery item of the query's identity is a positive only if the similarity of its
instruction to the query's instruction reaches tau; otherwise it counts as a negative.

It is computed by the core's ranking code (`core.evaluation.ranking.per_query_metrics`)
with the query's identity taken away from its inconsistent gallery items: they get a
fresh label of their own, so the unchanged protocol ranks them as negatives. Items of
the query's identity and camera stay junk (removed) as in the ordinary protocol: tau
only demotes what would have been a positive. The full ranking is used (the authors'
code truncates AP at 500).

A relabelling is per query, but only touches the query's own identity's items: queries
that share an identity and the set of items to demote (a "pattern") share one
relabelling, and patterns of different identities touch disjoint items, so one call of
the ranking code serves one pattern of every identity. The calls needed are the largest
number of patterns of one identity (a handful), not one per query.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from core.evaluation.ranking import PerQueryMetrics, per_query_metrics


def consistent_patterns(q_pids: np.ndarray, g_pids: np.ndarray, q_cams: np.ndarray, g_cams: np.ndarray,
                        similarity: Callable[[np.ndarray, np.ndarray], np.ndarray], tau: float,
                        exclude_same_camera: bool, q_groups: np.ndarray | None = None,
                        g_groups: np.ndarray | None = None) -> tuple[list[list[int]], list[np.ndarray]]:
    """Group queries into rounds: `rounds[r]` lists query indices, `demote[r]` the gallery
    indices whose identity is taken away in round r. `similarity(qi, gi)` gives the
    instruction similarities of query qi to gallery items gi (arrays). Items the protocol
    removes for a query (its camera; its group, e.g. clothes, when groups are given) are
    never demoted for it."""
    order = np.argsort(g_pids, kind="stable")
    sorted_pids = g_pids[order]
    starts = np.searchsorted(sorted_pids, q_pids, side="left")
    stops = np.searchsorted(sorted_pids, q_pids, side="right")
    patterns: dict[int, dict[tuple, int]] = {}  # pid -> pattern -> round
    rounds: list[list[int]] = []
    demote: list[list[np.ndarray]] = []
    for q in range(len(q_pids)):
        same = order[starts[q]:stops[q]]
        if exclude_same_camera:
            same = same[g_cams[same] != q_cams[q]]  # same-camera items stay junk, never demoted
        if q_groups is not None:
            same = same[g_groups[same] != q_groups[q]]  # so do same-clothes items
        inconsistent = same[similarity(np.full(len(same), q), same) < tau] if len(same) else same
        key = tuple(sorted(inconsistent.tolist()))
        seen = patterns.setdefault(int(q_pids[q]), {})
        if key not in seen:
            seen[key] = len(seen)
            if seen[key] == len(rounds):
                rounds.append([])
                demote.append([])
            demote[seen[key]].append(inconsistent)
        rounds[seen[key]].append(q)
    return rounds, [np.unique(np.concatenate(d)).astype(np.int64) if d else np.zeros(0, np.int64) for d in demote]


def per_query_metrics_tau(distance_rows: Callable[[np.ndarray], Callable[[int, int], torch.Tensor]],
                          q_pids, g_pids, q_cams, g_cams, similarity: Callable[[np.ndarray, np.ndarray], np.ndarray],
                          tau: float, exclude_same_camera: bool = True, chunk_size: int = 0,
                          memory_budget: int = 256 * 2**20, q_groups=None, g_groups=None) -> PerQueryMetrics:
    """Per-query first rank, AP and INP under mAP-tau's positives (module docstring).

    `distance_rows(query_indices)` returns a rows(start, stop) source over those queries
    (the core's `DistanceSource` callable); `similarity` as in `consistent_patterns`;
    `q_groups` / `g_groups` (clothes ids) remove same-identity same-group items too."""
    q_pids, g_pids = np.asarray(q_pids, np.int64), np.asarray(g_pids, np.int64)
    q_cams, g_cams = np.asarray(q_cams, np.int64), np.asarray(g_cams, np.int64)
    if q_groups is not None:
        q_groups, g_groups = np.asarray(q_groups, np.int64), np.asarray(g_groups, np.int64)
    rounds, demote = consistent_patterns(q_pids, g_pids, q_cams, g_cams, similarity, tau, exclude_same_camera,
                                         q_groups, g_groups)
    n = len(q_pids)
    out = PerQueryMetrics(np.zeros(n, bool), np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n),
                          np.zeros(n))
    fresh = min(int(q_pids.min(initial=0)), int(g_pids.min(initial=0))) - 1  # labels below every real pid
    for queries, items in zip(rounds, demote):
        qi = np.asarray(queries, np.int64)
        labels = g_pids.copy()
        labels[items] = fresh - np.arange(len(items))
        groups = {} if q_groups is None else {"q_groups": q_groups[qi], "g_groups": g_groups}
        part = per_query_metrics(distance_rows(qi), q_pids[qi], labels, q_cams[qi], g_cams,
                                 exclude_same_camera=exclude_same_camera, chunk_size=chunk_size,
                                 memory_budget=memory_budget, **groups)
        for field in ("valid", "num_positives", "first_rank", "average_precision", "inverse_negative_penalty"):
            getattr(out, field)[qi] = getattr(part, field)
    return out

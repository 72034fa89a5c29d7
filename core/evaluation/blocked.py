"""Exact search out of core, for galleries of millions (issue 24): query blocks x gallery
blocks, so neither the (Q, G) distances nor the gallery as float32 are ever whole in
memory. The gallery may be a memory-mapped float16 file (`core.evaluation.features`):
each block is read and upcast to float32 on its own.

Two products, both exact:

* `blocked_topk`: each query's k nearest gallery items in the (distance, gallery index)
  order, a running top-k merged block by block (the previous best come first and hold
  smaller indices, so a stable sort keeps the tie rule). This is the exact reference an
  approximate index (IVF-PQ) is measured against (recall@k).
* `blocked_per_query_metrics`: the FULL protocol (CMC, mAP, mINP of
  `core.evaluation.ranking`), not a truncated one, in two passes over the gallery per
  query block. A positive's rank among the kept items is 1 + (items before it in the
  (distance, index) order) - (removed items before it). Pass 1 gathers the distances of
  each query's same-identity items (few: found by binary search on the pid-sorted
  gallery); pass 2 counts, block by block, the items before each positive: one comparison
  pass per positive when queries have few (`COMPARE_WIDTH`), else from the sorted block
  (one `searchsorted` per positive); equal distances are resolved by gallery index
  exactly. Removed items (same identity and camera; under the clothes-changing protocol
  also same identity and clothes) are few and subtracted directly. So mAP here is the
  exact full-ranking mAP, computed with per-query positive counts, at the cost of two
  distance products per (query, gallery) pair.

Distances are `core.evaluation.distances.distance_to` of each gallery block: the same
formula as the dense path. Whether every entry is bit-for-bit the dense product's depends
on the BLAS computing an entry the same whatever the matrix width; MKL does for widths
>= 16 (measured: narrower tails take another kernel and differ in the last bit), so a
last gallery block narrower than `MIN_TAIL` is merged into the one before it.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterator

import numpy as np
import torch

from core.evaluation.distances import distance_to
from core.evaluation.ranking import PerQueryMetrics, _from_ranks, query_gallery_labels, _GalleryIndex, _Removal

#: Gallery rows per block when none is given (64k x 768-d float32 = 192 MiB).
DEFAULT_GALLERY_BLOCK = 65536
#: Query rows per block when none is given.
DEFAULT_QUERY_BLOCK = 1024
#: A last gallery block narrower than this is merged into the previous block (see module doc).
MIN_TAIL = 64
#: Queries with at most this many positives count the items before each positive with one
#: comparison pass per positive; more positives: one sort of the block and a binary search
#: per positive (fewer passes per entry). Both exact.
COMPARE_WIDTH = 64


def gallery_blocks(num_gallery: int, block: int) -> list[tuple[int, int]]:
    """[start, stop) ranges covering 0..num_gallery, each `block` wide but the last, which
    is merged into the previous one when narrower than MIN_TAIL."""
    if block < 1:
        raise ValueError(f"gallery block must be a positive number of rows, got {block}")
    bounds = list(range(0, num_gallery, block)) + [num_gallery]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < MIN_TAIL:
        del bounds[-2]
    return list(zip(bounds[:-1], bounds[1:]))


def rows_as_float(features: Any, start: int, stop: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Rows [start, stop) of a (N, D) tensor, array or memory-mapped array, as float32 (or
    float64 when stored so) on `device`; only those rows are read."""
    block = features[start:stop]
    if isinstance(block, torch.Tensor):
        t = block
    else:
        with warnings.catch_warnings():  # a read-only memmap's rows: only read (upcast or used as is)
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            t = torch.from_numpy(np.ascontiguousarray(block))
    if t.dtype != torch.float64:
        t = t.float()
    return t.to(device)


def _blocks(features: Any, ranges, device) -> Iterator[tuple[int, int, torch.Tensor]]:
    for start, stop in ranges:
        yield start, stop, rows_as_float(features, start, stop, device)


def merge_block_topk(best: tuple[torch.Tensor, torch.Tensor] | None, d: torch.Tensor, g0: int,
                     k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The running (distances, gallery indices) top `k` of each row after the gallery block
    starting at item `g0` (distances `d`, blocks met in gallery order): stable sorts, so
    ties keep the gallery-index order, as evaluation breaks them."""
    values, order = torch.sort(d, dim=1, stable=True)
    values, order = values[:, :k], order[:, :k] + g0
    if best is not None:  # earlier blocks first: their indices are smaller, so ties keep index order
        values, order = torch.cat([best[0], values], 1), torch.cat([best[1], order], 1)
        values, at = torch.sort(values, dim=1, stable=True)
        values, order = values[:, :k], order.gather(1, at[:, :k])
    return values, order


def blocked_topk(query: Any, gallery: Any, metric: str, k: int, query_block: int = DEFAULT_QUERY_BLOCK,
                 gallery_block: int = DEFAULT_GALLERY_BLOCK,
                 device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """((Q, k) distances, (Q, k) gallery indices) of each query's k nearest items in the
    (distance, gallery index) order; k is capped at G."""
    num_q, num_g = len(query), len(gallery)
    k = min(int(k), num_g)
    if k < 1:
        raise ValueError(f"top-k search needs k >= 1 and a non-empty gallery (k {k}, gallery {num_g})")
    out_d = np.empty((num_q, k), dtype=np.float32)
    out_i = np.empty((num_q, k), dtype=np.int64)
    g_ranges = gallery_blocks(num_g, gallery_block)
    for q0 in range(0, num_q, query_block):
        q1 = min(q0 + query_block, num_q)
        q = rows_as_float(query, q0, q1, device)
        best: tuple[torch.Tensor, torch.Tensor] | None = None
        for g0, g1, g in _blocks(gallery, g_ranges, device):
            best = merge_block_topk(best, distance_to(g, metric)(q), g0, k)
        best_d, best_i = best
        out_d[q0:q1], out_i[q0:q1] = best_d.cpu().numpy(), best_i.cpu().numpy()
    return out_d, out_i


def blocked_per_query_metrics(query: Any, gallery: Any, metric: str, q_pids, g_pids, q_camids, g_camids,
                              exclude_same_camera: bool = True, query_block: int = DEFAULT_QUERY_BLOCK,
                              gallery_block: int = DEFAULT_GALLERY_BLOCK,
                              device: torch.device | str = "cpu", q_groups=None, g_groups=None) -> PerQueryMetrics:
    """`core.evaluation.ranking.per_query_metrics` of the exact distances, computed out of
    core (module doc): the same per-query first rank, AP and INP. `q_groups` / `g_groups`
    (e.g. clothes ids): a same-identity item sharing the query's group is removed too, the
    clothes-changing protocol of LTCC / PRCC (`per_query_metrics`); removed items are
    same-identity items only, so they stay few and are subtracted directly."""
    num_q, num_g = len(query), len(gallery)
    q_pids, g_pids, q_camids, g_camids, q_groups, g_groups = query_gallery_labels(
        q_pids, g_pids, q_camids, g_camids, q_groups, g_groups, num_q, num_g)
    device = torch.device(device)
    index = _GalleryIndex(g_pids, g_camids, device, g_groups)
    q_cams_all = torch.as_tensor(q_camids, device=device)
    q_groups_all = None if q_groups is None else torch.as_tensor(q_groups, device=device)
    g_ranges = gallery_blocks(num_g, gallery_block)
    parts = []
    for q0 in range(0, num_q, query_block):
        q1 = min(q0 + query_block, num_q)
        q = rows_as_float(query, q0, q1, device)
        rows, cols = index.same_identity(torch.as_tensor(q_pids[q0:q1], device=device))
        removal = _Removal(q_cams_all[q0:q1], None if q_groups_all is None else q_groups_all[q0:q1], index,
                           exclude_same_camera)
        junk = removal(rows, cols)
        values = _pair_distances(q, gallery, metric, rows, cols, g_ranges, device)
        parts.append(_query_block_ranks(q, gallery, metric, rows, cols, junk, values, g_ranges, device))
    if not parts:
        return PerQueryMetrics(*(np.zeros(0, dt) for dt in (bool, np.int64, np.int64, np.float64, np.float64)))
    return PerQueryMetrics(*(np.concatenate(cols) for cols in zip(*parts)))


def _pair_distances(q, gallery, metric, rows, cols, g_ranges, device) -> torch.Tensor:
    """Pass 1: the distance of each (row, col) pair, read from the block products (so it is
    the very value pass 2 compares against). Everything stays on `device`; the pairs of
    each gallery block are found on the host (one small copy of the sorted columns)."""
    values = torch.empty(len(rows), dtype=torch.float64, device=device)
    order = torch.argsort(cols, stable=True)
    sorted_cols = cols[order].cpu().numpy()
    for g0, g1, g in _blocks(gallery, g_ranges, device):
        lo, hi = (int(i) for i in np.searchsorted(sorted_cols, (g0, g1)))
        if lo == hi:
            continue
        at = order[lo:hi]
        d = distance_to(g, metric)(q)
        values[at] = d[rows[at], cols[at] - g0].double()
    return values


def _query_block_ranks(q, gallery, metric, rows, cols, junk, values, g_ranges, device) -> tuple[np.ndarray, ...]:
    """Pass 2: each positive's rank among the kept items, then the per-query metrics. The
    comparisons run on `device` (a GPU when the evaluation is given one), with the few
    host reads a block needs (its widest query, the ties inside a positive's own block)."""
    c = q.shape[0]
    pos_rows, pos_cols, pos_values = rows[~junk], cols[~junk], values[~junk]
    num_pos = torch.bincount(pos_rows, minlength=c)
    width = int(num_pos.max()) if len(pos_rows) else 0
    if width == 0:
        return _from_ranks(num_pos, torch.ones((c, 0), dtype=torch.int64, device=device))
    slot = torch.arange(len(pos_rows), device=device) - (torch.cumsum(num_pos, 0) - num_pos)[pos_rows]
    pv = torch.full((c, width), float("inf"), dtype=torch.float64, device=device)
    pc = torch.full((c, width), -1, dtype=torch.int64, device=device)
    pv[pos_rows, slot], pc[pos_rows, slot] = pos_values, pos_cols
    before = torch.zeros((c, width), dtype=torch.int64, device=device)
    for g0, g1, g in _blocks(gallery, g_ranges, device):
        d = distance_to(g, metric)(q)
        if width <= COMPARE_WIDTH:  # a pass of comparisons per positive slot, ties by index
            pv_d, index = pv.to(d.dtype), torch.arange(g0, g1, device=device)[None, :]
            for j in range(width):
                p, pcj = pv_d[:, j:j + 1], pc[:, j:j + 1]
                before[:, j] += ((d < p) | ((d == p) & (index < pcj))).sum(1)
            continue
        sorted_d = torch.sort(d, dim=1).values.double()
        below = torch.searchsorted(sorted_d, pv)  # items strictly nearer than the positive
        ties = torch.searchsorted(sorted_d, pv, right=True) - below
        before += below
        # equal distances: only the items of smaller gallery index come before
        before += torch.where(pc >= g1, ties, torch.zeros_like(ties))
        r, w = torch.nonzero((ties > 0) & (pc >= g0) & (pc < g1), as_tuple=True)
        for row, j in zip(r.tolist(), w.tolist()):  # the positive's own block: count by index
            col, value = int(pc[row, j]), float(pv[row, j])
            before[row, j] += int((d[row, :col - g0].double() == value).sum())
    # removed items (same identity and camera) before each positive are not kept
    j_rows, j_cols, j_values = rows[junk], cols[junk], values[junk]
    if len(j_rows):
        pr = pv[j_rows]  # (J, width): the positives of each removed item's query
        earlier = (j_values[:, None] < pr) | ((j_values[:, None] == pr) & (j_cols[:, None] < pc[j_rows]))
        before.index_add_(0, j_rows, earlier.to(torch.int64), alpha=-1)
    ranks = torch.where(pc >= 0, before + 1, torch.full_like(before, torch.iinfo(torch.int64).max))
    return _from_ranks(num_pos, torch.sort(ranks, 1).values)

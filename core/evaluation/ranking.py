"""The standard ReID ranking protocol: CMC, mAP and mINP, exact and chunked.

Protocol (Zheng et al. 2015, "Scalable Person Re-identification: A Benchmark"; the
Python `eval_market1501` of torchreid and fast-reid; mINP from Ye et al. 2021, "Deep
Learning for Person Re-identification: A Survey and Outlook"): for each query, rank the
gallery by ascending distance; drop the gallery items that share the query's identity
AND camera (when `exclude_same_camera`; otherwise drop nothing); the positives are the
remaining items with the query's identity. A query with no remaining positive is skipped
and not counted. With rank_i the 1-based rank of the i-th positive among the kept items:

    CMC@k = 1 if rank_1 <= k            AP  = mean_i (i / rank_i)
    INP   = num_positives / rank_last

averaged over the valid queries and reported as percentages.

Ties. Equal distances are ordered by gallery index: the ranking is a STABLE sort by
(distance, gallery index), i.e. `np.argsort(row, kind="stable")`. The classic toolkits'
default quicksort leaves ties in an unspecified order; ours is reproducible.

Speed. None of the metrics needs the full ranking, only the rank of each positive among
the kept items: 1 + the number of kept items before it in the (distance, index) order.
Per chunk of queries we sort the few positive distances of each row and bucket every
gallery distance between them (`torch.searchsorted`: O(G log P) per row instead of the
O(G log G) full sort); the bucket histogram, cumulated, counts the items at or below
each positive. Items at exactly a positive's distance but with a larger index (float32
distances tie often) are then taken back out, from the short list of such items. When
the positives rank high (a trained model), only the items no farther than the row's
hardest positive are bucketed. All operations are torch ops on the device of the
distances (GPU when the features are there); temporaries stay under `memory_budget`
bytes by chunking the queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np
import torch

#: Default bound on the temporaries of one chunk of queries (bytes).
DEFAULT_MEMORY_BUDGET = 256 * 2**20
#: Bytes of temporaries per (query, gallery) entry of a chunk, a conservative estimate:
#: the distances (4; 8 while a euclidean chunk is computed), int64 buckets (8), the tie
#: check (5), the identity mask (1).
_BYTES_PER_ENTRY = 32
#: Bucket only the items closer than the hardest positive when they are at most this
#: fraction of a chunk; beyond it the dense batched search is faster.
_SPARSE_FRACTION = 0.25
#: Most histogram bins per row of the binned count (memory: 8 bytes per bin and row).
_MAX_BINS = 8192

#: A (Q, G) distance matrix, or a function returning its rows [start, stop).
DistanceSource = Union[torch.Tensor, np.ndarray, Callable[[int, int], torch.Tensor]]


@dataclass
class PerQueryMetrics:
    """The protocol's per-query results, before averaging (length Q each).

    `valid[q]` is False for a query without any kept positive; its other entries are 0.
    """

    valid: np.ndarray
    num_positives: np.ndarray
    first_rank: np.ndarray
    average_precision: np.ndarray
    inverse_negative_penalty: np.ndarray


def rank_metrics(distances: DistanceSource, q_pids, g_pids, q_camids, g_camids,
                 ranks: Sequence[int] = (1, 5, 10), exclude_same_camera: bool = True,
                 chunk_size: int = 0, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 q_categories=None, category_names: Sequence[str] | None = None) -> dict[str, float]:
    """CMC at `ranks`, mAP and mINP (percentages) and `num_valid_queries`.

    `distances` is a (Q, G) matrix or a callable `rows(start, stop) -> (stop-start, G)`
    tensor, called once per chunk of `chunk_size` queries (0: as many as fit in
    `memory_budget` bytes). With `q_categories` (one id per query), the same metrics are
    added per query category under "<name>/<metric>" keys, `<name>` taken from
    `category_names[id]` (else the id); a category without a valid query only reports
    its `num_valid_queries` of 0.
    """
    ranks = validate_ranks(ranks)
    per_query = per_query_metrics(distances, q_pids, g_pids, q_camids, g_camids,
                                  exclude_same_camera=exclude_same_camera,
                                  chunk_size=chunk_size, memory_budget=memory_budget)
    metrics = summarise(per_query, ranks)
    if q_categories is not None:
        metrics.update(_per_category(per_query, ranks, q_categories, category_names))
    return metrics


def per_query_metrics(distances: DistanceSource, q_pids, g_pids, q_camids, g_camids,
                      exclude_same_camera: bool = True, chunk_size: int = 0,
                      memory_budget: int = DEFAULT_MEMORY_BUDGET) -> PerQueryMetrics:
    """Each query's first-positive rank, AP and INP under the protocol (see module doc)."""
    q_pids, g_pids = _codes(q_pids, g_pids, "pids")
    q_camids, g_camids = _codes(q_camids, g_camids, "camids")
    num_q, num_g = len(q_pids), len(g_pids)
    for name, arr, n in (("q_camids", q_camids, num_q), ("g_camids", g_camids, num_g)):
        if len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} entries but there are {n} "
                             f"{'queries' if name[0] == 'q' else 'gallery items'}")
    rows = _row_source(distances, num_q, num_g)
    step = resolve_chunk_size(chunk_size, num_q, num_g, memory_budget)
    parts = []
    on_device: dict[torch.device, tuple] = {}
    for start in range(0, num_q, step):
        stop = min(start + step, num_q)
        d = rows(start, stop)
        meta = on_device.get(d.device)
        if meta is None:
            meta = on_device[d.device] = (torch.as_tensor(q_pids, device=d.device),
                                          torch.as_tensor(q_camids, device=d.device),
                                          _GalleryIndex(g_pids, g_camids, d.device))
        qp, qc, gallery = meta
        num_pos, pos_ranks = _positive_ranks(d, qp[start:stop], qc[start:stop], gallery,
                                             exclude_same_camera)
        parts.append(_from_ranks(num_pos, pos_ranks))
    return PerQueryMetrics(*(np.concatenate(cols) for cols in zip(*parts))) if parts else \
        PerQueryMetrics(*(np.zeros(0, dt) for dt in (bool, np.int64, np.int64, np.float64, np.float64)))


def summarise(per_query: PerQueryMetrics, ranks: Sequence[int],
              mask: np.ndarray | None = None, what: str = "the query set") -> dict[str, float]:
    """Average the valid queries (of `mask`, if given) into percentages."""
    valid = per_query.valid if mask is None else per_query.valid & mask
    n = int(valid.sum())
    if n == 0:
        total = len(valid) if mask is None else int(mask.sum())
        raise ValueError(f"no valid query in {what}: none of its {total} queries has a gallery "
                         "item of its identity (left after removing same-identity same-camera "
                         "items, when exclude_same_camera is on); check the query and gallery "
                         "pids/camids, or set exclude_same_camera: false for single-camera data")
    first = per_query.first_rank[valid]
    metrics: dict[str, float] = {f"rank-{k}": 100.0 * float(np.mean(first <= k)) for k in ranks}
    metrics["mAP"] = 100.0 * float(np.mean(per_query.average_precision[valid]))
    metrics["mINP"] = 100.0 * float(np.mean(per_query.inverse_negative_penalty[valid]))
    metrics["num_valid_queries"] = n
    return metrics


def validate_ranks(ranks: Sequence[int]) -> list[int]:
    """CMC ranks as a list of distinct integers >= 1, in the given order."""
    if isinstance(ranks, (int, str)) or not len(ranks):
        raise ValueError(f"ranks must be a non-empty list of integers >= 1, got {ranks!r}")
    bad = [k for k in ranks if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1]
    if bad:
        raise ValueError(f"ranks must be integers >= 1, got {list(ranks)!r} (invalid: {bad!r})")
    if len(set(ranks)) != len(ranks):
        raise ValueError(f"ranks must be distinct, got {list(ranks)!r}")
    return [int(k) for k in ranks]


def resolve_chunk_size(chunk_size: int, num_queries: int, num_gallery: int,
                       memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """Queries per chunk: `chunk_size` if positive, else as many as fit the budget."""
    if chunk_size < 0:
        raise ValueError(f"chunk_size must be >= 0 (0 = automatic), got {chunk_size}")
    if memory_budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
    if chunk_size == 0:
        chunk_size = memory_budget // (_BYTES_PER_ENTRY * max(num_gallery, 1))
    return max(1, min(chunk_size, max(num_queries, 1)))


# --- one chunk ------------------------------------------------------------------------


class _GalleryIndex:
    """Gallery pids and camids on one device, with the gallery sorted by pid so that a
    query's same-identity items are found by binary search, not by a (c, G) mask."""

    def __init__(self, pids: np.ndarray, cams: np.ndarray, device: torch.device):
        self.pids = torch.as_tensor(pids, device=device)
        self.cams = torch.as_tensor(cams, device=device)
        self.order = torch.sort(self.pids, stable=True).indices
        self.sorted_pids = self.pids[self.order].contiguous()

    def same_identity(self, q_pids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, cols) of the gallery items sharing each query's pid, grouped by row."""
        lo = torch.searchsorted(self.sorted_pids, q_pids)
        counts = torch.searchsorted(self.sorted_pids, q_pids, right=True) - lo
        rows = torch.repeat_interleave(torch.arange(len(q_pids), device=q_pids.device), counts)
        return rows, self.order[lo[rows] + _slots(rows, counts)]


def _positive_ranks(d: torch.Tensor, q_pids: torch.Tensor, q_cams: torch.Tensor,
                    gallery: "_GalleryIndex", exclude_same_camera: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(num_pos (c,), ranks (c, P)): the 1-based ranks among kept items of each row's
    positives, ascending; entries at and after num_pos[row] are padding."""
    c = d.shape[0]
    rows, cols = gallery.same_identity(q_pids)
    junk = _is_junk(rows, cols, q_cams, gallery.cams, exclude_same_camera)
    pos_rows, pos_cols = rows[~junk], cols[~junk]
    num_pos = torch.bincount(pos_rows, minlength=c)
    width = int(num_pos.max()) if c else 0
    if width == 0:
        return num_pos, torch.ones((c, 0), dtype=torch.int64, device=d.device)
    thresholds = _sorted_positive_distances(d, pos_rows, pos_cols, num_pos, width)
    pos_ranks, tie_rows, tie_cols = _at_or_below(d, thresholds, num_pos)
    pos_ranks -= _at_or_below_removed(d, thresholds, rows[junk], cols[junk])
    pos_ranks -= _later_ties(d, tie_rows, tie_cols, q_pids, gallery.pids, q_cams, gallery.cams,
                             exclude_same_camera, num_pos, width)
    return num_pos, pos_ranks


def _is_junk(rows, cols, q_cams, g_cams, exclude_same_camera: bool) -> torch.Tensor:
    """Of same-identity (row, col) pairs, those the protocol removes: same camera."""
    if not exclude_same_camera:
        return torch.zeros_like(rows, dtype=torch.bool)
    return q_cams[rows] == g_cams[cols]


def _sorted_positive_distances(d, pos_rows, pos_cols, num_pos, width) -> torch.Tensor:
    """(c, width) each row's positive distances, ascending, padded with +inf."""
    out = torch.full((d.shape[0], width), float("inf"), dtype=d.dtype, device=d.device)
    out[pos_rows, _slots(pos_rows, num_pos)] = d[pos_rows, pos_cols]
    return out.sort(dim=1).values


def _at_or_below(d, thresholds, num_pos) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """at (c, P) with at[r, k] = #{items g: d[r, g] <= thresholds[r, k]} for each real
    threshold k (padding entries are meaningless), and the (row, col) of every item whose
    distance equals one of its row's real thresholds (the positives themselves included).

    Three exact ways, picked for speed: only the items no farther than the hardest
    positive when they are few (a trained model); else a binned histogram (float32);
    else a batched binary search of every item (other dtypes).
    """
    if d.dtype != torch.float32:
        return _at_or_below_searched(d, thresholds)
    hardest = thresholds.gather(1, (num_pos - 1).clamp(min=0)[:, None])
    hardest = torch.where(num_pos[:, None] > 0, hardest, torch.full_like(hardest, -float("inf")))
    candidates = d <= hardest
    if int(torch.count_nonzero(candidates)) <= _SPARSE_FRACTION * candidates.numel():
        rows, cols = candidates.nonzero(as_tuple=True)
        del candidates
        return _at_or_below_of_items(d[rows, cols], rows, cols, thresholds)
    del candidates
    return _at_or_below_binned(d, thresholds, num_pos, hardest)


def _at_or_below_searched(d, thresholds):
    """Batched binary search of every distance among its row's thresholds."""
    c, width = thresholds.shape
    bucket = torch.searchsorted(thresholds, d)  # number of thresholds < d[r, g]
    ties = _pad_inf(thresholds).gather(1, bucket) == d
    tie_rows, tie_cols = ties.nonzero(as_tuple=True)
    del ties
    bucket += torch.arange(c, device=d.device)[:, None] * (width + 1)
    counts = torch.bincount(bucket.view(-1), minlength=c * (width + 1)).view(c, width + 1)
    return counts[:, :width].cumsum(1), tie_rows, tie_cols


def _at_or_below_of_items(values, rows, cols, thresholds):
    """The count over the listed items only (row-major `rows`). All rows are searched at
    once by giving each (row, distance) an int64 key that sorts by row, then distance."""
    c, width = thresholds.shape
    row_thresholds = (torch.arange(c, device=rows.device)[:, None] << 32) | _ordered_bits(thresholds)
    bucket = torch.searchsorted(row_thresholds.view(-1), (rows << 32) | _ordered_bits(values))
    bucket -= rows * width
    ties = _pad_inf(thresholds)[rows, bucket] == values
    counts = torch.bincount(rows * (width + 1) + bucket, minlength=c * (width + 1)).view(c, width + 1)
    return counts[:, :width].cumsum(1), rows[ties], cols[ties]


def _at_or_below_binned(d, thresholds, num_pos, hardest):
    """The count without a binary search per item. A monotone map puts each distance of
    a row into one of `bins` equal bins from the row's minimum to its hardest positive
    (farther ones into a last bin); a bin without a threshold is counted whole, from a
    histogram, and only the items sharing a bin with a threshold (a few percent) are
    searched exactly. Monotone means the same float ops on items and thresholds."""
    c, width = thresholds.shape
    bins = max(16, min(_MAX_BINS, d.shape[1] // 2))
    lo = d.amin(1, keepdim=True)
    scale = (bins - 1) / (torch.where(num_pos[:, None] > 0, hardest, lo) - lo)
    scale = torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale))
    offsets = torch.arange(c, device=d.device, dtype=torch.int64)[:, None] * (bins + 1)
    thr_bin = _bin(thresholds, lo, scale, bins)
    real = torch.arange(width, device=d.device)[None, :] < num_pos[:, None]
    shared = torch.zeros(c * (bins + 1), dtype=torch.bool, device=d.device)
    shared[(thr_bin + offsets)[real]] = True
    item_bin = _bin(d, lo, scale, bins, dtype=torch.int32)
    item_bin += offsets.to(torch.int32)
    hist = torch.bincount(item_bin.view(-1), minlength=c * (bins + 1))
    rows, cols = shared[item_bin.long()].nonzero(as_tuple=True)
    del item_bin
    hist[shared] = 0
    whole = torch.nn.functional.pad(hist.view(c, bins + 1).cumsum(1), (1, 0))  # whole[r, b]: bins < b
    exact, tie_rows, tie_cols = _at_or_below_of_items(d[rows, cols], rows, cols, thresholds)
    return whole.gather(1, thr_bin) + exact, tie_rows, tie_cols


def _bin(x, lo, scale, bins, dtype=torch.int64):
    """Monotone map of a row's distances to bins 0..bins (clamped)."""
    return ((x - lo) * scale).clamp_(0, bins).to(dtype)


def _pad_inf(thresholds: torch.Tensor) -> torch.Tensor:
    """Append a +inf column, so a bucket index (0..P) can index it."""
    return torch.nn.functional.pad(thresholds, (0, 1), value=float("inf"))


def _ordered_bits(x: torch.Tensor) -> torch.Tensor:
    """float32 -> int64 in [0, 2**32) with the same order (-0.0 and +0.0 equal)."""
    bits = (x + 0.0).view(torch.int32).to(torch.int64)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return bits + 2**31


def _at_or_below_removed(d, thresholds, rows, cols) -> torch.Tensor:
    """(c, P) the share of the removed items (rows, cols) in the counts."""
    c, width = thresholds.shape
    if rows.numel() == 0:
        return torch.zeros((c, width), dtype=torch.int64, device=d.device)
    values = d[rows, cols][:, None].contiguous()
    bucket = torch.searchsorted(thresholds[rows].contiguous(), values)[:, 0]
    counts = torch.bincount(rows * (width + 1) + bucket, minlength=c * (width + 1)).view(c, width + 1)
    return counts[:, :width].cumsum(1)


def _later_ties(d, rows, cols, q_pids, g_pids, q_cams, g_cams, exclude_same_camera: bool,
                num_pos, width) -> torch.Tensor:
    """(c, P) per positive, the kept items at the SAME distance but a larger gallery
    index: the bucket count put them before it, the stable (distance, index) order after.

    `rows, cols` list every item whose distance equals one of its row's positives',
    in row-major order; ordered by (row, distance, index), each run of equal distances
    is one tie group, and an item's later ties are the rest of its group. The positives,
    all in the list, come out in the order of the sorted thresholds.
    """
    same_pid = q_pids[rows] == g_pids[cols]
    keep = ~(same_pid & _is_junk(rows, cols, q_cams, g_cams, exclude_same_camera))
    rows, cols, same_pid = rows[keep], cols[keep], same_pid[keep]
    values = d[rows, cols]
    order = torch.sort(values, stable=True).indices
    order = order[torch.sort(rows[order], stable=True).indices]
    rows, values, same_pid = rows[order], values[order], same_pid[order]
    starts = torch.ones_like(rows, dtype=torch.bool)
    starts[1:] = (rows[1:] != rows[:-1]) | (values[1:] != values[:-1])
    group = starts.cumsum(0) - 1
    group_end = torch.bincount(group).cumsum(0)[group]
    later = group_end - torch.arange(rows.numel(), device=rows.device) - 1
    out = torch.zeros((d.shape[0], width), dtype=torch.int64, device=d.device)
    pos_rows = rows[same_pid]
    out[pos_rows, _slots(pos_rows, num_pos)] = later[same_pid]
    return out


def _slots(rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Ordinal of each entry within its row, for row-major sorted `rows`."""
    starts = counts.cumsum(0) - counts
    return torch.arange(rows.numel(), device=rows.device) - starts[rows]


def _from_ranks(num_pos: torch.Tensor, pos_ranks: torch.Tensor) -> tuple[np.ndarray, ...]:
    """Per-query (valid, num_pos, first rank, AP, INP) from the positives' ranks."""
    c, width = pos_ranks.shape
    valid = num_pos > 0
    if width == 0:
        zeros = np.zeros(c, np.float64)
        return valid.cpu().numpy(), num_pos.cpu().numpy(), np.zeros(c, np.int64), zeros, zeros.copy()
    ordinal = torch.arange(1, width + 1, device=pos_ranks.device, dtype=torch.float64)
    real = ordinal[None, :] <= num_pos[:, None]
    precision = torch.where(real, ordinal[None, :] / pos_ranks, torch.zeros((), dtype=torch.float64,
                                                                             device=pos_ranks.device))
    n = num_pos.clamp(min=1).to(torch.float64)
    ap = precision.sum(1) / n
    last = pos_ranks.gather(1, (num_pos - 1).clamp(min=0)[:, None])[:, 0]
    inp = torch.where(valid, n / last, torch.zeros_like(n))
    first = torch.where(valid, pos_ranks[:, 0], torch.zeros_like(pos_ranks[:, 0]))
    return tuple(t.cpu().numpy() for t in (valid, num_pos, first, ap, inp))


# --- inputs ---------------------------------------------------------------------------


def _row_source(distances: DistanceSource, num_q: int, num_g: int) -> Callable[[int, int], torch.Tensor]:
    """Rows [start, stop) of the distances as float tensors, shape- and value-checked."""
    if isinstance(distances, np.ndarray):
        distances = torch.from_numpy(distances)
    if isinstance(distances, torch.Tensor):
        if tuple(distances.shape) != (num_q, num_g):
            raise ValueError(f"distance matrix has shape {tuple(distances.shape)} but there are "
                             f"{num_q} queries and {num_g} gallery items")
        matrix = distances
        fetch = lambda start, stop: matrix[start:stop]  # noqa: E731
    elif callable(distances):
        fetch = distances
    else:
        raise TypeError("distances must be a (Q, G) tensor or array, or a callable "
                        f"rows(start, stop) -> tensor; got {type(distances).__name__}")

    def rows(start: int, stop: int) -> torch.Tensor:
        d = torch.as_tensor(fetch(start, stop))
        if tuple(d.shape) != (stop - start, num_g):
            raise ValueError(f"distance rows [{start}, {stop}) have shape {tuple(d.shape)}, "
                             f"expected {(stop - start, num_g)}")
        if not d.is_floating_point():
            d = d.to(torch.float64)
        elif d.dtype in (torch.float16, torch.bfloat16):
            d = d.float()
        if not bool(torch.isfinite(d.sum())) and not bool(torch.isfinite(d).all()):
            raise ValueError(f"distance rows [{start}, {stop}) contain NaN or infinite values")
        return d.contiguous()

    return rows


def _codes(query_ids, gallery_ids, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Identity/camera labels as int64 arrays (non-integer labels are encoded jointly)."""
    q, g = (np.asarray(a.cpu() if isinstance(a, torch.Tensor) else a) for a in (query_ids, gallery_ids))
    if q.ndim != 1 or g.ndim != 1:
        raise ValueError(f"{what} must be 1-D arrays, got shapes {q.shape} and {g.shape}")
    if np.issubdtype(q.dtype, np.integer) and np.issubdtype(g.dtype, np.integer):
        return q.astype(np.int64), g.astype(np.int64)
    _, codes = np.unique(np.concatenate([q.astype(object), g.astype(object)]).astype(str),
                         return_inverse=True)
    return codes[:len(q)].astype(np.int64), codes[len(q):].astype(np.int64)


def _per_category(per_query: PerQueryMetrics, ranks: list[int], q_categories,
                  category_names: Sequence[str] | None) -> dict[str, float]:
    """The same metrics over each query category's queries (against the whole gallery)."""
    cats = np.asarray(q_categories.cpu() if isinstance(q_categories, torch.Tensor) else q_categories)
    if cats.shape != per_query.valid.shape:
        raise ValueError(f"q_categories has shape {cats.shape} but there are "
                         f"{len(per_query.valid)} queries")
    out: dict[str, float] = {}
    for cat in np.unique(cats):
        name = _category_name(cat, category_names)
        mask = cats == cat
        if not (per_query.valid & mask).any():
            out[f"{name}/num_valid_queries"] = 0
            continue
        sub = summarise(per_query, ranks, mask, what=f"category {name!r}")
        out.update({f"{name}/{key}": value for key, value in sub.items()})
    return out


def _category_name(cat, category_names: Sequence[str] | None) -> str:
    if category_names is not None and isinstance(cat, (int, np.integer)) and 0 <= cat < len(category_names):
        return str(category_names[int(cat)])
    return str(cat)

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
the kept items: 1 + the number of kept items before it in the (distance, index) order,
and only items no farther than the row's hardest positive can be before one. Per chunk
of queries (see `_positive_ranks`): a monotone float map puts those items into integer
bins; one histogram, cumulated, counts the items in lower bins than each positive; the
few items sharing a bin with a positive are ordered exactly by (distance, index). No
sort of the gallery and no binary search per item: a handful of passes over the chunk,
which is kept small enough to stay in cache. With a trained model only a few percent of
the items are within the hardest positive, and only those are listed and binned. All
operations are torch ops on the device of the distances (GPU when the features are
there); temporaries stay under `memory_budget` bytes by chunking the queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np
import torch

#: Default bound on the temporaries of one chunk of queries (bytes).
DEFAULT_MEMORY_BUDGET = 256 * 2**20
#: Bytes of temporaries per (query, gallery) entry of a chunk, a conservative estimate:
#: the distances (4; 8 while a euclidean chunk is computed), the shifted distances (4),
#: the int64 bins (8), the shared-bin mask (1), the histogram (8 per bin, <= 1 per entry).
_BYTES_PER_ENTRY = 32
#: Automatic chunks hold at most this many (query, gallery) entries: the few passes over
#: a chunk then run in cache (measured fastest on CPU between 2**20 and 2**22).
_CACHE_ENTRIES = 2**21
#: Most histogram bins per row (memory: 8 bytes per bin and row of a chunk).
_MAX_BINS = 8192
#: Gallery items per histogram bin (fewer: larger histograms; more: more items to order).
_ITEMS_PER_BIN = 4
#: List the items up to the hardest positive (instead of binning the whole chunk) when at
#: most this fraction of a sample of every `_SAMPLE_STRIDE`-th column is among them.
_LIST_FRACTION = 0.25
_SAMPLE_STRIDE = 16

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
    """Queries per chunk: `chunk_size` if positive, else as many as fit the budget and
    `_CACHE_ENTRIES` (small chunks keep the passes over a chunk in cache)."""
    if chunk_size < 0:
        raise ValueError(f"chunk_size must be >= 0 (0 = automatic), got {chunk_size}")
    if memory_budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
    if chunk_size == 0:
        chunk_size = min(memory_budget // _BYTES_PER_ENTRY, _CACHE_ENTRIES) // max(num_gallery, 1)
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
    positives, ascending; entries at and after num_pos[row] are padding.

    A positive's rank is 1 + the kept items before it in the (distance, index) order,
    and only the items no farther than the row's hardest positive can be before one.
    (1) A monotone map sends each of those distances to an integer bin (`_BinMap`): an
    item in a lower bin than the positive is before it, and a histogram, cumulated,
    counts those. (2) The items sharing a bin with some positive (a few per positive)
    are listed and ordered exactly by (row, distance, index); the kept ones before the
    positive in its bin complete its count. Ties, removed items and signed zeros need no
    special case, and no per-item binary search or sort of the gallery is needed.
    """
    c, g = d.shape
    rows, cols = gallery.same_identity(q_pids)
    junk = _is_junk(rows, cols, q_cams, gallery.cams, exclude_same_camera)
    num_pos = torch.bincount(rows[~junk], minlength=c)
    width = int(num_pos.max()) if c else 0
    if width == 0:
        return num_pos, torch.ones((c, 0), dtype=torch.int64, device=d.device)
    flat_d = d.view(-1)
    pos_flat, junk_flat = rows[~junk] * g + cols[~junk], rows[junk] * g + cols[junk]
    pos_values = flat_d.index_select(0, pos_flat)
    hardest = torch.full((c,), -float("inf"), dtype=d.dtype, device=d.device)
    hardest.scatter_reduce_(0, rows[~junk], pos_values, "amax")
    listed = _items_up_to(d, hardest)
    to_bin = _BinMap(d, hardest, g if listed is None else len(listed) // max(c, 1))
    if listed is None:  # most items: bin the whole chunk in place of listing it
        bins = to_bin(d, torch.arange(c, device=d.device)[:, None]).view(-1)
    else:
        bins = to_bin(flat_d.index_select(0, listed), listed // g)
    counts = torch.bincount(bins, minlength=to_bin.total)
    junk_bins = to_bin(flat_d.index_select(0, junk_flat), junk_flat // g)
    counts.index_add_(0, junk_bins, torch.ones_like(junk_bins, dtype=counts.dtype), alpha=-1)
    kept_below = counts.view(c, -1).cumsum(1).view(-1).sub_(counts)  # kept items in lower bins
    shared = torch.zeros(to_bin.total, dtype=torch.bool, device=d.device)
    shared[to_bin(pos_values, pos_flat // g)] = True
    sharing = _nonzero(lambda out: torch.index_select(shared, 0, bins, out=out), len(bins), d.device)
    s_bins = bins.index_select(0, sharing)
    s_flat = sharing if listed is None else listed.index_select(0, sharing)
    s_flat, s_bins = _sort_by_distance(flat_d, s_flat, s_bins)
    s_rows, s_cols = s_flat // g, s_flat % g
    same_pid = q_pids.index_select(0, s_rows) == gallery.pids.index_select(0, s_cols)
    kept = ~(same_pid & _is_junk(s_rows, s_cols, q_cams, gallery.cams, exclude_same_camera))
    kept_before = kept.cumsum(0) - kept.long()  # kept listed items before each one
    group_start = torch.ones_like(kept)
    group_start[1:] = s_bins[1:] != s_bins[:-1]
    first = torch.where(group_start, torch.arange(len(kept), device=d.device), 0).cummax(0).values
    rank = kept_below.index_select(0, s_bins) + kept_before - kept_before.index_select(0, first) + 1
    is_pos = same_pid & kept
    out_rows = s_rows[is_pos]
    pos_ranks = torch.zeros((c, width), dtype=torch.int64, device=d.device)
    pos_ranks[out_rows, _slots(out_rows, num_pos)] = rank[is_pos]
    return num_pos, pos_ranks


def _is_junk(rows, cols, q_cams, g_cams, exclude_same_camera: bool) -> torch.Tensor:
    """Of same-identity (row, col) pairs, those the protocol removes: same camera."""
    if not exclude_same_camera:
        return torch.zeros_like(rows, dtype=torch.bool)
    return q_cams.index_select(0, rows) == g_cams.index_select(0, cols)


def _items_up_to(d: torch.Tensor, hardest: torch.Tensor) -> torch.Tensor | None:
    """Flat indices of the items no farther than their row's hardest positive, or None
    when they are most of the chunk (random features: listing them would cost more than
    binning every item). A trained model's positives rank high: a few percent remain."""
    sample = d[:, ::_SAMPLE_STRIDE] <= hardest[:, None]
    if float(sample.float().mean()) > _LIST_FRACTION:
        return None
    return _nonzero(lambda out: torch.le(d, hardest[:, None], out=out.view(d.shape)), d.numel(), d.device)


def _nonzero(fill_mask, n: int, device: torch.device) -> torch.Tensor:
    """Indices of the True entries of a length-n boolean mask, written by `fill_mask(out)`,
    when few are True. The mask is read 8 entries at a time (as int64 words): only the
    words holding a True entry are looked at entry by entry."""
    words = torch.zeros((n + 7) // 8, dtype=torch.int64, device=device)
    mask = words.view(torch.bool)
    fill_mask(mask[:n])
    hit = words.nonzero()[:, 0]
    candidates = (hit[:, None] * 8 + torch.arange(8, device=hit.device)).view(-1)
    return candidates[mask.index_select(0, candidates)]


class _BinMap:
    """Row r's range [min, hardest positive] cut into equal bins (farther items share the
    last one); `map(values, rows)` gives each item's bin, offset by row * bins_per_row,
    as int32. The map x -> (x - min) * scale, clamped, plus the offset, is a chain of
    correctly rounded float operations, each monotone, so it never inverts two
    distances of a row (it may merge them into one bin; `_positive_ranks` then orders
    them exactly), and it gives an item the same bin whatever tensor it is computed in.
    Rows never share a bin: offsets stay below 2**24 (exact in float32)."""

    def __init__(self, d: torch.Tensor, hardest: torch.Tensor, items_per_row: int):
        c = d.shape[0]
        self.per_row = max(3, min(_MAX_BINS + 1, items_per_row // _ITEMS_PER_BIN + 2, 2**24 // max(c, 1)))
        self.total = c * self.per_row
        self.lo = d.amin(1)
        scale = (self.per_row - 2) / (hardest - self.lo).clamp_(min=0)
        self.scale = torch.where(torch.isfinite(scale), scale, torch.zeros_like(scale))  # one bin if span 0
        self.offset = torch.arange(c, device=d.device, dtype=d.dtype) * self.per_row

    def __call__(self, values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        binned = (values - self.lo[rows]).mul_(self.scale[rows]).clamp_(max=self.per_row - 1)
        return binned.add_(self.offset[rows]).to(torch.int32)


def _sort_by_distance(flat_d, flat, bins) -> tuple[torch.Tensor, torch.Tensor]:
    """Listed items (flat indices in row-major order) reordered by (row, distance,
    index): a stable sort by distance, then a stable sort by bin (bins are row-major
    and monotone in distance)."""
    order = torch.sort(flat_d.index_select(0, flat), stable=True).indices
    order = order.index_select(0, torch.sort(bins.index_select(0, order), stable=True).indices)
    return flat.index_select(0, order), bins.index_select(0, order)


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
    def summary(mask):
        return summarise(per_query, ranks, mask, what="this category")
    return _per_category_with(summary, per_query.valid, q_categories, category_names)


def _per_category_with(summary, valid: np.ndarray, q_categories,
                       category_names: Sequence[str] | None) -> dict[str, float]:
    """`summary(mask)` of each query category under "<name>/<metric>" keys; a category
    without a valid query only reports its `num_valid_queries` of 0."""
    cats = np.asarray(q_categories.cpu() if isinstance(q_categories, torch.Tensor) else q_categories)
    if cats.shape != valid.shape:
        raise ValueError(f"q_categories has shape {cats.shape} but there are {len(valid)} queries")
    out: dict[str, float] = {}
    for cat in np.unique(cats):
        name = _category_name(cat, category_names)
        mask = cats == cat
        if not (valid & mask).any():
            out[f"{name}/num_valid_queries"] = 0
            continue
        out.update({f"{name}/{key}": value for key, value in summary(mask).items()})
    return out


def _category_name(cat, category_names: Sequence[str] | None) -> str:
    if category_names is not None and isinstance(cat, (int, np.integer)) and 0 <= cat < len(category_names):
        return str(category_names[int(cat)])
    return str(cat)

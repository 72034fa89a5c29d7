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
of queries (see `_positive_ranks`): a monotone map puts those items into integer bins
(for non-negative float32 distances, from their bits: three integer passes); one
histogram, cumulated, counts the items in lower bins than each positive; the few items
sharing a bin with a positive are compared with it exactly. No sort of the gallery and
no binary search per item: a handful of passes over the chunk, which is kept small
enough to stay in cache, into buffers reused from chunk to chunk. With a trained model
only a few percent of the items are within the hardest positive, and only those are
listed and binned. All operations are torch ops on the device of the distances (GPU
when the features are there); two chunks are ranked at once by two threads (the
histogram and gather ops use one core each); temporaries stay under `memory_budget`
bytes by chunking the queries. `bench/eval.py`
measures it against the per-query loop (BENCHMARKS.md).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np
import torch

#: Default bound on the temporaries of the chunks of queries ranked at once (bytes).
DEFAULT_MEMORY_BUDGET = 256 * 2**20
#: Bytes of temporaries per (query, gallery) entry of a chunk, a conservative estimate:
#: the distances (4; 8 while a euclidean chunk is computed), the scaled distances (4),
#: the int32 bins (4), the mask (1), the histogram and its cumulative sums (16 per bin,
#: <= 1 bin per entry). A `ranked` mask adds 5 (its copy of the distances, the mask), not
#: counted here: with the default budget the automatic chunks are bounded by `_CACHE_ENTRIES`.
_BYTES_PER_ENTRY = 32
#: Automatic chunks hold at most this many (query, gallery) entries: the few passes over
#: a chunk then run in cache (measured fastest on CPU between 2**20 and 2**22).
_CACHE_ENTRIES = 2**21
#: The same after a chunk whose few items up to the hardest positive were listed (measured
#: ~10% faster than 2**21 on a trained model's distances; binning whole chunks is not).
_LISTED_CACHE_ENTRIES = 2**22
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
#: Query rows -> (len(rows), G) bool, True where a gallery item is ranked (`per_query_metrics`).
RankedMask = Callable[[np.ndarray], np.ndarray]


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
                 q_categories=None, category_names: Sequence[str] | None = None,
                 threads: int = 0, q_groups=None, g_groups=None) -> dict[str, float]:
    """CMC at `ranks`, mAP and mINP (percentages) and `num_valid_queries`.

    `distances` is a (Q, G) matrix or a callable `rows(start, stop) -> (stop-start, G)`
    tensor, called once per chunk of `chunk_size` queries (0: as many as fit in
    `memory_budget` bytes). With `q_categories` (one id per query), the same metrics are
    added per query category under "<name>/<metric>" keys, `<name>` taken from
    `category_names[id]` (else the id); a category without a valid query only reports
    its `num_valid_queries` of 0. `threads`: chunks ranked at once; `q_groups` /
    `g_groups`: a second label whose sharing also removes a same-identity item, e.g.
    clothes ids (see `per_query_metrics`).
    """
    ranks = validate_ranks(ranks)
    per_query = per_query_metrics(distances, q_pids, g_pids, q_camids, g_camids,
                                  exclude_same_camera=exclude_same_camera,
                                  chunk_size=chunk_size, memory_budget=memory_budget, threads=threads,
                                  q_groups=q_groups, g_groups=g_groups)
    metrics = summarise(per_query, ranks)
    if q_categories is not None:
        metrics.update(_per_category(per_query, ranks, q_categories, category_names))
    return metrics


def query_gallery_labels(q_pids, g_pids, q_camids, g_camids, q_groups=None, g_groups=None,
                         num_q: int | None = None, num_g: int | None = None):
    """The labels as codes (`_codes`), checked: groups given for both sides or neither, and
    one label per query (`num_q`, default len(q_pids)) and gallery item (`num_g`); a
    ValueError names the array. Shared by the dense and the blocked (out-of-core) search."""
    q_pids, g_pids = _codes(q_pids, g_pids, "pids")
    q_camids, g_camids = _codes(q_camids, g_camids, "camids")
    if (q_groups is None) != (g_groups is None):
        raise ValueError("q_groups and g_groups go together: give both (e.g. the clothes ids of queries and "
                         "gallery) or neither")
    if q_groups is not None:
        q_groups, g_groups = _codes(q_groups, g_groups, "groups")
    num_q = len(q_pids) if num_q is None else num_q
    num_g = len(g_pids) if num_g is None else num_g
    checks = [("q_pids", q_pids, num_q), ("q_camids", q_camids, num_q), ("g_pids", g_pids, num_g),
              ("g_camids", g_camids, num_g)]
    if q_groups is not None:
        checks += [("q_groups", q_groups, num_q), ("g_groups", g_groups, num_g)]
    for name, arr, n in checks:
        if len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} entries but there are {n} "
                             f"{'queries' if name[0] == 'q' else 'gallery items'}")
    return q_pids, g_pids, q_camids, g_camids, q_groups, g_groups


def per_query_metrics(distances: DistanceSource, q_pids, g_pids, q_camids, g_camids,
                      exclude_same_camera: bool = True, chunk_size: int = 0,
                      memory_budget: int = DEFAULT_MEMORY_BUDGET, threads: int = 0,
                      q_groups=None, g_groups=None, ranked: RankedMask | None = None) -> PerQueryMetrics:
    """Each query's first-positive rank, AP and INP under the protocol (see module doc).

    With `q_groups` and `g_groups` (one label per query / gallery item, e.g. clothes
    ids), a gallery item of the query's identity that shares its group is removed too,
    like one from its camera: the clothes-changing protocol of LTCC / PRCC, where only
    images of the person in other clothes count.

    With `ranked` (`core.interfaces.RankedGallery.ranked`: query rows -> (len(rows), G)
    bool, True where the item is ranked), the items it marks False are removed as well,
    whatever their identity: neither a positive nor counted before one (a gallery per
    task, any evaluator's rule). It is called once per chunk, from the ranking threads.

    Chunks are ranked by `threads` threads (0: `default_threads()`): most of the work is
    in torch ops that run on one core and release the GIL (histograms, gathers), so two
    chunks at a time use two cores. `distances` is still called one chunk at a time, in
    order. The memory budget is shared by the chunks ranked at once.
    """
    q_pids, g_pids, q_camids, g_camids, q_groups, g_groups = query_gallery_labels(
        q_pids, g_pids, q_camids, g_camids, q_groups, g_groups)
    num_q, num_g = len(q_pids), len(g_pids)
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0 = automatic), got {threads}")
    threads = threads or default_threads()
    labels = _Labels(q_pids, q_camids, q_groups, g_pids, g_camids, g_groups, exclude_same_camera)
    step = resolve_chunk_size(chunk_size, num_q, num_g, memory_budget // threads)
    # chunks whose items up to the hardest positive are few (a trained model) are listed,
    # not binned whole: fewer passes per entry, so larger chunks pay (fewer small ops)
    listed_step = resolve_chunk_size(chunk_size, num_q, num_g, memory_budget // threads, _LISTED_CACHE_ENTRIES)
    chunks = _Chunks(_row_source(distances, num_q, num_g), num_q, step, listed_step, labels, ranked)
    if threads == 1 or max(step, listed_step) >= num_q:
        chunks.rank_all()
    else:
        with ThreadPoolExecutor(threads, thread_name_prefix="reid-ranking") as pool:
            try:
                for future in [pool.submit(chunks.rank_all) for _ in range(threads)]:
                    future.result()
            except BaseException:  # a thread failed, or Ctrl-C in the caller
                chunks.failed.set()  # the other threads stop after their current chunk
                raise
    return chunks.results()


class _Labels:
    """The identity, camera and group labels of queries and gallery, on each device the
    distances come on (built once per device)."""

    def __init__(self, q_pids, q_cams, q_groups, g_pids, g_cams, g_groups, exclude_same_camera: bool):
        self.host = (q_pids, q_cams, q_groups, g_pids, g_cams, g_groups)
        self.exclude_same_camera = exclude_same_camera
        self._on: dict[torch.device, tuple] = {}

    def on(self, device: torch.device) -> tuple:
        """(q_pids, q_cams, q_groups or None, _GalleryIndex) as tensors on `device`."""
        if device not in self._on:
            q_pids, q_cams, q_groups, g_pids, g_cams, g_groups = self.host
            self._on[device] = (torch.as_tensor(q_pids, device=device), torch.as_tensor(q_cams, device=device),
                                None if q_groups is None else torch.as_tensor(q_groups, device=device),
                                _GalleryIndex(g_pids, g_cams, device, g_groups))
        return self._on[device]


class _Chunks:
    """Hands out consecutive chunks of queries to the ranking threads: the row source is
    called under a lock, one chunk at a time and in order; chunks grow to `listed_step`
    queries after a chunk whose items were listed. Results are kept by chunk start."""

    def __init__(self, rows: Callable[[int, int], torch.Tensor], num_q: int, step: int, listed_step: int,
                 labels: _Labels, ranked: RankedMask | None = None):
        self.rows, self.num_q, self.step, self.listed_step, self.labels = rows, num_q, step, listed_step, labels
        self.ranked = ranked
        self.next, self.listed = 0, False
        self.lock, self.failed = threading.Lock(), threading.Event()
        self.parts: dict[int, tuple] = {}

    def rank_all(self) -> None:
        """Rank chunks until none is left (or another thread failed)."""
        try:
            workspaces: dict[torch.device, _Workspace] = {}
            while not self.failed.is_set():
                with self.lock:
                    start = self.next
                    if start >= self.num_q or self.failed.is_set():
                        return
                    stop = self.next = min(start + (self.listed_step if self.listed else self.step), self.num_q)
                    try:
                        d = self.rows(start, stop)
                        q_pids, q_cams, q_groups, gallery = self.labels.on(d.device)
                    except BaseException:
                        self.failed.set()  # before the lock is released: no later chunk is fetched
                        raise
                work = workspaces.setdefault(d.device, _Workspace(d.device))
                removal = _Removal(q_cams[start:stop], None if q_groups is None else q_groups[start:stop], gallery,
                                   self.labels.exclude_same_camera)
                if self.ranked is not None:
                    d, removal.ranked = _unranked_removed(d, self.ranked, start, stop, work)
                num_pos, pos_ranks, listed = _positive_ranks(d, q_pids[start:stop], gallery, removal, work)
                self.parts[start] = _from_ranks(num_pos, pos_ranks)
                if listed is not None:
                    self.listed = listed
        except BaseException:
            self.failed.set()
            raise

    def results(self) -> PerQueryMetrics:
        if not self.parts:
            return PerQueryMetrics(*(np.zeros(0, dt) for dt in (bool, np.int64, np.int64, np.float64, np.float64)))
        return PerQueryMetrics(*(np.concatenate(cols) for cols in zip(*(self.parts[k] for k in sorted(self.parts)))))


def default_threads() -> int:
    """Ranking threads when none are asked for: two when torch may use two or more cores
    (the histogram and gather ops each use one), else one."""
    return 2 if torch.get_num_threads() >= 2 else 1


class NoValidQuery(ValueError):
    """No query of a set has a gallery item of its identity left to find: no metric exists.
    A ValueError (callers catch that); its own class so that the CLI prints its message
    alone and the reid evaluator can add where the test set's cameras came from."""


def summarise(per_query: PerQueryMetrics, ranks: Sequence[int],
              mask: np.ndarray | None = None, what: str = "the query set") -> dict[str, float]:
    """Average the valid queries (of `mask`, if given) into percentages."""
    valid = per_query.valid if mask is None else per_query.valid & mask
    n = int(valid.sum())
    if n == 0:
        total = len(valid) if mask is None else int(mask.sum())
        raise NoValidQuery(f"no valid query in {what}: none of its {total} queries has a gallery "
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
                       memory_budget: int = DEFAULT_MEMORY_BUDGET, cache_entries: int | None = None) -> int:
    """Queries per chunk: `chunk_size` if positive, else as many as fit the budget and
    `cache_entries` (default `_CACHE_ENTRIES`: small chunks keep the passes over a chunk
    in cache)."""
    if chunk_size < 0:
        raise ValueError(f"chunk_size must be >= 0 (0 = automatic), got {chunk_size}")
    if memory_budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
    if chunk_size == 0:
        entries = _CACHE_ENTRIES if cache_entries is None else cache_entries
        chunk_size = min(memory_budget // _BYTES_PER_ENTRY, entries) // max(num_gallery, 1)
    return max(1, min(chunk_size, max(num_queries, 1)))


# --- one chunk ------------------------------------------------------------------------


class _GalleryIndex:
    """Gallery pids, camids (and groups, e.g. clothes ids) on one device, with the gallery
    sorted by pid so that a query's same-identity items are found by binary search, not
    by a (c, G) mask."""

    def __init__(self, pids: np.ndarray, cams: np.ndarray, device: torch.device, groups: np.ndarray | None = None):
        self.pids = torch.as_tensor(pids, device=device)
        self.cams = torch.as_tensor(cams, device=device)
        self.groups = None if groups is None else torch.as_tensor(groups, device=device)
        self.order = torch.sort(self.pids, stable=True).indices
        self.sorted_pids = self.pids[self.order].contiguous()

    def same_identity(self, q_pids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, cols) of the gallery items sharing each query's pid, grouped by row."""
        lo = torch.searchsorted(self.sorted_pids, q_pids)
        counts = torch.searchsorted(self.sorted_pids, q_pids, right=True) - lo
        rows = torch.repeat_interleave(torch.arange(len(q_pids), device=q_pids.device), counts)
        return rows, self.order.index_select(0, lo.index_select(0, rows) + _slots(rows, counts))


def _positive_ranks(d: torch.Tensor, q_pids: torch.Tensor, gallery: "_GalleryIndex", removal: "_Removal",
                    work: "_Workspace") -> tuple[torch.Tensor, torch.Tensor, bool | None]:
    """(num_pos (c,), ranks (c, P), listed): the 1-based ranks among kept items of each
    row's positives, ascending (entries at and after num_pos[row] are padding), and
    whether the items up to the hardest positives were listed (None: no positive).

    A positive's rank is 1 + the kept items before it in the (distance, index) order,
    and only the items no farther than the row's hardest positive can be before one.
    (1) A monotone map sends each of those distances to an integer bin (`_BinMap`,
    `_BitBinMap`): an item in a lower bin than the positive is before it, and a
    histogram, cumulated, counts those. (2) The items sharing a bin with some positive
    (a few per positive) are listed and compared with each positive of their bin in the
    (distance, index) order; the kept ones before it complete its count. Ties, removed
    items and signed zeros need no special case (-0.0 == +0.0 compares equal), and no
    per-item binary search or sort of the gallery is needed.
    """
    c, g = d.shape
    rows, cols = gallery.same_identity(q_pids)
    junk = removal(rows, cols)
    pos_rows = rows[~junk]
    num_pos = torch.bincount(pos_rows, minlength=c)
    width = int(num_pos.max()) if c else 0
    if width == 0:
        return num_pos, torch.ones((c, 0), dtype=torch.int64, device=d.device), None
    flat_d = d.view(-1)
    counted = junk  # removed items the histogram counts, to subtract
    if removal.ranked is not None:  # items a mask leaves out sit at +inf, after every positive: none to subtract
        counted = junk & removal.ranked[rows, cols]
    pos_flat, junk_flat = pos_rows * g + cols[~junk], rows[counted] * g + cols[counted]
    pos_values = flat_d.index_select(0, pos_flat)
    hardest = torch.full((c,), -float("inf"), dtype=d.dtype, device=d.device)
    hardest.scatter_reduce_(0, pos_rows, pos_values, "amax")
    listed, sample_min = _items_up_to(d, hardest, work)
    if listed is None:  # most items: bin the whole chunk in place of listing it
        to_bin = _bin_map_for_chunk(sample_min, hardest, g)
        bins = to_bin.whole(d, work)
    else:  # the row's minimum is among its listed items (it is no farther than the hardest positive)
        listed_rows, listed_values = listed // g, flat_d.index_select(0, listed)
        lo = torch.full((c,), float("inf"), dtype=d.dtype, device=d.device)
        lo.scatter_reduce_(0, listed_rows, listed_values, "amin")
        to_bin = _BinMap(lo, hardest, len(listed) // c)
        bins = to_bin(listed_values, listed_rows)
    counts = torch.bincount(bins, minlength=to_bin.total)
    junk_bins = to_bin(flat_d.index_select(0, junk_flat), junk_flat // g)
    counts.index_add_(0, junk_bins, torch.ones_like(junk_bins, dtype=counts.dtype), alpha=-1)  # kept items per bin
    through = torch.cumsum(counts.view(c, -1), 1, out=work("cumulative", to_bin.total, counts.dtype).view(c, -1))
    pos_bins = to_bin(pos_values, pos_rows)
    table = _PositiveBins(pos_bins, to_bin.total, work)
    try:
        sharing = _nonzero(lambda out: torch.index_select(table.shared, 0, bins, out=out), len(bins), work)
        item, pos = table.pairs(bins.index_select(0, sharing))
    finally:
        table.clear()
    s_flat = sharing if listed is None else listed.index_select(0, sharing)
    if item is not None:  # an item shares its bin with several positives: one pair each
        s_flat = s_flat.index_select(0, item)
    s_values = flat_d.index_select(0, s_flat)
    p_values, p_flat = pos_values.index_select(0, pos), pos_flat.index_select(0, pos)
    before = (s_values < p_values) | ((s_values == p_values) & (s_flat < p_flat))  # the stable order
    s_rows = s_flat // g
    s_cols = s_flat - s_rows * g
    removed = (q_pids.index_select(0, s_rows) == gallery.pids.index_select(0, s_cols)) & removal(s_rows, s_cols)
    in_bin_before = torch.bincount(pos[before & ~removed], minlength=len(pos_values))
    kept_below = through.view(-1).index_select(0, pos_bins) - counts.index_select(0, pos_bins)
    rank = kept_below + in_bin_before + 1
    pos_ranks = torch.full((c, width), torch.iinfo(torch.int64).max, dtype=torch.int64, device=d.device)
    pos_ranks[pos_rows, _slots(pos_rows, num_pos)] = rank
    pos_ranks = torch.sort(pos_ranks, 1).values  # each row's ranks ascending, padding last
    return num_pos, pos_ranks, listed is not None


def _unranked_removed(d: torch.Tensor, ranked: RankedMask, start: int, stop: int,
                      work: "_Workspace") -> tuple[torch.Tensor, torch.Tensor]:
    """(the chunk's distances with the items `ranked` leaves out at +inf, its (c, G) mask
    as a tensor). An item at +inf is after every positive (distances are finite), so
    nothing counts it before one; `_Removal` takes it out of the positives. The copy goes
    to a workspace buffer: the caller's distances are not changed."""
    mask = np.asarray(ranked(np.arange(start, stop)))
    if mask.shape != tuple(d.shape) or mask.dtype != np.bool_:
        raise ValueError(f"ranked(rows) for query rows [{start}, {stop}) gave a {mask.dtype} array of shape "
                         f"{mask.shape}; expected bool of shape {tuple(d.shape)} (True where an item is ranked)")
    kept = torch.from_numpy(mask).to(d.device)
    out = work("ranked distances", d.numel(), d.dtype).view(d.shape)
    return torch.where(kept, d, torch.tensor(float("inf"), dtype=d.dtype, device=d.device), out=out), kept


class _Removal:
    """Which same-identity (row, col) pairs of a chunk the protocol removes: those from
    the query's camera (when `exclude_same_camera`), those sharing its group (clothes
    id), when groups are given, and those a `ranked` mask ((c, G), True where ranked)
    leaves out: their distances are then +inf (`_unranked_removed`)."""

    def __init__(self, q_cams: torch.Tensor, q_groups: torch.Tensor | None, gallery: "_GalleryIndex",
                 exclude_same_camera: bool):
        self.q_cams, self.q_groups, self.gallery = q_cams, q_groups, gallery
        self.exclude_same_camera = exclude_same_camera
        self.ranked: torch.Tensor | None = None

    def __call__(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        removed = torch.zeros_like(rows, dtype=torch.bool)
        if self.ranked is not None:
            removed |= ~self.ranked[rows, cols]
        if self.exclude_same_camera:
            removed |= self.q_cams.index_select(0, rows) == self.gallery.cams.index_select(0, cols)
        if self.q_groups is not None:
            removed |= self.q_groups.index_select(0, rows) == self.gallery.groups.index_select(0, cols)
        return removed


class _PositiveBins:
    """Which bins of a chunk hold positives, as tables over all its bins: `shared[b]` for
    the pass over every item, and the positives of bin b for the few items listed from
    those bins (`pairs`). The tables are workspace buffers kept all zero between chunks:
    only the positives' entries are written, and `clear()` zeroes them again, instead of
    filling a table per chunk."""

    def __init__(self, pos_bins: torch.Tensor, total: int, work: "_Workspace"):
        sorted_bins, self.by_bin = torch.sort(pos_bins)
        n = len(sorted_bins)
        starts = torch.ones(n, dtype=torch.bool, device=pos_bins.device)
        starts[1:] = sorted_bins[1:] != sorted_bins[:-1]
        starts = starts.nonzero()[:, 0]
        self.bins = sorted_bins.index_select(0, starts)
        lengths = torch.diff(starts, append=starts.new_full((1,), n))
        self.shared = work.zeroed("shared bins", total, torch.bool)
        self.first = work.zeroed("first positive", total, torch.int32)
        self.count = work.zeroed("positives", total, torch.int32)
        self.shared[self.bins] = True
        self.first[self.bins] = starts.to(torch.int32)
        self.count[self.bins] = lengths.to(torch.int32)

    def pairs(self, item_bins: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(item, positive) for each item in a shared bin and each positive of its bin:
        `item` indexes `item_bins` (None: one pair per item, in order), `positive` the
        positives as given."""
        first = self.first.index_select(0, item_bins).long()
        count = self.count.index_select(0, item_bins)
        if len(count) == 0 or int(count.max()) == 1:
            return None, self.by_bin.index_select(0, first)
        item = torch.repeat_interleave(torch.arange(len(item_bins), device=item_bins.device), count)
        return item, self.by_bin.index_select(0, first.index_select(0, item) + _slots(item, count.long()))

    def clear(self) -> None:
        self.shared[self.bins] = False
        self.first[self.bins] = 0
        self.count[self.bins] = 0


class _Workspace:
    """Chunk-sized buffers reused from chunk to chunk: allocating (and faulting in) fresh
    ones for every chunk costs as much as the passes over them."""

    def __init__(self, device: torch.device):
        self.device = device
        self._buffers: dict[str, torch.Tensor] = {}

    def __call__(self, name: str, n: int, dtype: torch.dtype, allocate=torch.empty) -> torch.Tensor:
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < n or buffer.dtype != dtype:
            buffer = self._buffers[name] = allocate(n, dtype=dtype, device=self.device)
        return buffer[:n]

    def zeroed(self, name: str, n: int, dtype: torch.dtype) -> torch.Tensor:
        """A buffer of n zeros, which the caller must leave all zero after use."""
        return self(name, n, dtype, allocate=torch.zeros)


def _items_up_to(d: torch.Tensor, hardest: torch.Tensor,
                 work: _Workspace) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(flat indices of the items no farther than their row's hardest positive, None),
    or (None, each row's minimum over a sample of its columns) when those items are most
    of the chunk. Random features leave most items up to the hardest positive: listing
    them would cost more than binning every item. A trained model's positives rank high:
    a few percent remain. The sample is copied once (its strided reads touch every cache
    line)."""
    sample = d[:, ::_SAMPLE_STRIDE]
    sample = work("sample", sample.numel(), d.dtype).view(sample.shape).copy_(sample)
    if float((sample <= hardest[:, None]).sum()) > _LIST_FRACTION * sample.numel():
        return None, sample.amin(1)
    return _nonzero(lambda out: torch.le(d, hardest[:, None], out=out.view(d.shape)), d.numel(), work), None


def _nonzero(fill_mask, n: int, work: _Workspace) -> torch.Tensor:
    """Indices of the True entries of a length-n boolean mask, written by `fill_mask(out)`,
    when few are True. The mask is read 8 entries at a time (as int64 words): only the
    words holding a True entry are looked at entry by entry."""
    words = work("mask words", (n + 7) // 8, torch.int64)
    words[-1:] = 0  # fill_mask writes the first n entries; the rest of the last word must be False
    fill_mask(words.view(torch.bool)[:n])
    hit = words.nonzero()[:, 0]
    entries = words.index_select(0, hit).view(torch.bool).nonzero()[:, 0]  # 8 per hit word
    return hit.index_select(0, entries >> 3).mul_(8).add_(entries & 7)


class _BinMap:
    """Row r's range [lo[r], hardest positive] cut into equal bins (nearer items share the
    first bin, farther ones the last); `map(values, rows)` gives each item's bin, offset by
    row * bins_per_row, as int32. The map x -> (x - lo) * scale, clamped, plus the offset,
    is a chain of correctly rounded float operations, each monotone, so it never inverts
    two distances of a row (it may merge them into one bin; `_positive_ranks` then orders
    them exactly), and it gives an item the same bin whatever tensor it is computed in.
    Rows never share a bin: offsets stay below 2**24 (exact in float32). A row without
    span (no positive: lo inf, hardest -inf; or all items equal) gets bins of unit width;
    +inf (an item a `ranked` mask leaves out) goes to the last bin."""

    def __init__(self, lo: torch.Tensor, hardest: torch.Tensor, items_per_row: int):
        c = lo.shape[0]
        self.per_row = max(3, min(_MAX_BINS + 1, items_per_row // _ITEMS_PER_BIN + 2, 2**24 // max(c, 1)))
        self.total = c * self.per_row
        self.lo = torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo))
        scale = (self.per_row - 2) / (hardest - self.lo).clamp_(min=0)
        # span 0 or no positive: unit bins (any monotone map is exact; 0 would make +inf * 0 a NaN)
        self.scale = torch.where(torch.isfinite(scale), scale, torch.ones_like(scale))
        self.offset = torch.arange(c, device=lo.device, dtype=lo.dtype) * self.per_row

    def __call__(self, values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        def at(t):
            return t.index_select(0, rows)
        binned = (values - at(self.lo)).mul_(at(self.scale)).clamp_(0, self.per_row - 1)
        return binned.add_(at(self.offset)).to(torch.int32)

    def whole(self, d: torch.Tensor, work: _Workspace) -> torch.Tensor:
        """The bins of every item of the chunk, flat (the same operations as `__call__`)."""
        scaled = work("scaled", d.numel(), d.dtype).view(d.shape)
        torch.sub(d, self.lo[:, None], out=scaled).mul_(self.scale[:, None]).clamp_(0, self.per_row - 1)
        scaled.add_(self.offset[:, None])
        return work("bins", d.numel(), torch.int32).copy_(scaled.view(-1))


def _bin_map_for_chunk(sample_min: torch.Tensor, hardest: torch.Tensor, items_per_row: int):
    """The bin map for a whole chunk: `_BitBinMap` for non-negative float32 distances (three
    integer passes), else `_BinMap` (five float passes). Items below the sample's minimum
    share the first bin."""
    if sample_min.dtype == torch.float32 and float(sample_min.amin()) >= 0:
        return _BitBinMap(sample_min, hardest, items_per_row)
    return _BinMap(sample_min, hardest, items_per_row)


class _BitBinMap:
    """Bins of non-negative float32 distances from their bits: for x >= +0.0 the float's
    bits, read as an int32, grow with x, so (bits clamped to [lo, cap]) >> shift, plus the
    row's offset, is monotone (negative values, -0.0 included, clamp to the first bin) and
    exact integer arithmetic. Bins are equal in bits, i.e. about equal relative widths;
    one range [lo, cap] serves the whole chunk (lo: the least sampled row minimum, cap:
    just past the hardest positive of the chunk), so a row's bins also cover that range."""

    def __init__(self, lo: torch.Tensor, hardest: torch.Tensor, items_per_row: int):
        c = lo.shape[0]
        top = hardest.amax() if c else hardest.new_zeros(())
        lo_bits = max(int(lo.amin().view(torch.int32)), 0) if c else 0  # -0.0's bits are negative
        hi_bits = max(int(top.view(torch.int32)), lo_bits) if bool(torch.isfinite(top)) else lo_bits
        want = max(1, min(_MAX_BINS, items_per_row // _ITEMS_PER_BIN, 2**24 // max(c, 1) - 2))
        self.shift = max(0, (max(hi_bits - lo_bits, 1) // want).bit_length())  # (hi - lo) >> shift < want
        self.lo, self.cap = lo_bits, min(hi_bits + (1 << self.shift), 2**31 - 1)  # past hi: a bin of its own
        self.per_row = (self.cap >> self.shift) - (lo_bits >> self.shift) + 1
        self.total = c * self.per_row
        self.offset = (torch.arange(c, device=lo.device, dtype=torch.int32) * self.per_row
                       - (lo_bits >> self.shift))

    def __call__(self, values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        bits = values.contiguous().view(torch.int32).clamp(self.lo, self.cap).bitwise_right_shift_(self.shift)
        return bits.add_(self.offset.index_select(0, rows))

    def whole(self, d: torch.Tensor, work: _Workspace) -> torch.Tensor:
        """The bins of every item of the chunk, flat (the same operations as `__call__`)."""
        bins = work("bins", d.numel(), torch.int32).view(d.shape)
        torch.clamp(d.view(torch.int32), self.lo, self.cap, out=bins).bitwise_right_shift_(self.shift)
        return bins.add_(self.offset[:, None]).view(-1)


def _slots(rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Ordinal of each entry within its row, for row-major sorted `rows`."""
    starts = counts.cumsum(0) - counts
    return torch.arange(rows.numel(), device=rows.device) - starts.index_select(0, rows)


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

"""faiss-backed search for `ReIDEvaluator` (imported only when a faiss search is chosen).

Two uses, and what each is honestly good for:

* "faiss_flat": faiss computes the exact distances, chunk by chunk, and the standard
  protocol ranks them (`core.evaluation.ranking`): the metrics are the exact ones (up to
  float rounding of the distance kernel). A flat top-k search with k = G would be the
  same ranking at the cost of a full sort per query, so we do not search at all.
* "faiss_ivf": an inverted-file index (Jegou et al. 2011, "Product Quantization for
  Nearest Neighbor Search"; faiss, Johnson et al. 2019) returns each query's approximate
  top k. Nothing is known beyond the retrieved list, so mAP is truncated as large-scale
  retrieval reports it (e.g. the Google Landmarks benchmarks' mAP@100): with m the
  query's kept positives in the whole gallery and P(i) the precision at kept rank i,

      AP@k = sum_{i <= k, item i positive} P(i) / min(m, k)

  reported as "mAP@<k>"; CMC counts a query whose first positive is not retrieved as a
  miss; mINP (which needs the hardest positive's rank) is not reported. Removed items
  (same identity and camera) are dropped from the list first; the search asks for k plus
  the most removed items of any query, so k kept items remain. Ties in the list keep
  faiss's order.
* "faiss_ivfpq": the same with product-quantised codes (Jegou et al. 2011, Sec. IV;
  `pq_m` sub-quantisers of `pq_bits` bits: m bytes per item at 8 bits instead of 4 D),
  for galleries whose float32 copy does not fit in memory; the best `refine` x k
  candidates of each query are re-ranked by exact distances read from the gallery
  (`refine_exact`, as faiss's IndexRefineFlat does from a float32 copy). The index is trained on a
  seeded sample and filled block by block from the (memory-mapped) gallery, the queries
  searched block by block. Distances are PQ approximations, so its lists are measured:
  recall@k, the mean fraction of each query's exact top k (`blocked.blocked_topk`, the
  exact (distance, index) order) that the index returned, over `recall_queries` queries,
  reported beside mAP@k (for "faiss_ivf" too when `recall_queries` is set).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from core.evaluation.distances import blocked_rows

#: The values of `ReIDEvaluator(search=...)`: "blocked" is the exact protocol out of core
#: (core.evaluation.blocked); "faiss_ivfpq" an IVF index with product-quantised codes for
#: galleries too large for IVF-flat's float32 copy (issue 24).
SEARCHES = ("exact", "faiss_flat", "faiss_ivf", "blocked", "faiss_ivfpq")
#: Points per inverted list the IVF k-means trains on at most (faiss samples them,
#: seeded; 256 is faiss's own default). Fewer train faster but worse lists: at 516k
#: gallery items, sqrt(G) lists on 64 points each built 11x faster than 4 sqrt(G) on
#: 256, and kept rank-1 but lost 45 points of mAP@1000 on tightly clustered features
#: (BENCHMARKS.md).
IVF_TRAIN_POINTS_PER_LIST = 256
#: faiss_ivfpq defaults (bench/eval_blocked.py at 1M gallery items, 128-d clustered
#: features, BENCHMARKS.md): about sqrt(G) lists (4 sqrt(G) trains its k-means on 4x the
#: points for 4x the lists, ~16x the time: extrapolated, half an hour on a CPU at 1M),
#: half of them probed (a quarter lost 1 point of rank-1 and 8 of mAP@100 against half;
#: 16 of 1,024 lost 40 points of rank-1), and the best `IVFPQ_REFINE` x k candidates
#: re-ranked with exact distances (recall@100 78 -> 90 at half the lists probed, no
#: measurable extra time).
IVFPQ_PROBE_FRACTION = 0.5
IVFPQ_REFINE = 4
#: Dimensions per sub-quantiser when `pq_m` is 0 (D / 2 bytes per item at 8 bits): 2
#: gave recall@100 70 against 62 with 4 (same lists probed, both re-ranked), as fast;
#: 768-d codes are then 384 bytes, 1.9 GB at 5M items (the float16 file: 7.7 GB).
IVFPQ_DIMS_PER_CODE = 2


def import_faiss(search: str):
    """The faiss module, or an ImportError saying how to install it."""
    try:
        import faiss
    except ImportError:
        raise ImportError(f"evaluator 'reid': search {search!r} needs faiss, which is not installed; "
                          "pip install faiss-cpu, or use search: exact") from None
    return faiss


def _as_faiss(features: torch.Tensor, metric: str) -> np.ndarray:
    """float32, C-contiguous numpy; L2-normalised for cosine (inner product = cosine)."""
    x = features.detach().float().cpu()
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    return np.ascontiguousarray(x.numpy())


def faiss_distance_rows(query: torch.Tensor, gallery: torch.Tensor,
                        metric: str) -> Callable[[int, int], torch.Tensor]:
    """rows(start, stop) -> (stop - start, G) exact distances from faiss's kernels:
    1 - inner product of unit vectors (cosine), sqrt of faiss's squared L2 (euclidean)."""
    faiss = import_faiss("faiss_flat")
    q, g = _as_faiss(query, metric), _as_faiss(gallery, metric)
    kind = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2

    def rows_of(block: np.ndarray) -> torch.Tensor:
        d = torch.from_numpy(faiss.pairwise_distances(block, g, metric=kind))
        return (1.0 - d) if metric == "cosine" else d.clamp_(min=0).sqrt_()

    return blocked_rows(rows_of, q, len(g))


def ivf_search(query: torch.Tensor, gallery: torch.Tensor, metric: str, k: int,
               nlist: int = 0, nprobe: int = 16) -> np.ndarray:
    """(Q, k) gallery indices of each query's approximate top k, nearest first (-1 where
    fewer were found). `nlist` 0 picks ~4 sqrt(G) lists (faiss's guideline). Building
    the index (k-means, then assigning all G items) is most of the time of a one-off
    evaluation: on a CPU, exact search is faster up to at least half a million gallery
    items (BENCHMARKS.md); IVF is for larger galleries. The index stays on the CPU (no
    faiss GPU index is built; exact search computes on the GPU the features were embedded
    on, `core.evaluation.reid.search_device`)."""
    faiss = import_faiss("faiss_ivf")
    q, g = _as_faiss(query, metric), _as_faiss(gallery, metric)
    nlist = nlist or max(1, round(4 * math.sqrt(len(g))))
    nlist = min(nlist, len(g))
    kind = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    quantizer = faiss.IndexFlatIP(g.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(g.shape[1])
    index = faiss.IndexIVFFlat(quantizer, g.shape[1], nlist, kind)
    index.cp.max_points_per_centroid = IVF_TRAIN_POINTS_PER_LIST
    index.train(g)
    index.add(g)
    index.nprobe = min(nprobe, nlist)
    return index.search(q, min(k, len(g)))[1]


def ivf_per_query(query: torch.Tensor, gallery: torch.Tensor, metric: str, q_pids, g_pids, q_cams, g_cams,
                  topk: int, nlist: int = 0, nprobe: int = 16,
                  exclude_same_camera: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`topk_per_query` of IVF's retrieved lists: the search asks for `topk` plus the most
    items any query has removed (same identity and camera), so `topk` kept items remain."""
    same_pid = kept_positives(q_pids, g_pids, q_cams, g_cams, exclude_same_camera=False)
    removed = same_pid - kept_positives(q_pids, g_pids, q_cams, g_cams, exclude_same_camera)
    retrieved = ivf_search(query, gallery, metric, topk + int(removed.max(initial=0)), nlist, nprobe)
    return topk_per_query(retrieved, q_pids, g_pids, q_cams, g_cams, topk, exclude_same_camera)


def topk_per_query(retrieved: np.ndarray, q_pids, g_pids, q_cams, g_cams, k: int,
                   exclude_same_camera: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query from a retrieved list: (valid, first kept-positive rank or 0, AP@k);
    see the module doc. `valid` as in the full protocol: a kept positive exists."""
    q_pids, g_pids, q_cams, g_cams = (np.asarray(a) for a in (q_pids, g_pids, q_cams, g_cams))
    found = retrieved >= 0
    idx = np.where(found, retrieved, 0)
    same_pid = found & (g_pids[idx] == q_pids[:, None])
    junk = same_pid & (g_cams[idx] == q_cams[:, None]) if exclude_same_camera else np.zeros_like(same_pid)
    kept = found & ~junk
    kept_rank = np.cumsum(kept, axis=1)
    hit = same_pid & kept & (kept_rank <= k)
    hits_so_far = np.cumsum(hit, axis=1)
    num_pos = kept_positives(q_pids, g_pids, q_cams, g_cams, exclude_same_camera)
    ap = np.where(hit, hits_so_far / np.maximum(kept_rank, 1), 0.0).sum(1) / np.maximum(np.minimum(num_pos, k), 1)
    first = np.where(hit.any(1), kept_rank[np.arange(len(hit)), hit.argmax(1)], 0)
    return num_pos > 0, first, ap


def kept_positives(q_pids, g_pids, q_cams, g_cams, exclude_same_camera: bool) -> np.ndarray:
    """Per query, the gallery items of its identity that the protocol keeps: those of its
    identity, less (when excluding) those of its identity and camera."""
    pids = np.unique(np.concatenate([q_pids, g_pids]), return_inverse=True)[1]
    cams = np.unique(np.concatenate([q_cams, g_cams]), return_inverse=True)[1]
    nq = len(q_pids)
    kept = _occurrences(pids[:nq], pids[nq:])
    if exclude_same_camera:
        pairs = pids * (cams.max() + 1) + cams
        kept -= _occurrences(pairs[:nq], pairs[nq:])
    return kept


def _occurrences(keys: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """How often each of `keys` occurs in `pool`."""
    values, counts = np.unique(pool, return_counts=True)
    at = np.clip(np.searchsorted(values, keys), 0, len(values) - 1)
    return np.where(values[at] == keys, counts[at], 0).astype(np.int64)


def summarise_topk(valid: np.ndarray, first: np.ndarray, ap: np.ndarray, ranks: Sequence[int], k: int,
                   mask: np.ndarray | None = None) -> dict[str, float]:
    """CMC at `ranks` and mAP@k over the valid queries (of `mask`), as percentages."""
    keep = valid if mask is None else valid & mask
    n = int(keep.sum())
    if n == 0:
        from core.evaluation.ranking import NoValidQuery

        raise NoValidQuery("no valid query: no query has a gallery item of its identity (left after "
                         "removing same-identity same-camera items)")
    out: dict[str, float] = {f"rank-{r}": 100.0 * float(np.mean((first[keep] > 0) & (first[keep] <= r)))
                             for r in ranks}
    out[f"mAP@{k}"] = 100.0 * float(np.mean(ap[keep]))
    out["num_valid_queries"] = n
    return out


def _as_float32(rows) -> np.ndarray:
    x = rows.detach().float().cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows, np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


def ivfpq_search(query, gallery, metric: str, k: int, nlist: int = 0, nprobe: int = 0, m: int = 0,
                 bits: int = 8, block: int = 65536, seed: int = 0, refine: int = IVFPQ_REFINE) -> np.ndarray:
    """(Q, k) gallery indices of each query's approximate top k from an IVF-PQ index
    (module doc); `query` / `gallery` are tensors or (memory-mapped) arrays, read `block`
    rows at a time. `m` 0 picks the largest divisor of D that is <= D / 2 (2 dimensions
    per byte at 8 bits, `IVFPQ_DIMS_PER_CODE`); `nlist` 0 about sqrt(G); `nprobe` 0 `IVFPQ_PROBE_FRACTION` of
    the lists. Cosine: rows are L2-normalised and the index ranks by inner product.
    `refine` > 0: the index returns `refine` x k candidates, re-ranked by their exact
    distances (`refine_exact`)."""
    index = build_ivfpq(gallery, metric, nlist, m, bits, block, seed)
    return search_ivfpq(index, query, gallery, metric, k, nprobe, refine)


def _unit_rows(x, start: int, stop: int, metric: str) -> np.ndarray:
    r = _as_float32(x[start:stop])
    if metric == "cosine":
        r /= np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    return r


def build_ivfpq(gallery, metric: str, nlist: int = 0, m: int = 0, bits: int = 8, block: int = 65536,
                seed: int = 0):
    """The IVF-PQ index of `gallery` (see `ivfpq_search`): trained on a seeded sample,
    filled `block` rows at a time."""
    faiss = import_faiss("faiss_ivfpq")
    num_g, dim = len(gallery), int(gallery.shape[1])
    m = m or max(d for d in range(1, max(dim // IVFPQ_DIMS_PER_CODE, 1) + 1) if dim % d == 0)
    if dim % m:
        raise ValueError(f"evaluator 'reid': pq_m = {m} must divide the embedding dimension {dim}")
    if num_g < 2**bits:  # each sub-quantiser's k-means needs a training point per code
        raise ValueError(f"evaluator 'reid': search faiss_ivfpq trains 2^pq_bits = {2**bits} codes per "
                         f"sub-quantiser and needs at least that many gallery items; this gallery has {num_g}: "
                         f"use search: exact or blocked for it, or a smaller pq_bits")
    nlist = min(nlist or max(1, round(math.sqrt(num_g))), num_g)
    kind = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    quantizer = faiss.IndexFlatIP(dim) if metric == "cosine" else faiss.IndexFlatL2(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, bits, kind)
    index.cp.max_points_per_centroid = IVF_TRAIN_POINTS_PER_LIST
    train_n = min(num_g, max(nlist * IVF_TRAIN_POINTS_PER_LIST, 2**bits * 64))
    sample = np.sort(np.random.default_rng(seed).choice(num_g, train_n, replace=False))
    train = _as_float32(gallery[sample] if not isinstance(gallery, torch.Tensor) else gallery[torch.from_numpy(sample)])
    if metric == "cosine":
        train /= np.maximum(np.linalg.norm(train, axis=1, keepdims=True), 1e-12)
    index.train(train)
    for start in range(0, num_g, block):
        index.add(_unit_rows(gallery, start, min(start + block, num_g), metric))
    return index


def search_ivfpq(index, query, gallery, metric: str, k: int, nprobe: int = 0, refine: int = IVFPQ_REFINE,
                 block: int = 4096) -> np.ndarray:
    """(Q, k) indices from a `build_ivfpq` index, `block` queries at a time, visiting
    `nprobe` lists (0: `IVFPQ_PROBE_FRACTION` of them); `refine` > 0 re-ranks `refine` x k
    candidates exactly (`refine_exact`)."""
    if refine < 0:
        raise ValueError(f"evaluator 'reid': refine must be an integer >= 0 (0 = off), got {refine!r}")
    index.nprobe = min(nprobe or max(1, round(IVFPQ_PROBE_FRACTION * index.nlist)), index.nlist)
    num_g = len(gallery)
    k = min(k, num_g)
    wanted = min(k * refine, num_g) if refine else k
    parts = []
    for s in range(0, len(query), block):
        found = index.search(_unit_rows(query, s, min(s + block, len(query)), metric), wanted)[1]
        if refine:
            found = refine_exact(query[s:s + len(found)], gallery, found, metric, k)
        parts.append(found)
    return np.concatenate(parts) if parts else np.zeros((0, k), np.int64)


def refine_exact(query, gallery, candidates: np.ndarray, metric: str, k: int) -> np.ndarray:
    """The k nearest of each query's `candidates` (-1: none) by their exact distances, in
    the (distance, gallery index) order of the exact search: the re-ranking step that
    faiss's IndexRefineFlat (k_factor) performs from a float32 copy of the gallery; we
    read the candidates' rows from the gallery itself, e.g. its memory map, so no copy
    is held. Distances as `core.evaluation.distances`: 1 - cosine of the normalised
    rows, or the L2 norm of the difference, from the stored rows upcast to float32."""
    step = max(1, 2**24 // max(1, candidates.shape[1] * int(gallery.shape[1])))  # <= 64 MiB of candidate rows
    if len(candidates) > step:
        return np.concatenate([refine_exact(query[s:s + step], gallery, candidates[s:s + step], metric, k)
                               for s in range(0, len(candidates), step)])
    found = candidates >= 0
    if not found.any():
        return np.full((len(candidates), min(k, candidates.shape[1])), -1, dtype=np.int64)
    wanted = np.unique(candidates[found])
    if isinstance(gallery, torch.Tensor):  # computed where the gallery is (a GPU's in-memory features)
        rows = gallery.detach()[torch.from_numpy(wanted).to(gallery.device)].float()
    else:
        rows = torch.from_numpy(_as_float32(gallery[wanted]))  # sorted: reads in file order
    q = torch.as_tensor(_as_float32(query)).to(rows.device)
    filler = wanted[0]  # stands in for -1 (masked to inf below)
    cand = rows[torch.from_numpy(np.searchsorted(wanted, np.where(found, candidates, filler))).to(rows.device)]
    if metric == "cosine":
        d = 1.0 - torch.einsum("qd,qcd->qc", F.normalize(q, dim=1), F.normalize(cand, dim=2))
    else:
        d = (q[:, None, :] - cand).pow(2).sum(2).sqrt()
    d = d.masked_fill(torch.from_numpy(~found).to(rows.device), float("inf")).cpu().numpy()
    by_index = np.argsort(np.where(found, candidates, np.iinfo(np.int64).max), axis=1, kind="stable")
    d_sorted = np.take_along_axis(d, by_index, 1)
    order = np.take_along_axis(by_index, np.argsort(d_sorted, axis=1, kind="stable"), 1)[:, :k]
    return np.where(np.take_along_axis(found, order, 1), np.take_along_axis(candidates, order, 1), -1)


def recall_at_k(retrieved: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |retrieved top k  &  exact top k| / k, as a percentage."""
    k = exact.shape[1]
    hits = [len(np.intersect1d(r[:k][r[:k] >= 0], e)) for r, e in zip(retrieved, exact)]
    return 100.0 * float(np.mean(hits)) / k

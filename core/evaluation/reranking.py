"""k-reciprocal re-ranking (Zhong et al. 2017, CVPR, "Re-ranking Person
Re-identification with k-reciprocal Encoding"), our own torch implementation.

Over all N = Q + G items (queries and gallery together, as the paper does):

1. d(i, j): the original distance (squared for euclidean, as the authors' code does;
   1 - cosine for cosine), each row divided by its maximum.
2. N(i, k): the k + 1 nearest items of i (itself included). The k-reciprocal set
   R(i, k) = {j in N(i, k) : i in N(j, k)} (Eq. 3).
3. Expansion (Eq. 6): R*(i) = R(i, k1) united with every R(c, k1/2), c in R(i, k1),
   that shares more than 2/3 of its items with R(i, k1).
4. V(i, j) = exp(-d(i, j)) / sum over R*(i) for j in R*(i), else 0 (Eq. 7).
5. Local query expansion (Eq. 11): V(i) <- mean of V(j) over j in N(i, k2 - 1) (the k2
   nearest, i included); skipped for k2 = 1.
6. Jaccard distance (Eq. 10): d_J(i, j) = 1 - sum_k min(V_ik, V_jk) / sum_k max(V_ik, V_jk);
   rows of V sum to 1, so sum max = 2 - sum min.
7. Final distance (Eq. 12): (1 - lambda) d_J + lambda d.

Cost. The neighbour search is O(N^2 D) time but only O(N k) memory (chunked); V is
sparse and the Jaccard sums are a sparse join over shared neighbours; the output is
(Q, G). The quadratic time is inherent, so above `MAX_ITEMS` items we refuse with an
error rather than run for hours. Ties at the k-th neighbour are broken by torch.topk.
"""

from __future__ import annotations

import torch

from core.evaluation.distances import distance_to

#: Largest Q + G that `k_reciprocal_distances` accepts (the method is O((Q + G)^2)).
MAX_ITEMS = 40_000
#: Rows of the N x N distances computed at a time.
_CHUNK = 1024


def k_reciprocal_distances(query: torch.Tensor, gallery: torch.Tensor, metric: str, k1: int = 20,
                           k2: int = 6, lambda_value: float = 0.3) -> torch.Tensor:
    """(Q, G) re-ranked distances; see the module doc for the steps and equations."""
    num_q, n = len(query), len(query) + len(gallery)
    if n > MAX_ITEMS:
        raise ValueError(f"re-ranking {len(query)} queries + {len(gallery)} gallery items = {n} items "
                         f"exceeds the limit of {MAX_ITEMS}: k-reciprocal re-ranking costs O((Q + G)^2); "
                         "set rerank: false or evaluate a smaller query/gallery set")
    features = torch.cat([query.float(), gallery.float()]).cpu()
    nearest, original = _neighbours(features, metric, max(k1 + 1, k2), num_q)
    expansion = _expanded_sets(nearest, k1)
    v = _weights(features, metric, expansion, original.row_max)
    if k2 > 1:
        v = _query_expansion(v, nearest[:, :k2])
    jaccard = _jaccard_to_gallery(v, num_q)
    return (1 - lambda_value) * jaccard + lambda_value * original.query_gallery


class _Original:
    """What later steps need of the original distances: each row's maximum, and the
    normalised query-to-gallery block."""

    def __init__(self, row_max: torch.Tensor, query_gallery: torch.Tensor):
        self.row_max, self.query_gallery = row_max, query_gallery


def _distance(metric: str):
    """The step-1 distance of rows against all items (before row normalisation)."""
    def squared_if_euclidean(to_all, rows):
        d = to_all(rows)
        return d.pow_(2) if metric == "euclidean" else d
    return squared_if_euclidean


def _neighbours(features: torch.Tensor, metric: str, k: int, num_q: int) -> tuple[torch.Tensor, _Original]:
    """(N, k) nearest items per row (nearest first), and the original distances' row
    maxima and normalised query-gallery block, chunk by chunk."""
    to_all, dist = distance_to(features, metric), _distance(metric)
    nearest, row_max, query_gallery = [], [], []
    for start in range(0, len(features), _CHUNK):
        d = dist(to_all, features[start:start + _CHUNK])
        nearest.append(torch.topk(d, min(k, d.shape[1]), dim=1, largest=False).indices)
        row_max.append(d.amax(1))
        if start < num_q:
            stop = min(start + _CHUNK, num_q)
            query_gallery.append(d[:stop - start, num_q:] / row_max[-1][:stop - start, None])
    return torch.cat(nearest), _Original(torch.cat(row_max), torch.cat(query_gallery))


def k_reciprocal_sets(nearest: torch.Tensor, k: int) -> list[torch.Tensor]:
    """R(i, k) of every item (Eq. 3): its k + 1 nearest j that have i among their own
    k + 1 nearest; each as a tensor of item indices in order of distance."""
    forward = nearest[:, :k + 1]
    items = torch.arange(len(nearest))[:, None, None]
    mutual = (forward[forward] == items).any(2)  # forward[forward][i, a] = N(forward[i, a], k)
    return [forward[i][mutual[i]] for i in range(len(nearest))]


def _expanded_sets(nearest: torch.Tensor, k1: int) -> list[torch.Tensor]:
    """R*(i) (Eq. 6): R(i, k1) plus each R(c, round(k1 / 2)), c in R(i, k1), that has
    more than 2/3 of its items in R(i, k1)."""
    full, half = k_reciprocal_sets(nearest, k1), k_reciprocal_sets(nearest, round(k1 / 2))
    expanded = []
    for members in full:
        parts = [members]
        for c in members.tolist():
            candidate = half[c]
            if torch.isin(candidate, members).sum() > 2 / 3 * len(candidate):
                parts.append(candidate)
        expanded.append(torch.unique(torch.cat(parts)))
    return expanded


def _weights(features, metric, expansion, row_max) -> torch.Tensor:
    """Sparse (N, N) V (Eq. 7): exp(-d(i, j)) over R*(i), normalised to sum 1 per row."""
    rows = torch.repeat_interleave(torch.arange(len(expansion)), torch.tensor([len(e) for e in expansion]))
    cols = torch.cat(expansion)
    d = _pair_distances(features, metric, rows, cols) / row_max[rows]
    w = torch.exp(-d)
    w = w / torch.zeros(len(expansion)).index_add_(0, rows, w)[rows]
    n = len(features)
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), w, (n, n), check_invariants=True).coalesce()


def _pair_distances(features, metric, rows, cols) -> torch.Tensor:
    """Step-1 distance of the listed (row, col) pairs, as the matrix form computes it."""
    a, b = features[rows], features[cols]
    if metric == "cosine":
        a, b = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=1)
        return 1.0 - (a * b).sum(1)
    return (a.pow(2).sum(1) + b.pow(2).sum(1) - 2.0 * (a * b).sum(1)).clamp_(min=0)


def _query_expansion(v: torch.Tensor, nearest_k2: torch.Tensor) -> torch.Tensor:
    """V(i) <- mean of V(j) over the k2 nearest j of i (Eq. 11): row i gathers the
    entries of its neighbours' rows, weighted 1 / k2, and sums duplicates."""
    n, k2 = nearest_k2.shape
    rows, cols = v.indices()
    row_start = torch.searchsorted(rows, torch.arange(n))
    row_count = torch.bincount(rows, minlength=n)
    source = nearest_k2.reshape(-1)  # neighbour rows, k2 per output row
    repeat = row_count[source]
    out_rows = torch.repeat_interleave(torch.arange(n).repeat_interleave(k2), repeat)
    within = torch.arange(int(repeat.sum())) - torch.repeat_interleave(repeat.cumsum(0) - repeat, repeat)
    entry = torch.repeat_interleave(row_start[source], repeat) + within
    return torch.sparse_coo_tensor(torch.stack([out_rows, cols[entry]]), v.values()[entry] / k2, (n, n),
                                   check_invariants=True).coalesce()


def _jaccard_to_gallery(v: torch.Tensor, num_q: int) -> torch.Tensor:
    """(Q, G) Jaccard distances (Eq. 10) of the queries to the gallery items: the sum of
    minima over shared non-zero columns, by a join of the queries' entries with the
    gallery's entries of the same column."""
    rows, cols = v.indices()
    values = v.values()
    n = v.shape[0]
    in_gallery = rows >= num_q
    g_rows, g_cols, g_vals = rows[in_gallery] - num_q, cols[in_gallery], values[in_gallery]
    by_col = torch.argsort(g_cols, stable=True)
    g_rows, g_cols, g_vals = g_rows[by_col], g_cols[by_col], g_vals[by_col]
    col_start = torch.searchsorted(g_cols, torch.arange(n))
    col_count = torch.bincount(g_cols, minlength=n)
    is_query = rows < num_q
    q_rows, q_cols, q_vals = rows[is_query], cols[is_query], values[is_query]
    shared = torch.zeros(num_q, n - num_q)
    for start in range(0, len(q_rows), 65536):
        qr, qc, qv = q_rows[start:start + 65536], q_cols[start:start + 65536], q_vals[start:start + 65536]
        repeat = col_count[qc]
        pair_q = torch.repeat_interleave(torch.arange(len(qr)), repeat)
        offset = torch.arange(len(pair_q)) - torch.repeat_interleave(repeat.cumsum(0) - repeat, repeat)
        pair_g = col_start[qc][pair_q] + offset
        flat = qr[pair_q] * (n - num_q) + g_rows[pair_g]
        shared.view(-1).index_add_(0, flat, torch.minimum(qv[pair_q], g_vals[pair_g]))
    return 1.0 - shared / (2.0 - shared)

"""What evaluation ranks for each query, as a mask that tools apply without knowing any
method's rule (`core.interfaces.RankedGallery`, `Evaluator.ranked_gallery`), and a
sort-based reference for each query's AP under such a mask.

`standard_ranked_gallery` is the standard ReID protocol (`core.evaluation.ranking`'s
module doc): every gallery item is ranked but those of the query's identity seen by its
own camera (when `exclude_same_camera`) or, with groups (clothes ids, LTCC / PRCC), in its
own group. It is the default of `Evaluator.ranked_gallery` and the `reid` evaluator's.

`masked_average_precision` is the per-query reference: sort the gallery by (distance,
gallery index), keep the ranked items, average the precision at each positive (a kept
item of the query's identity). `core search --worst` does not run it: it hands the mask
to the evaluator's ranking (`core.evaluation.ranking.per_query_metrics(ranked=...)`:
positives' ranks, no sort; 15-27x faster, `bench/worst_queries.py`), so agreement between
the two is a check, not a copy (tests, and the bench's baseline).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from core.evaluation.ranking import query_gallery_labels

if TYPE_CHECKING:
    from core.interfaces import FeatureSet, RankedGallery

#: Entries of one (queries x gallery) chunk of `masked_average_precision`'s callers.
CHUNK_ENTRIES = 2**22


def chunk_rows(num_gallery: int, entries: int = CHUNK_ENTRIES) -> int:
    """Queries per chunk so that a chunk's (c, G) arrays stay near `entries` entries."""
    return max(1, entries // max(num_gallery, 1))


def removed_by_protocol(q_pids: np.ndarray, q_cams: np.ndarray, g_pids: np.ndarray, g_cams: np.ndarray,
                        exclude_same_camera: bool = True, q_groups: np.ndarray | None = None,
                        g_groups: np.ndarray | None = None) -> np.ndarray:
    """(c, G) bool: the items the standard protocol removes for these c queries: the
    query's identity from its camera (`exclude_same_camera`) or in its group."""
    same = q_pids[:, None] == g_pids[None, :]
    drop = np.zeros_like(same)
    if exclude_same_camera:
        drop |= q_cams[:, None] == g_cams[None, :]
    if q_groups is not None:
        drop |= q_groups[:, None] == g_groups[None, :]
    return same & drop


def standard_ranked_gallery(query: "FeatureSet", gallery: "FeatureSet", exclude_same_camera: bool = True,
                            q_groups=None, g_groups=None, differs: str = "") -> "RankedGallery":
    """The standard protocol as a `RankedGallery` (module doc); `q_groups` / `g_groups`:
    clothes ids of the clothes-changing setting (both or neither)."""
    from core.interfaces import RankedGallery

    q_pids, g_pids, q_cams, g_cams, q_groups, g_groups = query_gallery_labels(
        query.pids, gallery.pids, query.camids, gallery.camids, q_groups, g_groups, len(query), len(gallery))

    def ranked(rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        return ~removed_by_protocol(q_pids[rows], q_cams[rows], g_pids, g_cams, exclude_same_camera,
                                    None if q_groups is None else q_groups[rows], g_groups)

    left_out = [what for what, on in (("camera", exclude_same_camera), ("clothes", q_groups is not None)) if on]
    rule = ("every gallery item but those of the query's identity in its " + " or its ".join(left_out)
            if left_out else "every gallery item")
    return RankedGallery(ranked=ranked, rule=rule, differs=differs)


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

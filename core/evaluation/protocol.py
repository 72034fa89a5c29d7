"""What evaluation ranks for each query, as a mask that tools apply without knowing any
method's rule (`core.interfaces.RankedGallery`, `Evaluator.ranked_gallery`).

`standard_ranked_gallery` is the standard ReID protocol (`core.evaluation.ranking`'s
module doc): every gallery item is ranked but those of the query's identity seen by its
own camera (when `exclude_same_camera`) or, with groups (clothes ids, LTCC / PRCC), in its
own group. It is the default of `Evaluator.ranked_gallery` and the `reid` evaluator's.

`core search --worst` hands such a mask to the evaluator's ranking
(`core.evaluation.ranking.per_query_metrics(ranked=...)`); the sort-based per-query
reference it is checked against lives with the tests
(tests/evaluation_helpers.py `masked_average_precision`, also the baseline of
`bench/worst_queries.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from core.evaluation.ranking import query_gallery_labels

if TYPE_CHECKING:
    from core.interfaces import FeatureSet, RankedGallery

#: Entries of one (queries x gallery) chunk of a per-query ranking's callers.
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

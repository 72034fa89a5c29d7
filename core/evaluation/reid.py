"""The built-in `reid` evaluator: exact retrieval under the standard ReID protocol."""

from __future__ import annotations

import numpy as np
import torch

from core.evaluation.distances import METRICS, distance_to
from core.evaluation.ranking import DEFAULT_MEMORY_BUDGET, rank_metrics, validate_ranks
from core.interfaces import Evaluator, FeatureSet


class ReIDEvaluator(Evaluator):
    """CMC (rank-k), mAP and mINP of query against gallery (Zheng et al. 2015; as
    torchreid / fast-reid), plus the same per query category when the query set has
    more than one ("person/mAP", ...).

    Distances are computed chunk by chunk on the device the embeddings live on, so the
    (Q, G) matrix never exists whole; see `core.evaluation.ranking` for the protocol,
    the tie rule (stable by gallery index) and the memory bound.

    Args:
        metric: "cosine" (1 - cosine similarity) or "euclidean".
        ranks: the CMC ranks to report, integers >= 1.
        exclude_same_camera: drop gallery items with the query's identity and camera
            (the standard protocol); false for single-camera or cross-modality sets
            where that filter would drop every positive.
        per_category: also report the metrics per query category.
        chunk_size: queries per chunk; 0 picks it from `memory_budget_mb`.
        memory_budget_mb: bound on one chunk's temporaries, in MiB.
    """

    def __init__(self, metric: str = "cosine", ranks: list[int] = [1, 5, 10],  # noqa: B006 - YAML default, never mutated
                 exclude_same_camera: bool = True, per_category: bool = True,
                 chunk_size: int = 0, memory_budget_mb: int = DEFAULT_MEMORY_BUDGET // 2**20):
        if metric not in METRICS:
            raise ValueError(f"evaluator 'reid': unknown metric {metric!r}; valid metrics: "
                             f"{', '.join(METRICS)}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 0:
            raise ValueError(f"evaluator 'reid': chunk_size must be an integer >= 0 "
                             f"(0 = automatic), got {chunk_size!r}")
        if isinstance(memory_budget_mb, bool) or not isinstance(memory_budget_mb, int) or memory_budget_mb < 1:
            raise ValueError(f"evaluator 'reid': memory_budget_mb must be an integer >= 1, "
                             f"got {memory_budget_mb!r}")
        try:
            self.ranks = validate_ranks(ranks)
        except ValueError as exc:
            raise ValueError(f"evaluator 'reid': {exc}") from None
        self.metric = metric
        self.exclude_same_camera = bool(exclude_same_camera)
        self.per_category = bool(per_category)
        self.chunk_size = chunk_size
        self.memory_budget = memory_budget_mb * 2**20

    def evaluate(self, query: FeatureSet, gallery: FeatureSet) -> dict[str, float]:
        """Metrics of `query` against `gallery` (percentages, plus num_valid_queries)."""
        _check_feature_set(query, "query")
        _check_feature_set(gallery, "gallery")
        q_emb = query.embeddings.detach()
        with torch.no_grad():
            to_gallery = distance_to(gallery.embeddings.detach().to(q_emb.device), self.metric)

        def rows(start: int, stop: int) -> torch.Tensor:
            return to_gallery(q_emb[start:stop])

        categories, names = None, None
        if self.per_category and len(np.unique(query.categories)) > 1:
            categories, names = query.categories, query.category_names
        with torch.no_grad():
            return rank_metrics(rows, query.pids, gallery.pids, query.camids, gallery.camids,
                                ranks=self.ranks, exclude_same_camera=self.exclude_same_camera,
                                chunk_size=self.chunk_size, memory_budget=self.memory_budget,
                                q_categories=categories, category_names=names)


def _check_feature_set(features: FeatureSet, which: str) -> None:
    """Lengths agree, so a mismatch is reported by name and not as an index error."""
    if features.embeddings.dim() != 2:
        raise ValueError(f"{which} embeddings must be 2-D (N, D), got shape "
                         f"{tuple(features.embeddings.shape)}")
    n = len(features)
    for field in ("pids", "camids"):
        if len(getattr(features, field)) != n:
            raise ValueError(f"{which} has {n} embeddings but {len(getattr(features, field))} {field}")
    if len(features.categories) not in (0, n):
        raise ValueError(f"{which} has {n} embeddings but {len(features.categories)} categories")

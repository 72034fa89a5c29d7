"""Evaluation: distances and the standard ReID ranking protocol (CMC, mAP, mINP)."""

from core.evaluation.distances import METRICS, distance_to, pairwise_distance
from core.evaluation.ranking import PerQueryMetrics, per_query_metrics, rank_metrics, summarise
from core.evaluation.reid import ReIDEvaluator

__all__ = ["METRICS", "PerQueryMetrics", "ReIDEvaluator", "distance_to", "pairwise_distance",
           "per_query_metrics", "rank_metrics", "summarise"]

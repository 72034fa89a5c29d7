"""Experiment trackers (TensorBoard, Weights & Biases, MLflow, and plugins' own): the
`loggers:` list of a pipeline. See docs/trackers.md."""

from core.trackers.base import ExperimentLogger, missing_package
from core.trackers.fanout import Trackers

__all__ = ["ExperimentLogger", "Trackers", "missing_package"]

"""What the trainer calls: one object forwarding run events to the configured loggers.

Only rank 0 logs (the trainer hands the other ranks an empty `Trackers`). A logger that
fails after `start` is reported once and dropped: an unreachable tracking server never
ends a training run (a failing `start` does, before any work: the configuration is wrong).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from core.trackers.base import ExperimentLogger

log = logging.getLogger(__name__)

#: keys of a metrics.jsonl train record that are not scalars to plot
_TRAIN_SKIP = ("event", "stage", "epoch", "global_step")
_EVAL_SKIP = ("event", "tag", "stage", "epoch", "global_step")


class Trackers:
    """The loggers of one run (an empty list: every call is a no-op)."""

    def __init__(self, loggers: Sequence[ExperimentLogger] = ()) -> None:
        self.loggers = list(loggers)
        self.started = False

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def _each(self, what: str, call: Callable[[ExperimentLogger], Any]) -> None:
        for logger in list(self.loggers):
            try:
                call(logger)
            except Exception as exc:  # noqa: BLE001 - a tracker must not end a run
                log.warning(f"logger '{logger.name}' failed in {what} and is switched off for this run: "
                            f"{type(exc).__name__}: {exc}")
                self.loggers.remove(logger)

    def start(self, config: Mapping[str, Any], run_dir: Path) -> None:
        """Start every logger; when one fails, those already started are finished (as
        failed) and the error, naming the logger, ends the run before any work."""
        for i, logger in enumerate(self.loggers):
            try:
                logger.start(config, Path(run_dir))
            except Exception as exc:
                for started in self.loggers[:i]:
                    try:
                        started.finish(False)
                    except Exception:  # noqa: BLE001 - the first error is the one to report
                        pass
                raise RuntimeError(f"logger '{logger.name}' could not start: {type(exc).__name__}: {exc}") from exc
        self.started = bool(self.loggers)

    def record(self, record: Mapping[str, Any]) -> None:
        """A metrics.jsonl record (train step or evaluation) as scalars at its global step."""
        if not self.started:
            return
        step, metrics = record_scalars(record)
        if metrics:
            self._each("log_metrics", lambda lg: lg.log_metrics(step, metrics))

    def image(self, name: str, image: Any, step: int) -> None:
        if self.started and image is not None:
            self._each("log_image", lambda lg: lg.log_image(name, image, step))

    def final(self, hparams: Mapping[str, Any], metrics: Mapping[str, float], run_dir: Path) -> None:
        """The final metrics with the hyper-parameters, then the run folder as artifact."""
        if not self.started:
            return
        self._each("log_hparams", lambda lg: lg.log_hparams(hparams, dict(metrics)))
        self._each("log_artifact", lambda lg: lg.log_artifact(Path(run_dir)))

    def finish(self, ok: bool = True) -> None:
        if self.started:
            self._each("finish", lambda lg: lg.finish(ok))
        self.started = False


def record_scalars(record: Mapping[str, Any]) -> tuple[int, dict[str, float]]:
    """(step, scalars) of a metrics.jsonl record: train values under `train/`, evaluation
    metrics under their own `<set>/<metric>` keys."""
    step = int(record.get("global_step", 0))
    if record.get("event") == "train":
        return step, {f"train/{k}": float(v) for k, v in record.items()
                      if k not in _TRAIN_SKIP and _is_number(v)}
    if record.get("event") == "eval":
        return step, {(k if "/" in k else f"eval/{k}"): float(v) for k, v in record.items()
                      if k not in _EVAL_SKIP and _is_number(v)}
    return step, {}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def flatten_config(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested pipeline mapping as flat `a.b.0.c` keys with scalar values (lists of
    scalars joined), what TensorBoard's hparams and MLflow's params accept."""
    flat: dict[str, Any] = {}
    if isinstance(data, Mapping):
        for k, v in data.items():
            flat.update(flatten_config(v, f"{prefix}{k}."))
    elif isinstance(data, (list, tuple)):
        if all(isinstance(v, (str, int, float, bool)) or v is None for v in data):
            flat[prefix[:-1]] = ", ".join(str(v) for v in data)
        else:
            for i, v in enumerate(data):
                flat.update(flatten_config(v, f"{prefix}{i}."))
    elif data is None:
        flat[prefix[:-1]] = "null"
    elif isinstance(data, (str, int, float, bool)):
        flat[prefix[:-1]] = data
    else:
        flat[prefix[:-1]] = str(data)
    return flat


def track_final(trainer: Any, final: Mapping[str, float]) -> None:
    """After the final evaluation: the trainer's `final_picture` (the runner sets the
    ranked-list picture, core.tools.search.ranked_list_image), the hyper-parameters with
    the final metrics, and the run folder (report written) as an artifact."""
    trackers: Trackers = trainer.trackers
    if not trackers.started:
        return
    draw = getattr(trainer, "final_picture", None)
    try:
        image = draw(trainer) if draw is not None else None
    except Exception as exc:  # noqa: BLE001 - a picture must not end a run
        log.warning(f"could not draw the ranked-list picture for the loggers: {type(exc).__name__}: {exc}")
        image = None
    trackers.image("ranked_list", image, trainer.position.global_step)
    trackers.final(flatten_config(trainer.p.config.data), final, trainer.run.path)

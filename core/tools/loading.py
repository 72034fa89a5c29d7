"""A trained run folder (or a checkpoint inside one) -> the inference model, on the
device the tools run on.

The model is rebuilt exactly as `core eval` rebuilds it: pipeline.yaml + the checkpoint,
the EMA weights when the run kept an EMA (they are what its evaluations used), in eval
mode. Only `trainer.device` is overridden (default "auto": the GPU when there is one,
whatever device the run was trained on).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from core.pipeline import Pipeline, ReIDModel


@dataclass
class LoadedRun:
    run_dir: Path
    checkpoint: Path
    pipeline: Pipeline
    #: backbone + head, eval mode, on `device`: forward(batch) -> dict with "embedding"
    model: ReIDModel
    device: torch.device
    #: the run's trainer.eval_flip: average each embedding with the mirrored image's
    flip: bool
    #: the run's `trainer.eval_precision` (fp32 unless the run asked otherwise)
    precision: str = "fp32"

    def autocast(self):
        from core.training.precision import autocast

        return autocast(self.device, self.precision)

    @property
    def metric(self) -> str:
        """The distance of the run's evaluator (`evaluator.metric`), cosine by default."""
        evaluator = self.pipeline.evaluator
        return str(getattr(evaluator, "metric", "cosine"))


def load_run(target: str | Path, device: str = "auto", overrides: Sequence[str] = (),
             weights: str | Path | None = None, source: str = "auto") -> LoadedRun:
    """Rebuild the model of a run folder or checkpoint for inference; with `weights`,
    `target` is a pipeline YAML and `weights` another code base's file (restore_released)."""
    from core.restore import restore_run

    run_dir, checkpoint, trainer = restore_run(
        target, [f"trainer.device={device}", "trainer.progress=false", *overrides], weights=weights, source=source)
    p = trainer.p
    evaluated = trainer.model  # the EMA copy when the run kept one
    model = ReIDModel(evaluated.backbone, evaluated.head).eval()
    return LoadedRun(run_dir=run_dir, checkpoint=checkpoint, pipeline=p, model=model, device=trainer.device,
                     flip=bool(p.trainer.eval_flip), precision=p.trainer.eval_precision)

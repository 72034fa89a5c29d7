"""A trained run folder (or a checkpoint inside one) -> the inference model, on the
device the tools run on.

The model is rebuilt exactly as `core eval` rebuilds it: pipeline.yaml + the checkpoint,
the EMA weights when the run kept an EMA (they are what its evaluations used), in eval
mode. Only `trainer.device` is overridden (default "auto": the GPU when there is one,
whatever device the run was trained on).
"""

from __future__ import annotations

import contextlib
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
    #: bf16 autocast on CUDA when the run trained with it
    amp: bool

    def autocast(self):
        if self.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def metric(self) -> str:
        """The distance of the run's evaluator (`evaluator.metric`), cosine by default."""
        evaluator = self.pipeline.evaluator
        return str(getattr(evaluator, "metric", "cosine"))


def resolve_target(target: str | Path) -> tuple[Path, Path]:
    """(run folder, checkpoint file) of a run folder or of a checkpoint inside one."""
    target = Path(target)
    checkpoint = target / "checkpoints" / "last.pt" if target.is_dir() else target
    run_dir = target if target.is_dir() else target.parent.parent
    if not (run_dir / "pipeline.yaml").is_file():
        raise FileNotFoundError(f"{target} is not a run folder: no pipeline.yaml in {run_dir} (give a run folder "
                                "written by `core run`, or a checkpoint inside its checkpoints/)")
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{target}: no checkpoint at {checkpoint} (the run has not saved one yet)")
    return run_dir, checkpoint


def load_run(target: str | Path, device: str = "auto", overrides: Sequence[str] = ()) -> LoadedRun:
    """Rebuild the model of a run folder or checkpoint for inference."""
    from core.config.loading import load_pipeline
    from core.pipeline import build_pipeline
    from core.training.checkpoint import load_checkpoint, seed_everything
    from core.training.run_folder import RunFolder
    from core.training.trainer import Trainer

    run_dir, checkpoint = resolve_target(target)
    state = load_checkpoint(checkpoint)
    cfg = load_pipeline(run_dir / "pipeline.yaml", [f"trainer.device={device}", "trainer.progress=false",
                                                     *overrides])
    seed_everything(0)
    p = build_pipeline(cfg)
    trainer = Trainer(p, RunFolder(run_dir, enabled=False))
    p.model.load_state_dict(state["model"])
    if trainer.ema is not None and state.get("ema") is not None:
        trainer.ema.load_state_dict(state["ema"])
    evaluated = trainer.model  # the EMA copy when the run kept one
    model = ReIDModel(evaluated.backbone, evaluated.head).eval()
    return LoadedRun(run_dir=run_dir, checkpoint=checkpoint, pipeline=p, model=model, device=trainer.device,
                     flip=bool(p.trainer.eval_flip), amp=p.trainer.amp == "bf16")

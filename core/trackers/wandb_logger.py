"""Weights & Biases: the configuration, metrics, the ranked-list picture, the final
metrics in the run summary, and the run folder as an artifact. `mode: offline` (or
WANDB_MODE=offline) writes `<run>/wandb/offline-run-*` to `wandb sync` later."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from core.trackers.base import ExperimentLogger, artifact_entries, missing_package


class WandbLogger(ExperimentLogger):
    name = "wandb"
    owns = ("wandb",)

    def __init__(self, project: str = "reid-core", entity: str | None = None, mode: str | None = None,
                 tags: list[str] | None = None, group: str | None = None, artifact: bool = True) -> None:
        """`mode`: online | offline | disabled (default: WANDB_MODE, else online);
        `artifact`: upload the finished run folder (checkpoints included)."""
        problem = missing_package(self.name, "wandb", "wandb")
        if problem:
            raise ValueError(problem)
        if mode not in (None, "online", "offline", "disabled"):
            raise ValueError(f"logger 'wandb': mode must be online, offline or disabled; got {mode!r}")
        self.project, self.entity, self.mode = project, entity, mode
        self.tags, self.group, self.artifact = list(tags or []), group, artifact
        self.run = None

    def start(self, config: Mapping[str, Any], run_dir: Path) -> None:
        import wandb

        self.run = wandb.init(project=self.project, entity=self.entity, mode=self.mode, tags=self.tags,
                              group=self.group, name=Path(run_dir).name, dir=str(run_dir),
                              config=dict(config), reinit="finish_previous")

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def log_image(self, name: str, image: Any, step: int) -> None:
        import wandb

        self.run.log({name: wandb.Image(image)}, step=step)

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        self.run.summary.update({f"final/{k}": v for k, v in metrics.items()})

    def log_artifact(self, run_dir: Path) -> None:
        if not self.artifact:
            return
        import wandb

        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(run_dir).name)
        artifact = wandb.Artifact(f"run-{safe}", type="run-folder")
        for entry in artifact_entries(run_dir, self.owns + ("tensorboard", "mlruns")):
            if entry.is_dir():
                artifact.add_dir(str(entry), name=entry.name)
            else:
                artifact.add_file(str(entry), name=entry.name)
        self.run.log_artifact(artifact)

    def finish(self, ok: bool = True) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if ok else 1)
            self.run = None

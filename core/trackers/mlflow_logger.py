"""MLflow: the flat configuration as params, metrics, the ranked-list picture, the final
metrics (`final/<key>`), and the run folder as artifacts under `run/`. `tracking_uri`
defaults to MLFLOW_TRACKING_URI (else MLflow's own default); a `file:` store needs
MLFLOW_ALLOW_FILE_STORE=true with MLflow 3."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Mapping

from core.trackers.base import ExperimentLogger, artifact_entries, missing_package

#: what MLflow accepts in a metric or param key
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. ]")


def mlflow_key(key: str) -> str:
    """`/` becomes `.`: a file store cannot hold both `train/ce` and `train/ce/acc`."""
    return _UNSAFE.sub("_", key.replace("/", "."))


class MLflowLogger(ExperimentLogger):
    name = "mlflow"

    def __init__(self, tracking_uri: str | None = None, experiment: str = "reid-core",
                 artifact: bool = True) -> None:
        """`artifact`: copy the finished run folder (checkpoints included) to the run's artifacts."""
        problem = missing_package(self.name, "mlflow", "mlflow")
        if problem:
            raise ValueError(problem)
        self.tracking_uri, self.experiment, self.artifact = tracking_uri, experiment, artifact
        self.client = None
        self.run_id: str | None = None

    def start(self, config: Mapping[str, Any], run_dir: Path) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        from core.trackers.fanout import flatten_config

        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
        self.run_id = self.client.create_run(experiment_id, run_name=Path(run_dir).name,
                                             tags={"run_dir": str(Path(run_dir).resolve())}).info.run_id
        params = [Param(mlflow_key(k)[:250], str(v)[:6000]) for k, v in flatten_config(dict(config)).items()]
        for i in range(0, len(params), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(mlflow_key(k), float(v), now, int(step)) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_image(self, name: str, image: Any, step: int) -> None:
        self.client.log_image(self.run_id, image, artifact_file=f"images/{mlflow_key(name)}-{step}.png")

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        self.log_metrics(0, {f"final/{k}": v for k, v in metrics.items()})

    def log_artifact(self, run_dir: Path) -> None:
        if not self.artifact:
            return
        for entry in artifact_entries(run_dir, ("mlruns", "wandb")):
            if entry.is_dir():
                self.client.log_artifacts(self.run_id, str(entry), f"run/{entry.name}")
            else:
                self.client.log_artifact(self.run_id, str(entry), "run")

    def finish(self, ok: bool = True) -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")
            self.run_id = None

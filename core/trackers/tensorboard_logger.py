"""TensorBoard: scalars (losses, learning rate, evaluation metrics), the ranked-list
picture, the configuration as text, and the hyper-parameters with the final metrics
(the HParams tab). Writes `<run>/tensorboard/` unless `log_dir` says otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from core.trackers.base import ExperimentLogger, missing_package

#: TensorBoard's hparams values: these types, others as strings
_HPARAM_TYPES = (int, float, str, bool)


class TensorBoardLogger(ExperimentLogger):
    name = "tensorboard"

    def __init__(self, log_dir: str | None = None, flush_secs: int = 30) -> None:
        """`log_dir`: the event files' folder (default `<run>/tensorboard`), relative to the
        run folder unless absolute; `flush_secs`: how often events reach the disk."""
        problem = missing_package(self.name, "tensorboard", "tensorboard")
        if problem:
            raise ValueError(problem)
        self.log_dir, self.flush_secs = log_dir, flush_secs
        self.owns = () if log_dir else ("tensorboard",)
        self.writer = None
        self.step = 0

    def start(self, config: Mapping[str, Any], run_dir: Path) -> None:
        import yaml
        from torch.utils.tensorboard import SummaryWriter

        folder = Path(self.log_dir) if self.log_dir else Path("tensorboard")
        folder = folder if folder.is_absolute() else Path(run_dir) / folder
        self.writer = SummaryWriter(log_dir=str(folder), flush_secs=self.flush_secs)
        text = yaml.safe_dump(dict(config), sort_keys=False)
        self.writer.add_text("config", "    " + text.replace("\n", "\n    "), 0)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self.step = max(self.step, step)
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def log_image(self, name: str, image: Any, step: int) -> None:
        import numpy as np

        self.writer.add_image(name, np.asarray(image.convert("RGB")), step, dataformats="HWC")

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """The hparams summaries go into this writer's own event file (no sub-run), and
        each final metric is a scalar at the last step, which the HParams tab reads."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        values = {k: (v if isinstance(v, _HPARAM_TYPES) else str(v)) for k, v in hparams.items()}
        final = {f"final/{k}": float(v) for k, v in metrics.items()}
        writer = self.writer._get_file_writer()
        for summary in hparams_summary(values, final):
            writer.add_summary(summary)
        for key, value in final.items():
            self.writer.add_scalar(key, value, self.step)

    def finish(self, ok: bool = True) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

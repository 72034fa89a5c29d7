"""The contract of an experiment logger (kind `logger`), as a base class with no-op methods.

A logger is built from its YAML entry (`loggers: [{name: wandb, project: reid}]`) on every
process, and then only rank 0 calls it (`core.trackers.fanout.Trackers`). The trainer calls,
in order: `start` once, `log_metrics` at every logged step and evaluation, `log_image` for
the ranked-list picture of the final evaluation, `log_hparams` with the final metrics,
`log_artifact` with the finished run folder, and `finish` (also after a failure, with
`ok=False`). Libraries are imported in `start`, never at build time or by `core --help`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Mapping


def missing_package(logger: str, module: str, extra: str) -> str | None:
    """None when `module` can be imported, else the one-line error naming the extra."""
    if importlib.util.find_spec(module) is not None:
        return None
    return (f"logger '{logger}' needs the {module} package, which is not installed: "
            f"pip install 'reid-core[{extra}]' (or: pip install -e '.[{extra}]' in a checkout)")


class ExperimentLogger:
    """Base class of loggers: override what the tracker supports."""

    #: the registered name, for messages
    name = "logger"
    #: folder names inside the run folder this logger writes itself (left out of artifacts)
    owns: tuple[str, ...] = ()

    def start(self, config: Mapping[str, Any], run_dir: Path) -> None:
        """A run starts (or resumes) in `run_dir`; `config` is the resolved pipeline."""

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Scalars at optimisation step `step` (`train/loss`, `train/lr`, `<set>/mAP`, ...)."""

    def log_image(self, name: str, image: Any, step: int) -> None:
        """A PIL image (the ranked lists of a few queries)."""

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """The run's flat hyper-parameters with its final metrics (for comparing runs)."""

    def log_artifact(self, run_dir: Path) -> None:
        """Upload (or copy) the finished run folder."""

    def finish(self, ok: bool = True) -> None:
        """Close files and connections; `ok=False` after a failure or an interruption."""


def artifact_entries(run_dir: Path, skip: tuple[str, ...]) -> list[Path]:
    """The top-level entries of a run folder to upload: all but the trackers' own
    folders (`skip`) and the run lock."""
    return sorted(p for p in Path(run_dir).iterdir() if p.name not in (*skip, ".lock"))

"""The run folder: everything needed to understand, compare and resume a run.

    pipeline.yaml      the resolved pipeline, headed by the plugin and version of each component
    environment.json   versions, device, command line, components with their plugins
    metrics.jsonl      one JSON object per logged training step and per evaluation
    report.md          the final table: untrained baseline, periodic and final evaluations
    checkpoints/       last.pt (atomic), written at epoch ends and when asked
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from core.config.loading import dump
from core.training.checkpoint import WriteError, atomic_write_text, remove_stale_temp_files


#: what `core run` writes into a run folder (what --overwrite removes; nothing else is)
RUN_OUTPUTS = ("pipeline.yaml", "environment.json", "metrics.jsonl", "report.md", "log.txt", "curves.png",
               "checkpoints", "worst-queries", "tensorboard", "wandb")  # the last two: `loggers:`
LOCK_NAME = ".lock"


class RunFolderError(RuntimeError):
    """A run folder that cannot be written (it holds another run, or a process uses it), or
    whose metrics.jsonl cannot be read."""


def file_in_the_way(path: Path) -> Path | None:
    """The first existing entry of `path` and the folders above it when it is not a folder
    (a file where a folder must be), else None."""
    path = Path(path)
    existing = next((p for p in [path, *path.parents] if p.exists()), None)
    return existing if existing is not None and not existing.is_dir() else None


def folder_problem(path: Path) -> str | None:
    """Why `path` cannot be (made) a folder to write in, or None: a file at `path` or at a
    folder above it, or the nearest existing folder not writable. Checked before the work
    (the build may label and read data for hours): else an [Errno 20] / [Errno 13] after
    it, naming neither the key nor the flag that gave the path. Writable is tried, not
    asked: `os.access` says yes where a write fails (root squashed on NFS, ACLs, FUSE
    mounts), so a nameless temporary file is made there and closed (it leaves nothing)."""
    import tempfile

    path = Path(path)
    blocking = file_in_the_way(path)
    if blocking is not None:
        return f"{blocking} is a file, not a folder"
    existing = next((p for p in [path, *path.parents] if p.exists()), None)
    if existing is None:
        return None
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return f"{existing} cannot be written ({exc.strerror or exc})"
    return None


def claim_new(path: Path, overwrite: bool) -> None:
    """Check that `path` may receive a new run: absent (and makeable) or empty, or
    `overwrite` (which removes the previous run's outputs, `RUN_OUTPUTS`, and nothing else)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"{path} exists and is not a folder; give another --run-dir")
    problem = folder_problem(path)
    if problem is not None:
        raise RunFolderError(f"--run-dir: cannot write the run folder {path}: {problem}; give another --run-dir")
    if not path.exists():
        return
    present = [p for p in path.iterdir() if p.name != LOCK_NAME]
    if not present:
        return
    if not overwrite:
        raise RunFolderError(f"{path} already holds a run ({', '.join(sorted(p.name for p in present)[:4])}); "
                             f"continue it with `core run --resume {path}`, or replace it with --overwrite")
    import shutil

    for name in RUN_OUTPUTS:
        target = path / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


class RunLock:
    """One process per run folder: `<run>/.lock` holds the owner's pid, created with
    O_EXCL. A lock whose process is gone (killed) is taken over; a live one is an error
    naming its pid."""

    def __init__(self, path: Path) -> None:
        self.file = Path(path) / LOCK_NAME
        self.held = False

    def acquire(self) -> "RunLock":
        self.file.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _read_pid(self.file)
                if owner is not None and owner != os.getpid() and _alive(owner):
                    raise RunFolderError(f"{self.file.parent} is in use by process {owner} (another `core run`); "
                                         f"wait for it to finish, or stop it (kill {owner})") from None
                with contextlib.suppress(FileNotFoundError):
                    self.file.unlink()  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self.held = True
            return self
        raise RunFolderError(f"could not lock {self.file.parent}: {self.file} keeps reappearing")

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                self.file.unlink()
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(file: Path) -> int | None:
    try:
        return int(file.read_text().strip() or "0") or None
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunFolder:
    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled  # False on DDP ranks other than 0
        if enabled:
            (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
            remove_stale_temp_files(self.path)  # a killed process's half-written files

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    def write_pipeline(self, data: dict[str, Any], provenance: dict[str, dict[str, Any]]) -> None:
        if not self.enabled:
            return
        header = ["# Resolved pipeline written by reid-core. Components and their plugins:"]
        for key, info in provenance.items():
            header.append(f"#   {key}: {info['name']} (plugin {info['plugin']} {info['version'] or ''})".rstrip())
        atomic_write_text(self.path / "pipeline.yaml", "\n".join(header) + "\n" + dump(data))

    def write_environment(self, device: str, provenance: dict[str, dict[str, Any]],
                          plugins: dict[str, str | None] | None = None) -> None:
        """environment.json; `plugins`: the loaded plugins' versions (name -> version)."""
        if not self.enabled:
            return
        import numpy
        import torch

        env = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": sys.argv,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "device": device,
            "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.machine(),
            "numpy": numpy.__version__,
            "timm": _version("timm"),
            "torchvision": _version("torchvision"),
            "plugins": dict(plugins or {}),
            "components": provenance,
        }
        atomic_write_text(self.path / "environment.json", json.dumps(env, indent=2, default=str) + "\n")

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        try:
            with open(self.metrics_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, default=float) + "\n")
        except OSError as exc:  # disk full, I/O error: one line naming the file
            raise WriteError(exc.errno, f"cannot write {self.metrics_file}: {exc.strerror or exc}") from exc

    @property
    def log_file(self) -> Path:
        return self.path / "log.txt"

    def log_text(self, text: str) -> None:
        """Append `text` to log.txt (full tracebacks of failures, with a time stamp)."""
        if not self.enabled:
            return
        with contextlib.suppress(OSError):  # the log is a courtesy: never the reason a run fails
            with open(self.log_file, "a", encoding="utf-8") as f:
                f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}\n{text.rstrip()}\n")

    def write_report(self, text: str) -> None:
        if self.enabled:
            atomic_write_text(self.path / "report.md", text)


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                record = exc.msg
            if not isinstance(record, dict):  # one line, naming it: was a raw JSONDecodeError, exit 1
                why = record if isinstance(record, str) else f"a {type(record).__name__}, not an object"
                raise RunFolderError(f"{path}:{n}: not a JSON record ({why}); the line was cut (a run stopped "
                                     "while writing it) or edited: repair or delete that line")
            records.append(record)
    return records

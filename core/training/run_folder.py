"""The run folder: everything needed to understand, compare and resume a run.

    pipeline.yaml      the resolved pipeline, headed by the plugin and version of each component
    environment.json   versions, device, command line, components with their plugins
    metrics.jsonl      one JSON object per logged training step and per evaluation
    report.md          the final table: untrained baseline, periodic and final evaluations
    checkpoints/       last.pt (atomic), written at epoch ends and when asked
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from core.config.loading import dump
from core.training.checkpoint import atomic_write_text


class RunFolder:
    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled  # False on DDP ranks other than 0
        if enabled:
            (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)

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

    def write_environment(self, device: str, provenance: dict[str, dict[str, Any]]) -> None:
        if not self.enabled:
            return
        import numpy
        import torch

        from core.plugins import get_plugin_manager

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
            "plugins": {n: i.version for n, i in get_plugin_manager().infos.items() if not i.error},
            "components": provenance,
        }
        atomic_write_text(self.path / "environment.json", json.dumps(env, indent=2, default=str) + "\n")

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.metrics_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=float) + "\n")

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
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]

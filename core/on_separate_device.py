"""core's CLI inside the emulated separate device (core.separate_device), for launchers
that start a module, as torchrun does:

    torchrun --nproc-per-node 2 -m core.on_separate_device run p.yaml --set trainer.device=meta

A module of its own: the emulation is imported by the pipeline (which refuses its device
outside it), and the CLI imports the pipeline.
"""

from __future__ import annotations

import sys

from core.cli import main
from core.separate_device import emulate_separate_device


def run_cli(argv: list[str]) -> int:
    with emulate_separate_device():
        return main(argv)


if __name__ == "__main__":
    sys.exit(run_cli(sys.argv[1:]))

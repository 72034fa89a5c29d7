"""SIGINT and SIGTERM during training: finish the step, save, say how to resume.

The handler only sets a flag; the trainer reads it at the next optimisation-step boundary,
writes a checkpoint there and raises `Interrupted`, which the CLI turns into one line
("interrupted at epoch E, step S; resume with: core run --resume RUN") and exit code
128 + signal (130 for SIGINT, 143 for SIGTERM), as shells do. A second Ctrl-C while the
step finishes interrupts at once (Python's KeyboardInterrupt). Loader workers ignore
SIGINT (`ignore_in_worker`): a terminal's Ctrl-C reaches the whole process group, and a
worker that died of it would fail the step the main process is finishing. They keep
SIGTERM's default: it is how the DataLoader stops a worker that does not exit by itself.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """Training stopped on a signal after saving a checkpoint at a step boundary."""

    def __init__(self, signum: int, epoch: int, step: int, run_dir: Path, plugin_files: bool = False) -> None:
        from core.trust import PLUGIN_FILES_FLAG

        self.signum, self.epoch, self.step, self.run_dir = signum, epoch, step, Path(run_dir)
        # a pipeline importing local plugin files resumes only when they are allowed (core/trust.py)
        allow = f" {PLUGIN_FILES_FLAG}" if plugin_files else ""
        super().__init__(f"interrupted at epoch {epoch}, step {step}; resume with: core run --resume {run_dir}{allow}")

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


class SignalFlag:
    """Which signal arrived (0: none); set by the handler, read at step boundaries."""

    def __init__(self) -> None:
        self.signum = 0

    def __bool__(self) -> bool:
        return self.signum != 0


@contextlib.contextmanager
def deferred_signals() -> Iterator[SignalFlag]:
    """Within the block SIGINT/SIGTERM set the yielded flag instead of stopping the process
    (a second SIGINT raises KeyboardInterrupt). Outside the main thread, where Python
    cannot install handlers, the flag simply never rises."""
    flag = SignalFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.signum = signum

    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def ignore_in_worker(_worker_id: int | None = None) -> None:
    """DataLoader `worker_init_fn`: leave Ctrl-C (SIGINT) to the main process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

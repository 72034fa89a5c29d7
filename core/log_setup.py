"""Logging: one tree of loggers, a console and the run folder's log file.

Modules log through `logging.getLogger(__name__)`: the core's loggers are `core.*`, a
plugin's are `reid_<plugin>.*` (its package name). Both are "ours"; other libraries'
records pass only from WARNING up, so `--verbose` does not flood the console with PIL's
or matplotlib's debug lines.

- `console(level)`: what the `core` command sets up: our records from `level` on, on
  stderr at the time of writing (through `tqdm.write` while a progress bar is open, so
  the bar is redrawn, not broken), and Python warnings as log records. `--quiet` is
  WARNING (and no progress bars: `bar_disabled`), the default INFO, `--verbose` DEBUG.
  Under torchrun, ranks other than 0 show warnings and errors only, marked with their
  rank.
- `run_log()`: the records of one training run, held in memory until `attach` names the
  run folder's `log.txt` (so what happens while the pipeline is built is not lost), then
  written there with a time stamp, the level and the logger: INFO and up whatever the
  console shows (DEBUG too with `--verbose`).

A command's *result* (a report table, JSON, a summary) is no log record: it goes to
stdout with print, so it can be piped and `--quiet` never hides it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

#: the console's level for the CLI's verbosity flags
QUIET, NORMAL, VERBOSE = logging.WARNING, logging.INFO, logging.DEBUG
_FILE_FORMAT = "%(asctime)s %(levelname)-7s {rank}%(name)s: %(message)s"
#: the run log's level: INFO, or DEBUG while a `console(VERBOSE)` is active
_run_log_level = logging.INFO
#: the active console's level (`console`): progress bars are off under --quiet
_console_level = NORMAL
#: records buffered before the run folder is known (a longer prelude keeps its end)
_MAX_BUFFERED = 10_000


def is_ours(name: str) -> bool:
    """A logger of the core (`core.*`) or of a plugin (`reid_<plugin>.*`)."""
    top = name.split(".", 1)[0]
    return top == "core" or top.startswith("reid_")


class _OursOrWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or is_ours(record.name)


def env_rank() -> int:
    """This process's rank under torchrun (RANK), 0 otherwise."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


class ConsoleFormatter(logging.Formatter):
    """The message as it always read: warnings start with "warning: " (errors "error: "),
    other ranks' lines with "[rank N] "."""

    def __init__(self, rank: int = 0) -> None:
        super().__init__("%(message)s")
        self.rank = rank

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.ERROR and not text.startswith("error:"):
            text = "error: " + text
        elif record.levelno >= logging.WARNING and not text.startswith("warning:"):
            text = "warning: " + text
        return f"[rank {self.rank}] {text}" if self.rank else text


class ConsoleHandler(logging.Handler):
    """Writes to the *current* sys.stderr (a redirection, or pytest's capture, made after
    set-up is honoured); through `tqdm.write` while a tqdm bar is open."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            stream = sys.stderr
            tqdm_module = sys.modules.get("tqdm")
            bars = getattr(getattr(tqdm_module, "tqdm", None), "_instances", None)
            if bars:
                tqdm_module.tqdm.write(text, file=stream)
            else:
                stream.write(text + "\n")
                stream.flush()
        except Exception:  # noqa: BLE001 - logging's own rule: a record never raises
            self.handleError(record)


def _console_handler(level: int, rank: int) -> ConsoleHandler:
    handler = ConsoleHandler(level if rank == 0 else max(level, logging.WARNING))
    handler.addFilter(_OursOrWarnings())
    handler.setFormatter(ConsoleFormatter(rank))
    return handler


@contextlib.contextmanager
def console(level: int = NORMAL, rank: int | None = None) -> Iterator[ConsoleHandler]:
    """Our records from `level` on, on stderr, for the duration; the root logger's level
    and handlers are restored after (the CLI's `main` can run many times in a process)."""
    global _run_log_level, _console_level
    rank = env_rank() if rank is None else rank
    root = logging.getLogger()
    handler = _console_handler(level, rank)
    old_level, old_run_level, old_console_level = root.level, _run_log_level, _console_level
    _run_log_level, _console_level = min(level, logging.INFO), level
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO))  # the run log keeps INFO under --quiet
    logging.captureWarnings(True)  # Python warnings (a sampler's, a backbone's) reach the run log too
    try:
        yield handler
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(old_level)
        _run_log_level, _console_level = old_run_level, old_console_level


def bar_disabled(wanted: bool = True) -> bool | None:
    """tqdm's `disable` for a progress bar: True when not `wanted` or under `--quiet`
    (only warnings on the console); else None, tqdm's "off unless stderr is a terminal",
    so a job's log file (nohup, SLURM) does not get a new frame at every update."""
    return True if not wanted or _console_level > logging.INFO else None


def verbosity(quiet: bool = False, verbose: bool = False) -> int:
    """The console level of the CLI's flags (--verbose wins over --quiet)."""
    return VERBOSE if verbose else QUIET if quiet else NORMAL


class RunLogHandler(logging.Handler):
    """Our records (and anyone's warnings) for one run's log file: kept as text until
    `attach(path)`, then appended there. Rank 0 writes everything from its level up;
    other ranks only warnings and errors, each line marked with the rank."""

    def __init__(self, level: int = logging.INFO, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(level if rank == 0 else max(level, logging.WARNING))
        self.addFilter(_OursOrWarnings())
        marker = f"[rank {rank}] " if world_size > 1 else ""
        self.setFormatter(logging.Formatter(_FILE_FORMAT.format(rank=marker), "%Y-%m-%d %H:%M:%S"))
        self.buffered: list[str] = []
        self.file = None
        self.path: Path | None = None

    def attach(self, path: Path) -> None:
        """Write to `path` from now on, the records so far first. An unwritable file is
        no reason for a run to fail: the log is then dropped."""
        self.acquire()
        try:
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
                self.path = Path(path)
                self.file.write("".join(line + "\n" for line in self.buffered))
                self.file.flush()
            except OSError:
                self.file = None
            self.buffered = []
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if self.file is not None:
                self.file.write(text + "\n")
                self.file.flush()
            elif self.path is None:
                self.buffered.append(text)
                del self.buffered[:-_MAX_BUFFERED]
        except OSError:  # a full disk ends the run elsewhere, with one clear line
            pass
        except Exception:  # noqa: BLE001
            self.handleError(record)

    def close(self) -> None:
        self.acquire()
        try:
            if self.file is not None:
                self.file.close()
                self.file = None
        finally:
            self.release()
        super().close()


@contextlib.contextmanager
def run_log(rank: int = 0, world_size: int = 1) -> Iterator[RunLogHandler]:
    """Collect one run's records (call `.attach(run_dir / "log.txt")` once the folder is
    known). Outside the CLI nobody may have configured logging: our INFO records are then
    let through for the file, and warnings still reach stderr, as Python's default does."""
    root = logging.getLogger()
    handler = RunLogHandler(_run_log_level, rank, world_size)
    old_level = root.level
    fallback = None
    if not root.handlers:  # Python's last-resort handler would not fire beside ours
        fallback = _console_handler(logging.WARNING, rank)
        root.addHandler(fallback)
    root.addHandler(handler)
    if root.getEffectiveLevel() > handler.level:
        root.setLevel(handler.level)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        handler.close()
        if fallback is not None:
            root.removeHandler(fallback)
        root.setLevel(old_level)


def echo_to(logger: logging.Logger) -> Callable[[str], None]:
    """An `echo(text)` callable (the older API of several functions) that logs: text
    starting with "warning: " as a warning (the prefix is the console's to add), the rest
    as INFO."""

    def echo(text: str) -> None:
        if text.startswith("warning: "):
            logger.warning(text[len("warning: "):])
        else:
            logger.info(text)

    return echo

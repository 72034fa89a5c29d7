"""What the user has said to trust in files that may come from someone else.

A checkpoint that needs pickle can run code when loaded; a run folder's pipeline.yaml may
name local plugin files (`plugins: [./x.py]`), which are Python imported at build time.
Commands that read a run folder someone else may have made (eval, extract, search,
explain, export, run --resume) refuse both unless the user passed `--trust-checkpoint` /
`--allow-plugin-files`; the CLI sets those here for the command it runs, and library
callers use `trusting(...)`. `core run pipeline.yaml` on the user's own file is not
affected: its plugins are what the user asked for.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

CHECKPOINT_FLAG = "--trust-checkpoint"
PLUGIN_FILES_FLAG = "--allow-plugin-files"


@dataclass(frozen=True)
class Trust:
    #: load checkpoints that need pickle (weights_only=False)
    checkpoint: bool = False
    #: import the local plugin files a run folder's pipeline names
    plugin_files: bool = False


_current = Trust()


def current() -> Trust:
    return _current


@contextlib.contextmanager
def trusting(checkpoint: bool = False, plugin_files: bool = False) -> Iterator[Trust]:
    """Within the block, the given kinds of foreign content are trusted."""
    global _current
    previous, _current = _current, Trust(checkpoint=checkpoint, plugin_files=plugin_files)
    try:
        yield _current
    finally:
        _current = previous


class UntrustedContent(PermissionError):
    """Foreign content that would run code, refused; the message names it and the flag."""

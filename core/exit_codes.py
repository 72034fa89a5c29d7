"""The exit code a failure ends a command with: 2 bad input (fix the input: as it is, it fails
the same way again), 3 a NaN/Inf loss stopped the run, 1 anything else. The CLI ends each command by it and a
sweep tells its runs' failures apart by it (core.sweep)."""

from __future__ import annotations

import sys


def exit_code(exc: BaseException) -> int:
    """2 for bad input (a pipeline key, a missing file, an untrusted or unreadable
    checkpoint, a run folder in use, a test set where no query has a match to find, released
    weights that do not fit the pipeline), 3
    for a non-finite loss, 1 otherwise."""
    from core.config.loading import ConfigError
    from core.registry import RegistryError
    from core.trust import UntrustedContent

    if isinstance(exc, FloatingPointError):  # a NaN/Inf loss stopped the run
        return 3
    if isinstance(exc, (ConfigError, RegistryError, FileNotFoundError, UntrustedContent)):
        return 2
    for module, name in (("core.evaluation.ranking", "NoValidQuery"), ("core.released_weights.conversion",
                                                                       "WeightsMismatch")):
        defined = sys.modules.get(module)  # not imported: not its error (and no torch import here)
        if defined is not None and isinstance(exc, getattr(defined, name)):
            return 2
    from core.training.checkpoint import CheckpointError
    from core.training.run_folder import RunFolderError

    return 2 if isinstance(exc, (CheckpointError, RunFolderError)) else 1

"""Where a relative data path was looked for, said when nothing is there; and what a
data file that is there but cannot be read is told as.

Data paths in a pipeline (`path:` of a manifest, `root:` of a dataset layout) are
relative to the folder core runs in, while `_base_` and `plugins:` are relative to the
YAML file that names them; a pipeline run from another folder then misses its data, and
the message must say where it looked.
"""

from __future__ import annotations

import os
from pathlib import Path

#: What reading a data file the user named (a manifest, a dataset's list or split file)
#: raises when the path is there but cannot be read as a file: bad input, told in one line
#: by `unreadable` (a missing file is a FileNotFoundError, told by the reader itself)
UNREADABLE_FILE = (PermissionError, IsADirectoryError, NotADirectoryError)


def looked_at(path: str | os.PathLike) -> str:
    """' (looked at /abs/path; data paths are relative to ...)' for a relative `path`;
    '' for an absolute one (the message names it already)."""
    path = Path(path)
    if path.is_absolute():
        return ""
    return (f" (looked at {path.absolute()}; data paths are relative to the folder core runs in, "
            "not to the pipeline file)")


def missing_file(path: str | os.PathLike) -> str:
    """'not found: PATH (looked at ...)', or 'is a folder, not a file: PATH' when a folder
    stands where a list or split file is expected (a message saying "not found" for a path
    the user can see sends them looking in the wrong place)."""
    if Path(path).is_dir():
        return f"is a folder, not a file: {path}"
    return f"not found: {path}{looked_at(path)}"


def unreadable(exc: OSError) -> str:
    """One line for an `UNREADABLE_FILE` error: the file, why, and what would do."""
    name = exc.filename
    reason = exc.strerror or str(exc)
    if isinstance(exc, IsADirectoryError):
        return f"{name or reason} is a folder, where a file is expected"
    if isinstance(exc, NotADirectoryError):
        return f"{name or reason}: a part of this path is a file, where a folder is expected"
    if isinstance(exc, PermissionError):
        return (f"cannot read {name}: permission denied" if name else f"cannot read: {reason}") + \
            "; the user running core needs read access to it"
    return f"cannot read {name}: {reason}" if name else reason

"""Where a relative data path was looked for, said when nothing is there.

Data paths in a pipeline (`path:` of a manifest, `root:` of a dataset layout) are
relative to the folder core runs in, while `_base_` and `plugins:` are relative to the
YAML file that names them; a pipeline run from another folder then misses its data, and
the message must say where it looked.
"""

from __future__ import annotations

import os
from pathlib import Path


def looked_at(path: str | os.PathLike) -> str:
    """' (looked at /abs/path; data paths are relative to ...)' for a relative `path`;
    '' for an absolute one (the message names it already)."""
    path = Path(path)
    if path.is_absolute():
        return ""
    return (f" (looked at {path.absolute()}; data paths are relative to the folder core runs in, "
            "not to the pipeline file)")

"""Files a tool's --out would replace: refused before any work unless --overwrite, in one
line (`core extract`'s .npz and .f16.npy, `core export`'s export.json and model files)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable


def refuse_existing(paths: Iterable[str | Path], what: str, overwrite: bool, folder: Path | None = None,
                    replaced: str | None = None) -> None:
    """Refuse, unless `overwrite`, when any of `paths` (the files the tool writes) is there
    (a link too, even a broken one: writing replaces it): a ConfigError on --out naming
    them and `what` they hold (the work they come from, which would be lost). With
    `folder`, told as files that folder holds (by name); `replaced` names what
    --overwrite replaces (default: it / them)."""
    from core.config.loading import ConfigError

    existing = [Path(p) for p in paths if os.path.lexists(p)]
    if not existing or overwrite:
        return
    if folder is not None:
        said = f"{folder} already holds {', '.join(p.name for p in existing)}"
    elif len(existing) == 1:
        said = f"{existing[0]} already exists"
    else:
        said = f"{' and '.join(map(str, existing))} already exist"
    replaced = replaced or ("it" if len(existing) == 1 else "them")
    raise ConfigError(f"{said} ({what}); pass --overwrite to replace {replaced}, or choose another --out",
                      file="--out")

"""Writers of the tiny dataset fixtures the layout tests build in each release's real
layout: small real images (PIL-encoded once, then copied) under their real names.
Importable by the test modules as `layout_fixtures` (registered by conftest.py)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

#: Width x height of every fixture image (PIL's order: `load_image(...).size`).
IMAGE_SIZE = (8, 16)


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", IMAGE_SIZE, (200, 30, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


IMAGE_BYTES = {".jpg": _encoded("JPEG"), ".png": _encoded("PNG")}


def images(folder: Path, *names: str) -> Path:
    """Write a small real image (JPEG or PNG, by the name's suffix) per name into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(IMAGE_BYTES[Path(name).suffix])
    return folder


def image_folders(root: Path, folders: dict[str, list[str]]) -> Path:
    """`images(root / folder, *names)` for each folder: a release's split folders in one
    call, e.g. {"bounding_box_train": [...], "query": [...], "bounding_box_test": [...]}."""
    for folder, names in folders.items():
        images(root / folder, *names)
    return root


def damaged_middle(seed: int = 0) -> bytes:
    """A PNG whose compressed pixels are damaged in the middle while its header and IEND
    tail are intact: the header and tail check passes it, a full decode fails."""
    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 256, (128, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    data = buffer.getvalue()
    middle = len(data) // 2
    return data[:middle] + b"\xff" * 64 + data[middle + 64:]


def deny_reading(monkeypatch, path: Path) -> Path:
    """Make `path` unreadable as it is for a user without read permission: mode 000, and,
    since root reads such a file anyway, opening it raises the PermissionError the OS gives
    everyone else (errno 13, the path as its filename)."""
    import builtins
    import errno
    import os

    path.chmod(0)
    denied = os.path.abspath(path)
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(file) == denied:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)  # pathlib's Path.open
    return path

"""Wildlife71 (Jiao et al. 2023, "Toward Re-Identifying Any Animal", NeurIPS; UniReID):
animal re-ID across 71 species; MGOR (CVPR 2026) tests on it ("69+ wildlife species").

Official release, github.com/JiaoBL1234/wildlife README.md (read at commit ad4c530):
only the training set is public (Baidu / Google Drive); "due to issues of license and
copyright" the test set is sent on request by e-mail, in a layout the README does not
describe. The public part is

    images named ID_Cam_Frame.jpg, e.g. 0000000X_000Y_0000000Z.jpg: identity X, camera Y
        (always 1: the images come from the internet), frame Z of the trajectory
    partitions.pkl     a pickled dict: train_im_names (the images' file names) and
                       train_im_sourceid (each image's category, i.e. species, id)

The README names no image folder, so images and `partitions.pkl` may sit at any depth
under the root (one `partitions.pkl`). A `train_im_names` entry with a `/` is taken as a
path relative to the folder of `partitions.pkl`; a bare name must be unique in the tree.

Only `train` is offered: it is the only split with a published layout (query / gallery
would be our invention). pid = source id x 10^8 + X (X has 8 digits), so that identities
stay apart even if numbers restarted per species (the README does not say); X is
`pid % 10**8`. camid = Y - 1. Category `species<source id>` (the README gives no names).

`partitions.pkl` is read with an unpickler that only builds dicts, lists, strings,
numbers and numpy arrays: anything else in the file (which could run code) is refused.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path
from typing import Any, Sequence

from core.data.columns import RecordColumns
from core.data.layouts.common import IMAGE_EXTENSIONS, cached_records, check_split, require_dir
from core.interfaces import Dataset
from core.records import Record

PARTITIONS = "partitions.pkl"
NAMES, SOURCES = "train_im_names", "train_im_sourceid"
FILE_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)\.[A-Za-z]+$")
PID_STRIDE = 10 ** 8

#: What a partitions file may build: numpy arrays (and their dtypes and scalars) and the
#: string codec numpy's protocol-2 pickles call. Nothing that can run code.
_ALLOWED = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5
    ("_codecs", "encode"),
})


class _PartitionsUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), encoding="latin1")  # latin1: numpy arrays pickled by Python 2

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed")


def read_partitions(path: Path) -> tuple[list[str], list[int]]:
    """(train_im_names, train_im_sourceid) of the official `partitions.pkl`; a ValueError
    names the file and what was expected."""
    try:
        data = _PartitionsUnpickler(path.read_bytes()).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise ValueError(f"Wildlife71: {path}: refused or unreadable ({exc}); expected the official "
                         f"{PARTITIONS}: a pickled dict of lists / numpy arrays") from None
    if not isinstance(data, dict) or NAMES not in data or SOURCES not in data:
        keys = ", ".join(sorted(map(str, data))) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"Wildlife71: {path}: expected a dict with keys {NAMES} and {SOURCES}, got {keys}")
    names, sources = list(data[NAMES]), list(data[SOURCES])
    if len(names) != len(sources):
        raise ValueError(f"Wildlife71: {path}: {NAMES} has {len(names)} entries but {SOURCES} has {len(sources)}")
    out_names, out_sources = [], []
    for i, (name, source) in enumerate(zip(names, sources)):
        if isinstance(name, bytes):
            name = name.decode("utf-8")
        if not isinstance(name, str):
            raise ValueError(f"Wildlife71: {path}: {NAMES}[{i}] is {name!r}, expected a file name")
        try:
            sid = int(source)
        except (TypeError, ValueError):
            raise ValueError(f"Wildlife71: {path}: {SOURCES}[{i}] is {source!r}, expected an integer "
                             "category id") from None
        if sid != source or sid < 0:
            raise ValueError(f"Wildlife71: {path}: {SOURCES}[{i}] is {source!r}, expected a non-negative integer")
        out_names.append(name)
        out_sources.append(sid)
    return out_names, out_sources


class Wildlife71(Dataset):
    """The public training release of Wildlife71. `sources`: the category (source) ids to
    read, null for all."""

    name = "wildlife71"
    splits = ("train",)

    def __init__(self, root: str, sources: Sequence[int] | None = None) -> None:
        base = Path(root)
        require_dir("Wildlife71", base, f"{PARTITIONS} and the images ID_Cam_Frame.jpg at any depth")
        self.root = base
        self.sources = sorted(int(s) for s in sources) if sources is not None else None
        self._images: dict[str, list[str]] = {}
        self._folders: list[str] = []
        found: list[Path] = []
        for folder, dirs, files in os.walk(base):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            self._folders.append(folder)
            for name in files:
                if name.startswith("."):
                    continue
                if name == PARTITIONS:
                    found.append(Path(folder) / name)
                elif os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                    self._images.setdefault(name, []).append(os.path.join(folder, name))
        if not found:
            raise FileNotFoundError(f"Wildlife71: {PARTITIONS} not found under {base}; expected the official "
                                    f"annotation file of the training release ({NAMES}, {SOURCES})")
        if len(found) > 1:
            raise ValueError(f"Wildlife71: {len(found)} {PARTITIONS} under {base} ({', '.join(map(str, found))}); "
                             "keep one")
        self.partitions = found[0]
        self._cache: RecordColumns | None = None

    def _image(self, name: str, index: int) -> str:
        where = f"{self.partitions}: {NAMES}[{index}] = {name!r}"
        if "/" in name or os.sep in name:
            path = self.partitions.parent / name
            if not path.is_file():
                raise FileNotFoundError(f"Wildlife71: {where}: no such image {path}")
            return str(path)
        paths = self._images.get(name)
        if not paths:
            raise FileNotFoundError(f"Wildlife71: {where}: no image of that name under {self.root}")
        if len(paths) > 1:
            raise ValueError(f"Wildlife71: {where}: {len(paths)} images of that name ({', '.join(paths)}); "
                             "cannot tell which one is meant")
        return paths[0]

    def _list(self) -> list[Record]:
        names, sources = read_partitions(self.partitions)
        present = set(sources)
        missing = [s for s in self.sources or [] if s not in present]
        if missing:
            raise ValueError(f"Wildlife71: sources {', '.join(map(str, missing))} not in {self.partitions}; "
                             f"present: {', '.join(map(str, sorted(present)))}")
        keep = set(self.sources) if self.sources is not None else present
        out = []
        for i, (name, sid) in enumerate(zip(names, sources)):
            if sid not in keep:
                continue
            match = FILE_NAME.match(os.path.basename(name))
            if match is None:
                raise ValueError(f"Wildlife71: {self.partitions}: {NAMES}[{i}] = {name!r} does not follow "
                                 "ID_Cam_Frame.jpg (e.g. 00000012_0001_00000034.jpg)")
            identity, camera = int(match.group(1)), int(match.group(2))
            if identity >= PID_STRIDE or camera < 1:
                raise ValueError(f"Wildlife71: {self.partitions}: {NAMES}[{i}] = {name!r}: expected an "
                                 "identity below 10^8 and a camera from 1")
            out.append(Record(path=self._image(name, i), pid=sid * PID_STRIDE + identity, camid=camera - 1,
                              category=f"species{sid}", domain=self.name, split="train"))
        return out

    def records(self, split: str) -> RecordColumns:
        """Columns in the order of `partitions.pkl`, cached by that file and every folder
        of the tree (path, size, mtime)."""
        check_split("Wildlife71", split, self.splits)
        if self._cache is None:
            self._cache = cached_records(self, split, [self.partitions, *self._folders], self._list)
        return self._cache

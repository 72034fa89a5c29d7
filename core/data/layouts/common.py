"""What the readers of the standard ReID layouts share (DESIGN.md "Data").

Market-1501, DukeMTMC-reID, CUHK03-NP and VeRi-776 all keep one folder of images per
split and write identity and camera into each file name; `SplitFolderDataset` reads any
such layout, so each dataset's module only states its folders, its file-name pattern and
its conventions. Listing never decodes an image: one `os.scandir` per split folder, and
file names are parsed once and cached per split.

Every reader here returns its records as columns (core.data.columns) and goes through
the one cache of core.data.cache (`cached_records`): keyed by the (path, size, mtime) of
what it read -- its list files, or every folder it scanned, whose mtime changes when an
image or identity folder is added, removed or renamed -- and by its options.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from core.data.cache import cached
from core.data.columns import Categorical, RecordColumns, StringColumn, as_columns, extra_from_values
from core.data.paths import looked_at
from core.interfaces import Dataset
from core.records import Record

SPLITS = ("train", "query", "gallery")
#: Files with other extensions (Thumbs.db, .DS_Store, readme.txt, ...) are ignored.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})


def check_split(dataset: str, split: str, valid: Sequence[str] = SPLITS) -> None:
    if split not in valid:
        raise ValueError(f"{dataset}: unknown split '{split}'; valid splits: {', '.join(valid)}")


def image_names(folder: Path) -> list[str]:
    """Sorted names of the image files directly in `folder`, chosen by extension
    (case-insensitive); hidden files (macOS `._x.jpg` twins) are skipped."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries
                      if not e.name.startswith(".") and e.is_file()
                      and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)


def subfolder_names(folder: Path) -> list[str]:
    """Sorted names of the folders directly in `folder`, hidden ones skipped."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())


def folder_tree(folder: str | Path, depth: int) -> list[Path]:
    """`folder` and its sub-folders down to `depth` levels below it (hidden ones skipped,
    sorted): the folders a nested layout scans, so that their mtimes key its cache entry."""
    out, level = [Path(folder)], [Path(folder)]
    for _ in range(depth):
        level = [f / n for f in level for n in subfolder_names(f)]
        out += level
    return out


def reader_params(dataset: Any, split: str, **more: Any) -> dict[str, Any]:
    """What a reader's listing depends on besides its input files: its class, the split
    and its options (public attributes that are scalars, paths or lists of scalars)."""
    def plain(value: Any) -> Any:
        if isinstance(value, (str, int, float, bool, type(None))):
            return value
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float, bool)) for v in value):
            return list(value)
        return plain  # not an option

    options = sorted((k, plain(v)) for k, v in vars(dataset).items()
                     if not k.startswith("_") and plain(v) is not plain)  # private: memos, not options
    return {"class": f"{type(dataset).__module__}.{type(dataset).__qualname__}", "split": split,
            "options": options, **more}


def cached_records(dataset: Any, split: str, inputs: Sequence[str | Path],
                   build: Callable[[], "Sequence[Record]"], **params: Any) -> RecordColumns:
    """`build()` (Records or columns) as columns, through the record cache
    (core.data.cache): a later start with the same `inputs` (path, size, mtime) and the
    same reader options (and `params`) memory-maps the earlier result instead of reading
    again. A missing input is left out of the key (the build names it, or its
    appearance changes the key)."""
    present = [p for p in inputs if os.path.exists(p)]
    return cached("layout", present, reader_params(dataset, split, **params), lambda: as_columns(build()))


def columns_of(paths: Sequence[str], pids: Sequence[int], camids: Sequence[int], category: str | Sequence[str],
               domain: str, split: str, extras: dict[str, Sequence[Any]] | None = None) -> RecordColumns:
    """Columns built from per-field lists, without a Record object per image (the list
    readers at scale: MSMT17, OmniReID++ datalists, VERI-Wild, ...)."""
    n = len(paths)
    return RecordColumns(
        path=StringColumn.from_list(paths), pid=np.asarray(pids, dtype=np.int64).reshape(n),
        camid=np.asarray(camids, dtype=np.int64).reshape(n),
        category=Categorical.constant(category, n) if isinstance(category, str) else Categorical.from_list(category),
        domain=Categorical.constant(domain, n), split=Categorical.constant(split, n),
        extras={k: extra_from_values(list(v), None) for k, v in (extras or {}).items()})


def join_paths(folder: str | Path, relative: Sequence[str]) -> list[str]:
    """`str(Path(folder) / r)` for each r, by string concatenation where that gives the
    same text (several times faster at millions of list lines); through pathlib for
    absolute or unnormalised entries (`./a`, `a//b`, `a/`), found by one search over all."""
    base = str(Path(folder))
    prefix = "" if base == "." else base if base.endswith(os.sep) else base + os.sep
    if os.sep != "/" or _ODD_PATH.search("\n".join(relative)) is not None:  # a newline only adds matches
        odd = [_ODD_PATH.search(r) is not None or os.sep != "/" for r in relative]
        return [str(Path(folder) / r) if o else prefix + r for r, o in zip(relative, odd)]
    return [prefix + r for r in relative]


#: An entry pathlib would rewrite: empty, absolute, `.` segments, doubled or trailing `/`.
_ODD_PATH = re.compile(r"(?:^|/)\.?(?:/|$)|^/", re.MULTILINE)


def read_list_file(path: Path, sizes: Sequence[int], integers_from: int, expected: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank line of a whitespace-separated list file
    (MSMT17's lists, OmniReID++'s datalists). A line must have one of `sizes` fields,
    those from `integers_from` on integers; otherwise a ValueError names the file, the
    line and `expected`."""
    integers = re.compile(r"-?\d+(?: -?\d+)*")  # the fields have no whitespace: joined by one space
    out = []
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) not in sizes or (len(fields) > integers_from and
                                            integers.fullmatch(" ".join(fields[integers_from:])) is None):
                raise ValueError(f"{path}:{number}: expected {expected}, got {line.strip()!r}")
            out.append((number, fields))
    return out


def describe_layout(folders: Sequence[str], wrappers: Sequence[str] = ()) -> str:
    """'a/, b/ (directly under the root or inside W/)', for error messages."""
    text = ", ".join(f"{f}/" for f in folders)
    if wrappers:
        text += f" (directly under the root or inside {' or '.join(f'{w}/' for w in wrappers)})"
    return text


def require_dir(dataset: str, path: Path, layout: str) -> None:
    """FileNotFoundError naming `path` and the expected layout unless it is a folder."""
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "not found"
        where = looked_at(path) if what == "not found" else ""
        raise FileNotFoundError(f"{dataset}: dataset root {what}: {path}{where}; expected the layout {layout}")


def find_root(dataset: str, root: str | Path, folders: Sequence[str], wrappers: Sequence[str] = ()) -> Path:
    """The folder that holds every one of `folders`: `root` itself, or one of the
    `wrappers` sub-folders that the official archives unpack into.

    Errors name the path, the missing folders, the expected layout and what was found.
    """
    layout = describe_layout(folders, wrappers)
    base = Path(root)
    require_dir(dataset, base, layout)
    candidates = [base] + [base / w for w in wrappers if (base / w).is_dir()]
    for candidate in candidates:
        if all((candidate / f).is_dir() for f in folders):
            return candidate
    where = candidates[-1]  # the wrapper when there is one: the user unpacked the archive there
    missing = [str(where / f) for f in folders if not (where / f).is_dir()]
    found = ", ".join(f"{n}/" for n in subfolder_names(where)) or "no folders"
    raise FileNotFoundError(f"{dataset}: missing folder(s) {', '.join(missing)}; expected the layout "
                            f"{layout}; found in {where}: {found}")


@dataclass(frozen=True)
class NamePattern:
    """A file-name convention: a regex matched against the file's base name, and how to
    say it to a user whose file does not follow it."""

    regex: re.Pattern[str]
    #: human form, e.g. "<pid>_c<camera>s<seq>_<frame>_<box>.jpg (e.g. 0002_c1s1_000451_03.jpg)"
    text: str

    @classmethod
    def compile(cls, regex: str, text: str) -> "NamePattern":
        return cls(re.compile(regex), text)

    def parse(self, dataset: str, path: Path | str, where: str = "") -> tuple[str, ...]:
        """The regex groups for `path`'s base name; a ValueError naming the file (and
        `where` it was listed, e.g. a list file and line) and the expected pattern."""
        match = self.regex.match(os.path.basename(str(path)))
        if match is None:
            listed = f" (listed at {where})" if where else ""
            raise ValueError(f"{dataset}: cannot parse the file name of {path}{listed}; expected {self.text}; "
                             "rename or remove it")
        return match.groups()


#: `<pid>_c<camera>...`: the convention of Market-1501 and the layouts that copied it.
MARKET_STYLE = r"^(-?\d+)_c(\d+)"


class SplitFolderDataset(Dataset):
    """A layout with one image folder per split and (pid, camera) in every file name.

    Subclasses set the class attributes; `parse` may return None to leave an image out
    (a dataset's junk convention). Records come in sorted file-name order, with the
    dataset's own pids (training tables relabel them, see `RecordTable.build`) and
    0-based camera ids (the names count cameras from 1, as torchreid and fast-reid assume).
    """

    #: the domain of every record; also the YAML name
    name: ClassVar[str]
    category: ClassVar[str] = "person"
    #: split -> folder (relative to the dataset folder); a subclass may set it per instance
    folders: dict[str, str]
    #: sub-folders the official archive unpacks into, accepted under `root`
    wrappers: ClassVar[tuple[str, ...]] = ()
    pattern: ClassVar[NamePattern]
    #: how many cameras the dataset has, named 1..cameras in the files; a name outside is
    #: refused (None: any camera), see `check_camera`; part of the cache key, so that a
    #: listing cached without the check is read again
    cameras: ClassVar[int | None] = None

    def __init__(self, root: str) -> None:
        self.root = find_root(type(self).__name__, root, self.required_folders(), self.wrappers)
        self._cache: dict[str, RecordColumns] = {}

    def required_folders(self) -> list[str]:
        return list(dict.fromkeys(self.folders.values()))

    def records(self, split: str) -> RecordColumns:
        """The split's records as columns (core.data.columns). Large listings are cached
        (core.data.cache) by the path, size and mtime of the scanned folders -- adding,
        removing or renaming an image changes its folder's mtime -- so the second start
        of a large dataset does not scan it again."""
        check_split(type(self).__name__, split, self.splits)
        if split not in self._cache:
            folders = [self.root / f for f in self.required_folders()]
            self._cache[split] = cached_records(self, split, folders, lambda: self.list_split(split),
                                                folders=sorted(self.folders.items()), cameras=self.cameras)
        return self._cache[split]

    def list_split(self, split: str) -> list[Record]:
        return self.list_folder(self.root / self.folders[split], split)

    def list_folder(self, folder: Path, split: str) -> list[Record]:
        out = []
        for file_name in image_names(folder):
            path = os.path.join(folder, file_name)
            parsed = self.parse(path)
            if parsed is not None:
                pid, camid = parsed
                out.append(Record(path=path, pid=pid, camid=camid, category=self.category,
                                  domain=self.name, split=split))
        return out

    def parse(self, path: str) -> tuple[int, int] | None:
        """(pid, 0-based camid) from the file name; pid -1 (junk, the convention of
        Market-1501 and its followers) is left out as torchreid and fast-reid do."""
        pid, camid = self.identity_and_camera(self.pattern.parse(type(self).__name__, path))
        if pid == -1:
            return None
        self.check_camera(camid, path)
        return pid, camid

    def check_camera(self, camid: int, path: str) -> None:
        """A ValueError naming `path` and the valid cameras unless 0 <= camid < cameras:
        `c0` would become camid -1 and `c7` on Market-1501 a camera it does not have, and
        either changes what the evaluation's same-camera exclusion drops (torchreid and
        fast-reid assert the range, e.g. `1 <= camid <= 6`)."""
        if self.cameras is not None and not 0 <= camid < self.cameras:
            name = type(self).__name__
            raise ValueError(f"{name}: {path} names camera {camid + 1}, but {name} has cameras c1-c{self.cameras} "
                             f"(expected {self.pattern.text}); rename or remove it")

    @staticmethod
    def identity_and_camera(groups: Sequence[str]) -> tuple[int, int]:
        """(pid as written, 0-based camid) from the pattern's first two groups: the names
        count cameras from 1 (`c1` is camid 0)."""
        return int(groups[0]), int(groups[1]) - 1

    @classmethod
    def read_name(cls, path: str | Path) -> tuple[int, int] | None:
        """(pid, camid) of a file named after this layout's pattern, read as `parse` reads
        it but keeping pid -1; None for a name that does not follow the pattern. For
        files outside a dataset folder (the tools' image folders)."""
        match = cls.pattern.regex.match(os.path.basename(str(path)))
        return None if match is None else cls.identity_and_camera(match.groups())


class ClothesSplitFolderDataset(SplitFolderDataset):
    """A split-folder layout whose file names carry the pid, the camera (1-based) and a
    clothes id, in the order `fields` names the pattern's groups (LTCC, VC-Clothes):
    records get extras "clothes_id" for the clothes-changing protocol."""

    fields: ClassVar[tuple[str, str, str]] = ("pid", "clothes", "camera")

    def list_folder(self, folder, split: str) -> list[Record]:
        out = []
        for file_name in image_names(folder):
            path = os.path.join(folder, file_name)
            values = dict(zip(self.fields, self.pattern.parse(type(self).__name__, path)))
            self.check_camera(int(values["camera"]) - 1, path)
            out.append(Record(path=path, pid=int(values["pid"]), camid=int(values["camera"]) - 1,
                              category=self.category, domain=self.name, split=split,
                              extras={"clothes_id": int(values["clothes"])}))
        return out

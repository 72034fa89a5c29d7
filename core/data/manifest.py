"""A generic dataset: one manifest file lists every image (DESIGN.md "Data").

The manifest is CSV with a header row, or JSON lines (one object per line). Fields:
`path`, `pid`, `camid` (required); `category`, `domain`, `split` (optional, defaulting
to "object", the manifest's file stem, and "train"); any other field goes to
`Record.extras`. The whole file is parsed at construction, so a bad line fails before
training starts, with the file, the line and the field named.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from core.interfaces import Dataset
from core.records import Record

REQUIRED = ("path", "pid", "camid")
OPTIONAL = ("category", "domain", "split")
SPLITS = ("train", "query", "gallery")
_JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")


class ManifestDataset(Dataset):
    """Records listed in a CSV or JSON-lines manifest; image paths are relative to
    `root` (default: the manifest's directory) unless absolute."""

    def __init__(self, path: str, root: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"manifest file not found: {self.path}")
        self.root = Path(root) if root is not None else self.path.parent
        self._records = [self._record(line, row) for line, row in self._rows()]

    def records(self, split: str) -> list[Record]:
        if split not in SPLITS:
            raise ValueError(f"ManifestDataset: unknown split '{split}'; valid splits: {', '.join(SPLITS)}")
        return [r for r in self._records if r.split == split]

    def _rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(line number, row) pairs; line numbers count from 1 as editors do."""
        if self._is_jsonl():
            yield from self._jsonl_rows()
        else:
            yield from self._csv_rows()

    def _is_jsonl(self) -> bool:
        if self.path.suffix.lower() in _JSON_SUFFIXES:
            return True
        if self.path.suffix.lower() == ".csv":
            return False
        with self.path.open(encoding="utf-8") as f:  # unknown suffix: sniff the first character
            return f.read(4096).lstrip().startswith("{")

    def _csv_rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        with self.path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [k for k in REQUIRED if k not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{self.path}:1: the header lacks the column(s) {', '.join(missing)}; "
                                 f"required columns: {', '.join(REQUIRED)}")
            for row in reader:
                if None in row:
                    raise ValueError(f"{self.path}:{reader.line_num}: more values than header columns")
                if any(v not in ("", None) for v in row.values()):
                    yield reader.line_num, {k: v for k, v in row.items() if v not in ("", None)}

    def _jsonl_rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        with self.path.open(encoding="utf-8") as f:
            for number, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{self.path}:{number}: not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{self.path}:{number}: expected a JSON object, got {type(row).__name__}")
                yield number, row

    def _record(self, line: int, row: dict[str, Any]) -> Record:
        where = f"{self.path}:{line}"
        for key in REQUIRED:
            if row.get(key) in (None, ""):
                raise ValueError(f"{where}: missing field '{key}'; required fields: {', '.join(REQUIRED)}")
        split = str(row.get("split", "train"))
        if split not in SPLITS:
            raise ValueError(f"{where}: field 'split' has unknown value '{split}'; valid values: {', '.join(SPLITS)}")
        image = Path(str(row["path"]))
        extras = {k: _scalar(v) for k, v in row.items() if k not in REQUIRED + OPTIONAL}
        if extras.get("part_boxes") not in (None, ""):
            extras["part_boxes"] = _part_boxes(extras["part_boxes"], where)
        return Record(
            path=str(image if image.is_absolute() else self.root / image),
            pid=_integer(row["pid"], "pid", where),
            camid=_integer(row["camid"], "camid", where),
            category=str(row.get("category", "object")),
            domain=str(row.get("domain", self.path.stem)),
            split=split,
            extras=extras,
        )


def _scalar(value: Any) -> Any:
    """CSV cells are strings: give numeric extras (clothes ids, modality) back their type
    so they collate into tensors as they do from JSON lines."""
    if not isinstance(value, str):
        return value
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _part_boxes(value: Any, where: str) -> np.ndarray:
    """'part_boxes': 4 numbers per part [x0 y0 x1 y1] as fractions of the image, space
    separated in CSV (as `core data synth` writes them) or a list in JSON lines."""
    try:
        flat = np.asarray(value.split() if isinstance(value, str) else value, dtype=np.float32).ravel()
    except ValueError:
        flat = np.zeros(0, dtype=np.float32)
    if flat.size == 0 or flat.size % 4:
        raise ValueError(f"{where}: field 'part_boxes' must hold 4 numbers per part (x0 y0 x1 y1, fractions "
                         f"of the image); got {value!r}")
    return flat.reshape(-1, 4)


def _integer(value: Any, key: str, where: str) -> int:
    """An int from a JSON number or a CSV string; 3.0 is accepted, 3.5 and 'a' are not."""
    if isinstance(value, bool):
        raise ValueError(f"{where}: field '{key}' must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"{where}: field '{key}' must be an integer, got {value!r}")

"""A columnar record table: every field of every image as one array (DESIGN.md "Data").

A list of `Record` dataclasses costs ~1 KB of Python objects per image (1.1 GB at 1M
images) and fork's copy-on-write copies those objects page by page into every loader
worker as soon as their reference counts are touched. `RecordColumns` keeps the same
information as flat arrays -- identities and cameras as int64, paths as one UTF-8 buffer
plus int64 offsets (Arrow's large_string layout), category/domain/split as int32 codes
into a short list of names, every extra field as a typed column with a validity mask --
so a table of 5M images is a handful of buffers that workers share without copying, and
that an Arrow IPC cache file can memory-map back (core.data.cache).

It is a `Sequence[Record]`: `columns[i]` builds the same `Record` a reader would have
returned (built on access, so editing it changes nothing), so code written for lists
keeps working. Readers that still return lists are converted by `from_records`.

Extra-column kinds: int, float, bool, str; "cell" (a CSV cell kept as text and given
its type per cell on access, exactly as `core.data.manifest` always did for columns
that mix numbers and words); "array" (a float array per row, e.g. part_boxes (k, 4),
stored as one flat buffer + row offsets); "dense" (an array of one shape per row, e.g.
attached part masks); "json" (nested JSON values, stored as their text); "object" (any
other Python value: only in memory, never cached).
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np

from core.records import Record

#: The fields of `Record` kept as their own columns; everything else is an extra.
BASE_FIELDS = ("path", "pid", "camid", "category", "domain", "split")
CATEGORICAL = ("category", "domain", "split")
#: Extra kinds an Arrow IPC cache file can hold (others stay in memory).
CACHEABLE_KINDS = frozenset({"int", "float", "bool", "str", "cell", "array", "json"})


def cell_value(value: str) -> Any:
    """A CSV cell given its type: int, else float, else the text (the manifest's rule, so
    numeric extras collate into tensors as they do from JSON lines)."""
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


class StringColumn(Sequence):
    """Strings as one UTF-8 byte buffer and n+1 int64 offsets: no Python object per row."""

    __slots__ = ("offsets", "data")

    def __init__(self, offsets: np.ndarray, data: np.ndarray) -> None:
        self.offsets = offsets
        self.data = data

    @classmethod
    def from_list(cls, values: Iterable[str]) -> "StringColumn":
        encoded = [v.encode("utf-8") for v in values]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
        return cls(offsets, np.frombuffer(b"".join(encoded), dtype=np.uint8))

    @classmethod
    def from_arrow(cls, array: Any) -> "StringColumn":
        """Zero-copy from an Arrow (large_)string array (nulls read as "")."""
        import pyarrow as pa

        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
        if not pa.types.is_large_string(array.type):
            array = array.cast(pa.large_string())
        n = len(array)
        buffers = array.buffers()
        offsets = np.frombuffer(buffers[1], dtype=np.int64, count=array.offset + n + 1)[array.offset:]
        data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
        return cls(offsets, data)

    def to_arrow(self) -> Any:
        import pyarrow as pa

        return pa.LargeStringArray.from_buffers(len(self), pa.py_buffer(np.ascontiguousarray(self.offsets)),
                                                pa.py_buffer(self.data))

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return self.take(np.arange(len(self))[i])
        o = self.offsets
        return self.data[o[i]:o[i + 1]].tobytes().decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_list())

    def to_list(self) -> list[str]:
        return self.to_arrow().to_pylist()

    def take(self, rows: np.ndarray) -> "StringColumn":
        import pyarrow as pa

        return StringColumn.from_arrow(self.to_arrow().take(pa.array(np.asarray(rows, dtype=np.int64))))

    @property
    def nbytes(self) -> int:
        """Bytes of these rows (offsets and their characters; a slice shares its buffer)."""
        return int(self.offsets.nbytes + (self.offsets[-1] - self.offsets[0] if len(self.offsets) else 0))

    @staticmethod
    def concat(columns: Sequence["StringColumn"]) -> "StringColumn":
        import pyarrow as pa

        if len(columns) == 1:
            return columns[0]
        return StringColumn.from_arrow(pa.concat_arrays([c.to_arrow() for c in columns]))


@dataclass
class Categorical:
    """Low-cardinality strings (category, domain, split) as int32 codes into `names`."""

    codes: np.ndarray
    names: list[str]

    @classmethod
    def from_list(cls, values: Iterable[str]) -> "Categorical":
        index: dict[str, int] = {}
        codes = np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int32)
        return cls(codes, list(index))

    @classmethod
    def constant(cls, value: str, n: int) -> "Categorical":
        return cls(np.zeros(n, dtype=np.int32), [value])

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def take(self, rows: np.ndarray) -> "Categorical":
        return Categorical(self.codes[rows], list(self.names))

    def mask(self, value: str) -> np.ndarray:
        return self.codes == self.names.index(value) if value in self.names else np.zeros(len(self), bool)

    @staticmethod
    def concat(parts: Sequence["Categorical"]) -> "Categorical":
        names: list[str] = []
        index: dict[str, int] = {}
        out = []
        for part in parts:
            remap = np.asarray([index.setdefault(n, len(index)) for n in part.names] or [0], dtype=np.int32)
            out.append(remap[part.codes])
        names = list(index)
        return Categorical(np.concatenate(out) if out else np.zeros(0, np.int32), names)


@dataclass
class ExtraColumn:
    """One extra field: `values` by `kind` (module docstring) and `valid` (None: every
    row has it). "array" rows are values[offsets[i]:offsets[i+1]]; "str"/"cell"/"json"
    values are a StringColumn."""

    kind: str
    values: Any
    valid: np.ndarray | None = None
    offsets: np.ndarray | None = None

    def __len__(self) -> int:
        if self.kind == "array":
            return int(self.offsets.shape[0]) - 1
        return len(self.values)

    def has(self, i: int) -> bool:
        return self.valid is None or bool(self.valid[i])

    def get(self, i: int) -> Any:
        kind = self.kind
        if kind in ("int", "float", "bool"):
            return self.values[i].item()
        if kind == "str":
            return self.values[i]
        if kind == "cell":
            return cell_value(self.values[i])
        if kind == "json":
            return json.loads(self.values[i])
        if kind == "array":
            return np.array(self.values[self.offsets[i]:self.offsets[i + 1]])
        if kind == "dense":
            value = self.values[i]
            return value.copy() if isinstance(value, np.ndarray) else value
        return self.values[i]  # object

    def take(self, rows: np.ndarray) -> "ExtraColumn":
        valid = None if self.valid is None else self.valid[rows]
        if self.kind == "array":
            starts, stops = self.offsets[rows], self.offsets[rows + 1]
            lengths = stops - starts
            offsets = np.zeros(len(rows) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
            return ExtraColumn("array", self.values[gather], valid, offsets)
        if isinstance(self.values, StringColumn):
            return ExtraColumn(self.kind, self.values.take(rows), valid)
        return ExtraColumn(self.kind, self.values[rows], valid)

    @property
    def nbytes(self) -> int:
        size = self.values.nbytes if hasattr(self.values, "nbytes") else 0
        return int(size + (0 if self.valid is None else self.valid.nbytes)
                   + (0 if self.offsets is None else self.offsets.nbytes))


def _kind_of(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, numbers.Integral):
        return "int"
    if isinstance(value, numbers.Real):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, np.ndarray) and value.dtype == np.float32 and value.ndim >= 1:
        return "array"
    return "object"


def extra_from_values(values: Sequence[Any], valid: np.ndarray | None) -> ExtraColumn:
    """The narrowest column kind that gives every present value back unchanged."""
    present = [v for v, ok in zip(values, valid if valid is not None else [True] * len(values)) if ok]
    kinds = {_kind_of(v) for v in present}
    kind = kinds.pop() if len(kinds) == 1 else "object"
    if kind == "array" and len({v.shape[1:] for v in present}) != 1:
        kind = "object"
    if kind in ("int", "float", "bool"):
        dtype = {"int": np.int64, "float": np.float64, "bool": np.bool_}[kind]
        fill = {"int": 0, "float": 0.0, "bool": False}[kind]
        return ExtraColumn(kind, np.asarray([v if ok else fill for v, ok in _pairs(values, valid)], dtype=dtype),
                           valid)
    if kind == "str":
        return ExtraColumn("str", StringColumn.from_list(v if ok else "" for v, ok in _pairs(values, valid)), valid)
    if kind == "array":
        tail = present[0].shape[1:]
        rows = [v if ok else np.zeros((0,) + tail, np.float32) for v, ok in _pairs(values, valid)]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([r.shape[0] for r in rows], out=offsets[1:])
        flat = np.concatenate(rows) if rows else np.zeros((0,) + tail, np.float32)
        return ExtraColumn("array", flat, valid, offsets)
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return ExtraColumn("object", out, valid)


def _pairs(values: Sequence[Any], valid: np.ndarray | None) -> Iterator[tuple[Any, bool]]:
    return zip(values, valid.tolist() if valid is not None else [True] * len(values))


class RecordColumns(Sequence):
    """Records as columns; a `Sequence[Record]` whose items are built on access.

    `path_valid` marks rows with a path (None: all; rendered images have none).
    """

    def __init__(self, path: StringColumn, pid: np.ndarray, camid: np.ndarray, category: Categorical,
                 domain: Categorical, split: Categorical, extras: dict[str, ExtraColumn] | None = None,
                 path_valid: np.ndarray | None = None) -> None:
        n = len(path)
        for name, col in (("pid", pid), ("camid", camid), ("category", category), ("domain", domain),
                          ("split", split), *((f"extra '{k}'", v) for k, v in (extras or {}).items())):
            if len(col) != n:
                raise ValueError(f"RecordColumns: column {name} has {len(col)} rows, path has {n}")
        self.path, self.path_valid = path, path_valid
        self.pid = np.asarray(pid, dtype=np.int64)
        self.camid = np.asarray(camid, dtype=np.int64)
        self.category, self.domain, self.split = category, domain, split
        self.extras: dict[str, ExtraColumn] = dict(extras or {})

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_records(cls, records: Iterable[Record]) -> "RecordColumns":
        """Columns from Record objects (readers that return lists)."""
        if isinstance(records, RecordColumns):
            return records
        records = list(records)
        n = len(records)
        path_valid = np.fromiter((r.path is not None for r in records), dtype=bool, count=n)
        keys: list[str] = []
        for r in records:
            keys.extend(k for k in r.extras if k not in keys)
        extras = {}
        for k in keys:
            valid = np.fromiter((k in r.extras for r in records), dtype=bool, count=n)
            extras[k] = extra_from_values([r.extras.get(k) for r in records], None if valid.all() else valid)
        return cls(
            path=StringColumn.from_list("" if r.path is None else str(r.path) for r in records),
            pid=np.fromiter((int(r.pid) for r in records), dtype=np.int64, count=n),
            camid=np.fromiter((int(r.camid) for r in records), dtype=np.int64, count=n),
            category=Categorical.from_list(r.category for r in records),
            domain=Categorical.from_list(r.domain for r in records),
            split=Categorical.from_list(r.split for r in records),
            extras=extras, path_valid=None if path_valid.all() else path_valid)

    @classmethod
    def empty(cls) -> "RecordColumns":
        return cls.from_records([])

    @staticmethod
    def concat(parts: Sequence["RecordColumns"]) -> "RecordColumns":
        """Rows of `parts` one after the other; an extra missing from a part is absent
        (invalid) on its rows."""
        parts = list(parts)
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return RecordColumns.empty()
        sizes = [len(p) for p in parts]
        extras: dict[str, ExtraColumn] = {}
        for key in dict.fromkeys(k for p in parts for k in p.extras):
            cols = [p.extras.get(key) for p in parts]
            kinds = {c.kind for c in cols if c is not None}
            if len(kinds) == 1 and kinds <= {"int", "float", "bool"}:
                kind = kinds.pop()
                dtype = cols[[c is not None for c in cols].index(True)].values.dtype
                values = np.concatenate([c.values if c is not None else np.zeros(n, dtype) for c, n in zip(cols, sizes)])
                extras[key] = ExtraColumn(kind, values, _concat_valid(cols, sizes))
            elif len(kinds) == 1 and kinds <= {"str", "cell", "json"}:
                values = StringColumn.concat([c.values if c is not None else StringColumn.from_list([""] * n)
                                              for c, n in zip(cols, sizes)])
                extras[key] = ExtraColumn(kinds.pop(), values, _concat_valid(cols, sizes))
            else:  # mixed kinds: through Python values (rare: readers that disagree)
                values = [c.get(i) if c is not None and c.has(i) else None
                          for c, n in zip(cols, sizes) for i in range(n)]
                valid = _concat_valid(cols, sizes)
                extras[key] = extra_from_values(values, valid)
        path_valid = None
        if any(p.path_valid is not None for p in parts):
            path_valid = np.concatenate([p.path_valid if p.path_valid is not None else np.ones(len(p), bool)
                                         for p in parts])
        return RecordColumns(
            path=StringColumn.concat([p.path for p in parts]),
            pid=np.concatenate([p.pid for p in parts]), camid=np.concatenate([p.camid for p in parts]),
            category=Categorical.concat([p.category for p in parts]),
            domain=Categorical.concat([p.domain for p in parts]),
            split=Categorical.concat([p.split for p in parts]),
            extras=extras, path_valid=path_valid)

    # -- the Sequence[Record] view -----------------------------------------------------
    def __len__(self) -> int:
        return int(self.pid.shape[0])

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return self.take(np.arange(len(self))[i])
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record index {i} out of range for {n} records")
        path = None if self.path_valid is not None and not self.path_valid[i] else self.path[i]
        return Record(path=path, pid=int(self.pid[i]), camid=int(self.camid[i]),
                      category=self.category.names[self.category.codes[i]],
                      domain=self.domain.names[self.domain.codes[i]],
                      split=self.split.names[self.split.codes[i]],
                      extras={k: c.get(i) for k, c in self.extras.items() if c.has(i)})

    def __iter__(self) -> Iterator[Record]:
        for i in range(len(self)):
            yield self[i]

    def __add__(self, other: object) -> "RecordColumns":
        """`a + b` as for the lists readers returned: the rows of both, as columns."""
        if isinstance(other, (RecordColumns, list, tuple)):
            return RecordColumns.concat([self, as_columns(list(other) if isinstance(other, tuple) else other)])
        return NotImplemented

    def __radd__(self, other: object) -> "RecordColumns":
        if isinstance(other, (list, tuple)):
            return RecordColumns.concat([as_columns(list(other)), self])
        return NotImplemented

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (RecordColumns, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __repr__(self) -> str:
        return f"RecordColumns({len(self)} records, extras: {', '.join(self.extras) or 'none'})"

    # -- columns -----------------------------------------------------------------------
    def column(self, name: str) -> Any:
        """A field as an array: pid/camid int64; category/domain/split as a numpy array
        of names (use `codes(name)` to stay object-free); path a StringColumn; an extra
        its `ExtraColumn`."""
        if name in ("pid", "camid"):
            return getattr(self, name)
        if name == "path":
            return self.path
        if name in CATEGORICAL:
            cat = getattr(self, name)
            return np.asarray(cat.names, dtype=object)[cat.codes] if len(cat.names) else np.zeros(0, object)
        if name in self.extras:
            return self.extras[name]
        raise KeyError(f"no column '{name}'; columns: {', '.join(BASE_FIELDS + tuple(self.extras))}")

    def codes(self, name: str) -> tuple[np.ndarray, list[str]]:
        cat = getattr(self, name)
        return cat.codes, cat.names

    def take(self, rows: Any) -> "RecordColumns":
        """The rows `rows` (indices or a bool mask), as a new table."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64, copy=False)
        return RecordColumns(
            path=self.path.take(rows), pid=self.pid[rows], camid=self.camid[rows],
            category=self.category.take(rows), domain=self.domain.take(rows), split=self.split.take(rows),
            extras={k: c.take(rows) for k, c in self.extras.items()},
            path_valid=None if self.path_valid is None else self.path_valid[rows])

    def select_split(self, split: str) -> "RecordColumns":
        """The rows of `split`: a zero-copy slice when they are contiguous (manifests are
        stored grouped by split, see `grouped_by_split`), else a copy."""
        rows = np.flatnonzero(self.split.mask(split))
        if rows.size and rows[-1] - rows[0] + 1 == rows.size:
            return self.slice(int(rows[0]), int(rows[-1]) + 1)
        return self.take(rows)

    def grouped_by_split(self, order: Sequence[str] = ("train", "query", "gallery")) -> "RecordColumns":
        """The same records, stably sorted by split (`order` first, others after), so that
        each split is one contiguous slice; the order within a split is kept."""
        rank = np.asarray([order.index(n) if n in order else len(order) for n in self.split.names] or [0])
        key = rank[self.split.codes]
        if np.all(key[:-1] <= key[1:]):
            return self
        return self.take(np.argsort(key, kind="stable"))

    def slice(self, start: int, stop: int) -> "RecordColumns":
        """Rows start..stop-1 as views of these columns (no copy)."""
        def cut(col: ExtraColumn) -> ExtraColumn:
            valid = None if col.valid is None else col.valid[start:stop]
            if col.kind == "array":
                return ExtraColumn("array", col.values, valid, col.offsets[start:stop + 1])
            if isinstance(col.values, StringColumn):
                return ExtraColumn(col.kind, StringColumn(col.values.offsets[start:stop + 1], col.values.data), valid)
            return ExtraColumn(col.kind, col.values[start:stop], valid)

        return RecordColumns(
            path=StringColumn(self.path.offsets[start:stop + 1], self.path.data),
            pid=self.pid[start:stop], camid=self.camid[start:stop],
            category=Categorical(self.category.codes[start:stop], self.category.names),
            domain=Categorical(self.domain.codes[start:stop], self.domain.names),
            split=Categorical(self.split.codes[start:stop], self.split.names),
            extras={k: cut(c) for k, c in self.extras.items()},
            path_valid=None if self.path_valid is None else self.path_valid[start:stop])

    def set_extra(self, name: str, rows: np.ndarray, values: np.ndarray) -> None:
        """Give rows `rows` the extra `name` (values[j] for rows[j]): how annotation files
        attach fields (core.data.annotations.attach) without a Python object per row."""
        values = np.asarray(values)
        rows = np.asarray(rows, dtype=np.int64)
        old = self.extras.get(name)
        n = len(self)
        if old is not None and old.kind == "dense" and old.values.shape[1:] == values.shape[1:] \
                and old.values.dtype == values.dtype:
            dense, valid = old.values, (old.valid if old.valid is not None else np.ones(n, bool))
        else:
            if old is not None and old.valid is not None and not np.isin(np.flatnonzero(old.valid), rows).all():
                raise ValueError(f"set_extra: '{name}' already holds values of another shape or kind")
            dense, valid = np.zeros((n,) + values.shape[1:], dtype=values.dtype), np.zeros(n, bool)
        dense[rows] = values
        valid[rows] = True
        self.extras[name] = ExtraColumn("dense", dense, None if valid.all() else valid)

    @property
    def nbytes(self) -> int:
        """Bytes held by the columns (the table's memory, without Python overhead)."""
        total = self.path.nbytes + self.pid.nbytes + self.camid.nbytes
        total += sum(getattr(self, k).codes.nbytes for k in CATEGORICAL)
        total += sum(c.nbytes for c in self.extras.values())
        return int(total + (0 if self.path_valid is None else self.path_valid.nbytes))

    @property
    def cacheable(self) -> bool:
        return all(c.kind in CACHEABLE_KINDS for c in self.extras.values())


def _concat_valid(cols: Sequence[ExtraColumn | None], sizes: Sequence[int]) -> np.ndarray | None:
    if all(c is not None and c.valid is None for c in cols):
        return None
    return np.concatenate([np.zeros(n, bool) if c is None else (np.ones(n, bool) if c.valid is None else c.valid)
                           for c, n in zip(cols, sizes)])


def as_columns(records: Sequence[Record]) -> RecordColumns:
    """`records` as columns (itself when it already is)."""
    return records if isinstance(records, RecordColumns) else RecordColumns.from_records(records)

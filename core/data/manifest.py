"""A generic dataset: one manifest file lists every image (DESIGN.md "Data").

The manifest is CSV with a header row, Parquet, or JSON lines (one object per line).
Fields: `path`, `pid`, `camid` (required); `category`, `domain`, `split` (optional,
defaulting to "object", the manifest's file stem, and "train"); any other field is an
extra (`Record.extras`). The whole file is parsed at construction, so a bad line fails
before training starts, with the file, the line (CSV, JSON lines) or row (Parquet) and
the field named.

CSV and Parquet are parsed by pyarrow, multi-threaded and straight into columns
(core.data.columns: no Python object per image; 5M rows in seconds). pyarrow rather
than polars: its Arrow buffers are the table's storage as they are (zero-copy into
numpy), and the same library writes and memory-maps the cache (core.data.cache), so
the second load of an unchanged manifest maps the parsed table back in well under a
second. When the fast path finds anything it does not accept (a missing field, a
non-integer pid, an unknown split, a ragged row), the file is read again row by row
with the csv module, which raises the error naming the first bad line -- the same
messages as always. JSON lines are read row by row with the json module (their values
keep their JSON types) and then stored as columns.
"""

from __future__ import annotations

import csv
import errno
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from core.data.cache import cached
from core.data.columns import Categorical, ExtraColumn, RecordColumns, StringColumn, cell_value
from core.data.paths import looked_at
from core.interfaces import Dataset
from core.records import Record

REQUIRED = ("path", "pid", "camid")
OPTIONAL = ("category", "domain", "split")
SPLITS = ("train", "query", "gallery")
_JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
_PARQUET_SUFFIXES = (".parquet", ".pq")
#: Bumped when parsing changes, so older cache entries are not reused.
PARSER_VERSION = 2


class _RowCheck(Exception):
    """The fast path met something it does not accept: read again row by row."""


class ManifestDataset(Dataset):
    """Records listed in a CSV, Parquet or JSON-lines manifest; image paths are relative
    to `root` (default: the manifest's directory) unless absolute. `records(split)` is a
    `RecordColumns` (a Sequence of `Record`)."""

    def __init__(self, path: str, root: str | None = None) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a folder", str(self.path))  # told by core.data.paths.unreadable
        if not self.path.is_file():
            raise FileNotFoundError(f"manifest file not found: {self.path}{looked_at(self.path)}")
        self.root = Path(root) if root is not None else self.path.parent
        self.columns = cached("manifest", [self.path], {"root": str(self.root.absolute()),
                                                         "version": PARSER_VERSION}, self._parse)
        self._splits: dict[str, RecordColumns] = {}

    def identity_namespace(self) -> tuple:
        """One manifest's `pid` column is one namespace for all its splits."""
        return ("manifest", str(self.path.resolve()))

    def records(self, split: str) -> RecordColumns:
        if split not in SPLITS:
            raise ValueError(f"ManifestDataset: unknown split '{split}'; valid splits: {', '.join(SPLITS)}")
        if split not in self._splits:
            self._splits[split] = self.columns.select_split(split)
        return self._splits[split]

    # -- parsing -------------------------------------------------------------------------
    def format(self) -> str:
        suffix = self.path.suffix.lower()
        if suffix in _JSON_SUFFIXES:
            return "jsonl"
        if suffix in _PARQUET_SUFFIXES:
            return "parquet"
        if suffix == ".csv":
            return "csv"
        with self.path.open("rb") as f:  # unknown suffix: sniff
            head = f.read(4096)
        if head.startswith(b"PAR1"):
            return "parquet"
        return "jsonl" if head.decode("utf-8", "replace").lstrip().startswith("{") else "csv"

    def _parse(self) -> RecordColumns:
        fmt = self.format()
        columns = None
        if fmt != "jsonl":
            try:
                columns = self._from_arrow(self._read_arrow(fmt))
            except _RowCheck:
                pass
        # grouped by split: each split's records are then a zero-copy slice of the table
        columns = (columns if columns is not None else self.parse_rows()).grouped_by_split(SPLITS)
        _release_arrow_memory()
        return columns

    def parse_rows(self) -> RecordColumns:
        """The row-by-row reader (JSON lines; and CSV/Parquet when the fast path refuses):
        raises the error naming the first bad line, else returns the records as columns."""
        return RecordColumns.from_records([self._record(line, row) for line, row in self._rows()])

    def _read_arrow(self, fmt: str) -> Any:
        import pyarrow as pa

        try:
            if fmt == "parquet":
                import pyarrow.parquet as pq

                return pq.read_table(self.path, use_threads=True)
            import pyarrow.csv as pcsv

            with self.path.open(newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), [])
            if not header or len(set(header)) != len(header):
                raise _RowCheck
            return pcsv.read_csv(
                self.path,
                read_options=pcsv.ReadOptions(use_threads=True, block_size=16 << 20),
                convert_options=pcsv.ConvertOptions(
                    column_types={name: pa.large_string() for name in header},
                    strings_can_be_null=False, quoted_strings_can_be_null=False))
        except (pa.ArrowInvalid, UnicodeDecodeError, ValueError) as exc:
            raise _RowCheck from exc

    def _from_arrow(self, table: Any) -> RecordColumns:
        """Columns from an Arrow table, checked as a whole; any doubt -> _RowCheck."""
        import pyarrow as pa
        import pyarrow.compute as pc

        names = table.column_names
        if any(k not in names for k in REQUIRED):
            raise _RowCheck
        cols = {k: table.column(k).combine_chunks() for k in names}
        present = {k: _present(v) for k, v in cols.items()}
        keep = np.zeros(table.num_rows, dtype=bool)
        for mask in present.values():
            keep |= mask
        if not keep.all():  # rows with every cell empty are skipped, as the csv reader does
            rows = pa.array(np.flatnonzero(keep))
            cols = {k: v.take(rows) for k, v in cols.items()}
            present = {k: m[keep] for k, m in present.items()}
        n = int(keep.sum())
        if not all(present[k].all() for k in REQUIRED):
            raise _RowCheck
        pid, camid = _integers(cols["pid"]), _integers(cols["camid"])

        def categorical(key: str, default: str) -> Categorical:
            if key not in cols or not present[key].any():
                return Categorical.constant(default, n)
            values = cols[key]
            if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
                values = pc.cast(values, pa.large_string())
            values = pc.if_else(pa.array(present[key]), values, pa.scalar(default, values.type))
            encoded = values.dictionary_encode()
            return Categorical(encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32),
                               encoded.dictionary.to_pylist())

        split = categorical("split", "train")
        if any(s not in SPLITS for s in split.names):
            raise _RowCheck
        extras = {}
        for key in names:
            if key in REQUIRED + OPTIONAL or not present[key].any():
                continue
            valid = None if present[key].all() else present[key]
            extras[key] = (_part_boxes_column(cols[key], valid) if key == "part_boxes"
                           else _extra_column(cols[key], valid))
        return RecordColumns(path=self._paths(cols["path"]), pid=pid, camid=camid,
                             category=categorical("category", "object"),
                             domain=categorical("domain", self.path.stem), split=split, extras=extras)

    def _paths(self, values: Any) -> StringColumn:
        """root / path for relative paths, as str(Path(...)) writes them; rows that
        pathlib would normalise (//, /./, a trailing /) go through pathlib itself."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if not pa.types.is_large_string(values.type):
            values = pc.cast(values, pa.large_string())
        root = str(self.root)
        prefix = "" if root == "." else (root if root.endswith("/") else root + "/")
        absolute = pc.starts_with(values, "/")
        joined = pc.if_else(absolute, values, pc.binary_join_element_wise(pa.scalar(prefix, pa.large_string()), values, pa.scalar("", pa.large_string())))
        odd = np.flatnonzero(pc.match_substring_regex(joined, r"//|/\./|^\./|/\.$|/$|^\.$")
                             .to_numpy(zero_copy_only=False))
        if odd.size:
            fixed = joined.to_pylist()
            raw = values.to_pylist()
            for i in odd.tolist():
                image = Path(raw[i])
                fixed[i] = str(image if image.is_absolute() else self.root / image)
            joined = pa.array(fixed, type=pa.large_string())
        return StringColumn.from_arrow(joined)

    # -- the row-by-row reader (errors name the line) ------------------------------------
    def _rows(self) -> Iterator[tuple[int | str, dict[str, Any]]]:
        """(line number, row) pairs; line numbers count from 1 as editors do
        (Parquet: "row N", counting data rows from 1)."""
        fmt = self.format()
        if fmt == "jsonl":
            yield from self._jsonl_rows()
        elif fmt == "parquet":
            yield from self._parquet_rows()
        else:
            yield from self._csv_rows()

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

    def _parquet_rows(self) -> Iterator[tuple[str, dict[str, Any]]]:
        import pyarrow.parquet as pq

        table = pq.read_table(self.path)
        missing = [k for k in REQUIRED if k not in table.column_names]
        if missing:
            raise ValueError(f"{self.path}: the schema lacks the column(s) {', '.join(missing)}; "
                             f"required columns: {', '.join(REQUIRED)}")
        for number, row in enumerate(table.to_pylist(), start=1):
            row = {k: v for k, v in row.items() if v not in ("", None)}
            if row:
                yield f"row {number}", row

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

    def _record(self, line: int | str, row: dict[str, Any]) -> Record:
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


# -- column helpers ----------------------------------------------------------------------

def _release_arrow_memory() -> None:
    """Give the parser's freed buffers back to the OS (Arrow's allocator keeps them)."""
    try:
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    except (ImportError, AttributeError):
        pass


def _is_text(array: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_string(array.type) or pa.types.is_large_string(array.type)


def _present(array: Any) -> np.ndarray:
    """Cells that hold a value: not null, and not "" for text."""
    import pyarrow.compute as pc

    mask = array.is_valid()
    if _is_text(array):
        mask = pc.and_(mask, pc.not_equal(array, ""))
    return mask.fill_null(False).to_numpy(zero_copy_only=False)


def _integers(array: Any) -> np.ndarray:
    """int64 from integer cells or text that int() would read; anything else -> _RowCheck."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        if pa.types.is_integer(array.type):
            return array.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        if _is_text(array):
            return pc.cast(pc.utf8_trim_whitespace(array), pa.int64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    raise _RowCheck


def _extra_column(array: Any, valid: np.ndarray | None) -> ExtraColumn:
    """An extra field's column. Text (CSV) becomes int or float where every cell reads as
    one (the per-cell `_scalar` rule, checked for the whole column), else a "cell"
    column that applies that rule on access; typed Parquet columns keep their type;
    nested values (lists, structs) are kept as JSON text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    filled = valid if valid is not None else np.ones(len(array), bool)
    if _is_text(array):
        text = pc.if_else(pa.array(filled), array, pa.scalar("0", array.type))
        for dtype, kind in ((pa.int64(), "int"), (pa.float64(), "float")):
            try:
                values = pc.cast(text, dtype).to_numpy(zero_copy_only=False)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
            if kind == "float" and pc.any(pc.match_substring_regex(text, r"^[+-]?[0-9]+$")).as_py():
                break  # some cells are ints, others floats: per cell, as always
            if kind == "float" and not _python_floats(text):
                break
            return ExtraColumn(kind, values, valid)
        return ExtraColumn("cell", StringColumn.from_arrow(array), valid)
    if pa.types.is_boolean(array.type):
        return ExtraColumn("bool", array.fill_null(False).to_numpy(zero_copy_only=False), valid)
    if pa.types.is_integer(array.type):
        return ExtraColumn("int", array.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64), valid)
    if pa.types.is_floating(array.type):
        return ExtraColumn("float", array.fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64), valid)
    values = [json.dumps(v) if ok else "" for v, ok in zip(array.to_pylist(), filled.tolist())]
    return ExtraColumn("json", StringColumn.from_list(values), valid)


def _python_floats(text: Any) -> bool:
    """Arrow reads a few spellings Python's float() does not (and the reverse): check
    the distinct spellings that are not plain decimals."""
    import pyarrow.compute as pc

    odd = pc.unique(pc.filter(text, pc.invert(pc.match_substring_regex(
        text, r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")))).to_pylist()
    for value in odd[:1000]:
        try:
            float(value)
        except ValueError:
            return False
    return len(odd) <= 1000


def _part_boxes_column(array: Any, valid: np.ndarray | None) -> ExtraColumn:
    """part_boxes: 4 numbers per part, space separated (CSV) or a list (Parquet), stored
    as one float32 (total, 4) buffer and row offsets; anything else -> _RowCheck."""
    import pyarrow as pa
    import pyarrow.compute as pc

    filled = valid if valid is not None else np.ones(len(array), bool)
    try:
        if _is_text(array):
            lists = pc.utf8_split_whitespace(pc.if_else(pa.array(filled), array, pa.scalar("", array.type)))
        elif pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
            lists = array
            if pa.types.is_list(lists.type.value_type) or pa.types.is_large_list(lists.type.value_type):
                raise _RowCheck  # nested lists: the row reader flattens them
        else:
            raise _RowCheck
        lists = pc.cast(lists.fill_null([]) if lists.null_count else lists, pa.large_list(pa.float32()))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        raise _RowCheck from None
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    if ((lengths[filled] == 0) | (lengths[filled] % 4 != 0)).any():
        raise _RowCheck
    offsets = lists.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    values = lists.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]]
    if np.isnan(values).any() and lists.values.null_count:
        raise _RowCheck
    return ExtraColumn("array", np.ascontiguousarray(values, dtype=np.float32).reshape(-1, 4), valid,
                       (offsets - offsets[0]) // 4)


# -- the row reader's field rules ----------------------------------------------------------

def _scalar(value: Any) -> Any:
    """CSV cells are strings: give numeric extras (clothes ids, modality) back their type
    so they collate into tensors as they do from JSON lines."""
    if not isinstance(value, str):
        return value
    return cell_value(value)


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

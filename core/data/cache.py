"""A cache of parsed record tables, so that the second start of a large dataset is instant.

A parsed manifest or a scanned folder layout is written once as an Arrow IPC file and
memory-mapped on later loads: the columns are then pages of that file, shared by every
process that maps it (loader workers, the ranks of one machine) and read only where
touched. Entries are keyed by the (path, size, mtime) of their inputs -- the manifest
file, or the image folders whose listing changes their mtime -- and by what the reader
was asked for, so an edited manifest or an added image makes a new entry.

Where: `$REID_CORE_CACHE` (a directory; "off" disables the cache), else
`$XDG_CACHE_HOME/reid-core`, else `~/.cache/reid-core`; never next to the data, which
may be read-only. Tables under `$REID_CORE_CACHE_MIN_ROWS` rows (default 20000: a
scan that takes well under a second) are not cached. The files hold Arrow buffers and a
JSON description only -- nothing in them can run code (no pickle).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from core.data.columns import Categorical, ExtraColumn, RecordColumns, StringColumn

FORMAT = "reid-core-records/1"
DEFAULT_MIN_ROWS = 20000


def cache_dir() -> Path | None:
    """The cache directory (module docstring), or None when the cache is off."""
    env = os.environ.get("REID_CORE_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("off", "0", "none", "") else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "reid-core"


def min_rows() -> int:
    try:
        return int(os.environ.get("REID_CORE_CACHE_MIN_ROWS", DEFAULT_MIN_ROWS))
    except ValueError:
        return DEFAULT_MIN_ROWS


def input_stamp(paths: Sequence[str | Path]) -> list[list[Any]]:
    """(absolute path, size, mtime_ns) of each input: what invalidates a cache entry."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append([os.path.abspath(p), st.st_size, st.st_mtime_ns])
    return out


def cache_key(kind: str, inputs: Sequence[str | Path], params: dict[str, Any]) -> str:
    text = json.dumps({"format": FORMAT, "kind": kind, "inputs": input_stamp(inputs), "params": params},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cached(kind: str, inputs: Sequence[str | Path], params: dict[str, Any],
           build: Callable[[], RecordColumns]) -> RecordColumns:
    """`build()` through the cache: a memory-mapped earlier result for the same inputs
    (same path, size and mtime) and params, else build, store (if large enough) and return."""
    folder = cache_dir()
    if folder is None:
        return build()
    key = cache_key(kind, inputs, params)
    path = folder / f"{kind}-{key}.arrow"
    if path.is_file():
        try:
            return load_columns(path)
        except Exception:  # a truncated or foreign file: rebuild it
            pass
    columns = build()
    if len(columns) >= min_rows() and columns.cacheable:
        try:
            save_columns(columns, path)
        except OSError:  # a read-only home: the cache is an optimisation, never a failure
            pass
    return columns


# -- Arrow IPC -------------------------------------------------------------------------

def save_columns(columns: RecordColumns, path: str | Path) -> None:
    """Write `columns` as an Arrow IPC file (atomically: a temp file renamed)."""
    import pyarrow as pa

    arrays, names, meta = [columns.path.to_arrow(), pa.array(columns.pid), pa.array(columns.camid)], \
        ["path", "pid", "camid"], {"format": FORMAT, "extras": {}, "names": {}}
    if columns.path_valid is not None:
        arrays.append(pa.array(columns.path_valid.view(np.uint8)))
        names.append("path_valid")
    for field in ("category", "domain", "split"):
        cat: Categorical = getattr(columns, field)
        arrays.append(pa.array(cat.codes))
        names.append(field)
        meta["names"][field] = cat.names
    for key, col in columns.extras.items():
        if col.kind in ("str", "cell", "json"):
            arr = col.values.to_arrow()
        elif col.kind == "array":
            first, last = int(col.offsets[0]), int(col.offsets[-1])
            flat = np.ascontiguousarray(col.values[first:last]).reshape(-1)
            width = int(np.prod(col.values.shape[1:]))
            arr = pa.LargeListArray.from_arrays(pa.array((col.offsets - first) * width), pa.array(flat))
        elif col.kind in ("int", "float", "bool"):
            arr = pa.array(col.values.view(np.uint8) if col.kind == "bool" else col.values)
        else:
            raise ValueError(f"save_columns: extra '{key}' of kind {col.kind} cannot be cached")
        arrays.append(arr)
        names.append(f"x:{key}")
        meta["extras"][key] = {"kind": col.kind, "shape": list(col.values.shape[1:]) if col.kind == "array" else []}
        if col.valid is not None:
            arrays.append(pa.array(col.valid.view(np.uint8)))
            names.append(f"v:{key}")
    table = pa.Table.from_arrays(arrays, names=names).replace_schema_metadata({"reid-core": json.dumps(meta)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_columns(path: str | Path) -> RecordColumns:
    """Memory-map an Arrow IPC file written by `save_columns`: the columns are views of
    the file's pages (zero-copy), shared by every process that maps it."""
    import pyarrow as pa

    source = pa.memory_map(str(path), "r")
    table = pa.ipc.open_file(source).read_all()
    meta = json.loads(table.schema.metadata[b"reid-core"])
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT}")

    def numeric(name: str) -> np.ndarray:
        chunked = table.column(name)
        arr = chunked.chunk(0) if chunked.num_chunks == 1 else chunked.combine_chunks()
        return arr.to_numpy(zero_copy_only=True)

    def flag(name: str) -> np.ndarray | None:
        return numeric(name).view(bool) if name in table.column_names else None

    extras = {}
    for key, info in meta["extras"].items():
        kind, col = info["kind"], table.column(f"x:{key}")
        if kind in ("str", "cell", "json"):
            extras[key] = ExtraColumn(kind, StringColumn.from_arrow(col), flag(f"v:{key}"))
        elif kind == "array":
            arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
            shape = tuple(info["shape"])
            width = int(np.prod(shape))
            offsets = arr.offsets.to_numpy(zero_copy_only=True) // width
            values = arr.values.to_numpy(zero_copy_only=True).reshape((-1,) + shape)
            extras[key] = ExtraColumn("array", values, flag(f"v:{key}"), offsets)
        else:
            values = numeric(f"x:{key}")
            extras[key] = ExtraColumn(kind, values.view(bool) if kind == "bool" else values, flag(f"v:{key}"))
    return RecordColumns(
        path=StringColumn.from_arrow(table.column("path")), pid=numeric("pid"), camid=numeric("camid"),
        category=Categorical(numeric("category"), list(meta["names"]["category"])),
        domain=Categorical(numeric("domain"), list(meta["names"]["domain"])),
        split=Categorical(numeric("split"), list(meta["names"]["split"])),
        extras=extras, path_valid=flag("path_valid"))

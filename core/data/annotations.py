"""Annotation files: per-image fields a labeler wrote (part masks, boxes, ...) that
training reads back through the records' extras (DESIGN.md: plugins meet through a file
format and a Batch field, not through each other's code).

One `.npz` file (numpy, no pickle) holds:
  - `keys`: (N,) str, "<dataset name>:<record key>" (`Dataset.record_key`);
  - one array per field with N rows (e.g. `part_masks` (N, P, rows, cols) uint8 on the
    backbone's patch grid, `part_boxes` (N, P, 4) float fractions of the image);
  - `__meta__`: a JSON string: the format version, which fields are attached to records
    (`attach`), the labeler and plugin version, the `fingerprint` of what decided the
    content (labeler parameters, dataset specs, patch grid), a `report` (e.g. the
    fraction of boxes the calibration replaced per part), and free facts such as
    `part_names` and `grid`.
The spatial fields follow `core.data.spatial`'s contract once attached.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.data.columns import RecordColumns
from core.file_faults import FileReadFault, read_fault  # noqa: F401 - FileReadFault: callers catch it here
from core.records import Record

FORMAT = "reid-core-annotations/1"


def read_arrays(path: Path, what: str) -> dict[str, np.ndarray]:
    """Every array of the .npz file `path` (annotations, `core extract`'s features, labelling
    chunks), numbers and strings only: allow_pickle stays False, so an object array, which
    only unpickling could restore, is refused and a file from someone else runs no code.
    One that cannot be parsed (cut short, damaged, not a .npz, object arrays) is a ValueError
    line naming it as `what` and why. One the system fails to read (EIO, EACCES: an OSError
    with an errno) is a `FileReadFault` saying so and that the file was not judged corrupt:
    told "corrupt" for a transient disk fault, a researcher may delete and relabel hours of
    labels, and a caller that relabels unreadable files must not take it as such."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except OSError as exc:
        if exc.errno is None:  # numpy's own OSErrors are about the content
            raise ValueError(f"{path}: not a readable {what} (.npz): {_first_line(exc)}") from None
        raise read_fault(path, what, exc) from exc
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:  # zlib: damaged deflated bytes
        raise ValueError(f"{path}: not a readable {what} (.npz): {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@dataclass
class Annotations:
    keys: list[str]
    fields: dict[str, np.ndarray]
    #: the fields copied into records' extras (the rest are kept for inspection)
    attach: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.keys)
        for name, values in self.fields.items():
            if name in ("keys", "__meta__"):
                raise ValueError(f"annotations: '{name}' is reserved and cannot name a field")
            if len(values) != n:
                raise ValueError(f"annotations: field '{name}' has {len(values)} rows for {n} keys")
        missing = [a for a in self.attach if a not in self.fields]
        if missing:
            raise ValueError(f"annotations: attach names {missing}, which are not fields ({sorted(self.fields)})")
        if len(set(self.keys)) != n:
            raise ValueError("annotations: duplicate keys")

    @property
    def grid(self) -> tuple[int, int] | None:
        masks = self.fields.get("part_masks")
        return (int(masks.shape[-2]), int(masks.shape[-1])) if masks is not None and masks.ndim == 4 else None

    def save(self, path: str | Path) -> Path:
        """Write atomically (checkpoint.atomic_write_bytes: a temporary file in the same
        folder, fsynced, given the user's umask, then renamed; a failed write is a WriteError
        naming the file, the previous one kept)."""
        from core.training.checkpoint import atomic_write_bytes

        path = Path(path)
        meta = {**self.meta, "format": FORMAT, "attach": list(self.attach)}
        atomic_write_bytes(path, lambda f: np.savez_compressed(
            f, keys=np.asarray(self.keys, dtype=str), __meta__=np.asarray(json.dumps(meta, sort_keys=True)),
            **self.fields))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Annotations":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"annotation file not found: {path} (a labeler writes it: `core label "
                                    "pipeline.yaml`, or a `prepare` step of the pipeline)")
        arrays = read_arrays(path, "annotation file")
        if "keys" not in arrays or "__meta__" not in arrays:
            raise ValueError(f"{path}: not an annotation file: it lacks 'keys' or '__meta__' "
                             f"(has {sorted(arrays)}); format {FORMAT} is expected")
        meta = json.loads(str(arrays.pop("__meta__")))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: annotation format {meta.get('format')!r}; this core reads {FORMAT}")
        keys = [str(k) for k in arrays.pop("keys")]
        try:
            return cls(keys=keys, fields=arrays, attach=list(meta.get("attach", [])), meta=meta)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None


def qualified_key(source: str, key: str) -> str:
    return f"{source}:{key}"


def attach(annotations: Annotations, records: Sequence[Record], keys: Sequence[str], *,
           where: str, required: bool, grid: tuple[int, int] | None = None,
           rows: Sequence[int] | None = None) -> int:
    """Copy the attached fields of `annotations` into the extras of `records` (whose
    qualified keys are `keys`; with `rows`, of records[rows], keys aligned with rows).
    A columnar table (core.data.columns) gets one column per field. With `required`, every record must be annotated; the
    error names the file (`where`) and the first missing keys. A patch grid other than
    the backbone's is an error. Returns how many records got fields."""
    if grid is not None and annotations.grid is not None and tuple(grid) != annotations.grid:
        raise ValueError(f"{where}: part masks are on a {annotations.grid[0]}x{annotations.grid[1]} patch grid, "
                         f"the backbone's is {grid[0]}x{grid[1]}; label again for this backbone and image size "
                         "(delete the file or run `core label --force`)")
    index = {k: i for i, k in enumerate(annotations.keys)}
    missing = [k for k in keys if k not in index]
    if required and missing:
        raise ValueError(f"{where}: {len(missing)} of {len(keys)} records have no annotation, e.g. "
                         f"{', '.join(missing[:3])}; label these images again (`core label --force`)")
    if isinstance(records, RecordColumns):  # columns: one array per field, no per-record write
        found = np.asarray([index.get(k, -1) for k in keys], dtype=np.int64)
        hit = found >= 0
        targets = (np.arange(len(records)) if rows is None else np.asarray(rows, dtype=np.int64))[hit]
        for name in annotations.attach:
            records.set_extra(name, targets, np.asarray(annotations.fields[name])[found[hit]])
        return int(hit.sum())
    if rows is not None:
        records = [records[j] for j in rows]
    count = 0
    for record, key in zip(records, keys):
        i = index.get(key)
        if i is None:
            continue
        for name in annotations.attach:
            record.extras[name] = annotations.fields[name][i]
        count += 1
    return count

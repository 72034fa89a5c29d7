"""`boxes`: part boxes another tool produced, read from a JSON or CSV file, or the raw
boxes of an earlier `vge` annotation file (.npz).

JSON — a mapping from image to parts, each part a box, a list of boxes, or null
(not found); optionally wrapped as {"images": {...}}:

    {"images": {
      "bounding_box_train/0002_c1s1_000451_03.jpg":
          {"head": [0.31, 0.05, 0.66, 0.27], "upper body": [0.12, 0.22, 0.88, 0.61],
           "legs": [[0.10, 0.50, 0.45, 0.98], [0.52, 0.50, 0.90, 0.97]]},
      "bounding_box_train/0002_c1s1_000551_01.jpg": {"head": null, "upper body": ..., "legs": ...}}}

CSV — a header with (at least) image, part, x0, y0, x1, y1; one row per box (several
rows of one image and part: several boxes; empty coordinates: not found):

    image,part,x0,y0,x1,y1
    bounding_box_train/0002_c1s1_000451_03.jpg,head,0.31,0.05,0.66,0.27

NPZ — an annotation file an earlier `vge` run wrote: its raw grounder boxes
(`part_boxes_raw`, `part_found`) under its keys "<dataset>:<record key>" (the prefix up
to the first ':' is dropped). Its `part_names` must be the labeler's parts. This re-votes
(and re-calibrates) an expensive grounding onto another patch grid without running the
grounder again, e.g. after changing the backbone or the image size.

Coordinates are in `units`: fractions of the image, pixels, or per mille (CogVLM's
0-1000 scale). Several boxes of one part: one is chosen by `pick` (answers.pick_box).

Images are matched by key, then by path: a file key names the image whose annotation
key "<dataset>:<record key>" or record key (`Dataset.record_key`: the path under the
dataset root for file datasets, the render key for the synthetic world) equals it, or
whose image path equals it or ends with it ("/"-separated components; the longest
matching key wins), so keys may be record keys, absolute paths or paths relative to the
dataset root. An image absent from the file is an error unless `on_missing:
not_found`; a part absent from an image's entry is not found.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Sequence

import numpy as np

from core.records import Record
from reid_vge_labeler.answers import Pick, pick_box
from reid_vge_labeler.grounders.base import Grounder, Grounding, image_size

UNITS = ("fraction", "pixels", "permille")


class BoxFileGrounder(Grounder):
    """file: a .json, .csv or vge .npz file of boxes per image and part (see the module doc)."""

    def __init__(self, parts: Sequence[str], file: str, units: Literal["fraction", "pixels", "permille"] = "fraction",
                 pick: Pick = "first", on_missing: Literal["error", "not_found"] = "error") -> None:
        super().__init__(parts)
        if units not in UNITS:
            raise ValueError(f"grounder.units: unknown value {units!r}; valid values: {', '.join(UNITS)}")
        if on_missing not in ("error", "not_found"):
            raise ValueError(f"grounder.on_missing: unknown value {on_missing!r}; valid values: error, not_found")
        pick_box(np.zeros((0, 4)), pick)  # validates the rule
        self.file, self.units, self.pick, self.on_missing = Path(file), units, pick, on_missing
        self._table: dict[str, dict[str, np.ndarray]] | None = None

    @property
    def table(self) -> dict[str, dict[str, np.ndarray]]:
        """image key -> part -> (K, 4) boxes in the file's units (read once)."""
        if self._table is None:
            self._table = read_box_file(self.file, self.parts)
        return self._table

    def ground(self, images: list[Any], records: list[Record], keys: Sequence[str] | None = None) -> Grounding:
        out = self.empty(len(records))
        counts = np.zeros((len(records), len(self.parts)), dtype=np.int16)
        missing = []
        for i, (image, record) in enumerate(zip(images, records)):
            key = None if keys is None else keys[i]
            entry = self._lookup(record, key)
            if entry is None:
                missing.append(record.path if record.path is not None else key)
                continue
            width, height = image_size(image)
            for p, part in enumerate(self.parts):
                boxes = entry.get(part, np.zeros((0, 4)))
                counts[i, p] = len(boxes)
                box = pick_box(self._to_fractions(boxes, width, height), self.pick)
                if box is not None:
                    out.boxes[i, p], out.found[i, p] = box, True
        if missing and self.on_missing == "error":
            raise ValueError(f"grounder 'boxes': {self.file} has no entry for {len(missing)} of {len(records)} images "
                             f"in this batch, e.g. {', '.join(map(str, missing[:3]))}; keys are record keys or image paths "
                             "(absolute or relative to the dataset root). Set `on_missing: not_found` to treat them as "
                             "not found")
        out.extras["part_box_count"] = counts
        return out

    def _to_fractions(self, boxes: np.ndarray, width: int, height: int) -> np.ndarray:
        if self.units == "pixels":
            return boxes / np.asarray([width, height, width, height], dtype=np.float32)
        if self.units == "permille":
            return boxes / 1000.0
        return boxes

    def _lookup(self, record: Record, key: str | None) -> dict[str, np.ndarray] | None:
        if key is not None:
            for name in (key, key.split(":", 1)[-1]):
                if name in self.table:
                    return self.table[name]
        if record.path is None:
            if key is not None:
                return None
            raise ValueError(f"grounder 'boxes' matches images by key or path, was given no keys, and the record of "
                             f"pid {record.pid} has no path (a dataset that renders its images); run it through the "
                             "labeler (which passes the keys), export the images (`core data synth`) or use another "
                             "grounder")
        parts = PurePosixPath(Path(record.path).as_posix()).parts
        for start in range(len(parts)):
            key = str(PurePosixPath(*parts[start:]))
            if key in self.table:
                return self.table[key]
        return None


def read_box_file(path: Path, parts: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """image key (posix path) -> part -> (K, 4) float32 boxes, from a .json or .csv file."""
    if not path.is_file():
        raise FileNotFoundError(f"grounder 'boxes': box file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        rows = _read_json(path, parts)
    elif suffix == ".csv":
        rows = _read_csv(path, parts)
    elif suffix == ".npz":
        rows = _read_annotations(path, parts)
    else:
        raise ValueError(f"grounder 'boxes': {path}: unknown file type '{suffix}'; valid: .json, .csv, .npz")
    return {Path(k).as_posix(): v for k, v in rows.items()}


def _box_list(value: Any, where: str) -> np.ndarray:
    if value is None or (isinstance(value, list) and not value):
        return np.zeros((0, 4), dtype=np.float32)
    try:
        boxes = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        boxes = np.zeros(0, dtype=np.float32)
    if boxes.ndim == 1 and boxes.shape == (4,):
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[1:] != (4,) or not np.isfinite(boxes).all():
        raise ValueError(f"{where}: a part is a box [x0, y0, x1, y1], a list of boxes, or null; got {value!r}")
    return boxes


def _read_json(path: Path, parts: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"grounder 'boxes': {path}: not readable JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("images"), dict):
        data = data["images"]
    if not isinstance(data, dict):
        raise ValueError(f"grounder 'boxes': {path}: expected a mapping {{image: {{part: box}}}}")
    out = {}
    for key, entry in data.items():
        if not isinstance(entry, dict):
            raise ValueError(f"grounder 'boxes': {path}: image {key!r}: expected a mapping {{part: box}}, "
                             f"got {entry!r}")
        unknown = [p for p in entry if p not in parts]
        if unknown:
            raise ValueError(f"grounder 'boxes': {path}: image {key!r}: unknown part {unknown[0]!r}; the labeler's "
                             f"parts are {', '.join(parts)}")
        out[key] = {p: _box_list(v, f"grounder 'boxes': {path}: image {key!r}, part {p!r}") for p, v in entry.items()}
    return out


def _read_csv(path: Path, parts: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    columns = ("image", "part", "x0", "y0", "x1", "y1")
    collected: dict[str, dict[str, list[list[float]]]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"grounder 'boxes': {path}: the CSV header lacks {', '.join(missing)}; expected "
                             f"{','.join(columns)}")
        for line, row in enumerate(reader, start=2):
            where = f"grounder 'boxes': {path}, line {line}"
            part = row["part"].strip()
            if part not in parts:
                raise ValueError(f"{where}: unknown part {part!r}; the labeler's parts are {', '.join(parts)}")
            entry = collected.setdefault(row["image"].strip(), {}).setdefault(part, [])
            coords = [row[c].strip() for c in columns[2:]]
            if not any(coords):
                continue  # not found
            try:
                entry.append([float(c) for c in coords])
            except ValueError:
                raise ValueError(f"{where}: x0, y0, x1, y1 must be numbers (or all empty: not found); "
                                 f"got {coords}") from None
    return {k: {p: _box_list(v, f"grounder 'boxes': {path}: image {k!r}") for p, v in e.items()}
            for k, e in collected.items()}


def _read_annotations(path: Path, parts: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    from core.data.annotations import Annotations

    annotations = Annotations.load(path)
    missing = [f for f in ("part_boxes_raw", "part_found") if f not in annotations.fields]
    if missing:
        raise ValueError(f"grounder 'boxes': {path} has no {', '.join(missing)}: not written by the vge labeler "
                         f"(fields: {', '.join(sorted(annotations.fields))})")
    names = annotations.meta.get("part_names")
    if names is not None and list(names) != list(parts):
        raise ValueError(f"grounder 'boxes': {path} holds the parts {names}; the labeler's parts are {list(parts)}")
    boxes, found = annotations.fields["part_boxes_raw"], annotations.fields["part_found"].astype(bool)
    return {key.split(":", 1)[-1]: {part: boxes[i, p][None] if found[i, p] else np.zeros((0, 4), np.float32)
                                    for p, part in enumerate(parts)}
            for i, key in enumerate(annotations.keys)}

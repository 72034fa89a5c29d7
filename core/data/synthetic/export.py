"""The world on disk: Market-1501 layout (for tools that read only files) and a manifest
(for `core.data.manifest.ManifestDataset`, with every annotation as a column).

Market-1501 names are `{pid:04d}_c{camera}s1_{frame:06d}_00.jpg`; the world's pids do not
fit four digits, so each split set (train; test = query + gallery, which share pids) maps
its pids to 1..N in sorted order, written to `mapping.csv`. The frame number is the
image's index within its identity (domains after one another), unique per pid.

An export never deletes or rewrites a file it did not create. It writes into a new or
empty folder; with `overwrite`, into a folder holding an earlier export, whose
`manifest.csv` is the record of the files that export created: those may be rewritten
(or removed, when the new world has fewer images), every other file is left alone, and a
file of someone else's at a path the export would write stops it before anything is
written. The manifest is written before the images, so an interrupted export still
records every file it may have created.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from core.data.synthetic.world import SyntheticWorld

MARKET_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
#: Extras written as manifest columns, in this order, when the world has them.
EXTRA_COLUMNS = ("clothes_id", "modality", "caption", "attributes", "part_boxes")
MANIFEST, MAPPING = "manifest.csv", "mapping.csv"
BASE_COLUMNS = ["path", "pid", "camid", "category", "domain", "split", "market_pid"]
MAPPING_COLUMNS = ["set", "market_pid", "pid", "category", "identity"]
_MARKET_NAME = re.compile(r"^\d{4}_c\d+s1_\d{6}_00\.jpg$")


class ExportRefused(ValueError):
    """The export would delete or rewrite a file it did not create; nothing was written."""


@dataclass
class _Image:
    path: str  # relative, POSIX
    record: Any
    row: dict[str, Any]


def market_ids(world: SyntheticWorld) -> dict[str, dict[int, int]]:
    """{'train': {pid: market_pid}, 'test': {...}}: 1..N per split set, in pid order."""
    out = {}
    for group, splits in (("train", ("train",)), ("test", ("query", "gallery"))):
        pids = sorted({r.pid for s in splits for r in world.records(s)})
        if len(pids) > 9999:
            raise ValueError(f"the {group} split has {len(pids)} identities; the Market-1501 layout names at "
                             f"most 9999 (four digits)")
        out[group] = {pid: i + 1 for i, pid in enumerate(pids)}
    return out


def previous_export(out: Path) -> set[str]:
    """The files an earlier export created in `out` (relative POSIX paths), as its
    manifest.csv lists them: the images, the manifest and mapping.csv. Empty when there is
    no manifest or it is not one `core data synth` wrote (a user's own manifest.csv, say);
    listed paths outside the export's folders are never counted as its own."""
    try:
        with (out / MANIFEST).open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if (reader.fieldnames or [])[:len(BASE_COLUMNS)] != BASE_COLUMNS:
                return set()
            paths = {row.get("path") or "" for row in reader}
    except (OSError, UnicodeDecodeError, csv.Error):
        return set()
    owned = {MANIFEST}
    for path in paths:
        parts = PurePosixPath(path).parts
        if len(parts) == 2 and parts[0] in MARKET_DIRS.values() and _MARKET_NAME.match(parts[1]):
            owned.add(path)
    try:
        with (out / MAPPING).open(newline="", encoding="utf-8") as f:
            if next(csv.reader(f), None) == MAPPING_COLUMNS:
                owned.add(MAPPING)
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    return owned


def _plan(world: SyntheticWorld) -> tuple[list[str], list[_Image]]:
    """The manifest's columns and every image with its manifest row, before anything is written."""
    ids = market_ids(world)
    columns = list(BASE_COLUMNS)
    first = world.records("train")[0]
    columns += [k for k in EXTRA_COLUMNS if k in first.extras]
    images = []
    for split, folder in MARKET_DIRS.items():
        group = ids["train" if split == "train" else "test"]
        for r in world.records(split):
            _, _, image, domain = r.extras["render_key"]
            frame = world.domains.index(domain) * world.images_per_identity + image
            path = f"{folder}/{group[r.pid]:04d}_c{r.camid + 1}s1_{frame:06d}_00.jpg"
            row = {"path": path, "pid": r.pid, "camid": r.camid, "category": r.category,
                   "domain": r.domain, "split": split, "market_pid": group[r.pid]}
            for k in columns[len(BASE_COLUMNS):]:
                v = r.extras[k]
                row[k] = " ".join(f"{x:.4f}" for x in v.ravel()) if k == "part_boxes" else v
            images.append(_Image(path, r, row))
    return columns, images


def _check_target(out: Path, planned: set[str], overwrite: bool) -> set[str]:
    """Refuse (ExportRefused) an export that would touch a file it did not create; return
    the earlier export's files (those it may rewrite or remove)."""
    if out.exists() and not out.is_dir():
        raise ExportRefused(f"{out} exists and is not a folder; give --out a new or empty folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not entries:
        return set()
    if not overwrite:
        shown = ", ".join(entries[:3]) + (f", ... ({len(entries)} entries)" if len(entries) > 3 else "")
        raise ExportRefused(f"{out} is not empty ({shown}); `core data synth` writes into a new or empty folder. "
                            f"To replace an earlier export there, pass --overwrite: it rewrites only the files "
                            f"that export's {MANIFEST} lists and keeps every other file")
    owned = previous_export(out)
    foreign = sorted(p for p in planned if p not in owned and os.path.lexists(out / p))
    foreign += [d for d in MARKET_DIRS.values() if os.path.lexists(out / d) and not (out / d).is_dir()]
    if foreign:
        why = (f"{out / MANIFEST} does not list them" if owned else
               f"there is no {MANIFEST} from an earlier `core data synth` export in {out}")
        shown = ", ".join(foreign[:3]) + (f", ... ({len(foreign)} files)" if len(foreign) > 3 else "")
        raise ExportRefused(f"--overwrite: {out} holds files at paths this export writes that an earlier export "
                            f"did not create ({why}): {shown}. Nothing was written; move them away or choose "
                            "another --out")
    return owned


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]] | list[list[Any]]) -> None:
    from core.training.checkpoint import atomic_write_bytes

    buffer = io.StringIO(newline="")
    if rows and isinstance(rows[0], dict):
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
    else:
        writer = csv.writer(buffer)
        writer.writerow(columns)
    writer.writerows(rows)
    atomic_write_bytes(path, lambda f: f.write(buffer.getvalue().encode("utf-8")))


def export_world(world: SyntheticWorld, out: str | Path, quality: int = 95,
                 progress: Callable[[int, int], Any] | None = None, overwrite: bool = False) -> dict[str, int]:
    """Write every image of `world` under `out` in the Market-1501 layout, plus
    `manifest.csv` and `mapping.csv`; returns the number of images per split. `out` must
    be new or empty, or (with `overwrite`) hold an earlier export: see the module doc."""
    out = Path(out)
    columns, images = _plan(world)
    planned = {MANIFEST, MAPPING} | {image.path for image in images}
    owned = _check_target(out, planned, overwrite)
    for stale in sorted(owned - planned):  # an earlier, larger world's images: its own files only
        if (out / stale).is_file() and not (out / stale).is_symlink():
            (out / stale).unlink()
    for d in MARKET_DIRS.values():
        (out / d).mkdir(parents=True, exist_ok=True)
    _write_csv(out / MANIFEST, columns, [image.row for image in images])
    ids = market_ids(world)
    names = {r.pid: r.category for s in MARKET_DIRS for r in world.records(s)}
    _write_csv(out / MAPPING, MAPPING_COLUMNS,
               [[group, market, pid, names[pid], pid % 100_000] for group, mapping in ids.items()
                for pid, market in mapping.items()])
    counts = {split: len(world.records(split)) for split in MARKET_DIRS}
    for done, image in enumerate(images, start=1):
        world.load_image(image.record).save(out / image.path, quality=quality)
        if progress is not None:
            progress(done, len(images))
    return counts

"""The world on disk: Market-1501 layout (for tools that read only files) and a manifest
(for `core.data.manifest.ManifestDataset`, with every annotation as a column).

Market-1501 names are `{pid:04d}_c{camera}s1_{frame:06d}_00.jpg`; the world's pids do not
fit four digits, so each split set (train; test = query + gallery, which share pids) maps
its pids to 1..N in sorted order, written to `mapping.csv`. The frame number is the
image's index within its identity (domains after one another), unique per pid.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable

from core.data.synthetic.world import SyntheticWorld

MARKET_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
#: Extras written as manifest columns, in this order, when the world has them.
EXTRA_COLUMNS = ("clothes_id", "modality", "caption", "attributes", "part_boxes")


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


def export_world(world: SyntheticWorld, out: str | Path, quality: int = 95,
                 progress: Callable[[int, int], Any] | None = None) -> dict[str, int]:
    """Write every image of `world` under `out` in the Market-1501 layout, plus
    `manifest.csv` and `mapping.csv`; returns the number of images per split."""
    out = Path(out)
    ids = market_ids(world)
    for d in MARKET_DIRS.values():
        (out / d).mkdir(parents=True, exist_ok=True)
    columns = ["path", "pid", "camid", "category", "domain", "split", "market_pid"]
    first = world.records("train")[0]
    columns += [k for k in EXTRA_COLUMNS if k in first.extras]
    counts: dict[str, int] = {}
    total = sum(len(world.records(s)) for s in MARKET_DIRS)
    done = 0
    with (out / "manifest.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for split, folder in MARKET_DIRS.items():
            records = world.records(split)
            counts[split] = len(records)
            group = ids["train" if split == "train" else "test"]
            for r in records:
                _, _, image, domain = r.extras["render_key"]
                frame = world.domains.index(domain) * world.images_per_identity + image
                name = f"{group[r.pid]:04d}_c{r.camid + 1}s1_{frame:06d}_00.jpg"
                world.load_image(r).save(out / folder / name, quality=quality)
                row = {"path": f"{folder}/{name}", "pid": r.pid, "camid": r.camid, "category": r.category,
                       "domain": r.domain, "split": split, "market_pid": group[r.pid]}
                for k in columns[7:]:
                    v = r.extras[k]
                    row[k] = " ".join(f"{x:.4f}" for x in v.ravel()) if k == "part_boxes" else v
                writer.writerow(row)
                done += 1
                if progress is not None:
                    progress(done, total)
    with (out / "mapping.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["set", "market_pid", "pid", "category", "identity"])
        names = {r.pid: r.category for s in MARKET_DIRS for r in world.records(s)}
        for group, mapping in ids.items():
            for pid, market in mapping.items():
                writer.writerow([group, market, pid, names[pid], pid % 100_000])
    return counts

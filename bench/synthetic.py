"""Benchmark: how fast the synthetic world renders, in images per second on one core.

A data loader worker is one process on one core; the world must render faster than a CPU
training step consumes images, so this measures `load_image` (listing excluded) single
process, per category and over all categories, at 128x64 and 256x128, for the default
look and for the full look (clothes changes, an infrared camera, perspective, occlusion,
four render styles).

    python bench/synthetic.py [--images 200] [--sizes 128x64 256x128]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time

from core.data.synthetic import CATEGORIES, SyntheticWorld

FULL = dict(clothes_changes=2, infrared_cameras=[3], perspective=0.3, occlusion=0.3,
            domains=["synthetic", "cartoon", "sketch", "night"])


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:  # noqa: BLE001 - a label only
        return platform.processor() or "unknown CPU"


def rate(world: SyntheticWorld, categories: list[str], n: int) -> float:
    """Images per second rendering n records spread over identities, cameras and domains."""
    records = [r for r in world.records("train") if r.category in categories]
    step = max(len(records) // n, 1)
    chosen = records[::step][:n]
    for r in chosen[:10]:  # cameras and caches built outside the timed region
        world.load_image(r)
    best = 0.0
    for _ in range(2):  # best of two: the machine may be busy for a moment
        start = time.perf_counter()
        for r in chosen:
            world.load_image(r)
        best = max(best, len(chosen) / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="images per measurement")
    parser.add_argument("--sizes", nargs="+", default=["128x64", "256x128"])
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    names = list(CATEGORIES)
    rows = []
    for label, extra in (("default", {}), ("full", FULL)):
        worlds = {s: SyntheticWorld(categories=names, identities=50, test_identities=2, render_size=list(s), **extra)
                  for s in sizes}
        for cats in [[c] for c in names] + [names]:
            rows.append((label, "all" if len(cats) > 1 else cats[0],
                         [rate(worlds[s], cats, args.images) for s in sizes]))
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores); one process, images/s on one core\n")
    print("| look | category | " + " | ".join(f"{h}x{w}" for h, w in sizes) + " |")
    print("|---|---|" + "---:|" * len(sizes))
    for label, cat, values in rows:
        print(f"| {label} | {cat} | " + " | ".join(f"{v:,.0f}" for v in values) + " |")


if __name__ == "__main__":
    main()

"""VehicleID (Liu et al. 2016, "Deep Relative Distance Learning: Tell the Difference
Between Similar Vehicles"): 13,164 training vehicles; test lists of 800 / 1,600 / 2,400
vehicles (small / medium / large). No camera labels.

Layout (directly under the root or inside `VehicleID_V1.0/`): `image/<image id>.jpg` and
`train_test_split/train_list.txt`, `test_list_800.txt`, `test_list_1600.txt`,
`test_list_2400.txt`; one `<image id> <vehicle id>` per line, e.g. `0000010 1`.

Test protocol (as fast-reid and TransReID read it): from the chosen test list, one image
per vehicle forms the gallery and the others are the queries; papers repeat this with 10
random draws and average (here `seed` picks the draw). The queries get camera 0 and the
gallery camera 1, so the same-camera rule of evaluation never removes a true match.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from core.data.columns import RecordColumns
from core.data.layouts.common import cached_records, check_split, columns_of, find_root
from core.data.paths import missing_file
from core.interfaces import Dataset

TEST_SIZES = (800, 1600, 2400)


def read_list(path: Path, dataset: str) -> list[tuple[str, int]]:
    """`<image id> <id>` lines -> [(image id, id)]; errors name the file and line."""
    if not path.is_file():
        raise FileNotFoundError(f"{dataset}: list file {missing_file(path)}")
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ValueError(f"{dataset}: {path}:{number}: expected '<image id> <vehicle id>', got {line!r}")
        out.append((parts[0], int(parts[1])))
    return out


class VehicleID(Dataset):
    """`test_size`: 800 (small, the default), 1600 (medium) or 2400 (large)."""

    name = "vehicleid"
    category = "vehicle"

    def __init__(self, root: str, test_size: int = 800, seed: int = 0) -> None:
        if test_size not in TEST_SIZES:
            raise ValueError(f"VehicleID: test_size must be one of {', '.join(map(str, TEST_SIZES))}, got {test_size}")
        self.root = find_root("VehicleID", root, ["image", "train_test_split"], ("VehicleID_V1.0",))
        self.test_size, self.seed = test_size, int(seed)
        self._cache: dict[str, RecordColumns] = {}

    def _columns(self, pairs: list[tuple[str, int]], camid: int, split: str) -> RecordColumns:
        return columns_of([os.path.join(self.root, "image", image + ".jpg") for image, _ in pairs],
                          [vid for _, vid in pairs], [camid] * len(pairs), self.category, self.name, split)

    def records(self, split: str) -> RecordColumns:
        """Columns, cached by the list file read (path, size, mtime), the test size and the seed."""
        check_split("VehicleID", split, self.splits)
        if split not in self._cache:
            lists = self.root / "train_test_split"
            source = lists / ("train_list.txt" if split == "train" else f"test_list_{self.test_size}.txt")
            self._cache[split] = cached_records(self, split, [source], lambda: self._list(source, split))
        return self._cache[split]

    def _list(self, source: Path, split: str) -> RecordColumns:
        pairs = read_list(source, "VehicleID")
        if split == "train":
            return self._columns(pairs, 0, split)
        by_vid: dict[int, list[str]] = {}
        for image, vid in pairs:
            by_vid.setdefault(vid, []).append(image)
        rng = np.random.default_rng(self.seed)
        query, gallery = [], []
        for vid, images in by_vid.items():
            pick = int(rng.integers(len(images)))
            gallery.append((images[pick], vid))
            query += [(im, vid) for i, im in enumerate(images) if i != pick]
        return self._columns(query, 0, split) if split == "query" else self._columns(gallery, 1, split)

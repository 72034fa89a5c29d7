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

from core.data.layouts.common import check_split, find_root
from core.interfaces import Dataset
from core.records import Record

TEST_SIZES = (800, 1600, 2400)


def read_list(path: Path, dataset: str) -> list[tuple[str, int]]:
    """`<image id> <id>` lines -> [(image id, id)]; errors name the file and line."""
    if not path.is_file():
        raise FileNotFoundError(f"{dataset}: list file not found: {path}")
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
        self._splits: dict[str, list[Record]] | None = None

    def _record(self, image: str, vid: int, camid: int, split: str) -> Record:
        return Record(path=os.path.join(self.root, "image", image + ".jpg"), pid=vid, camid=camid,
                      category=self.category, domain=self.name, split=split)

    def records(self, split: str) -> list[Record]:
        check_split("VehicleID", split, self.splits)
        if self._splits is None:
            lists = self.root / "train_test_split"
            train = read_list(lists / "train_list.txt", "VehicleID")
            test = read_list(lists / f"test_list_{self.test_size}.txt", "VehicleID")
            by_vid: dict[int, list[str]] = {}
            for image, vid in test:
                by_vid.setdefault(vid, []).append(image)
            rng = np.random.default_rng(self.seed)
            query, gallery = [], []
            for vid, images in by_vid.items():
                pick = int(rng.integers(len(images)))
                gallery.append(self._record(images[pick], vid, 1, "gallery"))
                query += [self._record(im, vid, 0, "query") for i, im in enumerate(images) if i != pick]
            self._splits = {"train": [self._record(im, vid, 0, "train") for im, vid in train],
                            "query": query, "gallery": gallery}
        return list(self._splits[split])

"""VERI-Wild (Lou et al. 2019, "VERI-Wild: A Large Dataset and a New Method for Vehicle
Re-Identification in the Wild"): 30,671 training vehicles from 174 cameras; test sets of
3,000 / 5,000 / 10,000 vehicles (small / medium / large).

Layout (directly under the root or inside `VERI-Wild/`): `images/<vid>/<image id>.jpg`;
`train_test_split/train_list.txt`, `test_<n>_query.txt`, `test_<n>.txt` (the gallery),
one `<vid>/<image id>` per line; `train_test_split/vehicle_info.txt`, a header line then
`<vid>/<image id>;<camera>;<time>;<model>;<type>;<color>` per image, where the camera
comes from (as fast-reid reads it).
"""

from __future__ import annotations

import os
from pathlib import Path

from core.data.columns import RecordColumns
from core.data.layouts.common import cached_records, check_split, columns_of, find_root
from core.data.paths import missing_file
from core.interfaces import Dataset

TEST_SIZES = (3000, 5000, 10000)


class VeRiWild(Dataset):
    """`test_size`: 3000 (small, the default), 5000 (medium) or 10000 (large)."""

    name = "veriwild"
    category = "vehicle"

    def __init__(self, root: str, test_size: int = 3000) -> None:
        if test_size not in TEST_SIZES:
            raise ValueError(f"VERI-Wild: test_size must be one of {', '.join(map(str, TEST_SIZES))}, got {test_size}")
        self.root = find_root("VERI-Wild", root, ["images", "train_test_split"], ("VERI-Wild",))
        self.test_size = test_size
        self._cameras: dict[str, int] | None = None
        self._cache: dict[str, RecordColumns] = {}

    def _split_file(self, split: str) -> Path:
        name = {"train": "train_list.txt", "query": f"test_{self.test_size}_query.txt",
                "gallery": f"test_{self.test_size}.txt"}[split]
        return self.root / "train_test_split" / name

    def cameras(self) -> dict[str, int]:
        """'<vid>/<image id>' -> camera, from vehicle_info.txt."""
        if self._cameras is None:
            path = self.root / "train_test_split" / "vehicle_info.txt"
            if not path.is_file():
                raise FileNotFoundError(f"VERI-Wild: camera file {missing_file(path)}; it gives each image's camera")
            cams = {}
            lines = path.read_text(encoding="utf-8").splitlines()
            for number, line in enumerate(lines[1:], start=2):
                if not line.strip():
                    continue
                fields = line.strip().split(";")
                if len(fields) < 2 or "/" not in fields[0] or not fields[1].strip().isdigit():
                    raise ValueError(f"VERI-Wild: {path}:{number}: expected '<vid>/<image id>;<camera>;...', "
                                     f"got {line!r}")
                cams[fields[0]] = int(fields[1])
            self._cameras = cams
        return self._cameras

    def records(self, split: str) -> RecordColumns:
        """Columns, cached by the split's list and vehicle_info.txt (path, size, mtime)."""
        check_split("VERI-Wild", split, self.splits)
        if split not in self._cache:
            path = self._split_file(split)
            if not path.is_file():
                raise FileNotFoundError(f"VERI-Wild: list file {missing_file(path)}")
            inputs = [path, self.root / "train_test_split" / "vehicle_info.txt"]
            self._cache[split] = cached_records(self, split, inputs, lambda: self._list(path, split))
        return self._cache[split]

    def _list(self, path: Path, split: str) -> RecordColumns:
        cams, paths, pids, camids = self.cameras(), [], [], []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            key = line.strip()
            if not key:
                continue
            vid, _, image = key.partition("/")
            if not vid.isdigit() or not image:
                raise ValueError(f"VERI-Wild: {path}:{number}: expected '<vid>/<image id>', got {line!r}")
            if key not in cams:
                raise ValueError(f"VERI-Wild: {path}:{number}: image {key} has no line in vehicle_info.txt")
            paths.append(os.path.join(self.root, "images", vid, image + ".jpg"))
            pids.append(int(vid))
            camids.append(cams[key])
        return columns_of(paths, pids, camids, self.category, self.name, split)

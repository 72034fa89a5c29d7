"""University-1652 (Zheng et al. 2020, "University-1652: A Multi-view Multi-source Benchmark
for Drone-based Geo-localization", ACM MM): 1,652 buildings of 72 universities seen from a
satellite, a drone and the street; a test set of MGOR (CVPR 2026: satellite-to-UAV
building retrieval, an unseen category and task).

Official release (github.com/layumi/University1652-Baseline), under the root or inside
`University-Release/`:

    train/{satellite,drone,street,google}/<building id>/<image>
    test/{query,gallery}_{satellite,drone,street}/<building id>/<image>   (+ 4K_drone/)

The building folder is the identity. `query` / `gallery` pick the views of the
evaluation (default satellite -> drone, the paper's "Satellite-to-UAV", the benchmark's
"drone navigation" task); `train_views` the views of the training split. Each view is a
camera (camid = its index in satellite, drone, street, google), so the evaluator's
same-camera filter never removes a cross-view match.
"""

from __future__ import annotations

import os
from typing import Sequence

from core.data.columns import RecordColumns
from core.data.layouts.common import cached_records, check_split, find_root, folder_tree, image_names, subfolder_names
from core.interfaces import Dataset
from core.records import Record

VIEWS = ("satellite", "drone", "street", "google")
TEST_VIEWS = ("satellite", "drone", "street")


class University1652(Dataset):
    """pid = the building id (folder name), camid = the view, category `building`."""

    name = "university1652"
    category = "building"

    def __init__(self, root: str, query: str = "satellite", gallery: str = "drone",
                 train_views: Sequence[str] = ("satellite", "drone", "street", "google")) -> None:
        for key, view in (("query", query), ("gallery", gallery)):
            if view not in TEST_VIEWS:
                raise ValueError(f"University1652: {key} must be one of {', '.join(TEST_VIEWS)}, got {view!r}")
        bad = [v for v in train_views if v not in VIEWS]
        if bad or not train_views:
            raise ValueError(f"University1652: train_views must be a non-empty list of {', '.join(VIEWS)}; "
                             f"got {list(train_views)!r}")
        self.root = find_root("University1652", root, ["train", "test"], wrappers=("University-Release",))
        self.query, self.gallery, self.train_views = query, gallery, tuple(train_views)
        self._cache: dict[str, RecordColumns] = {}

    def _folder(self, split: str) -> list[tuple[str, str]]:
        """(folder, view) pairs that make up `split`."""
        if split == "train":
            return [(os.path.join(self.root, "train", v), v) for v in self.train_views]
        view = self.query if split == "query" else self.gallery
        return [(os.path.join(self.root, "test", f"{split}_{view}"), view)]

    def records(self, split: str) -> RecordColumns:
        """Columns, cached by the split's view folders and their building folders (path,
        size, mtime)."""
        check_split("University1652", split, self.splits)
        if split not in self._cache:
            inputs = [p for folder, _ in self._folder(split) if os.path.isdir(folder) for p in folder_tree(folder, 1)]
            self._cache[split] = cached_records(self, split, inputs, lambda: self._list(split))
        return self._cache[split]

    def _list(self, split: str) -> list[Record]:
        out = []
        for folder, view in self._folder(split):
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"University1652: folder not found: {folder}; expected "
                                        "train/<view>/<building id>/ and test/<query|gallery>_<view>/"
                                        "<building id>/")
            for building in subfolder_names(folder):
                if not building.isdigit():
                    raise ValueError(f"University1652: {os.path.join(folder, building)} is not a building "
                                     "id folder (expected digits, e.g. 0839)")
                for file_name in image_names(os.path.join(folder, building)):
                    out.append(Record(path=os.path.join(folder, building, file_name), pid=int(building),
                                      camid=VIEWS.index(view), category=self.category, domain=self.name,
                                      split=split))
        return out

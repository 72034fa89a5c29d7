"""iPanda-50 (Wang et al. 2021, "Giant Panda Identification", IEEE TIP 30): 6,874 images
of 50 giant pandas; a training source of MGOR (CVPR 2026, "animals" domain).

Official release (github.com/iPandaDateset/iPanda-50): `iPanda50-images/` holds one folder
per panda, `<NN>_<name>/` (e.g. `00_aibang/`, label NN), with its images; `iPanda50-split/`
holds five random 3:2 splits, `split<k>_train.txt` / `split<k>_test.txt` (k = 0..4), one
image per line. Both folders sit directly under the root or inside `iPanda-50/` (the
single-zip release). Some file names are UTF-8: listing keeps them as they are.

The splits divide images, not pandas (every panda is in both halves), so for ReID
training the reader's default is every image (`split: all`, our choice for MGOR, where
iPanda-50 is a training set only); `split: split0` .. `split4` trains on that split's
training list. There is no query / gallery protocol: the reader offers `train` only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from core.data.columns import RecordColumns
from core.data.layouts.common import cached_records, check_split, find_root, folder_tree, image_names, subfolder_names
from core.data.paths import missing_file
from core.interfaces import Dataset
from core.records import Record

IMAGES, SPLITS_DIR = "iPanda50-images", "iPanda50-split"
FOLDER = re.compile(r"^(\d+)_")
VALID_SPLITS = ("all", *(f"split{k}" for k in range(5)))


class IPanda50(Dataset):
    """Training records of iPanda-50: pid = the folder's numeric label, camid 0 (the
    release has no cameras), category `panda`."""

    name = "ipanda50"
    category = "panda"
    splits = ("train",)

    def __init__(self, root: str, split: str = "all") -> None:
        if split not in VALID_SPLITS:
            raise ValueError(f"IPanda50: unknown split {split!r}; valid: {', '.join(VALID_SPLITS)}")
        folders = [IMAGES] if split == "all" else [IMAGES, SPLITS_DIR]
        self.root = find_root("IPanda50", root, folders, wrappers=("iPanda-50",))
        self.split = split
        self._cache: RecordColumns | None = None

    def _all_images(self) -> dict[str, tuple[str, int]]:
        """`<folder>/<file>` -> (path, pid) for every image of the release."""
        base = self.root / IMAGES
        out: dict[str, tuple[str, int]] = {}
        for folder in subfolder_names(base):
            match = FOLDER.match(folder)
            if match is None:
                raise ValueError(f"IPanda50: cannot read the panda label of folder {base / folder}; expected "
                                 f"<NN>_<name> (e.g. 00_aibang)")
            for file_name in image_names(base / folder):
                out[f"{folder}/{file_name}"] = (os.path.join(base, folder, file_name), int(match.group(1)))
        return out

    def _listed(self, every: dict[str, tuple[str, int]]) -> list[tuple[str, int]]:
        """The images of `split<k>_train.txt`, in its order. A line may name the image by
        `<folder>/<file>` or by its file name alone."""
        list_path = self.root / SPLITS_DIR / f"{self.split}_train.txt"
        if not list_path.is_file():
            raise FileNotFoundError(f"IPanda50: split list {missing_file(list_path)}; expected "
                                    f"{SPLITS_DIR}/split<k>_train.txt (k = 0..4) from iPanda50-split.zip")
        by_name = {Path(key).name: value for key, value in every.items()}
        out = []
        with list_path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                entry = line.strip().replace("\\", "/")
                if not entry:
                    continue
                entry = entry.split()[0]
                tail = "/".join(entry.split("/")[-2:])
                found = every.get(tail) or by_name.get(Path(entry).name)
                if found is None:
                    raise ValueError(f"IPanda50: {list_path}:{number} names {entry!r}, which is not an image "
                                     f"under {self.root / IMAGES}/<NN>_<name>/")
                out.append(found)
        return out

    def records(self, split: str) -> RecordColumns:
        """Columns, cached by every panda folder (and the split list) -- path, size, mtime."""
        check_split("IPanda50", split, self.splits)
        if self._cache is None:
            inputs = folder_tree(self.root / IMAGES, 1)
            if self.split != "all":
                inputs.append(self.root / SPLITS_DIR / f"{self.split}_train.txt")
            self._cache = cached_records(self, split, inputs, self._list)
        return self._cache

    def _list(self) -> list[Record]:
        every = self._all_images()
        chosen = list(every.values()) if self.split == "all" else self._listed(every)
        return [Record(path=path, pid=pid, camid=0, category=self.category, domain=self.name, split="train")
                for path, pid in chosen]

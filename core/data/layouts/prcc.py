"""PRCC (Yang et al. 2019, "Person Re-identification by Contour Sketch under Moderate
Clothing Change"): 221 identities, three cameras; cameras A and B see a person in the same
clothes, camera C in other clothes.

Layout (`prcc/` as released): `rgb/train/<pid>/`, `rgb/val/<pid>/`, and
`rgb/test/{A,B,C}/<pid>/`; train and val file names start with the camera letter,
`<A|B|C>_cropped_rgb<index>.jpg`. The standard protocol (Yang et al.; Simple-CCReID):
the gallery is camera A of the test set, the query camera C (`setting: clothes-changing`,
every query in other clothes) or camera B (`same-clothes`). Records carry extras
"clothes_id": 0 for cameras A and B, 1 for C. `combine_train_val` adds val to train.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from core.data.columns import RecordColumns
from core.data.layouts.common import cached_records, check_split, find_root, folder_tree, image_names, subfolder_names
from core.interfaces import Dataset
from core.records import Record

CAMERAS = {"A": 0, "B": 1, "C": 2}


class PRCC(Dataset):
    """PRCC's RGB images with their folder pids; cameras A, B, C -> 0, 1, 2."""

    name = "prcc"
    category = "person"

    def __init__(self, root: str, setting: Literal["clothes-changing", "same-clothes"] = "clothes-changing",
                 combine_train_val: bool = False) -> None:
        if setting not in ("clothes-changing", "same-clothes"):
            raise ValueError(f"PRCC: setting must be clothes-changing or same-clothes, got {setting!r}")
        self.root = find_root("PRCC", root, ["rgb/train", "rgb/test/A", "rgb/test/B", "rgb/test/C"], ("prcc",))
        self.setting, self.combine_train_val = setting, combine_train_val
        self._cache: dict[str, RecordColumns] = {}

    def records(self, split: str) -> RecordColumns:
        """Columns, cached by the split's folder and its identity folders (path, size, mtime)."""
        check_split("PRCC", split, self.splits)
        if split not in self._cache:
            folders = self._folders(split)
            inputs = [p for f, _ in folders if f.is_dir() for p in folder_tree(f, 1)]
            self._cache[split] = cached_records(self, split, inputs, lambda: self._list(folders, split))
        return self._cache[split]

    def _folders(self, split: str) -> list[tuple[Path, str | None]]:
        """(folder, camera letter; None: read from each file name) that make up `split`."""
        rgb = self.root / "rgb"
        if split == "train":
            return [(rgb / f, None) for f in ["train"] + (["val"] if self.combine_train_val else [])]
        camera = "A" if split == "gallery" else ("C" if self.setting == "clothes-changing" else "B")
        return [(rgb / "test" / camera, camera)]

    def _list(self, folders: list[tuple[Path, str | None]], split: str) -> list[Record]:
        return [r for folder, camera in folders
                for r in (self._by_letter(folder, split) if camera is None else self._camera(folder, camera, split))]

    def _people(self, folder: Path) -> list[tuple[int, Path]]:
        out = []
        for name in subfolder_names(folder):
            if not name.isdigit():
                raise ValueError(f"PRCC: {folder / name} is not an identity folder (expected a number, e.g. 001)")
            out.append((int(name), folder / name))
        return out

    def _record(self, path: str, pid: int, camera: str, split: str) -> Record:
        return Record(path=path, pid=pid, camid=CAMERAS[camera], category=self.category, domain=self.name,
                      split=split, extras={"clothes_id": int(camera == "C")})

    def _by_letter(self, folder: Path, split: str) -> list[Record]:
        out = []
        for pid, person in self._people(folder):
            for name in image_names(person):
                if name[:1] not in CAMERAS:
                    raise ValueError(f"PRCC: cannot read the camera of {person / name}; expected "
                                     "<A|B|C>_cropped_rgb<index>.jpg")
                out.append(self._record(os.path.join(person, name), pid, name[0], split))
        return out

    def _camera(self, folder: Path, camera: str, split: str) -> list[Record]:
        return [self._record(os.path.join(person, name), pid, camera, split)
                for pid, person in self._people(folder) for name in image_names(person)]

"""MSMT17 (Wei et al. 2018, "Person Transfer GAN to Bridge Domain Gap for Person
Re-identification"): 4,101 identities, 15 cameras, morning / noon / afternoon light.

Unlike the Market-style layouts, list files define the splits: `list_train.txt`,
`list_val.txt`, `list_query.txt`, `list_gallery.txt`, one `<image path> <pid>` per line,
paths relative to the train folder (train, val) or the test folder (query, gallery).
v1 keeps images in `train/` and `test/`; v2 (faces masked) in `mask_train_v2/` and
`mask_test_v2/`. The camera comes from the file name,
`<pid>_<index>_<camera>_<date+time of day>_<frame>_<box>.jpg`, e.g.
`0000_000_01_0303morning_0015_0.jpg` (camera 1, camid 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from core.data.columns import RecordColumns
from core.data.layouts.common import (
    NamePattern,
    cached_records,
    check_split,
    columns_of,
    join_paths,
    read_list_file,
    require_dir,
    subfolder_names,
)
from core.data.paths import missing_file
from core.interfaces import Dataset

#: version -> (train folder, test folder, the folder the official archive unpacks into)
VERSIONS = {"v1": ("train", "test", "MSMT17_V1"), "v2": ("mask_train_v2", "mask_test_v2", "MSMT17_V2")}
LISTS = {"train": "list_train.txt", "val": "list_val.txt", "query": "list_query.txt",
         "gallery": "list_gallery.txt"}
#: MSMT17's cameras, 1-15 in the file names (Wei et al. 2018: 12 outdoor, 3 indoor)
CAMERAS = 15
PATTERN = NamePattern.compile(
    r"^(\d+)_(\d+)_(\d+)_",
    "<pid>_<index>_<camera>_<date+time of day>_<frame>_<box>.jpg (e.g. 0000_000_01_0303morning_0015_0.jpg)")


def _layout(version: str) -> str:
    train, test, wrapper = VERSIONS[version]
    return (f"{train}/, {test}/ and {', '.join(LISTS.values())} (directly under the root "
            f"or inside {wrapper}/)")


class MSMT17(Dataset):
    """MSMT17 with its own pids (train 0..1040, test 0..3059, numbered apart).

    `combine_train_val=True` (default) trains on list_train + list_val, the 32,621
    images of 1,041 identities that Wei et al. 2018 (Table 1) report as the training set
    and that TransReID (datasets/msmt17.py, `train += val`) trains on; torchreid,
    fast-reid (and so its model zoo) and reid-strong-baseline train on list_train alone
    (30,248 images; the first two add list_val only with `combineall`), so a number
    compared with theirs needs `combine_train_val=False` (pipelines/bot_msmt17.yaml,
    sbs_msmt17.yaml). `version="auto"` reads whichever of v1 / v2 is present and refuses
    to guess when both are.
    """

    name = "msmt17"
    category = "person"

    def __init__(self, root: str, version: Literal["auto", "v1", "v2"] = "auto",
                 combine_train_val: bool = True) -> None:
        if version not in ("auto", *VERSIONS):
            raise ValueError(f"MSMT17: unknown version {version!r}; valid versions: auto, "
                             f"{', '.join(VERSIONS)}")
        self.combine_train_val = combine_train_val
        base = Path(root)
        layout = " or ".join(f"{v}: {_layout(v)}" for v in VERSIONS) if version == "auto" else _layout(version)
        require_dir("MSMT17", base, layout)
        self.version, self.root = self._detect(base, version, layout)
        self._cache: dict[str, RecordColumns] = {}
        train, test, _ = VERSIONS[self.version]
        self.train_dir, self.test_dir = self.root / train, self.root / test
        for key in self._lists_needed():
            if not (self.root / LISTS[key]).is_file():
                raise FileNotFoundError(f"MSMT17: list file {missing_file(self.root / LISTS[key])}; "
                                        f"expected the {self.version} layout {_layout(self.version)}")

    def _detect(self, base: Path, version: str, layout: str) -> tuple[str, Path]:
        """(version, folder) holding that version's image folders: `base` or its wrapper."""
        found: dict[str, Path] = {}
        for v in VERSIONS if version == "auto" else (version,):
            train, test, wrapper = VERSIONS[v]
            for folder in (base, base / wrapper):
                if (folder / train).is_dir() and (folder / test).is_dir():
                    found.setdefault(v, folder)
        if len(found) == 1:
            return next(iter(found.items()))
        if found:
            both = "; ".join(f"{v} in {p}" for v, p in found.items())
            raise ValueError(f"MSMT17: found both versions under {base} ({both}); set version: v1 or v2")
        seen = [f"{n}/" for n in subfolder_names(base)]
        seen += [f"{w}/{n}/" for _, _, w in VERSIONS.values() if (base / w).is_dir()
                 for n in subfolder_names(base / w)]
        raise FileNotFoundError(f"MSMT17: no {'MSMT17' if version == 'auto' else version} image folders "
                                f"in {base}; expected {layout}; found: {', '.join(seen) or 'no folders'}")

    def _lists_needed(self) -> list[str]:
        return ["train", "query", "gallery"] + (["val"] if self.combine_train_val else [])

    def records(self, split: str) -> RecordColumns:
        """The split's records as columns, cached by the list files' path, size and mtime."""
        check_split("MSMT17", split, self.splits)
        if split not in self._cache:
            keys = (["train", "val"] if self.combine_train_val else ["train"]) if split == "train" else [split]
            image_dir = self.train_dir if split == "train" else self.test_dir
            self._cache[split] = cached_records(
                self, split, [self.root / LISTS[k] for k in keys],
                lambda: RecordColumns.concat([self._read_list(k, image_dir, split) for k in keys]),
                cameras=CAMERAS)  # in the key: a listing cached before the camera check is read again
        return self._cache[split]

    def _read_list(self, key: str, image_dir: Path, split: str) -> RecordColumns:
        """The records of one list file, in its order (the official order)."""
        list_path = self.root / LISTS[key]
        rows = read_list_file(list_path, (2,), 1, "'<image path> <pid>', e.g. "
                                                  "'0000/0000_000_01_0303morning_0015_0.jpg 0'")
        cameras = []
        for number, fields in rows:
            match = PATTERN.regex.match(fields[0].rsplit("/", 1)[-1])
            groups = match.groups() if match else PATTERN.parse("MSMT17", fields[0], f"{list_path}:{number}")
            camera = int(groups[2])
            if not 1 <= camera <= CAMERAS:  # camid -1 or 15+ would change the same-camera exclusion
                raise ValueError(f"MSMT17: {list_path}:{number}: {fields[0]} names camera {camera}, but MSMT17 has "
                                 f"cameras 1-{CAMERAS} (expected {PATTERN.text})")
            cameras.append(camera - 1)
        return columns_of(join_paths(image_dir, [fields[0] for _, fields in rows]), [int(f[1]) for _, f in rows],
                          cameras, self.category, self.name, split)

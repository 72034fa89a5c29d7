"""CUHK03 (Li et al. 2014, "DeepReID") under the new protocol of Zhong et al. 2017
("Re-ranking Person Re-identification with k-reciprocal Encoding"): 767 train / 700 test
identities, labeled (hand-drawn) or detected (DPM) boxes, read from the layout torchreid
prepares from the official `cuhk-03.mat`:

  cuhk03/                                   (directly under the root, or the root itself)
    images_labeled/, images_detected/       PNGs `<pair>_<pid>_<view>_<index>.png`,
                                            e.g. 1_001_1_01.png (camera pair 1, person 1, view 1)
    splits_new_labeled.json, splits_new_detected.json            (torchreid's split files)
    cuhk03_new_protocol_config_labeled.mat, ..._detected.mat     (Zhong et al.'s files)

The split comes from torchreid's JSON when present (a list holding one split with
`train` / `query` / `gallery` lists of [image path, pid, camid]; the paths are those of
the machine that prepared it, so images are found by file name in `images_<subset>/`),
else from the new-protocol .mat (`filelist`, `labels`, `train_idx`, `query_idx`,
`gallery_idx`, 1-based), as torchreid builds its JSON. The camera is the view (0 or 1).
When `images_<subset>/` is missing and the official `cuhk-03.mat` lies in the root (or
its `cuhk03_release/`), the images are extracted from it on first use
(core/data/layouts/cuhk03_extract.py, needs h5py: the `cuhk03` extra). For the protocol as released in folders (cuhk03-np/) use the `cuhk03np` reader.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from core.data.columns import RecordColumns
from core.data.layouts.common import NamePattern, cached_records, check_split, require_dir
from core.data.layouts.cuhk03_extract import extract_images, find_raw_mat
from core.interfaces import Dataset
from core.records import Record

SUBSETS = ("detected", "labeled")
PATTERN = NamePattern.compile(r"^(\d+)_(\d+)_([12])_(\d+)\.png$",
                              "<pair>_<pid>_<view>_<index>.png (e.g. 1_001_1_01.png)")
LAYOUT = ("images_<subset>/ with splits_new_<subset>.json (torchreid) or "
          "cuhk03_new_protocol_config_<subset>.mat (Zhong et al.), directly under the root or inside cuhk03/")


class CUHK03(Dataset):
    """CUHK03, new protocol; detected boxes by default, `labeled: true` for the hand-drawn ones."""

    name = "cuhk03"
    category = "person"

    def __init__(self, root: str, labeled: bool = False) -> None:
        self.subset = SUBSETS[int(labeled)]
        base = Path(root)
        require_dir("CUHK03", base, LAYOUT)
        self.root = base / "cuhk03" if (base / "cuhk03").is_dir() else base
        self.images = self.root / f"images_{self.subset}"
        self.json_file = self.root / f"splits_new_{self.subset}.json"
        self.mat_file = self.root / f"cuhk03_new_protocol_config_{self.subset}.mat"
        if not self.json_file.is_file() and not self.mat_file.is_file():
            raise FileNotFoundError(f"CUHK03: neither {self.json_file.name} nor {self.mat_file.name} in "
                                    f"{self.root}; expected {LAYOUT}")
        if not self.images.is_dir():
            raw = find_raw_mat(self.root)
            if raw is None:
                raise FileNotFoundError(f"CUHK03: missing folder {self.images}; expected {LAYOUT}. Put the "
                                        f"official cuhk-03.mat in {self.root} (or its cuhk03_release/) and "
                                        "the images are extracted from it on first use")
            try:
                extract_images(raw, self.images, self.subset)
            except PermissionError as exc:  # a write, not a read: its own line, not core.data.paths.unreadable's
                raise ValueError(f"CUHK03: cannot write the extracted images to {self.images} "
                                 f"({exc.strerror}); extract once where the dataset is writable") from None
        self._splits: dict[str, list[Record]] | None = None
        self._cache: dict[str, RecordColumns] = {}

    def records(self, split: str) -> RecordColumns:
        """The split's records as columns, cached by the split file's path, size and mtime."""
        check_split("CUHK03", split, self.splits)
        if split not in self._cache:
            source = self.json_file if self.json_file.is_file() else self.mat_file
            self._cache[split] = cached_records(self, split, [source], lambda: self._read()[split])
        return self._cache[split]

    def _read(self) -> dict[str, list[Record]]:
        if self._splits is None:
            self._splits = self._read_json() if self.json_file.is_file() else self._read_mat()
        return self._splits

    def _record(self, name: str, pid: int, split: str, where: str) -> Record:
        PATTERN.parse("CUHK03", name, where)
        view = int(PATTERN.parse("CUHK03", name, where)[2])
        return Record(path=os.path.join(self.images, name), pid=int(pid), camid=view - 1,
                      category=self.category, domain=self.name, split=split)

    def _read_json(self) -> dict[str, list[Record]]:
        try:
            data = json.loads(self.json_file.read_text(encoding="utf-8"))
            split = data[0]
            out = {}
            for key in self.splits:
                out[key] = [self._record(os.path.basename(str(path).replace("\\", "/")), pid, key,
                                         f"{self.json_file}:{key}[{i}]")
                            for i, (path, pid, _camid) in enumerate(split[key])]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            if isinstance(exc, ValueError) and "cannot parse" in str(exc):
                raise
            raise ValueError(f"CUHK03: {self.json_file} is not a torchreid split file (a list with one "
                             "{train, query, gallery} mapping of [path, pid, camid] lists): "
                             f"{type(exc).__name__}: {exc}") from None
        return out

    def _read_mat(self) -> dict[str, list[Record]]:
        from scipy.io import loadmat

        try:
            mat = loadmat(str(self.mat_file))
        except Exception as exc:  # noqa: BLE001 - scipy's reader fails on a cut file with OSError, IndexError, ...
            if isinstance(exc, OSError) and exc.errno is not None:  # the disk or the permissions: not the content
                raise
            raise ValueError(f"CUHK03: {self.mat_file} is not a readable MATLAB file "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())}); it is cut short or not a "
                             "MATLAB file at all: copy it again (Zhong et al.'s new-protocol config, MATLAB v5), "
                             "or use torchreid's "
                             f"{self.json_file.name}") from None
        try:
            files = mat["filelist"].flatten()
            labels = mat["labels"].flatten()
            index = {key: mat[f"{key}_idx"].flatten().astype(int) - 1 for key in self.splits}
        except KeyError as exc:
            raise ValueError(f"CUHK03: {self.mat_file} lacks the field {exc}; a new-protocol config holds "
                             "filelist, labels, train_idx, query_idx, gallery_idx") from None
        out = {}
        for key, idx in index.items():
            out[key] = []
            for n, i in enumerate(idx):
                where = f"{self.mat_file}:{key}_idx[{n}]"
                if not 0 <= i < min(len(files), len(labels)):
                    raise ValueError(f"CUHK03: {where} is {i + 1}, but filelist has {len(files)} entries and "
                                     f"labels {len(labels)}; the indices are 1-based positions in both")
                out[key].append(self._record(str(files[i][0]) if not isinstance(files[i], str) else files[i],
                                             int(labels[i]), key, where))
        return out

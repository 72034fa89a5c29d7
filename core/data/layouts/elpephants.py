"""ELPephants (Körschens & Denzler 2019, "ELPephants: A Fine-Grained Dataset for Elephant
Re-Identification", ICCV workshops): 2,078 images of 276 elephants; a test set of MGOR
(CVPR 2026, an unseen category).

Official release (inf-cv.uni-jena.de, "ELPephant (elephant ID system).zip"): the images,
named `<elephant id>_<free text>.jpg` (e.g. `157_Dorothy left Jun2012.jpg`), and the
split files `train.txt` and `val.txt`, tab-separated, the image's file name in the second
column. Images and split files may sit at any depth under the root (the archive's folder
names vary); each split file must exist once.

The official protocol is classification of the `val.txt` images among the training
elephants. As retrieval (our choice, the closest to it): query = `val.txt` images,
gallery = `train.txt` images, train = `train.txt`; query camid 0, gallery camid 1.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from core.data.columns import RecordColumns
from core.data.layouts.common import IMAGE_EXTENSIONS, cached_records, check_split, require_dir
from core.interfaces import Dataset
from core.records import Record

IDENTITY = re.compile(r"^(\d+)_")
LISTS = {"train": "train.txt", "query": "val.txt", "gallery": "train.txt"}


class ELPephants(Dataset):
    """pid = the number before the first underscore of the file name, category `elephant`."""

    name = "elpephants"
    category = "elephant"

    def __init__(self, root: str) -> None:
        base = Path(root)
        require_dir("ELPephants", base, "the images (<id>_<text>.jpg) and train.txt / val.txt at any depth")
        self.root = base
        self._images: dict[str, str] = {}
        self._lists: dict[str, Path] = {}
        self._folders: list[str] = []
        for folder, _, files in os.walk(base):
            self._folders.append(folder)
            for name in files:
                if name.startswith("."):
                    continue
                if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                    self._images.setdefault(name, os.path.join(folder, name))
                elif name in ("train.txt", "val.txt"):
                    if name in self._lists:
                        raise ValueError(f"ELPephants: two {name} under {base}: {self._lists[name]} and "
                                         f"{os.path.join(folder, name)}; keep one")
                    self._lists[name] = Path(folder) / name
        for name in ("train.txt", "val.txt"):
            if name not in self._lists:
                raise FileNotFoundError(f"ELPephants: {name} not found under {base}; expected the official "
                                        "split files train.txt and val.txt (tab-separated, file name in column 2)")
        self._cache: dict[str, RecordColumns] = {}

    def _read(self, split: str) -> list[Record]:
        path = self._lists[LISTS[split]]
        out = []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                fields = line.rstrip("\n").split("\t")
                if len(fields) < 2:
                    raise ValueError(f"ELPephants: {path}:{number}: expected tab-separated fields with the file "
                                     f"name in column 2, got {line.strip()!r}")
                file_name = fields[1].strip().strip("'\"")
                match = IDENTITY.match(file_name)
                if match is None:
                    raise ValueError(f"ELPephants: {path}:{number}: cannot read the elephant id of {file_name!r}; "
                                     "expected <id>_<text>.jpg")
                image = self._images.get(file_name)
                if image is None:
                    raise FileNotFoundError(f"ELPephants: {path}:{number} lists {file_name!r}, which is not an "
                                            f"image under {self.root}")
                out.append(Record(path=image, pid=int(match.group(1)), camid=0 if split == "query" else 1,
                                  category=self.category, domain=self.name, split=split))
        return out

    def records(self, split: str) -> RecordColumns:
        """Columns, cached by the split file and every folder of the tree (path, size, mtime)."""
        check_split("ELPephants", split, self.splits)
        if split not in self._cache:
            inputs = [self._lists[LISTS[split]], *self._folders]
            self._cache[split] = cached_records(self, split, inputs, lambda: self._read(split))
        return self._cache[split]

"""ATRW (Li et al. 2020, "ATRW: A Benchmark for Amur Tiger Re-identification in the Wild",
ACM MM; CVWC 2019 challenge): the plain re-ID training set, 1,887 images of 107 tigers;
a training source of MGOR (CVPR 2026, "animals" domain).

Official release (lila.science/datasets/atrw): `atrw_reid_train.tar.gz` unpacks to
`atrw_reid_train/train/<image id>.jpg`, `atrw_anno_reid_train.tar.gz` to
`atrw_anno_reid_train/reid_list_train.csv` (one `<entity id>,<file name>` per line, no
header) and the keypoint JSON. Both folders directly under the root. The test set's
identities ship with the challenge's evaluation script (gt_test_plain.json), not with
the data, so the reader offers `train` only (MGOR trains on ATRW and does not test on it).
"""

from __future__ import annotations

from core.data.columns import RecordColumns
from core.data.layouts.common import cached_records, check_split, find_root
from core.data.paths import missing_file
from core.interfaces import Dataset
from core.records import Record

IMAGES, ANNOTATIONS, LIST = "atrw_reid_train", "atrw_anno_reid_train", "reid_list_train.csv"


class ATRW(Dataset):
    """Training records of ATRW: pid = the entity id, camid 0 (no camera annotation),
    category `tiger`, in the list file's order."""

    name = "atrw"
    category = "tiger"
    splits = ("train",)

    def __init__(self, root: str) -> None:
        self.root = find_root("ATRW", root, [IMAGES, ANNOTATIONS])
        self.list_path = self.root / ANNOTATIONS / LIST
        if not self.list_path.is_file():
            raise FileNotFoundError(f"ATRW: list file {missing_file(self.list_path)}; expected "
                                    f"{ANNOTATIONS}/{LIST} from atrw_anno_reid_train.tar.gz")
        self.image_dir = self.root / IMAGES / "train"
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"ATRW: image folder not found: {self.image_dir}; expected "
                                    f"{IMAGES}/train/ from atrw_reid_train.tar.gz")
        self._cache: RecordColumns | None = None

    def records(self, split: str) -> RecordColumns:
        """Columns, cached by the list file's and the image folder's path, size and mtime
        (every listed image must exist)."""
        check_split("ATRW", split, self.splits)
        if self._cache is None:
            self._cache = cached_records(self, split, [self.list_path, self.image_dir], self._list)
        return self._cache

    def _list(self) -> list[Record]:
        out = []
        with self.list_path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                fields = [x.strip() for x in line.strip().split(",")]
                if fields == [""]:
                    continue
                if len(fields) != 2 or not fields[0].isdigit():
                    raise ValueError(f"ATRW: {self.list_path}:{number}: expected '<entity id>,<file name>' "
                                     f"(e.g. '0,003004.jpg'), got {line.strip()!r}")
                path = self.image_dir / fields[1]
                if not path.is_file():
                    raise FileNotFoundError(f"ATRW: {self.list_path}:{number} lists {fields[1]}, which is "
                                            f"not in {self.image_dir}")
                out.append(Record(path=str(path), pid=int(fields[0]), camid=0, category=self.category,
                                  domain=self.name, split="train"))
        return out

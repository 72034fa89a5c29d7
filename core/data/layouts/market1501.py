"""Market-1501 (Zheng et al. 2015, "Scalable Person Re-identification: A Benchmark").

Layout: `bounding_box_train/`, `query/`, `bounding_box_test/` (the gallery), directly
under the root or inside `Market-1501-v15.09.15/` as the archive unpacks; file names
`<pid>_c<camera>s<sequence>_<frame>_<box>.jpg`, e.g. `0002_c1s1_000451_03.jpg`.
"""

from __future__ import annotations

from core.data.layouts.common import MARKET_STYLE, NamePattern, SplitFolderDataset
from core.records import Record


class Market1501(SplitFolderDataset):
    """Market-1501 as torchreid and fast-reid read it (751 train / 750 test identities,
    6 cameras; 12,936 train, 3,368 query, 15,913 gallery images).

    Gallery conventions of the benchmark: pid -1 ("junk": bad detections) is left out,
    which is what the official evaluation does by ignoring those images; pid 0000
    ("distractors": background boxes) stays in the gallery as negatives for every query.
    `distractors=True` adds the Market-1501+500k distractor set from `images/` to the
    gallery (torchreid's `market1501_500k`), under the same naming and conventions.
    """

    name = "market1501"
    folders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    wrappers = ("Market-1501-v15.09.15",)
    pattern = NamePattern.compile(
        MARKET_STYLE, "<pid>_c<camera>s<sequence>_<frame>_<box>.jpg (e.g. 0002_c1s1_000451_03.jpg)")
    extra_gallery = "images"
    cameras = 6

    def __init__(self, root: str, distractors: bool = False) -> None:
        self.distractors = distractors
        super().__init__(root)

    def required_folders(self) -> list[str]:
        return super().required_folders() + ([self.extra_gallery] if self.distractors else [])

    def list_split(self, split: str) -> list[Record]:
        records = super().list_split(split)
        if split == "gallery" and self.distractors:
            records += self.list_folder(self.root / self.extra_gallery, split)
        return records

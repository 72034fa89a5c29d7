"""VC-Clothes (Wan et al. 2020, "When Person Re-identification Meets Changing Clothes"):
a synthetic (GTA5) clothes-changing set of 512 identities, 4 cameras, 1-3 outfits each.

Layout (`VC-Clothes/` as released): `train/`, `query/`, `gallery/`; file names
`<pid>-<camera>-<clothes>-<index>.jpg`, e.g. `0001-01-01-01.jpg`. Records carry extras
"clothes_id" (the outfit number, per person), for the clothes-changing evaluation.

`setting` picks the test cameras the papers report on (Wan et al. Sec. 5; Simple-CCReID's
`mode`): `all` (every camera), `same-clothes` (cameras 2 and 3, where a person wears the
same outfit) or `clothes-changing` (cameras 3 and 4). Query and gallery both keep only
those cameras; training is unchanged.
"""

from __future__ import annotations

from pathlib import Path

from core.data.layouts.common import ClothesSplitFolderDataset, NamePattern
from core.records import Record

#: setting -> the test cameras it keeps (1-based, as in the file names)
SETTINGS: dict[str, tuple[int, ...] | None] = {"all": None, "same-clothes": (2, 3), "clothes-changing": (3, 4)}


class VCClothes(ClothesSplitFolderDataset):
    """VC-Clothes with its own pids; cameras 0-based; extras "clothes_id"."""

    name = "vc_clothes"
    folders = {"train": "train", "query": "query", "gallery": "gallery"}
    wrappers = ("VC-Clothes",)
    pattern = NamePattern.compile(r"^(\d+)-(\d+)-(\d+)-", "<pid>-<camera>-<clothes>-<index>.jpg "
                                                          "(e.g. 0001-01-01-01.jpg)")
    fields = ("pid", "camera", "clothes")
    cameras = 4

    def __init__(self, root: str, setting: str = "all") -> None:
        if setting not in SETTINGS:
            raise ValueError(f"VCClothes: setting must be one of {', '.join(SETTINGS)} (the test cameras: every "
                             f"one, 2 and 3 with the same clothes, 3 and 4 with changed clothes); got {setting!r}")
        self.setting = setting
        super().__init__(root)

    def list_folder(self, folder: Path, split: str) -> list[Record]:
        records = super().list_folder(folder, split)
        cameras = SETTINGS[self.setting]
        if split == "train" or cameras is None:
            return records
        return [r for r in records if r.camid + 1 in cameras]

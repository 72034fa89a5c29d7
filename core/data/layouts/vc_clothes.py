"""VC-Clothes (Wan et al. 2020, "When Person Re-identification Meets Changing Clothes"):
a synthetic (GTA5) clothes-changing set of 512 identities, 4 cameras, 1-3 outfits each.

Layout (`VC-Clothes/` as released): `train/`, `query/`, `gallery/`; file names
`<pid>-<camera>-<clothes>-<index>.jpg`, e.g. `0001-01-01-01.jpg`. Records carry extras
"clothes_id" (the outfit number, per person), for the clothes-changing evaluation.
"""

from __future__ import annotations

from core.data.layouts.common import ClothesSplitFolderDataset, NamePattern


class VCClothes(ClothesSplitFolderDataset):
    """VC-Clothes with its own pids; cameras 0-based; extras "clothes_id"."""

    name = "vc_clothes"
    folders = {"train": "train", "query": "query", "gallery": "gallery"}
    wrappers = ("VC-Clothes",)
    pattern = NamePattern.compile(r"^(\d+)-(\d+)-(\d+)-", "<pid>-<camera>-<clothes>-<index>.jpg "
                                                          "(e.g. 0001-01-01-01.jpg)")
    fields = ("pid", "camera", "clothes")

"""LTCC (Qian et al. 2020, "Long-Term Cloth-Changing Person Re-identification"): 152
identities, 478 outfits, 12 cameras; the clothes-changing benchmark of Instruct-ReID's
clothes-changing task.

Layout (`LTCC_ReID/` as released): `train/`, `query/`, `test/` (the gallery); file names
`<pid>_<clothes>_c<camera>_<frame>.png`, e.g. `094_1_c9_015923.png` (identity 94 in its
outfit 1, camera 9). Records carry extras "clothes_id" (the outfit number, per person):
the clothes-changing evaluation removes the query's identity in the query's clothes
(`exclude_same_clothes`), LTCC's standard "cloth-changing" setting.
"""

from __future__ import annotations

from core.data.layouts.common import ClothesSplitFolderDataset, NamePattern


class LTCC(ClothesSplitFolderDataset):
    """LTCC with its own pids; cameras 0-based; extras "clothes_id"."""

    name = "ltcc"
    folders = {"train": "train", "query": "query", "gallery": "test"}
    wrappers = ("LTCC_ReID",)
    cameras = 12
    pattern = NamePattern.compile(r"^(\d+)_(\d+)_c(\d+)_", "<pid>_<clothes>_c<camera>_<frame>.png "
                                                           "(e.g. 094_1_c9_015923.png)")

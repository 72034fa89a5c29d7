"""VeRi-776 (Liu et al. 2016, "Large-scale Vehicle Re-identification in Urban
Surveillance Videos" / "A Deep Learning-Based Approach to Progressive Vehicle
Re-identification for Urban Surveillance").

Layout: `image_train/`, `image_query/`, `image_test/` (the gallery), directly under the
root or inside `VeRi/`; names `<vid>_c<camera>_<timestamp>_<index>.jpg`, e.g.
`0001_c001_00016450_0.jpg` (vehicle 1, camera 1).
"""

from __future__ import annotations

from core.data.layouts.common import NamePattern, SplitFolderDataset


class VeRi776(SplitFolderDataset):
    """VeRi-776 as fast-reid and TransReID read it (torchreid has no VeRi reader): 576
    train / 200 test vehicles, 20 cameras; 37,778 train, 1,678 query, 11,579 gallery
    images. Evaluation drops same-camera gallery images per query, as the benchmark's
    protocol does."""

    name = "veri776"
    category = "vehicle"
    folders = {"train": "image_train", "query": "image_query", "gallery": "image_test"}
    wrappers = ("VeRi",)
    pattern = NamePattern.compile(r"^(\d+)_c(\d+)_",
                                  "<vid>_c<camera>_<timestamp>_<index>.jpg (e.g. 0001_c001_00016450_0.jpg)")
    cameras = 20

"""CUHK03-NP: CUHK03 (Li et al. 2014, "DeepReID: Deep Filter Pairing Neural Network for
Person Re-identification") under the new protocol of Zhong et al. 2017 ("Re-ranking
Person Re-identification with k-reciprocal Encoding"): 767 train / 700 test identities
instead of the 20 random 1,367/100 splits.

Layout: `detected/` and `labeled/` (the DPM-detected and the hand-drawn boxes), each
with `bounding_box_train/`, `query/`, `bounding_box_test/`, directly under the root or
inside `cuhk03-np/`; names `<pid>_c<view>_<index>.png`, e.g. `0001_c1_1.png`, where the
camera is the view (1 or 2) of the identity's camera pair.
"""

from __future__ import annotations

from core.data.layouts.common import MARKET_STYLE, NamePattern, SplitFolderDataset

SUBSETS = ("detected", "labeled")


class CUHK03NP(SplitFolderDataset):
    """CUHK03-NP, detected boxes by default (the harder and more reported setting);
    `labeled=True` reads the hand-drawn boxes. Both subsets share one domain name."""

    name = "cuhk03np"
    wrappers = ("cuhk03-np",)
    pattern = NamePattern.compile(MARKET_STYLE, "<pid>_c<view>_<index>.png (e.g. 0001_c1_1.png)")
    cameras = 2  # the two views of an identity's camera pair

    def __init__(self, root: str, labeled: bool = False) -> None:
        subset = SUBSETS[int(labeled)]
        self.folders = {"train": f"{subset}/bounding_box_train", "query": f"{subset}/query",
                        "gallery": f"{subset}/bounding_box_test"}
        super().__init__(root)

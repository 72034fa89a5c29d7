"""MSMT17 re-packed in Market-1501's layout, as the domain-generalization codebases read it
(MUVA's code, RikoLi/MUVA engine/datasets/msmt17_v2.py, reads MSMT17 this way for all its
protocols): `bounding_box_train/`, `query/`, `bounding_box_test/`, directly under the
root or inside `MSMT17/`, `MSMT17_V1/` or `MSMT17_V2/`; names `<pid>_c<camera>...jpg`
with the camera 1-15, e.g. `0000_c14_0001.jpg`.

The official release (list files, `train/`, `test/`) is read by the `msmt17` reader; the
two give the same identities and cameras when the copy was made from the same version.
"""

from __future__ import annotations

from core.data.layouts.common import MARKET_STYLE, NamePattern, SplitFolderDataset

CAMERAS = 15


class MSMT17Market(SplitFolderDataset):
    """MSMT17 in Market-1501's folders (YAML name `msmt17_market`): 1,041 train / 3,060
    test identities in the full copies, cameras 0-14 after the usual 1-based -> 0-based
    shift."""

    name = "msmt17_market"
    folders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    wrappers = ("MSMT17", "MSMT17_V1", "MSMT17_V2")
    pattern = NamePattern.compile(MARKET_STYLE, "<pid>_c<camera 1-15>....jpg (e.g. 0000_c14_0001.jpg)")
    cameras = CAMERAS

"""Occluded-DukeMTMC (Miao et al. 2019, "Pose-Guided Feature Alignment for Occluded
Person Re-Identification"): DukeMTMC-reID re-split so that every query is occluded
(702 train / 1,110 test identities; 15,618 train, 2,210 query, 17,661 gallery images).

DukeMTMC-reID's layout and naming (`bounding_box_train/`, `query/`, `bounding_box_test/`,
`<pid>_c<camera>_f<frame>.jpg`), directly under the root or inside `Occluded_Duke/`, as
the authors' script writes it and TransReID reads it.
"""

from __future__ import annotations

from core.data.layouts.dukemtmc import DukeMTMC


class OccludedDuke(DukeMTMC):
    name = "occluded_duke"
    wrappers = ("Occluded_Duke",)

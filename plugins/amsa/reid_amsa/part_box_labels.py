"""Part masks from part boxes the records already carry (the synthetic world's people have
`part_boxes`: head, upper body, legs), written as a core annotation file: the ground
truth for measuring AM-MSA's masks, and pseudo-labels for tests and CPU runs without a
grounding model.

The masks follow the core contracts: boxes voted onto the backbone's patch grid with
`core.data.spatial.boxes_to_patch_masks` (a patch is in a part when the box covers at
least `coverage` of it, MUVA's binary voting, Fig. 6), stored per record as
(P, rows, cols) uint8 under "<dataset name>:<record key>" (`core.data.annotations`), and
attached to records as `part_masks` (a pipeline's `annotations: FILE`). A pipeline with
the vge labeler gets the same field from its `prepare` step instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from core.data.annotations import Annotations, qualified_key
from core.data.spatial import boxes_to_patch_masks
from core.interfaces import Dataset
from core.records import Record


def part_box_masks(records: Sequence[Record], grid: tuple[int, int], coverage: float = 0.5) -> np.ndarray:
    """(n, P, rows, cols) uint8 masks of the records' `part_boxes`."""
    missing = [i for i, r in enumerate(records) if "part_boxes" not in r.extras]
    if missing:
        r = records[missing[0]]
        raise ValueError(f"{len(missing)} records have no extras['part_boxes'] (e.g. pid {r.pid}, camera {r.camid}); "
                         "part masks from boxes need datasets whose records carry part boxes (the synthetic world)")
    boxes = np.stack([np.asarray(r.extras["part_boxes"], dtype=np.float64) for r in records])
    return boxes_to_patch_masks(boxes, grid, coverage).astype(np.uint8)


def write_part_box_annotations(dataset: Dataset, name: str, grid: tuple[int, int], out: str | Path,
                               splits: Sequence[str] = ("train", "query", "gallery"),
                               coverage: float = 0.5) -> Path:
    """Annotate every record of `splits` of `dataset` (called `name` in the pipeline's
    YAML) with the part masks of its part boxes; returns the file written."""
    records = [r for split in splits for r in dataset.records(split)]
    keys = [qualified_key(name, dataset.record_key(r)) for r in records]
    masks = part_box_masks(records, grid, coverage)
    return Annotations(keys=keys, fields={"part_masks": masks}, attach=["part_masks"],
                       meta={"source": "records' part_boxes", "grid": list(grid), "coverage": coverage}).save(out)

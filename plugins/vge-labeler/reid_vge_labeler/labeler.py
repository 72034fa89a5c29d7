"""The `vge` labeler: MUVA's part pseudo-labels (Sec. 3.2.3, Figures 5-6).

    b^p  = E_VGE(I, Q^p)          a grounder, per image and part (label_batch)
    b~^p = Calib(b^p)             from the dataset's box statistics (finalize)
    g^p  = vote(b~^p) in {0,1}^N_patch, G = [g^head; g^upper; g^legs] in R^{3 x N_patch}

Voting is the core's rule (`core.data.spatial.boxes_to_patch_masks`): a patch belongs to a
part when the box covers at least `coverage` of its area, on the backbone's patch grid
(`ctx.patch_grid`); the core flattens the masks row-major into the batch. The core runs
the labeler (`core label`, or a pipeline's `prepare:` step), resumably, and writes the
annotation file; training reads `part_masks` from it.

File fields, one row per training image:
  part_boxes_raw   (N, P, 4) float32  the grounder's boxes, fractions [x0, y0, x1, y1] (0 if not found)
  part_found       (N, P)    uint8    1 where the grounder found the part
  part_boxes       (N, P, 4) float32  calibrated boxes
  part_calibration (N, P)    uint8    0 kept, 1 too tall, 2 too short, 3 missing (replaced by the stripe)
  part_masks       (N, P, rows, cols) uint8, voted from part_boxes — the only field attached to records
  + the grounder's own raw fields (part_answers, part_scores, part_box_count, part_fault, ...).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from core.data.spatial import boxes_to_patch_masks
from core.interfaces import Labeler, Labels
from core.records import Record
from reid_vge_labeler.calibration import CODE_NAMES, calibrate
from reid_vge_labeler.grounders.base import check_grounding
from reid_vge_labeler.grounders.registry import build_grounder
from reid_vge_labeler.parts import DEFAULT_PARTS, check_parts, default_max_h, per_part, stripe_boxes

#: how the calibration's box statistics are grouped
CALIBRATE_PER = ("dataset", "all")
#: the fields the labeler itself writes (a grounder's extras may not take these names)
OWN_FIELDS = ("part_boxes_raw", "part_found", "part_boxes", "part_calibration", "part_masks")


class VGELabeler(Labeler):
    """Part masks from a grounder, calibrated and voted onto the backbone's patch grid.

    grounder: `name` or {name: cogvlm | owlvit | boxes | record_boxes | stripes, ...keys};
    parts: part names, the rows of G (the words of the query "the <part> of the person");
    calibrate: replace implausible and missing boxes by stripes (False: keep raw boxes,
    a missing part gets an empty mask); calibrate_per: "dataset" (the height statistics
    of each training set apart, as the paper calibrates each source set; several sources
    in one prepare step stay apart) or "all" (pooled); max_h / min_h: a fraction of the image height for
    every part, or {part: fraction} (min_h: null = the percentile rule); stripes: {part:
    [y0, y1] or [x0, y0, x1, y1]}; coverage: the share of a patch a box must cover;
    grid: [rows, cols] for backbones without a patch grid (else the backbone's is used);
    batch_size: images per grounder call.
    """

    def __init__(self, grounder: str | dict[str, Any] = "cogvlm",
                 parts: list[str] = list(DEFAULT_PARTS),  # noqa: B006 - YAML default, never mutated
                 calibrate: bool = True, calibrate_per: str = "dataset", max_h: float | dict[str, float] | None = None,
                 min_h: float | dict[str, float] | None = None, min_h_percentile: float = 2.0,
                 min_h_floor: float = 0.05, stripes: dict[str, list[float]] | None = None,
                 coverage: float = 0.5, grid: list[int] | None = None, batch_size: int = 16,
                 ctx: Any = None) -> None:
        self.parts = check_parts(parts)
        self.calibrate = bool(calibrate)
        if calibrate_per not in CALIBRATE_PER:
            raise ValueError(f"calibrate_per must be one of {', '.join(CALIBRATE_PER)} (each training set's box "
                             f"statistics apart, or pooled); got {calibrate_per!r}")
        self.calibrate_per = calibrate_per
        self.max_h = per_part(max_h, self.parts, "max_h", default_max_h(self.parts))
        self.min_h = per_part(min_h, self.parts, "min_h", None)
        if not 0.0 <= min_h_percentile <= 100.0:
            raise ValueError(f"min_h_percentile is a percentile in [0, 100]; got {min_h_percentile}")
        if not 0.0 <= min_h_floor <= 1.0:
            raise ValueError(f"min_h_floor is a fraction of the image height in [0, 1]; got {min_h_floor}")
        self.min_h_percentile, self.min_h_floor = float(min_h_percentile), float(min_h_floor)
        self.stripes = stripe_boxes(self.parts, stripes)
        if not 0.0 < coverage <= 1.0:
            raise ValueError(f"coverage is the share of a patch a box must cover to put it in the part, in (0, 1]; "
                             f"got {coverage}")
        self.coverage = float(coverage)
        if grid is not None and (len(grid) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                                       for v in grid)):
            raise ValueError(f"grid is [rows, cols] of patches, two positive integers; got {grid!r}")
        self.grid = (int(grid[0]), int(grid[1])) if grid is not None else None
        if batch_size < 1:
            raise ValueError(f"batch_size is the number of images per grounder call (>= 1); got {batch_size}")
        self.batch_size = int(batch_size)
        if ctx is not None:
            self.patch_grid(ctx)  # fail at build time, before hours of grounding
        self.grounder = build_grounder(grounder, self.parts)

    def patch_grid(self, ctx: Any) -> tuple[int, int]:
        """The grid to vote on: the backbone's (`ctx.patch_grid`), or `grid` when the
        backbone has none; both given and different is an error."""
        backbone = getattr(ctx, "patch_grid", None) if ctx is not None else None
        backbone = (int(backbone[0]), int(backbone[1])) if backbone else None
        if self.grid is not None:
            if backbone is not None and backbone != self.grid:
                raise ValueError(f"grid is {list(self.grid)} but the backbone's patch grid is {list(backbone)}: the "
                                 "masks would not line up with the patch tokens; drop `grid` (the backbone's is used)")
            return self.grid
        if backbone is None:
            raise ValueError("labeler 'vge' votes part masks onto the backbone's patch grid, and this backbone has "
                             "none (ctx.patch_grid is None: not a token backbone); give `grid: [rows, cols]`")
        return backbone

    def label_batch(self, images: list[Any], records: list[Record], keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """b^p = E_VGE(I, Q^p): the grounder's raw boxes and found flags, plus its extras.
        `keys` (the images' annotation-file keys, from the core) reach a grounder whose
        `ground` takes them (the box-file grounder matches by key, then by path)."""
        name = getattr(self.grounder, "name", type(self.grounder).__name__)
        if keys is not None and "keys" in inspect.signature(self.grounder.ground).parameters:
            grounding = self.grounder.ground(images, records, keys=keys)
        else:
            grounding = self.grounder.ground(images, records)
        result = check_grounding(grounding, len(images), len(self.parts), name)
        clash = [k for k in result.extras if k in OWN_FIELDS]
        if clash:
            raise ValueError(f"grounder '{name}' returned an extra field '{clash[0]}', a name the labeler writes "
                             f"itself ({', '.join(OWN_FIELDS)})")
        return {"part_boxes_raw": result.boxes, "part_found": result.found.astype(np.uint8), **result.extras}

    def calibrated(self, boxes: np.ndarray, found: np.ndarray,
                   records: list[Record]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """(boxes, codes, report) calibrated per dataset (records' `domain`) or pooled.
        One group reports as before; several report per dataset, plus "replaced" overall."""
        domains = [r.domain for r in records] if self.calibrate_per == "dataset" else [""] * len(records)
        groups: dict[str, list[int]] = {}
        for index, domain in enumerate(domains):
            groups.setdefault(domain, []).append(index)
        final, codes = boxes.copy(), np.zeros(found.shape, np.uint8)
        reports: dict[str, Any] = {}
        for domain, rows in groups.items():
            cal = calibrate(boxes[rows], found[rows], self.stripes, self.max_h, self.min_h, self.min_h_percentile,
                            self.min_h_floor)
            final[rows], codes[rows] = cal.boxes, cal.codes
            reports[domain] = cal.report(self.parts)
        if len(groups) <= 1:
            report = next(iter(reports.values()), {"replaced": 0.0})
        else:
            report = {**reports, "replaced": float((codes != 0).mean())}
        return final, codes, report

    def finalize(self, raw: dict[str, np.ndarray], records: list[Record], ctx: Any) -> Labels:
        """Calibrate over the whole dataset, vote onto the patch grid."""
        grid = self.patch_grid(ctx)
        p = len(self.parts)
        n = len(records)
        boxes = np.asarray(raw.get("part_boxes_raw", np.zeros((n, p, 4))), dtype=np.float32).reshape(n, p, 4)
        found = np.asarray(raw.get("part_found", np.zeros((n, p))), dtype=bool).reshape(n, p)
        if self.calibrate:
            final, codes, report = self.calibrated(boxes, found, records)
        else:
            final, codes = np.where(found[..., None], boxes, 0.0).astype(np.float32), np.zeros((n, p), np.uint8)
            report = {part: {"replaced": 0.0, "missing": float((~found[:, i]).sum() / max(n, 1))}
                      for i, part in enumerate(self.parts)}
            report["replaced"] = 0.0
        masks = boxes_to_patch_masks(final, grid, self.coverage).astype(np.uint8)
        extras = {k: v for k, v in raw.items() if k not in ("part_boxes_raw", "part_found")}
        fields = {"part_boxes_raw": boxes, "part_found": found.astype(np.uint8), "part_boxes": final,
                  "part_calibration": codes, "part_masks": masks.reshape(n, p, *grid), **extras}
        meta = {"part_names": self.parts, "grid": list(grid), "coverage": self.coverage,
                "calibrate": self.calibrate, "calibration_codes": list(CODE_NAMES),
                "stripes": {part: [round(float(v), 6) for v in self.stripes[i]] for i, part in enumerate(self.parts)},
                "grounder": getattr(self.grounder, "name", type(self.grounder).__name__)}
        report["images"] = n
        meta["calibrate_per"] = self.calibrate_per
        return Labels(fields=fields, attach=["part_masks"], report=report, meta=meta)

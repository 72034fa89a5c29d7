"""Does the calibration help? Raw vs calibrated part masks against the truth, on synthetic
people with a grounder that returns the world's true boxes spoiled by the faults of MUVA's
Figure 5 (whole-body boxes, tiny fragments, missing boxes).

The truth is the world's part boxes voted onto the same grid with the same rule. The
labeler runs exactly as in a pipeline (core.labeling.run_labeler, record_boxes grounder,
calibration, the core's voting). Prints mean IoU per part, raw and calibrated, per fault
type, and the same run without faults (what the calibration costs on clean boxes).

    python plugins/vge-labeler/scripts/calibration_iou.py            # 640 images, 256x128, 16x8
    python plugins/vge-labeler/scripts/calibration_iou.py --json     # machine-readable
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from core.data.spatial import boxes_to_patch_masks
from core.data.synthetic import SyntheticWorld
from core.labeling import LabelItem, run_labeler
from reid_vge_labeler.grounders.record_boxes import FAULT_NAMES
from reid_vge_labeler.labeler import VGELabeler
from reid_vge_labeler.metrics import mask_iou

PARTS = ["head", "upper", "legs"]  # the synthetic world's person parts, in its order


def measure(world: SyntheticWorld, grid: tuple[int, int], faults: dict | None, coverage: float,
            workdir: Path) -> dict:
    records = world.records("train")
    items = [LabelItem(world, r, f"synthetic:{world.record_key(r)}") for r in records]
    labeler = VGELabeler(grounder={"name": "record_boxes", "faults": faults}, parts=PARTS, grid=list(grid),
                         coverage=coverage, batch_size=64)
    out = workdir / f"parts-{'faults' if faults else 'clean'}.npz"
    ann = run_labeler(labeler, items, out, fingerprint={"faults": faults, "grid": list(grid)}, ctx=None, name="vge",
                      progress=False, force=True, echo=lambda *_: None)
    truth = boxes_to_patch_masks(np.stack([r.extras["part_boxes"] for r in records]), grid, coverage)
    raw = boxes_to_patch_masks(ann.fields["part_boxes_raw"], grid, coverage)
    iou_raw = mask_iou(raw, truth)
    iou_cal = mask_iou(ann.fields["part_masks"], truth)
    fault = ann.fields["part_fault"]
    result = {"images": len(records),
              "mean": {"raw": float(iou_raw.mean()), "calibrated": float(iou_cal.mean())},
              "parts": {part: {"raw": float(iou_raw[:, p].mean()), "calibrated": float(iou_cal[:, p].mean()),
                               "replaced": float((ann.fields["part_calibration"][:, p] != 0).mean())}
                        for p, part in enumerate(PARTS)},
              "faults": {}}
    for code, name in enumerate(FAULT_NAMES):
        sel = fault == code
        if sel.any():
            result["faults"][name] = {"share": float(sel.mean()), "raw": float(iou_raw[sel].mean()),
                                      "calibrated": float(iou_cal[sel].mean()),
                                      "replaced": float((ann.fields["part_calibration"][sel] != 0).mean())}
    return result


def show(title: str, r: dict) -> None:
    print(f"\n{title} ({r['images']} images)")
    print(f"  {'':12s} {'raw IoU':>8s} {'calib. IoU':>10s} {'replaced':>9s}")
    for part, v in r["parts"].items():
        print(f"  {part:12s} {v['raw']:8.3f} {v['calibrated']:10.3f} {v['replaced']:9.1%}")
    print(f"  {'mean':12s} {r['mean']['raw']:8.3f} {r['mean']['calibrated']:10.3f}")
    print(f"  by fault:    {'share':>8s} {'raw IoU':>8s} {'calib. IoU':>10s} {'replaced':>9s}")
    for name, v in r["faults"].items():
        print(f"  {name:12s} {v['share']:8.1%} {v['raw']:8.3f} {v['calibrated']:10.3f} {v['replaced']:9.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--identities", type=int, default=80)
    ap.add_argument("--images-per-identity", type=int, default=8)
    ap.add_argument("--size", type=int, nargs=2, default=[256, 128], metavar=("H", "W"))
    ap.add_argument("--grid", type=int, nargs=2, default=[16, 8], metavar=("ROWS", "COLS"))
    ap.add_argument("--coverage", type=float, default=0.5)
    ap.add_argument("--whole-body", type=float, default=0.15)
    ap.add_argument("--tiny", type=float, default=0.10)
    ap.add_argument("--missing", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    world = SyntheticWorld(seed=args.seed, categories=["person"], identities=args.identities, test_identities=1,
                           images_per_identity=args.images_per_identity, render_size=args.size)
    faults = {"whole_body": args.whole_body, "tiny": args.tiny, "missing": args.missing, "seed": args.seed}
    with tempfile.TemporaryDirectory() as tmp:
        results = {"setting": {"images": args.identities * args.images_per_identity, "size": args.size,
                               "grid": args.grid, "coverage": args.coverage, "faults": faults},
                   "with_faults": measure(world, tuple(args.grid), faults, args.coverage, Path(tmp)),
                   "clean": measure(world, tuple(args.grid), None, args.coverage, Path(tmp))}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    show(f"faults {faults}", results["with_faults"])
    show("no faults", results["clean"])


if __name__ == "__main__":
    main()

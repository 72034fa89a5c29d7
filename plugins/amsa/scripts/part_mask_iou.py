"""How well AM-MSA finds body parts: train MUVA on synthetic people, then compare the
predicted part masks of unseen people with their true part boxes.

    python plugins/amsa/scripts/part_mask_iou.py                      # pipelines/muva_synthetic.yaml
    python plugins/amsa/scripts/part_mask_iou.py --threads 1 --out runs/muva-iou --set stages.1.epochs=10

Ground truth: every test image's (query + gallery, identities never trained on) part
boxes (head, upper body, legs) voted onto the backbone's patch grid with the core's rule
(`core.data.spatial.boxes_to_patch_masks`, a patch is in when the box covers half of
it). Prediction: the backbone's `part_masks` (the last layer's sigmoid(M_L)) above the
gate threshold t = 0.5. IoU per image and part, averaged over images, then over parts.
Reported for the trained model, for the same model untrained (same seed and
initialisation), and for the fixed equal stripes (the paper's ablation).

Supervision (`--labels`): `boxes` (default) attaches the part masks of the training
images' own part boxes as an annotation file (`reid_amsa.part_box_labels`), so the
script needs no labeler; `prepare` keeps the pipeline's `prepare` step (the vge
labeler's record_boxes grounder: the same boxes after its calibration).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[3]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--pipeline", default=str(REPO / "pipelines" / "muva_synthetic.yaml"))
    parser.add_argument("--out", default="runs/muva-part-mask-iou", help="folder for the labels, the run and iou.json")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="pipeline overrides, as `core run --set`")
    parser.add_argument("--labels", choices=("boxes", "prepare"), default="boxes")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def true_masks(records, grid) -> torch.Tensor:
    """(n, P, rows * cols) bool: the records' part boxes voted onto the grid."""
    from reid_amsa.part_box_labels import part_box_masks

    masks = part_box_masks(records, grid)
    return torch.as_tensor(masks).flatten(2).bool()


def iou_per_part(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(n, P) IoU of boolean masks (n, P, N); 1 where both are empty."""
    inter = (pred & truth).sum(-1).float()
    union = (pred | truth).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


@torch.no_grad()
def predicted_masks(model, table, datasets, transform, device, batch_size: int = 128) -> torch.Tensor:
    from core.data.loading import ImageSamples, collate
    from core.interfaces import read_output

    model.eval()
    loader = DataLoader(ImageSamples(table, datasets, transform), batch_size=batch_size, shuffle=False,
                        collate_fn=collate)
    rows = []
    for batch in loader:
        out = model(batch.to(device))
        rows.append(read_output(out, "part_masks", "part_mask_iou", "the `amsa_clip` backbone").float().cpu())
    return torch.cat(rows)


def evaluate(model, pipeline, device, threshold: float = 0.5) -> dict:
    """IoU of the model's masks (and of the stripes) with the truth on every test image."""
    from reid_amsa.masking import stripe_masks

    grid = pipeline.ctx.patch_grid
    scores, stripes_scores = [], []
    for test in pipeline.test_sets:
        for table in (test.query, test.gallery):
            truth = true_masks(table.records, grid)
            pred = predicted_masks(model, table, test.datasets, pipeline.test_transform, device) > threshold
            scores.append(iou_per_part(pred, truth))
            stripes = stripe_masks(grid, truth.shape[1]).expand_as(truth)
            stripes_scores.append(iou_per_part(stripes, truth))
    per_part = torch.cat(scores).mean(0)
    stripes_part = torch.cat(stripes_scores).mean(0)
    names = ["head", "upper", "legs"] if len(per_part) == 3 else [f"part{i}" for i in range(len(per_part))]
    return {"images": int(torch.cat(scores).shape[0]), "grid": list(grid),
            "model": {"mean": float(per_part.mean()), **{n: float(v) for n, v in zip(names, per_part)}},
            "stripes": {"mean": float(stripes_part.mean()), **{n: float(v) for n, v in zip(names, stripes_part)}}}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from core.config.loading import load_pipeline
    from core.pipeline import build_pipeline
    from core.runner import restore_run, run
    from core.training.checkpoint import seed_everything
    from reid_amsa.part_box_labels import write_part_box_annotations

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = [*args.overrides, f"trainer.device={args.device}"]
    cfg = load_pipeline(args.pipeline, overrides)
    probe = build_pipeline(cfg, prepare="skip")  # the patch grid and the training world
    if args.labels == "boxes":
        labels = write_part_box_annotations(probe.train_datasets[0], probe.train.sources[0], probe.ctx.patch_grid,
                                            out / "train_part_masks.npz", splits=("train",))
        overrides += ["prepare=null", f"data.train.0.annotations={labels}"]
        cfg = load_pipeline(args.pipeline, overrides)

    seed = cfg.data.get("seed", 0)
    seed_everything(seed)  # as `core run` does before building: the run's own initialisation
    untrained = build_pipeline(cfg, prepare="skip")
    before = evaluate(untrained.model.to(args.device), untrained, args.device)

    start = time.perf_counter()
    result = run(args.pipeline, overrides, run_dir=out / "run")
    minutes = (time.perf_counter() - start) / 60
    _, _, trainer = restore_run(out / "run", [f"trainer.device={args.device}"])
    after = evaluate(trainer.model, trainer.p, args.device)

    report = {"pipeline": str(args.pipeline), "overrides": args.overrides, "labels": args.labels,
              "threads": torch.get_num_threads(), "training_minutes": round(minutes, 2),
              "trained": after, "untrained": before, "reid_metrics": result.metrics}
    (out / "iou.json").write_text(json.dumps(report, indent=2))
    names = [k for k in after["model"] if k != "mean"]
    print(f"part-mask IoU on {after['images']} test images, {after['grid'][0]}x{after['grid'][1]} patch grid "
          f"(training: {minutes:.1f} min)")
    print("| | mean | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for label, row in (("trained", after["model"]), ("untrained", before["model"]), ("stripes", after["stripes"])):
        print(f"| {label} | {row['mean']:.3f} | " + " | ".join(f"{row[n]:.3f}" for n in names) + " |")
    print(f"report: {out / 'iou.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

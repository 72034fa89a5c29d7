"""Framework overhead: images/s of the reid-core trainer against a hand-written PyTorch
training loop with the same model, batches, losses and optimizer, measured in one run.

    python bench/trainer.py [--epochs 2] [--repeats 2] [--workers 1]

Both sides train the quickstart model (ViT, 64x32) on the same PK batches of the
synthetic world with CE (label smoothing 0.1) + batch-hard triplet and AdamW; they
alternate (ours, hand, ours, hand, ...) and the best epoch time of each is reported.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from core.config.loading import load_pipeline
from core.pipeline import build_pipeline
from core.training.run_folder import RunFolder
from core.training.trainer import Trainer

QUICKSTART = Path(__file__).resolve().parents[1] / "pipelines" / "quickstart.yaml"


class HandDataset(torch.utils.data.Dataset):
    """What a hand-written loop would do: decode, transform, return (image, label)."""

    def __init__(self, pipeline):
        self.records, self.world = pipeline.train.records, pipeline.train_datasets[0]
        self.pids, self.transform = pipeline.train.pids, pipeline.train_transform

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.transform(self.world.load_image(self.records[i])), int(self.pids[i])


def batch_hard_triplet(x, y, margin=0.3):
    d = torch.cdist(x, x)
    same = y[:, None] == y[None, :]
    ap = (d * same).max(1).values
    an = (d + same * 1e6).min(1).values
    return F.relu(ap - an + margin).mean()


def hand_epoch(pipeline, plans, workers):
    model = pipeline.model
    backbone, head = model.backbone.model, model.head
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    loader = DataLoader(HandDataset(pipeline), batch_sampler=plans, num_workers=workers)
    model.train()
    n, start = 0, time.perf_counter()
    for images, labels in loader:
        feats = backbone.forward_head(backbone.forward_features(images), pre_logits=True)
        bn = head.bn(feats)
        loss = F.cross_entropy(head.classifier(bn), labels, label_smoothing=0.1) + batch_hard_triplet(feats, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(labels)
    return n / (time.perf_counter() - start)


def ours_epoch(trainer, epoch):
    trainer.position.epoch, trainer.position.step = epoch, 0
    start = time.perf_counter()
    trainer._run_epoch(trainer.p.stages[0], 0)
    return len(trainer.p.train) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    overrides = ["trainer.progress=false", "trainer.eval_before=false", f"trainer.num_workers={args.workers}",
                 "trainer.log_every=10"]
    p = build_pipeline(load_pipeline(QUICKSTART, overrides))
    trainer = Trainer(p, RunFolder(Path("/tmp/bench-trainer-run")))
    trainer._prepare_stage(0)
    hand_pipeline = build_pipeline(load_pipeline(QUICKSTART, overrides))
    ours, hand = [], []
    for r in range(args.repeats):
        p.sampler.set_epoch(r)
        plan = list(iter(p.sampler))  # the same batches for both sides
        ours.append(ours_epoch(trainer, r))
        hand.append(hand_epoch(hand_pipeline, plan, args.workers))
    best_ours, best_hand = max(ours), max(hand)
    print(f"| machine | {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {args.workers} loader worker(s) |")
    print("| side | images/s per epoch (each repeat) | best |")
    print("|---|---|---|")
    print(f"| reid-core trainer | {', '.join(f'{x:.0f}' for x in ours)} | {best_ours:.0f} |")
    print(f"| hand-written loop | {', '.join(f'{x:.0f}' for x in hand)} | {best_hand:.0f} |")
    print(f"\nframework overhead: {100 * (best_hand / best_ours - 1):+.1f}% time per image (best vs best)")


if __name__ == "__main__":
    main()

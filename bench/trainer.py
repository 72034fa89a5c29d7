"""Framework overhead: images/s of the reid-core trainer against a hand-written PyTorch
training loop with the same model, batches, losses and optimizer, measured in one run.

    python bench/trainer.py [--repeats 2] [--workers 1] [--threads N] [--cpu-time]

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


def hand_epoch(pipeline, plans, workers, clock):
    model = pipeline.model
    backbone, head = model.backbone.model, model.head
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    loader = DataLoader(HandDataset(pipeline), batch_sampler=plans, num_workers=workers)
    model.train()
    n, start = 0, clock()
    for images, labels in loader:
        feats = backbone.forward_head(backbone.forward_features(images), pre_logits=True)
        bn = head.bn(feats)
        loss = F.cross_entropy(head.classifier(bn), labels, label_smoothing=0.1) + batch_hard_triplet(feats, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(labels)
    return n / (clock() - start)


def ours_epoch(trainer, epoch, clock):
    trainer.position.epoch, trainer.position.step = epoch, 0
    start = clock()
    trainer._run_epoch(trainer.p.stages[0], 0)
    return len(trainer.p.train) / (clock() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="measure process CPU time instead of wall time (use with --workers 0 "
                             "--threads 1 on a shared machine: other jobs then barely matter)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
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
        ours.append(ours_epoch(trainer, r, clock))
        hand.append(hand_epoch(hand_pipeline, plan, args.workers, clock))
    best_ours, best_hand = max(ours), max(hand)
    print(f"| machine | {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {args.workers} loader worker(s), "
          f"{'CPU' if args.cpu_time else 'wall'} time |")
    print(f"| side | images per {'CPU ' if args.cpu_time else ''}second, per epoch (each repeat) | best |")
    print("|---|---|---|")
    print(f"| reid-core trainer | {', '.join(f'{x:.0f}' for x in ours)} | {best_ours:.0f} |")
    print(f"| hand-written loop | {', '.join(f'{x:.0f}' for x in hand)} | {best_hand:.0f} |")
    print(f"\nframework overhead: {100 * (best_hand / best_ours - 1):+.1f}% time per image (best vs best)")


if __name__ == "__main__":
    main()

"""Framework overhead: images/s of the reid-core trainer against a hand-written PyTorch
training loop with the same model, batches, losses and optimizer, measured in one run.

    python bench/trainer.py [--repeats 2] [--workers 1] [--threads N] [--cpu-time] [--guard-cost]

Both sides train the quickstart model (ViT, 64x32) on the same PK batches of the
synthetic world with CE (label smoothing 0.1) + batch-hard triplet and AdamW; they
alternate (ours, ours without part boxes, hand, ours, ...) and the best epoch time of each
is reported. The second row is our trainer with the synthetic world's part boxes left out
of the samples: the framework carries every per-image annotation a dataset provides, and
the world's boxes go through each torchvision v2 transform with the image; the hand loop
reads none, and no quickstart component reads them either.

`--ops` counts instead the aten operations one training step dispatches on each side
(forward, losses, backward, optimizer; both with the fused AdamW the trainer uses on CUDA),
views and metadata calls apart: on a GPU each is at least one kernel launch, and eager
mode pays ~5-10 us of host time per launch whatever the tensor sizes, which a CPU timing
cannot show.

`--guard-cost` instead times the trainer with its NaN/Inf guard (a device-side check of
the loss and the gradient norm before every optimizer step) against the same trainer with
the guard switched off, alternating, and prints the ratio.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import core.data.loading as loading
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


def ours_epoch(trainer, epoch, clock, part_boxes: bool = True):
    """Images per second of one epoch: the images the epoch's plan holds (as the hand
    loop counts them), not the table's size (an epoch's plan may hold fewer or more).
    `part_boxes` False: the samples leave out the synthetic world's part boxes."""
    trainer.position.epoch, trainer.position.step = epoch, 0
    internal = loading.INTERNAL_EXTRAS
    if not part_boxes:
        loading.INTERNAL_EXTRAS = internal | {"part_boxes"}
    try:
        start = clock()
        trainer._run_epoch(trainer.p.stages[0], 0)
        seconds = clock() - start
    finally:
        loading.INTERNAL_EXTRAS = internal
    images = sum(len(getattr(item, "indices", item)) for item in trainer.plan.plan)
    return images / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="measure process CPU time instead of wall time (use with --workers 0 "
                             "--threads 1 on a shared machine: other jobs then barely matter)")
    parser.add_argument("--ops", action="store_true",
                        help="count the aten operations of one training step on each side (no timing)")
    parser.add_argument("--guard-cost", action="store_true",
                        help="time the trainer with and without its NaN/Inf guard (alternating)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    overrides = ["trainer.progress=false", "trainer.eval_before=false", f"trainer.num_workers={args.workers}",
                 "trainer.log_every=10"]
    p = build_pipeline(load_pipeline(QUICKSTART, overrides))
    trainer = Trainer(p, RunFolder(Path("/tmp/bench-trainer-run")))
    trainer._prepare_stage(0)
    if args.guard_cost:
        guard_cost(trainer, overrides, args.repeats, clock)
        return
    hand_pipeline = build_pipeline(load_pipeline(QUICKSTART, overrides))
    if args.ops:
        op_count(trainer, hand_pipeline)
        return
    ours, boxless, hand = [], [], []
    for r in range(args.repeats):
        p.sampler.set_epoch(r)
        plan = list(iter(p.sampler))  # the same batches for every side
        ours.append(ours_epoch(trainer, r, clock))
        boxless.append(ours_epoch(trainer, r, clock, part_boxes=False))
        hand.append(hand_epoch(hand_pipeline, plan, args.workers, clock))
    best_ours, best_boxless, best_hand = max(ours), max(boxless), max(hand)
    print(f"| machine | {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {args.workers} loader worker(s), "
          f"{'CPU' if args.cpu_time else 'wall'} time |")
    print(f"| side | images per {'CPU ' if args.cpu_time else ''}second, per epoch (each repeat) | best |")
    print("|---|---|---|")
    print(f"| reid-core trainer | {', '.join(f'{x:.0f}' for x in ours)} | {best_ours:.0f} |")
    print(f"| reid-core trainer, part boxes left out | {', '.join(f'{x:.0f}' for x in boxless)} | "
          f"{best_boxless:.0f} |")
    print(f"| hand-written loop | {', '.join(f'{x:.0f}' for x in hand)} | {best_hand:.0f} |")
    print(f"\nframework overhead: {100 * (best_hand / best_ours - 1):+.1f}% time per image (best vs best), "
          f"{paired(ours, hand)}; without the part boxes {100 * (best_hand / best_boxless - 1):+.1f}%, "
          f"{paired(boxless, hand)}")


def paired(ours: list[float], hand: list[float]) -> str:
    """The overhead of each repeat against the hand loop's epoch next to it (the two ran
    seconds apart, so a slow spell of the machine hits both): median and range."""
    over = sorted(100 * (h / o - 1) for o, h in zip(ours, hand))
    return f"paired per repeat median {np.median(over):+.1f}% (range {over[0]:+.1f}% to {over[-1]:+.1f}%)"


#: aten operations that launch no kernel (views, metadata, allocation, host reads)
NO_KERNEL = frozenset({
    "view", "_unsafe_view", "t", "transpose", "expand", "permute", "slice", "select", "unsqueeze", "squeeze",
    "detach", "alias", "as_strided", "split", "split_with_sizes", "unbind", "reshape", "_reshape_alias",
    "lift_fresh", "empty", "empty_like", "new_empty", "empty_strided", "chunk", "narrow", "expand_as", "view_as",
    "_local_scalar_dense"})


def op_count(trainer, hand_pipeline) -> None:
    """The aten operations of one training step (the second: the first builds state) of
    our trainer and of the hand loop on the same batch, and what ours adds, by name."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    from core.data.loading import ImageSamples
    from core.training.trainer import detach_parts

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops: Counter = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    p = trainer.p
    p.sampler.set_epoch(0)
    plan = next(iter(p.sampler))
    samples = ImageSamples(p.train, p.train_datasets, p.train_transform)
    host_batch = trainer.collate([samples[(i, 0, 0)] for i in getattr(plan, "indices", plan)])
    # the optimizer the trainer builds on CUDA (fused); the CPU build loops over parameters
    groups = [{**g, "fused": True, "foreach": None} for g in trainer.optimizer.param_groups]
    trainer.optimizer = torch.optim.AdamW(groups, fused=True)

    def ours():
        batch = trainer._to_device(host_batch)
        total, parts, _ = trainer.forward(batch, train=True)
        parts = detach_parts(parts)
        trainer.scaler.scale(total).backward()
        trainer._optimizer_step(total, parts)

    model = hand_pipeline.model.train()
    backbone, head = model.backbone.model, model.head
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, fused=True)
    reference = trainer._to_device(host_batch)
    images, labels = reference.images, reference.pids

    def hand():
        feats = backbone.forward_head(backbone.forward_features(images), pre_logits=True)
        loss = F.cross_entropy(head.classifier(head.bn(feats)), labels, label_smoothing=0.1) \
            + batch_hard_triplet(feats, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    counts = {}
    for name, step in (("reid-core trainer", ours), ("hand-written loop", hand)):
        with warnings.catch_warnings():  # the trainer's scheduler holds the optimizer replaced above
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            step()
            with Count() as mode:
                step()
        counts[name] = Counter({k: v for k, v in mode.ops.items() if k not in NO_KERNEL})
    ours_ops, hand_ops = counts["reid-core trainer"], counts["hand-written loop"]
    print("| side | aten operations per training step (views and metadata apart) |")
    print("|---|---|")
    for name, ops in counts.items():
        print(f"| {name} | {sum(ops.values())} |")
    extra = ours_ops - hand_ops
    fewer = hand_ops - ours_ops
    print(f"\nours adds {sum(extra.values())}: " + ", ".join(f"{k} {v}" for k, v in extra.most_common()))
    print("ours has fewer: " + (", ".join(f"{k} {v}" for k, v in fewer.most_common()) or "none"))
    print("(on the CPU the trainer also reads the NaN/Inf guard's flag every step: one host read that a GPU "
          "step makes only at logging steps)")


def guard_cost(trainer, overrides, repeats, clock) -> None:
    """The NaN/Inf guard's share of a training epoch: the same trainer twice, one with
    the guard's per-step work (gradient norm, device-side flag update, and on the CPU the
    flag read) switched off, alternating epochs."""
    bare = Trainer(build_pipeline(load_pipeline(QUICKSTART, overrides)), RunFolder(Path("/tmp/bench-trainer-bare")))
    bare._prepare_stage(0)
    bare.guard.update = lambda *args, **kwargs: None
    bare._check_finite = lambda *args, **kwargs: None
    bare._grad_norm = lambda: None
    on, off = [], []
    for r in range(repeats):
        on.append(ours_epoch(trainer, r, clock))
        off.append(ours_epoch(bare, r, clock))
    print(f"| machine | {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__} |")
    print("| trainer | images per second, per epoch (each repeat) | best |")
    print("|---|---|---|")
    print(f"| with the NaN/Inf guard | {', '.join(f'{x:.0f}' for x in on)} | {max(on):.0f} |")
    print(f"| guard switched off | {', '.join(f'{x:.0f}' for x in off)} | {max(off):.0f} |")
    print(f"\nguard cost: {100 * (max(off) / max(on) - 1):+.1f}% time per image (best vs best)")


if __name__ == "__main__":
    main()

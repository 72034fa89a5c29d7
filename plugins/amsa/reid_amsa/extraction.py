"""Features of every training image, for MUVA's memories (VPM-1 before stage 1, VPM-2 at
every stage-2 epoch): the core's `Trainer.extract` with our own forward — the model in
evaluation mode, the test transform, in table order, sharded over DDP processes and
gathered so that every process builds the same memory.

With `trainer.eval_flip` on, each feature is the mean of the image's and its mirror's,
and the mirror is gated by the mirrored part masks: the core's extract flips the images
only, so this forward does the flip itself (masks with images, as in training) and the
core's flip is off while it runs.

`gating` decides the part masks that gate the local tokens while the memory is built:
"labels" — the batch's `part_masks` (the pseudo-labels; MUVA Sec. 3.3: "the visual
tokens building the memory VPM-2 are also obtained with the help of VGE-predicted
masks", and Fig. 2 for stage 1), "stripes" — the fixed thirds, "predicted" — the
backbone's own AM-MSA masks (the only choice for a backbone other than `amsa_clip`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from core.records import Batch

GATINGS = ("labels", "stripes", "predicted")


def check_gating(gating: str, component: str) -> str:
    if gating not in GATINGS:
        raise ValueError(f"{component}: gating must be one of {', '.join(GATINGS)}, got {gating!r}")
    return gating


def active_in_stage(component: Any, trainer: Any) -> bool:
    """Whether `component` is one of the loss terms of the stage that is running."""
    return any(term.module is component for term in getattr(trainer.net, "terms", ()))


def flip_part_masks(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The part masks (B, P, rows * cols), row-major, of the horizontally mirrored image."""
    batch, parts, patches = masks.shape
    rows, cols = int(grid[0]), int(grid[1])
    if rows * cols != patches:
        raise ValueError(f"part masks with {patches} patches do not lie on the {rows} x {cols} patch grid")
    return masks.reshape(batch, parts, rows, cols).flip(-1).reshape(batch, parts, patches)


def mirrored(batch: Batch, grid: tuple[int, int] | None) -> Batch:
    """The batch with its images mirrored left-right and, when present, its part masks with them."""
    extras = dict(batch.extras)
    if "part_masks" in extras:
        if grid is None:
            raise ValueError("mirroring part masks needs the backbone's patch grid")
        extras["part_masks"] = flip_part_masks(extras["part_masks"], grid)
    return dataclasses.replace(batch, images=batch.images.flip(-1), extras=extras)


def memory_forward(backbone: Any, head: Any, gating: str, component: str, keys: tuple[str, ...],
                   flip: bool) -> Callable[[Batch], dict[str, torch.Tensor]]:
    """The forward a memory is built with: the backbone gated by `gating`'s masks, then
    the head; with `flip`, the mean of the outputs `keys` over the image and its mirror
    (gated by the mirrored masks)."""

    def once(batch: Batch) -> dict[str, torch.Tensor]:
        if gating == "predicted":
            features = backbone(batch)
        else:
            features = backbone(batch, gate_masks=backbone.gate_masks_from(gating, batch, component))
        return {**features, **head(features, batch)}

    def forward(batch: Batch) -> dict[str, torch.Tensor]:
        out = once(batch)
        if not flip:
            return out
        other = once(mirrored(batch, getattr(backbone, "patch_grid", None)))
        return {k: (out[k].float() + other[k].float()) / 2 for k in keys}

    return forward


@torch.no_grad()
def training_features(trainer: Any, key: str, gating: str, component: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (n, D) float, pids (n,)) of the whole training table, on the trainer's device."""
    net = trainer.net
    backbone, head = net.backbone, net.head
    if gating != "predicted" and not hasattr(backbone, "gate_masks_from"):
        raise ValueError(f"{component}: gating '{gating}' needs the `amsa_clip` backbone (which can gate its "
                         f"local tokens with given masks); this backbone is {type(backbone).__name__}: use "
                         "gating: predicted")
    flip = bool(trainer.cfg.eval_flip)
    forward = memory_forward(backbone, head, gating, component, ("embedding", key), flip)
    was_training = net.training
    net.eval()
    trainer.cfg.eval_flip = False  # the forward mirrors images and masks itself
    try:
        table = trainer.p.train
        extracted = trainer.extract(table, trainer.p.train_datasets, outputs=(key,), forward=forward)
    finally:
        trainer.cfg.eval_flip = flip
        net.train(was_training)
    features = extracted.extras[key]
    return features, torch.as_tensor(table.pids, device=features.device, dtype=torch.long)

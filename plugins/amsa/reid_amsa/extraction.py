"""Features of every training image, for MUVA's memories (VPM-1 before stage 1, VPM-2 at
every stage-2 epoch): the core's `Trainer.extract` with our own forward — the model in
evaluation mode, the test transform (flip-averaged when `trainer.eval_flip` is on), in
table order, sharded over DDP processes and gathered so that every process builds the
same memory.

`gating` decides the part masks that gate the local tokens while the memory is built:
"labels" — the batch's `part_masks` (the pseudo-labels; MUVA Sec. 3.3: "the visual
tokens building the memory VPM-2 are also obtained with the help of VGE-predicted
masks", and Fig. 2 for stage 1), "stripes" — the fixed thirds, "predicted" — the
backbone's own AM-MSA masks (the only choice for a backbone other than `amsa_clip`).
"""

from __future__ import annotations

from typing import Any

import torch

GATINGS = ("labels", "stripes", "predicted")


def check_gating(gating: str, component: str) -> str:
    if gating not in GATINGS:
        raise ValueError(f"{component}: gating must be one of {', '.join(GATINGS)}, got {gating!r}")
    return gating


def active_in_stage(component: Any, trainer: Any) -> bool:
    """Whether `component` is one of the loss terms of the stage that is running."""
    return any(term.module is component for term in getattr(trainer.net, "terms", ()))


@torch.no_grad()
def training_features(trainer: Any, key: str, gating: str, component: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (n, D) float, pids (n,)) of the whole training table, on the trainer's device."""
    net = trainer.net
    backbone, head = net.backbone, net.head
    if gating != "predicted" and not hasattr(backbone, "gate_masks_from"):
        raise ValueError(f"{component}: gating '{gating}' needs the `amsa_clip` backbone (which can gate its "
                         f"local tokens with given masks); this backbone is {type(backbone).__name__}: use "
                         "gating: predicted")

    def forward(batch):
        if gating == "predicted":
            features = backbone(batch)
        else:
            features = backbone(batch, gate_masks=backbone.gate_masks_from(gating, batch, component))
        return {**features, **head(features, batch)}

    was_training = net.training
    net.eval()
    try:
        table = trainer.p.train
        extracted = trainer.extract(table, trainer.p.train_datasets, outputs=(key,), forward=forward)
    finally:
        net.train(was_training)
    features = extracted.extras[key]
    return features, torch.as_tensor(table.pids, device=features.device, dtype=torch.long)

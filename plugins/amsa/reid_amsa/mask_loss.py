"""L_mask, MUVA's part-mask supervision (YAML name `muva_mask`), eqs. 8-9: the scores of
every AM-MSA layer against the part masks G (B, P, N) on the patch grid.

    L_bce  = mean over (sample, layer, part, patch) of BCE(sigmoid(M_l[p, i]), G[p, i])
    L_dice = 1 - mean over (sample, layer, part) of
             (2 sum_i M~_l[p, i] G[p, i] + s) / (sum_i M~_l[p, i] + sum_i G[p, i] + s),  s = 1e-3
    L_mask = L_bce + L_dice

(the dice of each mask summed over its patches, as METHODS.md and the dice loss of
Milletari et al.; eq. 8 prints it per patch). G is the batch field `part_masks` — a
labeler's output (e.g. the vge labeler's pseudo-labels, through the annotation file), or
any (B, P, rows * cols) {0, 1} masks on the backbone's patch grid, flipped with the
image by the core — or, with `target: stripes`, the fixed equal thirds.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from core.context import BuildContext
from core.interfaces import Loss, read_output
from core.records import Batch
from reid_amsa.backbone import PARTS_KEY
from reid_amsa.masking import stripe_masks

NAME = "loss 'muva_mask'"
TARGETS = ("masks", "stripes")


def mask_loss_terms(logits: torch.Tensor, targets: torch.Tensor,
                    smooth: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_bce, L_dice) of scores (B, L, P, N) against {0, 1} targets (B, P, N)."""
    logits = logits.float()
    g = targets.to(logits.device, logits.dtype)[:, None].expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, g)
    p = torch.sigmoid(logits)
    dice = (2.0 * (p * g).sum(-1) + smooth) / (p.sum(-1) + g.sum(-1) + smooth)
    return bce, 1.0 - dice.mean()


def mask_iou(probabilities: torch.Tensor, targets: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Mean over (sample, part) of the IoU of (p > threshold) with the target (1 where both are empty)."""
    pred = probabilities > threshold
    truth = targets > 0.5
    inter = (pred & truth).sum(-1).float()
    union = (pred | truth).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).mean()


class PartMaskLoss(Loss):
    """Keys: `target` (masks: the batch's `part_masks`; stripes: equal thirds),
    `bce_weight` / `dice_weight` (1.0 each), `smooth` s (1e-3), `logits` (the backbone
    output read: "part_mask_logits" (B, L, P, N)). Logs "bce", "dice" and "iou" (the last
    layer's masks at t = 0.5 against the target)."""

    def __init__(self, ctx: BuildContext, target: Literal["masks", "stripes"] = "masks", bce_weight: float = 1.0,
                 dice_weight: float = 1.0, smooth: float = 1e-3, logits: str = "part_mask_logits") -> None:
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"{NAME}: target must be one of {', '.join(TARGETS)}, got {target!r}")
        if smooth <= 0:
            raise ValueError(f"{NAME}: smooth must be > 0, got {smooth}")
        self.target, self.logits = target, logits
        self.bce_weight, self.dice_weight, self.smooth = float(bce_weight), float(dice_weight), float(smooth)
        if ctx.extras.get(PARTS_KEY) == 0:
            raise ValueError(f"{NAME}: the backbone has no local tokens (amsa_clip `parts: 0`, the single-grained "
                             "model), so no part scores to supervise; leave muva_mask out or set parts >= 1")
        self.grid = tuple(ctx.patch_grid) if ctx.patch_grid else None
        if target == "stripes" and self.grid is None:
            raise ValueError(f"{NAME}: target 'stripes' needs the backbone's patch grid (ctx.patch_grid), "
                             "which this backbone does not have")

    def targets(self, batch: Batch, parts: int, patches: int) -> torch.Tensor:
        if self.target == "stripes":
            stripes = stripe_masks(self.grid, parts).float()
            return stripes.to(batch.pids.device).expand(len(batch), -1, -1)
        masks = batch.require("part_masks", NAME)
        if tuple(masks.shape[1:]) != (parts, patches):
            raise ValueError(f"{NAME}: the batch's part_masks have shape {tuple(masks.shape)} but the backbone "
                             f"predicts {parts} parts on {patches} patches (patch grid {self.grid}); label the "
                             "images again for this backbone and image size")
        return masks

    def forward(self, outputs: dict[str, torch.Tensor], batch: Batch):
        logits = read_output(outputs, self.logits, NAME, "the `amsa_clip` backbone (variant adaptive) outputs "
                                                         "the part scores of every layer")
        if logits.dim() != 4:
            raise ValueError(f"{NAME}: '{self.logits}' must be (batch, layers, parts, patches), got "
                             f"{tuple(logits.shape)}")
        g = self.targets(batch, logits.shape[2], logits.shape[3]).to(logits.device)
        bce, dice = mask_loss_terms(logits, g, self.smooth)
        with torch.no_grad():
            iou = mask_iou(torch.sigmoid(logits[:, -1].float()), g)
        return self.bce_weight * bce + self.dice_weight * dice, {"bce": bce, "dice": dice, "iou": iou}

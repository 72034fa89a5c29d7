"""IRM's identification losses (YAML loss name `instruct_id`): cross-entropy on each
classifier's logits, weighted (METHODS.md "Instruct-ReID", total):

    L_id = 0.5 (CE_bio + CE_clo) + CE_global

Plain cross-entropy by default, as the authors' code (`CrossEntropyLoss()`); label
smoothing (Szegedy et al. 2016 Sec. 7) is our option, `label_smoothing: 0.1`, spread over
the classes a row can take (its task's block: -inf logits are no class). Targets are the
head's "id_targets" (the identity's column in its task's classifier) when it outputs
them, the batch's identities otherwise. Rows without an image (text-to-image queries)
have no "global" logits: `row_masks` maps a logits key to the bool output that selects
its rows (default: global_logits on `has_image`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.interfaces import Loss
from core.records import Batch
from reid_instruct_editor.rows import check_weights, read_rows

NAME = "loss 'instruct_id'"


def smoothed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, eps: float,
                           rows: torch.Tensor | None = None) -> torch.Tensor:
    """mean of -sum_k q_k log p_k with q = (1 - eps) one_hot(y) + eps / N_row, N_row the
    row's classes (its finite logits); plain CE for eps = 0. `rows` (bool (n,)): the mean
    over these rows only (0 if none), as masks: no host sync."""
    log_p = F.log_softmax(logits.float(), dim=1)
    per_row = -log_p.gather(1, targets[:, None]).squeeze(1)
    if eps != 0.0:
        valid = torch.isfinite(logits)
        uniform = log_p.masked_fill(~valid, 0.0).sum(dim=1) / valid.sum(dim=1)
        per_row = (1.0 - eps) * per_row - eps * uniform
    if rows is None:
        return per_row.mean()
    return torch.where(rows, per_row, torch.zeros_like(per_row)).sum() / rows.sum().clamp(min=1)


class InstructIdentityLoss(Loss):
    """sum_k weights[k] CE(logits[k]) over each key's rows; logs each CE and the top-1
    accuracy of the first logits. Keys: `logits`, `weights`, `label_smoothing` (0: plain
    CE, the authors'), `row_masks`, `targets` (the output holding the targets)."""

    def __init__(self, logits: list[str] = ["bio_logits", "clo_logits", "global_logits"],  # noqa: B006
                 weights: list[float] = [0.5, 0.5, 1.0], label_smoothing: float = 0.0,  # noqa: B006
                 row_masks: dict[str, str] = {"global_logits": "has_image"},  # noqa: B006
                 targets: str = "id_targets") -> None:
        super().__init__()
        self.weights = check_weights(logits, weights, "logits", NAME)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"{NAME}: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.keys, self.eps, self.row_masks = list(logits), float(label_smoothing), dict(row_masks)
        self.targets = targets

    def forward(self, outputs: dict[str, torch.Tensor], batch: Batch):
        total, parts = None, {}
        for key, weight in zip(self.keys, self.weights):
            logits, rows = read_rows(outputs, key, self.row_masks, NAME, "the `instruct_editor` head in training")
            given = outputs.get(self.targets)
            targets = (given if given is not None else batch.pids).to(logits.device, torch.long)
            # masks, not selected rows (no host sync); an empty mask gives 0 (and acc 0)
            loss = smoothed_cross_entropy(logits, targets, self.eps, rows)
            total = weight * loss if total is None else total + weight * loss
            parts[key.removesuffix("_logits")] = loss.detach()
            if "acc" not in parts:
                hit = (logits.argmax(1) == targets).float()
                parts["acc"] = (hit.mean() if rows is None else
                                (hit * rows).sum() / rows.sum().clamp(min=1)).detach()
        return total, parts

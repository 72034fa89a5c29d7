"""Supervised contrastive loss (YAML name `supcon`): Khosla et al. 2020, "Supervised
Contrastive Learning", Eq. 2 (L_out, the variant the paper finds best):

  L = sum_i -1/|P(i)| sum_(p in P(i)) log( exp(z_i . z_p / tau) / sum_(a != i) exp(z_i . z_a / tau) )

over L2-normalised features z, with P(i) the other samples of i's identity in the batch
(an identity-balanced P x K batch provides them; anchors without a positive are left out)
and tau the temperature. Averaged over the anchors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.interfaces import Loss, read_output
from core.records import Batch


class SupConLoss(Loss):
    def __init__(self, temperature: float = 0.1, features: str = "features") -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"loss 'supcon': temperature must be > 0, got {temperature}")
        self.temperature, self.features = float(temperature), features

    def forward(self, outputs: dict[str, torch.Tensor], batch: Batch):
        z = F.normalize(read_output(outputs, self.features, "loss 'supcon'",
                                    "set the loss key `features`; `bnneck` produces 'features'").float(), dim=1)
        pids = batch.pids.to(z.device)
        eye = torch.eye(len(pids), dtype=torch.bool, device=z.device)
        pos = (pids[:, None] == pids[None, :]) & ~eye
        logits = (z @ z.t() / self.temperature).masked_fill(eye, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        valid = pos.any(dim=1)
        if not bool(valid.any()):
            return z.sum() * 0.0, {}
        per_anchor = -(log_prob.masked_fill(~pos, 0.0)).sum(dim=1) / pos.sum(dim=1).clamp(min=1)
        return per_anchor[valid].mean(), {}

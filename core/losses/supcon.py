"""Supervised contrastive loss (YAML name `supcon`): Khosla et al. 2020, "Supervised
Contrastive Learning", Eq. 2 (L_out, the variant the paper finds best):

  L = sum_i -1/|P(i)| sum_(p in P(i)) log( exp(z_i . z_p / tau) / sum_(a != i) exp(z_i . z_a / tau) )

over L2-normalised features z, with P(i) the other samples of i's identity in the batch
(an identity-balanced P x K batch provides them; anchors without a positive are left out)
and tau the temperature. Averaged over the anchors.

Under DDP (`gather: true`, the default) the features and identities of every process are
gathered with their gradient first (as the triplet loss does): each anchor contrasts with
the whole global batch, as on one process. The anchors' mean is taken with masks, not a
selection, so the step makes no host sync.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.interfaces import Loss, read_output
from core.records import Batch
from core.training import distributed as D


class SupConLoss(Loss):
    def __init__(self, temperature: float = 0.1, features: str = "features", gather: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"loss 'supcon': temperature must be > 0, got {temperature}")
        self.temperature, self.features, self.gather = float(temperature), features, bool(gather)

    def forward(self, outputs: dict[str, torch.Tensor], batch: Batch):
        x = read_output(outputs, self.features, "loss 'supcon'",
                        "set the loss key `features`; `bnneck` produces 'features'").float()
        pids = batch.pids.to(x.device)
        if self.gather:  # under DDP: the one-process loss of the global batch (module docstring)
            x, pids = D.gather_with_labels(x, pids, D.batch_row_counts())
        z = F.normalize(x, dim=1)
        eye = torch.eye(len(pids), dtype=torch.bool, device=z.device)
        pos = (pids[:, None] == pids[None, :]) & ~eye
        # an anchor's own similarity leaves the denominator; a finite fill (not -inf) keeps a
        # one-sample batch's row finite, and exp of it is exactly 0 in fp32 beside |s| <= 1/tau
        logits = (z @ z.t() / self.temperature).masked_fill(eye, -1e9)
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        valid = pos.any(dim=1)
        per_anchor = -(log_prob.masked_fill(~pos, 0.0)).sum(dim=1) / pos.sum(dim=1).clamp(min=1)
        # anchors without a positive leave the mean (0, still connected to the graph, when none is left)
        return torch.where(valid, per_anchor, torch.zeros_like(per_anchor)).sum() / valid.sum().clamp(min=1), {}

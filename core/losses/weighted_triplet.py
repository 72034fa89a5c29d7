"""Weighted regularised triplet loss (YAML name `wrt`): AGW, Ye et al. 2021, "Deep Learning
for Person Re-identification: A Survey and Outlook", Sec. 4.1 ("Weighted Regularization Triplet").

For anchor i with positives P(i) and negatives N(i) in the batch:
  w_ij^p = exp(d_ij) / sum_(k in P(i)) exp(d_ik),   w_ik^n = exp(-d_ik) / sum_(k in N(i)) exp(-d_ik)
  L_wrt(i) = log(1 + exp(sum_j w_ij^p d_ij - sum_k w_ik^n d_ik)),
a soft, margin-free batch-hard triplet: far positives and near negatives weigh most, with
no hyper-parameter. The weights are not detached (as in the authors' code). P(i) leaves
out the anchor itself (the authors' code keeps it at distance 0, with a near-zero weight).
Euclidean distances as in the authors' code (`metric: cosine` for cosine distances).
Under DDP (`gather: true`, the default) the features and identities of every process are
gathered with their gradient first, as the triplet loss does (core.losses.triplet): each
anchor weighs the positives and negatives of the whole global batch, as on one process
(the authors train with DataParallel, which computes the loss on the gathered batch).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from core.interfaces import Loss, read_output
from core.records import Batch
from core.training import distributed as D


def _pairwise(x: torch.Tensor, metric: str) -> torch.Tensor:
    if metric == "cosine":
        x = F.normalize(x, dim=1)
        return 1.0 - x @ x.t()
    d2 = (x[:, None, :] - x[None, :, :]).pow(2).sum(-1)
    return d2.clamp(min=1e-12).sqrt()


def _masked_softmax(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    values = values.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(values, dim=1)
    return torch.nan_to_num(weights, nan=0.0)


class WeightedRegularizedTriplet(Loss):
    def __init__(self, features: str = "features", metric: Literal["euclidean", "cosine"] = "euclidean",
                 gather: bool = True) -> None:
        super().__init__()
        if metric not in ("euclidean", "cosine"):
            raise ValueError(f"loss 'wrt': metric must be euclidean or cosine, got {metric!r}")
        self.features, self.metric, self.gather = features, metric, bool(gather)

    def forward(self, outputs: dict[str, torch.Tensor], batch: Batch):
        x = read_output(outputs, self.features, "loss 'wrt'",
                        "set the loss key `features`; `bnneck` produces 'features'").float()
        pids = batch.pids.to(x.device)
        if self.gather:  # under DDP: the one-process loss of the global batch (module docstring)
            x, pids = D.gather_with_labels(x, pids, D.batch_row_counts())
        dist = _pairwise(x, self.metric)
        same = pids[:, None] == pids[None, :]
        eye = torch.eye(len(pids), dtype=torch.bool, device=x.device)
        pos, neg = same & ~eye, ~same
        # anchors without a positive or a negative leave the means (0 when none is left);
        # masks, not a selection or a branch on the data: no host sync, no graph break
        valid = pos.any(dim=1) & neg.any(dim=1)
        count = valid.sum().clamp(min=1)

        def mean(v: torch.Tensor) -> torch.Tensor:
            return torch.where(valid, v, torch.zeros_like(v)).sum() / count

        d_ap = (_masked_softmax(dist, pos) * dist).sum(dim=1)
        d_an = (_masked_softmax(-dist, neg) * dist).sum(dim=1)
        loss = mean(F.softplus(d_ap - d_an))
        return loss, {"d_ap": mean(d_ap.detach()), "d_an": mean(d_an.detach())}

"""Batch-hard triplet loss (YAML name `triplet`).

Hermans et al. 2017, "In Defense of the Triplet Loss for Person Re-Identification",
Eq. 5 (batch hard) with the hinge [m + d_ap - d_an]_+, or Sec. 3.3's soft margin
log(1 + exp(d_ap - d_an)): for each anchor in a P x K batch, its farthest positive and
its nearest negative. Used with the BNNeck's pre-BN feature in the Bag of Tricks
baseline (Luo et al. 2019).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from core.interfaces import Loss, read_output
from core.records import Batch

METRICS = ("euclidean", "cosine")


def euclidean_distances(x: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances; the squared distance is clamped before the sqrt so
    identical vectors give a zero (not NaN) gradient."""
    sq = (x * x).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.t())
    return d2.clamp(min=1e-12).sqrt()


def cosine_distances(x: torch.Tensor) -> torch.Tensor:
    x = F.normalize(x, dim=1)
    return 1.0 - x @ x.t()


class TripletLoss(Loss):
    """Mean over anchors of [m + max_p d(a, p) - min_n d(a, n)]_+ (or the soft margin).

    `soft_margin: true` or `margin: null` selects the soft margin (then `margin` is not
    used). Anchors with no positive (an identity alone in the batch) or no negative
    (a one-identity batch) are left out of the mean; a batch without any valid anchor
    gives a zero loss that is still connected to the graph. Logs the mean hardest
    positive and negative distances and "frac_active", the share of valid anchors whose
    triplet violates the margin (d_ap - d_an + m > 0; m = 0 for the soft margin).
    """

    def __init__(self, margin: float | None = 0.3, soft_margin: bool = False,
                 features: str = "features", metric: Literal["euclidean", "cosine"] = "euclidean",
                 normalize: bool = False) -> None:
        super().__init__()
        if metric not in METRICS:
            raise ValueError(f"loss 'triplet': metric must be one of {', '.join(METRICS)}, got {metric!r}")
        if margin is not None and margin < 0:
            raise ValueError(f"loss 'triplet': margin must be >= 0 or null (soft margin), got {margin}")
        self.soft_margin = bool(soft_margin) or margin is None
        self.margin = 0.0 if self.soft_margin else float(margin)
        self.features, self.metric, self.normalize = features, metric, normalize

    def forward(self, outputs: dict[str, torch.Tensor], batch: Batch):
        x = read_output(outputs, self.features, "loss 'triplet'",
                        "set the loss key `features`; `bnneck` produces 'features'").float()
        if self.normalize:
            x = F.normalize(x, dim=1)
        dist = euclidean_distances(x) if self.metric == "euclidean" else cosine_distances(x)
        pids = batch.pids.to(x.device)
        same = pids[:, None] == pids[None, :]
        eye = torch.eye(len(pids), dtype=torch.bool, device=x.device)
        pos, neg = same & ~eye, ~same
        valid = pos.any(dim=1) & neg.any(dim=1)
        if not bool(valid.any()):
            zero = x.sum() * 0.0
            return zero, {"d_ap": zero.detach(), "d_an": zero.detach(), "frac_active": zero.detach()}
        d_ap = torch.where(pos, dist, torch.full_like(dist, float("-inf"))).max(dim=1).values[valid]
        d_an = torch.where(neg, dist, torch.full_like(dist, float("inf"))).min(dim=1).values[valid]
        gap = d_ap - d_an
        losses = F.softplus(gap) if self.soft_margin else F.relu(gap + self.margin)
        return losses.mean(), {
            "d_ap": d_ap.detach().mean(),
            "d_an": d_an.detach().mean(),
            "frac_active": (gap.detach() + self.margin > 0).float().mean(),
        }

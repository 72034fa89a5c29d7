"""Batch-hard triplet loss (YAML name `triplet`).

Hermans et al. 2017, "In Defense of the Triplet Loss for Person Re-Identification",
Eq. 5 (batch hard) with the hinge [m + d_ap - d_an]_+, or Sec. 3.3's soft margin
log(1 + exp(d_ap - d_an)): for each anchor in a P x K batch, its farthest positive and
its nearest negative. Used with the BNNeck's pre-BN feature in the Bag of Tricks
baseline (Luo et al. 2019).

Distances come from coordinate differences in fp32 outside autocast (`euclidean_distances`).
Under DDP (`gather: true`, the default) every process's features and identities are
gathered with their gradient before mining (core.training.distributed), and each process
computes the loss of the whole global batch: hardest positives and negatives are mined
across processes, as on one process. (DDP averages the processes' gradients and the
gather's backward sums them, so the update equals one process's.) A loss that gathers
itself and calls this one sets `gather: false`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from core.interfaces import Loss, read_output
from core.records import Batch
from core.training import distributed as D
from core.training import precision as P

METRICS = ("euclidean", "cosine")


def euclidean_distances(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise Euclidean distances between the rows of `x` and of `y` (default `x`), in
    fp32 outside autocast and from the coordinate differences, never as
    sqrt(|a|^2 + |b|^2 - 2 a.b): that form cancels catastrophically for features of large
    norm in low precision (bf16 under autocast, TF32 matmuls) — for norms ~26 it errs by
    up to 2.0 against a 0.3 margin. Identical rows give distance 0 and a zero gradient."""
    x = x.float()
    y = x if y is None else y.float()
    with P.loss_region(x.device):
        return torch.cdist(x[None], y[None], compute_mode="donot_use_mm_for_euclid_dist")[0]


def cosine_distances(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise 1 - cos between the rows of `x` and `y` (default `x`), in fp32 outside autocast."""
    with P.loss_region(x.device):
        a = F.normalize(x.float(), dim=1)
        b = a if y is None else F.normalize(y.float(), dim=1)
        return 1.0 - a @ b.t()


def row_distances(a: torch.Tensor, b: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """d(a_i, b_i) for each row i, in fp32 outside autocast (Euclidean from the difference;
    the square clamped so equal rows have a finite gradient)."""
    with P.loss_region(a.device):
        a, b = a.float(), b.float()
        if metric == "cosine":
            return 1.0 - (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(1)
        return (a - b).pow(2).sum(1).clamp(min=1e-12).sqrt()


def pairwise_distances(x: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    return euclidean_distances(x) if metric == "euclidean" else cosine_distances(x)


def batch_hard_pairs(x: torch.Tensor, pids: torch.Tensor, metric: str,
                     rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d_ap, d_an, valid) per anchor of batch-hard mining (Hermans et al. 2017): the
    farthest positive and the nearest negative, among `rows` only when given (a bool mask:
    anchors, positives and negatives are its rows). An anchor without a positive or a
    negative is not `valid`. Masks, not boolean indexing or a branch on the data: no host
    sync on CUDA (issue 19). Mining uses the detached matrix; the chosen pairs' distances
    are recomputed from their differences, so the gradient is batch-hard's (max/min pass it
    to the chosen pair only) and exact in any precision."""
    same = pids[:, None] == pids[None, :]
    eye = torch.eye(len(pids), dtype=torch.bool, device=x.device)
    pos, neg = same & ~eye, ~same
    if rows is not None:
        member = rows[:, None] & rows[None, :]
        pos, neg = pos & member, neg & member
    valid = pos.any(dim=1) & neg.any(dim=1)
    with torch.no_grad():
        dist = pairwise_distances(x.detach(), metric)
        hardest_pos = torch.where(pos, dist, torch.full_like(dist, float("-inf"))).argmax(dim=1)
        hardest_neg = torch.where(neg, dist, torch.full_like(dist, float("inf"))).argmin(dim=1)
    return row_distances(x, x[hardest_pos], metric), row_distances(x, x[hardest_neg], metric), valid


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
                 normalize: bool = False, gather: bool = True) -> None:
        super().__init__()
        if metric not in METRICS:
            raise ValueError(f"loss 'triplet': metric must be one of {', '.join(METRICS)}, got {metric!r}")
        if margin is not None and margin < 0:
            raise ValueError(f"loss 'triplet': margin must be >= 0 or null (soft margin), got {margin}")
        self.soft_margin = bool(soft_margin) or margin is None
        self.margin = 0.0 if self.soft_margin else float(margin)
        self.features, self.metric, self.normalize, self.gather = features, metric, normalize, bool(gather)

    def forward(self, outputs: dict[str, torch.Tensor], batch: Batch):
        x = read_output(outputs, self.features, "loss 'triplet'",
                        "set the loss key `features`; `bnneck` produces 'features'").float()
        pids = batch.pids.to(x.device)
        if self.gather:  # under DDP: the one-process loss of the global batch (module docstring)
            x, pids = D.gather_with_labels(x, pids, D.batch_row_counts())
        if self.normalize:
            x = F.normalize(x, dim=1)
        d_ap, d_an, valid = batch_hard_pairs(x, pids, self.metric)
        valid = valid.float()
        count = valid.sum().clamp(min=1.0)
        gap = d_ap - d_an
        losses = F.softplus(gap) if self.soft_margin else F.relu(gap + self.margin)
        mean = lambda v: (v * valid).sum() / count  # noqa: E731 - the mean over valid anchors
        return mean(losses), {
            "d_ap": mean(d_ap.detach()),
            "d_an": mean(d_an.detach()),
            "frac_active": mean((gap.detach() + self.margin > 0).float()),
        }

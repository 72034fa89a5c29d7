"""The adaptive triplet loss of IRM (YAML loss name `adaptive_triplet`): Instruct-ReID++
Eqs. 11-13, METHODS.md "Instruct-ReID".

s(i, j) is the cosine similarity of the two samples' instruction embeddings (detached).
For anchor i: p1 its hardest positive, p2 its second-hardest positive (largest and
second-largest distance among the other samples of its identity), n its hardest
negative, s1 = s(i, p1), s2 = s(i, p2):

    L13 = mean_i max(0, d(i, p1) - d(i, n) + m s1)
    L11 = mean_i max(0, sign(s1 - s2) (d(i, p1) - d(i, p2)) + m |s1 - s2|)
    AT  = 0.1 L11 + L13,            m = 0.3

L13 is batch-hard triplet whose margin shrinks for a positive with a different
instruction; L11 orders the two hardest positives by instruction similarity (the one
whose instruction is closer to the anchor's must be nearer, by m |s1 - s2|). With one
instruction for all samples, s = 1: L13 is batch-hard triplet with margin m, L11 = 0.
Anchors without a positive or a negative leave L13's mean; anchors with fewer than two
positives leave L11's.

The paper's total puts AT on three features with weight alpha = 3:
    alpha 0.5 (AT_bio + AT_clo) + alpha AT_global
= `{name: adaptive_triplet, features: [bio_bn, clo_bn, global], weights: [0.5, 0.5, 1.0], weight: 3}`
(the stream features after the shared BN, the image class token before its BN, as the
authors' code feeds them).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from core.interfaces import Loss, read_output
from core.losses.triplet import cosine_distances, euclidean_distances
from core.records import Batch
from core.training import distributed as D
from reid_instruct_editor.rows import check_weights, read_rows

NAME = "loss 'adaptive_triplet'"


def adaptive_triplet(x: torch.Tensor, pids: torch.Tensor, s: torch.Tensor, margin: float = 0.3, l11_weight: float = 0.1,
                     metric: str = "euclidean", rows: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """AT of features x (n, d) with identities `pids` (n,) and instruction similarities s (n, n).

    `rows` (bool (n,)): only these rows are anchors, positives and negatives — the loss of
    x[rows], computed as masks on the whole batch (a selected sub-batch has a size only the
    data knows: a host sync per selection on a GPU)."""
    dist = euclidean_distances(x) if metric == "euclidean" else cosine_distances(x)
    n = len(pids)
    same = pids[:, None] == pids[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    pos, neg = same & ~eye, ~same
    if rows is not None:
        pair = rows[:, None] & rows[None, :]
        pos, neg = pos & pair, neg & pair
    num_pos = pos.sum(1)
    zero = x.sum() * 0.0
    if n < 2:
        return zero, {"l11": zero.detach(), "l13": zero.detach()}
    hardest = torch.where(pos, dist, torch.full_like(dist, float("-inf"))).topk(2, dim=1)
    # anchors with fewer positives read 0 instead of -inf (they leave the means below)
    none = torch.zeros_like(hardest.values[:, 0])
    d1 = torch.where(num_pos >= 1, hardest.values[:, 0], none)
    d2 = torch.where(num_pos >= 2, hardest.values[:, 1], none)
    p1, p2 = hardest.indices[:, 0], hardest.indices[:, 1]
    index = torch.arange(n, device=x.device)
    s1, s2 = s[index, p1], s[index, p2]
    d_an = torch.where(neg, dist, torch.full_like(dist, float("inf"))).min(dim=1).values
    valid13 = (num_pos >= 1) & neg.any(dim=1)  # an anchor outside `rows` has neither
    valid11 = num_pos >= 2
    l13 = _masked_mean(F.relu(d1 - d_an + margin * s1), valid13) + zero
    gap = s1 - s2
    l11 = _masked_mean(F.relu(torch.sign(gap) * (d1 - d2) + margin * gap.abs()), valid11) + zero
    return l11_weight * l11 + l13, {"l11": l11.detach(), "l13": l13.detach()}


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean of values[mask], 0 when the mask is empty; no host sync (torch.where, not a
    product: an excluded row's inf never reaches the sum)."""
    return torch.where(mask, values, torch.zeros_like(values)).sum() / mask.sum().clamp(min=1)


class AdaptiveTripletLoss(Loss):
    """sum_k weights[k] AT(features[k]) (module docstring). Keys: `features`, `weights`,
    `margin` (m), `l11_weight` (0.1), `metric` (euclidean, cosine), `instruction` (the
    output holding instruction embeddings), `row_masks` (feature -> bool output of the
    rows it has; default: global on has_image)."""

    def __init__(self, features: list[str] = ["bio_bn", "clo_bn", "global"],  # noqa: B006 - YAML default
                 weights: list[float] = [0.5, 0.5, 1.0], margin: float = 0.3, l11_weight: float = 0.1,  # noqa: B006
                 metric: Literal["euclidean", "cosine"] = "euclidean", instruction: str = "instruction_embedding",
                 row_masks: dict[str, str] = {"global": "has_image"}) -> None:  # noqa: B006
        super().__init__()
        self.weights = check_weights(features, weights, "features", NAME)
        if margin < 0 or l11_weight < 0:
            raise ValueError(f"{NAME}: margin and l11_weight must be >= 0, got {margin} and {l11_weight}")
        if metric not in ("euclidean", "cosine"):
            raise ValueError(f"{NAME}: metric must be euclidean or cosine, got {metric!r}")
        self.features, self.metric = list(features), metric
        self.margin, self.l11_weight = float(margin), float(l11_weight)
        self.instruction, self.row_masks = instruction, dict(row_masks)

    def forward(self, outputs: dict[str, torch.Tensor], batch: Batch):
        # under DDP: mined over every process's rows, as on one process (core's triplet)
        keys = [k for k in {*self.features, self.instruction, *self.row_masks.values()} if k in outputs]
        outputs, batch = D.gather_for_loss(outputs, batch, sorted(keys))
        emb = read_output(outputs, self.instruction, NAME, "the `instruct_editor` backbone produces "
                          "'instruction_embedding'").detach().float()
        emb = F.normalize(emb, dim=1)
        sim = emb @ emb.t()
        total, parts = None, {}
        for key, weight in zip(self.features, self.weights):
            x, rows = read_rows(outputs, key, self.row_masks, NAME, "the `instruct_editor` backbone and head")
            pids, s = batch.pids.to(x.device), sim.to(x.device)
            loss, logged = adaptive_triplet(x.float(), pids, s, self.margin, self.l11_weight, self.metric, rows)
            total = weight * loss if total is None else total + weight * loss
            parts[key] = loss.detach()
            parts.update({f"{key}/{k}": v for k, v in logged.items()})
        return total, parts

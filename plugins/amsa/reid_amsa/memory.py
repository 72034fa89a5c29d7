"""Prototypical memories of MUVA (Sec. 3.1.2): per-identity centroids of normalised
features (VPM-1, VPM-2), and VPM-2's momentum update with the hardest sample (eq. 3).

    M[c] = normalise(mean_{i: y_i = c} normalise(x_i))                     (centroid)
    M[y] <- normalise(gamma M[y] + (1 - gamma) x*),  x* = argmin_{i: y_i = y} <x_i, M[y]>

gamma = 0.2: the memory follows the fast-moving encoder closely. The hardest sample of
an identity is its batch sample least similar to the identity's current centroid (the
"hard" update of Cluster Contrast, Dai et al. 2022, MUVA's ref. [16]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_centroids(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, D) normalised means of the normalised `features` (n, D) per label; a class
    without samples gets a zero row."""
    x = F.normalize(features.float(), dim=1)
    labels = labels.to(x.device, torch.long)
    sums = torch.zeros(num_classes, x.shape[1], device=x.device).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).to(x.dtype)
    return F.normalize(sums / counts[:, None], dim=1)



@torch.no_grad()
def fill_with_centroids(memory: torch.Tensor, features: torch.Tensor, pids: torch.Tensor,
                        width_error: str) -> None:
    """memory <- the class centroids of `features` (a memory rebuilt at a stage or epoch
    start); `width_error` is raised (ValueError) when the widths differ."""
    if features.shape[1] != memory.shape[1]:
        raise ValueError(width_error)
    memory.copy_(class_centroids(features, pids, memory.shape[0]))


def hardest_per_identity(features: torch.Tensor, labels: torch.Tensor,
                         memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(identities (k,), their hardest normalised features (k, D)) of a batch: per
    identity the sample with the lowest cosine similarity to its memory entry."""
    x = F.normalize(features.float(), dim=1)
    labels = labels.to(x.device, torch.long)
    similarity = (x * memory[labels].to(x.dtype)).sum(dim=1)
    identities = labels.unique()
    picks = []
    for identity in identities.tolist():
        rows = (labels == identity).nonzero().flatten()
        picks.append(rows[similarity[rows].argmin()])
    return identities, x[torch.stack(picks)] if picks else x[:0]


@torch.no_grad()
def momentum_update(memory: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, momentum: float) -> None:
    """Eq. 3 in place on `memory` (C, D), with the hardest sample of each identity."""
    identities, hardest = hardest_per_identity(features, labels, memory)
    if identities.numel() == 0:
        return
    mixed = momentum * memory[identities].float() + (1.0 - momentum) * hardest
    memory[identities] = F.normalize(mixed, dim=1).to(memory.dtype)

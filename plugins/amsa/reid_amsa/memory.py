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
    """Eq. 3 in place on `memory` (C, D), with the hardest sample of each identity
    (`hardest_per_identity`'s choice: the first row of the lowest similarity), computed
    for every memory row at once with scatter-min reductions: no per-identity loop and no
    data-dependent shape, so no host sync on a GPU (issue 19); rows of identities absent
    from the batch are left as they are."""
    n, classes = labels.shape[0], memory.shape[0]
    if n == 0:
        return
    x = F.normalize(features.float(), dim=1)
    labels = labels.to(x.device, torch.long)
    similarity = (x * memory[labels].to(x.dtype)).sum(dim=1)
    lowest = torch.full((classes,), float("inf"), device=x.device).scatter_reduce(
        0, labels, similarity, reduce="amin")
    rows = torch.arange(n, device=x.device)
    candidate = torch.where(similarity == lowest[labels], rows, torch.full_like(rows, n))
    pick = torch.full((classes,), n, dtype=torch.long, device=x.device).scatter_reduce(
        0, labels, candidate, reduce="amin")
    present = pick < n
    hardest = x[pick.clamp(max=n - 1)]
    mixed = F.normalize(momentum * memory.float() + (1.0 - momentum) * hardest, dim=1)
    memory.copy_(torch.where(present[:, None], mixed.to(memory.dtype), memory))

"""Conditional pairwise alignment (MGOR Sec. 3.2, "MOIL"; METHODS.md "MOIL" for our choices).

Each representation is decomposed into an identity prototype plus a residual,
z_i = mu_{y_i} + r_i, mu_y the mean of identity y's features within the half. The
distances of same-identity pairs (our choice: the residual norms |r_i|, each sample's
distance to its own prototype) and of different-identity pairs (the distances between
the prototypes of two identities) are collected in each half, and the two halves'
distributions are aligned with the 1-D Wasserstein distance:

    L_pair = S(D+_train, D+_test) + S(D-_train, D-_test).
"""

from __future__ import annotations

import torch

from reid_moil.wasserstein import wasserstein_1d, weighted_wasserstein_1d


def norms(x: torch.Tensor) -> torch.Tensor:
    """Row norms; the square is clamped before the sqrt so a zero row has a finite gradient."""
    return (x * x).sum(dim=-1).clamp(min=1e-12).sqrt()


def pair_distances(z: torch.Tensor, pids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(D+, D-) of one half: residual norms |z_i - mu_{y_i}| (one per sample) and the
    distances between the prototypes of every two identities (one per identity pair)."""
    labels, inverse = torch.unique(pids, return_inverse=True)
    counts = torch.bincount(inverse, minlength=len(labels)).to(z.dtype)
    prototypes = torch.zeros(len(labels), z.shape[1], dtype=z.dtype, device=z.device).index_add(0, inverse, z)
    prototypes = prototypes / counts[:, None]
    positive = norms(z - prototypes[inverse])
    i, j = torch.triu_indices(len(labels), len(labels), offset=1, device=z.device)
    negative = norms(prototypes[i] - prototypes[j])
    return positive, negative


def pairwise_alignment(z_train: torch.Tensor, pids_train: torch.Tensor, z_test: torch.Tensor,
                       pids_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(S(D+_train, D+_test), S(D-_train, D-_test)). A half with a single identity has no
    different-identity pair: the second term is then a zero connected to the graph."""
    pos_train, neg_train = pair_distances(z_train, pids_train)
    pos_test, neg_test = pair_distances(z_test, pids_test)
    positive = wasserstein_1d(pos_train, pos_test)
    if neg_train.numel() and neg_test.numel():
        negative = wasserstein_1d(neg_train, neg_test)
    else:
        negative = (z_train.sum() + z_test.sum()) * 0.0
    return positive, negative


def masked_pair_distances(z: torch.Tensor, pids: torch.Tensor, half: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`pair_distances(z[half], pids[half])` as (values, mask) pairs over the whole batch,
    with no data-dependent shape (no host sync): D+ (n,) with mask `half`; D- (n, n), the
    distance between the prototypes of rows i < j that are the first rows of two
    identities of the half."""
    n = z.shape[0]
    member = half[:, None] & half[None, :]
    same = (pids[:, None] == pids[None, :]) & member
    counts = same.sum(1).clamp(min=1).to(z.dtype)
    prototypes = (same.to(z.dtype) @ z) / counts[:, None]  # row i: mu_{y_i} of the half
    positive = norms(z - prototypes)
    earlier = torch.ones(n, n, dtype=torch.bool, device=z.device).tril(-1)
    first = half & ~(same & earlier).any(1)  # the identity's first row in the half
    upper = torch.ones(n, n, dtype=torch.bool, device=z.device).triu(1)
    pairs = first[:, None] & first[None, :] & upper
    negative = norms(prototypes[:, None, :] - prototypes[None, :, :])
    return positive, half, negative, pairs


def masked_pairwise_alignment(z: torch.Tensor, pids: torch.Tensor, train: torch.Tensor,
                              test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`pairwise_alignment(z[train], pids[train], z[test], pids[test])` on masks (no host
    sync); a half without two identities gives a zero negative term connected to the
    graph, a half without rows a zero positive term."""
    pos_train, pos_train_mask, neg_train, neg_train_mask = masked_pair_distances(z, pids, train)
    pos_test, pos_test_mask, neg_test, neg_test_mask = masked_pair_distances(z, pids, test)
    positive = weighted_wasserstein_1d(pos_train, pos_train_mask, pos_test, pos_test_mask)
    negative = weighted_wasserstein_1d(neg_train, neg_train_mask, neg_test, neg_test_mask)
    return positive, negative

"""Filling an epoch's episode composition with identities and images, vectorised so an
epoch over a million records plans in well under the 2 s goal (bench/edps.py).

Identities (METHODS.md, MGOR, "our choice"): each planning unit keeps a shuffled queue
of its identities and hands them out without replacement; an exhausted queue is refilled
with a fresh permutation (a new pass), arranged so that an episode straddling two passes
never gets one identity twice. Images: K distinct random images of an identity with at
least K, else all of them topped up by drawing from them again (with replacement).
"""

from __future__ import annotations

import numpy as np


def identity_stream(rng: np.random.Generator, identities: np.ndarray, episode_of: np.ndarray) -> np.ndarray:
    """Identities for the successive draws of one unit; `episode_of` (non-decreasing) is the
    episode of each draw. No episode takes more draws than the unit has identities, so
    each episode's identities are distinct."""
    n, total = len(identities), len(episode_of)
    out = np.empty(total, dtype=identities.dtype)
    filled = 0
    while filled < total:
        perm = rng.permutation(identities)
        if filled:
            start = int(np.searchsorted(episode_of, episode_of[filled]))  # first draw of that episode
            if start < filled:  # the episode straddles the passes: its earlier identities go last
                clash = np.isin(perm, out[start:filled])
                perm = np.concatenate([perm[~clash], perm[clash]])
        take = min(n, total - filled)
        out[filled:filled + take] = perm[:take]
        filled += take
    return out


def fill_identities(rng: np.random.Generator, unit_of_slot: np.ndarray, per_episode: int,
                    unit_identities: list[np.ndarray]) -> np.ndarray:
    """Identity of every group (flat, episode-major): one queue per unit."""
    out = np.empty(len(unit_of_slot), dtype=np.int64)
    order = np.argsort(unit_of_slot, kind="stable")
    bounds = np.searchsorted(unit_of_slot[order], np.arange(len(unit_identities) + 1))
    for unit, identities in enumerate(unit_identities):
        positions = order[bounds[unit]:bounds[unit + 1]]
        if len(positions):
            out[positions] = identity_stream(rng, identities, positions // per_episode)
    return out


def draw_images(rng: np.random.Generator, identities: np.ndarray, starts: np.ndarray, counts: np.ndarray,
                by_identity: np.ndarray, k: int) -> np.ndarray:
    """K record indices per group (G, K): distinct when the identity has >= K images
    (Floyd's sampling, vectorised over groups), else all its images then repeats.

    `by_identity` lists record indices sorted by identity; identity i's images are
    by_identity[starts[i]:starts[i] + counts[i]].
    """
    c = counts[identities]
    u = rng.random((len(identities), k))
    pos = np.empty((len(identities), k), dtype=np.int64)
    enough = c >= k
    for j in range(k):
        top = c - k + j  # Floyd: t uniform in 0..top; if already taken, take top itself
        t = (u[:, j] * np.maximum(top + 1, 1)).astype(np.int64)
        taken = np.zeros(len(identities), dtype=bool)
        for i in range(j):
            taken |= pos[:, i] == t
        few = np.where(j < c, j, (u[:, j] * c).astype(np.int64))
        pos[:, j] = np.where(enough, np.where(taken, top, t), few)
    return by_identity[starts[identities][:, None] + pos]

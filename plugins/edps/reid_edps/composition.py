"""The category composition of EDPS episodes (MGOR Sec. 3.1, "Episodic Distribution
Perturbation Sampling"): which categories a batch draws (the subset S_b) and how many
identities each category gives to the meta-train and the meta-test half.

Every episode has two halves of `half` identities each (|B_train| = |B_test| = |B| / 2).
With probability `disjoint_p` the halves get disjoint category sets: the c drawn
categories are split into a meta-train set of a and a meta-test set of c - a categories
(a = c / 2, or a random one of floor / ceil for odd c), and each half spreads its `half`
identities over its own categories. Otherwise the categories are shared: every drawn
category gives identities to both halves. Within a half the identities are spread as
evenly as possible (counts differ by at most one; which category gets the extra one is
random, since the drawn categories come in random order), so the batch is
category-balanced up to rounding. With c = 1 (a single category) both halves take
`half` identities of it: an identity-balanced split.
"""

from __future__ import annotations

import numpy as np


def spread(total: int, parts: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """`total` items spread over `parts` slots as evenly as possible: slot s < parts gets
    total // parts, plus one for the first total % parts slots (broadcasting)."""
    parts = np.maximum(parts, 1)
    return np.where(slot < parts, total // parts + (slot < total % parts), 0)


def quotas(c: int, half: int, disjoint: np.ndarray, train_categories: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Identities per drawn category (slot 0..c-1) in the meta-train and meta-test half.

    `disjoint` (n,) bool and `train_categories` (n,) int (a, used for disjoint episodes)
    describe n episodes; returns two (n, c) int arrays whose rows sum to `half`.
    """
    n = len(disjoint)
    slot = np.arange(c)[None, :]
    if c == 1:
        full = np.full((n, 1), half, dtype=np.int64)
        return full, full.copy()
    a = train_categories[:, None]
    # Disjoint: slots 0..a-1 are meta-train categories, a..c-1 meta-test ones.
    dis_train = spread(half, a, slot)
    dis_test = np.where(slot >= a, spread(half, c - a, slot - a), 0)
    # Shared: every slot in both halves; the test half hands its extras out from the last
    # slot backwards, so a category's total stays within one of the others'.
    shared_train = spread(half, np.full((n, 1), c), slot)
    shared_test = spread(half, np.full((n, 1), c), c - 1 - slot)
    d = disjoint[:, None]
    return (np.where(d, dis_train, shared_train).astype(np.int64),
            np.where(d, dis_test, shared_test).astype(np.int64))


def possible_quotas(c: int, half: int, disjoint_p: float) -> np.ndarray:
    """Every (meta-train + meta-test) identity count one category can get in one episode,
    over every episode shape that `disjoint_p` allows; used to check and plan."""
    shapes: list[tuple[bool, int]] = []
    if disjoint_p > 0 and c >= 2:
        shapes += [(True, c // 2), (True, (c + 1) // 2)]
    if disjoint_p < 1 or c < 2:
        shapes.append((False, c // 2))
    dis = np.array([s[0] for s in shapes])
    a = np.array([s[1] for s in shapes], dtype=np.int64)
    train, test = quotas(c, half, dis, a)
    total = train + test
    return total[total > 0]


def draw(rng: np.random.Generator, episodes: int, units: int, c: int, half: int,
         disjoint_p: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw the composition of `episodes` episodes over `units` planning units.

    Returns the drawn units per episode, meta-train slots then meta-test slots (n, 2c),
    the identity count of each of those slots (n, 2c; rows sum to 2 * half), and the
    disjoint flag of each episode (n,).
    """
    chosen = np.argsort(rng.random((episodes, units)), axis=1)[:, :c]
    if c >= 2:
        disjoint = rng.random(episodes) < disjoint_p
    else:
        disjoint = np.zeros(episodes, dtype=bool)
    a = np.full(episodes, c // 2, dtype=np.int64)
    if c % 2:
        a += rng.random(episodes) < 0.5
    train, test = quotas(c, half, disjoint, a)
    return (np.concatenate([chosen, chosen], axis=1), np.concatenate([train, test], axis=1), disjoint)

"""The category composition of EDPS episodes (MGOR Sec. 3.1, "Episodic Distribution
Perturbation Sampling"): which categories a batch draws (the subset S_b) and how many
identities each category gives to the meta-train and the meta-test half.

Paper, step 1: draw S_b from S and at least two identities per category, K images each,
"a category-balanced, identity-paired batch B"; step 2: split B into two non-overlapping
halves of |B| / 2, so that "each batch becomes a controlled perturbation of category
distribution", the category-disjoint probability being the knob. Our reading (README,
"Perturbation semantics"): B itself is category-balanced (its c categories give
2 * half identities as evenly as possible) in every episode, and **every** episode's
split perturbs the category proportions of the halves:

- disjoint (probability `disjoint_p`): the c drawn categories are split into a
  meta-train set of a and a meta-test set of c - a categories (a = c / 2, or a random
  one of floor / ceil for odd c), each half spreading its `half` identities evenly over
  its own categories;
- shared (otherwise): every drawn category puts one identity in each half, and the rest
  of B is split at random — a uniformly random `half - c` of the remaining identity
  slots go to meta-train (a multivariate hypergeometric draw over the categories), the
  others to meta-test. Both halves hold every category, in proportions that differ from
  episode to episode and between the halves, while B stays balanced.

With c = 1 (a single category) both halves take `half` identities of it: an
identity-balanced split.
"""

from __future__ import annotations

import numpy as np


def spread(total: int, parts: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """`total` items spread over `parts` slots as evenly as possible: slot s < parts gets
    total // parts, plus one for the first total % parts slots (broadcasting)."""
    parts = np.maximum(parts, 1)
    return np.where(slot < parts, total // parts + (slot < total % parts), 0)


def totals(c: int, half: int, disjoint: np.ndarray, train_categories: np.ndarray) -> np.ndarray:
    """Identities per drawn category (slot 0..c-1) in the whole episode, (n, c), rows
    summing to 2 * half: disjoint episodes spread each half over its own categories
    (slots 0..a-1 meta-train, a..c-1 meta-test), shared ones spread B over all c."""
    n = len(disjoint)
    slot = np.arange(c)[None, :]
    if c == 1:
        return np.full((n, 1), 2 * half, dtype=np.int64)
    a = train_categories[:, None]
    dis = np.where(slot < a, spread(half, a, slot), spread(half, c - a, slot - a))
    shared = np.broadcast_to(spread(2 * half, np.full((1, 1), c), slot), (n, c))
    return np.where(disjoint[:, None], dis, shared).astype(np.int64)


def quotas(rng: np.random.Generator, c: int, half: int, disjoint: np.ndarray,
           train_categories: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Identities per drawn category in the meta-train and the meta-test half, two (n, c)
    int arrays whose rows sum to `half` (module docstring: disjoint vs shared)."""
    total = totals(c, half, disjoint, train_categories)
    if c == 1:
        return total // 2, total - total // 2
    slot = np.arange(c)[None, :]
    train = np.where(slot < train_categories[:, None], total, 0)
    shared = ~disjoint
    if shared.any():
        # one identity of every category in each half, the rest of B split at random
        rest = total[shared][0] - 2  # the same for every shared episode (slot order)
        extra = rng.multivariate_hypergeometric(rest, half - c, size=int(shared.sum()))
        train[shared] = 1 + extra
    return train.astype(np.int64), (total - train).astype(np.int64)


def possible_quotas(c: int, half: int, disjoint_p: float) -> np.ndarray:
    """Every total (meta-train + meta-test) identity count one category can get in one
    episode, over every episode shape that `disjoint_p` allows; used to check and plan."""
    shapes: list[tuple[bool, int]] = []
    if disjoint_p > 0 and c >= 2:
        shapes += [(True, c // 2), (True, (c + 1) // 2)]
    if disjoint_p < 1 or c < 2:
        shapes.append((False, c // 2))
    dis = np.array([s[0] for s in shapes])
    a = np.array([s[1] for s in shapes], dtype=np.int64)
    total = totals(c, half, dis, a)
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
    train, test = quotas(rng, c, half, disjoint, a)
    return (np.concatenate([chosen, chosen], axis=1), np.concatenate([train, test], axis=1), disjoint)

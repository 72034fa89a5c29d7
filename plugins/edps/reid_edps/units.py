"""Planning units: the categories EDPS draws from, and the documented rules for categories
too small to stand alone (METHODS.md, MGOR "our choices"; plugins/edps/README.md).

An episode never repeats an identity, so a category that must give q identities to one
episode needs at least q identities. Let q_max be the most identities one category can
give one episode (it follows from the batch size, K, the number c of categories per
episode and `disjoint_p`). Rules:

1. a category with >= q_max identities is a unit of its own;
2. the categories with fewer (1 <= n < q_max) are pooled into one unit that is drawn like
   a category ("only used together with others"); a warning lists them;
3. if that pool itself has fewer than q_max identities, its identities are skipped
   (never sampled); a warning lists them;
4. with a single unit left, episodes split identities, not categories (an
   identity-balanced split; `disjoint_p` has no effect); the sampler warns.

Pooling changes the number of units, which may change c and q_max; the rules are
applied until nothing changes (units only ever decrease, so this ends).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from reid_edps.composition import possible_quotas

NAME = "sampler 'edps'"


@dataclass
class Units:
    #: Identity labels of each unit.
    identities: list[np.ndarray]
    #: A category name, or "pool(a, b)" for pooled small categories.
    names: list[str]
    #: Categories per episode (|S_b|).
    c: int
    #: The most identities one unit gives one episode.
    q_max: int
    pooled: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def valid_category_counts(units: int, half: int, disjoint_p: float) -> list[int]:
    """Values of c for which every drawn category gets >= 2 identities per episode."""
    return [c for c in range(1, units + 1) if possible_quotas(c, half, disjoint_p).min() >= 2]


def default_c(units: int, valid: list[int]) -> int:
    """|S_b| when `categories_per_batch` is null (our choice; the paper gives no value):
    the largest even count below the number of units, so that (1) S_b is a proper subset
    of S and the category mix changes from episode to episode (the paper's step 1), and
    (2) a category-disjoint split gives both halves c / 2 categories with B still
    category-balanced (with odd c one half's categories would give more identities).
    With 1 or 2 units (no proper even subset) every unit is drawn. For the paper's five
    training categories at batch 64: 4 categories x 4 identities."""
    even = [c for c in valid if c % 2 == 0 and c < units]
    return max(even) if even else max(valid)


def choose_c(units: int, half: int, disjoint_p: float, requested: int | None) -> int:
    valid = valid_category_counts(units, half, disjoint_p)
    if requested is None:
        return default_c(units, valid)
    if requested not in valid:
        raise ValueError(
            f"{NAME}: categories_per_batch = {requested} is not possible here; valid values: "
            f"{', '.join(map(str, valid))} (at most the {units} categories that can fill an episode, and "
            f"each category needs >= 2 identities per episode of {half} + {half} identities), or null")
    return requested


def plan_units(identity_category: np.ndarray, category_names: list[str], half: int, disjoint_p: float,
               requested: int | None) -> Units:
    """Apply the rules above to the identities of each category.

    `identity_category[i]` is the category id of identity label i (-1: no record).
    """
    per_category = [(name, np.flatnonzero(identity_category == cid)) for cid, name in enumerate(category_names)]
    per_category = [(name, ids) for name, ids in per_category if len(ids)]
    count = len(per_category)
    for _ in range(len(per_category) + 1):
        c = choose_c(max(count, 1), half, disjoint_p, requested)
        q_max = int(possible_quotas(c, half, disjoint_p).max())
        big = [(name, ids) for name, ids in per_category if len(ids) >= q_max]
        small = [(name, ids) for name, ids in per_category if len(ids) < q_max]
        units = list(big)
        pool = np.concatenate([ids for _, ids in small]) if small else np.empty(0, dtype=np.int64)
        if small and len(pool) >= q_max:
            units.append((f"pool({', '.join(n for n, _ in small)})", np.sort(pool)))
        if len(units) == count or not units:
            break
        count = len(units)
    if not units:
        sizes = ", ".join(f"{name}: {len(ids)}" for name, ids in per_category) or "none"
        raise ValueError(f"{NAME}: no category has the {q_max} identities one episode needs (identities per "
                         f"category: {sizes}); lower batch_size or k")
    pooled = [n for n, _ in small] if small and len(pool) >= q_max else []
    skipped = [n for n, _ in small] if small and len(pool) < q_max else []
    return Units(identities=[ids for _, ids in units], names=[n for n, _ in units], c=c, q_max=q_max,
                 pooled=pooled, skipped=skipped)

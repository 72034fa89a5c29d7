"""The hierarchical label space of HSE (MGOR Sec. 3.3): Y = disjoint union of Y_s over the
categories s, with the projection pi: Y -> S, and the local index y~ of an identity
inside its category's set Y_s.

Global identity labels are the training table's relabelled pids 0..N-1 (core
`RecordTable`); a category's local indices are its identities' global labels in
ascending order, numbered 0..|Y_s|-1. The head's per-category classifiers and the loss's
targets are both built from this one map, so they always agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CategoryLabels:
    """`category[y]` = pi(y), the category id of global identity y; `local[y]` = y~, its
    index inside that category; `sizes[s]` = |Y_s| (0 for a category without training
    identities); `names[s]` the category names (the training table's order, which is
    also the order of `batch.categories`)."""

    category: np.ndarray
    local: np.ndarray
    sizes: np.ndarray
    names: tuple[str, ...]

    @property
    def num_identities(self) -> int:
        return int(self.category.shape[0])

    @property
    def offsets(self) -> np.ndarray:
        """Start of each category's block when the per-category classifiers are stacked."""
        return np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)


def category_labels(pids: np.ndarray, category_ids: np.ndarray, names: list[str] | tuple[str, ...],
                    component: str = "hse") -> CategoryLabels:
    """The map y -> (pi(y), y~) from per-record global pids and category ids.

    Errors name `component`: pids must be 0..N-1 (the pipeline relabels training
    identities), and an identity must belong to one category only (Y is a disjoint union).
    """
    pids = np.asarray(pids, dtype=np.int64)
    category_ids = np.asarray(category_ids, dtype=np.int64)
    if pids.shape != category_ids.shape:
        raise ValueError(f"{component}: {pids.size} pids but {category_ids.size} category ids")
    if pids.size == 0:
        raise ValueError(f"{component}: the training table has no records, so there are no identities "
                         "to classify (HSE needs a training set)")
    n = int(pids.max()) + 1
    present = np.zeros(n, dtype=bool)
    present[pids] = True
    if pids.min() < 0 or not present.all():
        raise ValueError(f"{component}: training identity labels must be 0..N-1 without gaps (the pipeline "
                         f"relabels them); got {int((~present).sum())} missing labels below {n}")
    category = np.full(n, -1, dtype=np.int64)
    category[pids] = category_ids
    clash = category[pids] != category_ids
    if clash.any():
        y = int(pids[clash][0])
        both = sorted({names[int(c)] for c in category_ids[pids == y]})
        raise ValueError(f"{component}: identity {y} appears in several categories ({', '.join(both)}); "
                         "HSE needs every identity in exactly one category (Y is a disjoint union of Y_s)")
    if category.max() >= len(names):
        raise ValueError(f"{component}: category id {int(category.max())} but only {len(names)} category names")
    local = np.zeros(n, dtype=np.int64)
    sizes = np.zeros(len(names), dtype=np.int64)
    for s in range(len(names)):
        members = np.flatnonzero(category == s)  # ascending global labels
        local[members] = np.arange(members.size)
        sizes[s] = members.size
    return CategoryLabels(category=category, local=local, sizes=sizes, names=tuple(names))


def category_sizes(ctx, component: str) -> tuple[tuple[str, ...], np.ndarray]:
    """(category names, |Y_s| per category) of the build context: from its training table,
    or, for a model rebuilt without training data (a `.safetensors` file of `core export`,
    whose context keeps `category_names` and `identities_per_category`), from those facts.
    The head's classifiers need no more; the loss needs the whole map (`labels_from_context`)."""
    if getattr(ctx, "train", None) is not None:
        labels = labels_from_context(ctx, component)
        return labels.names, labels.sizes
    names = tuple(getattr(ctx, "category_names", None) or ())
    counts = getattr(ctx, "identities_per_category", None) or {}
    if not names or any(name not in counts for name in names):
        raise ValueError(f"{component} needs the training table (ctx.train), or the identities per category of "
                         "the training data (a weights file's facts), to build its per-category classifiers")
    return names, np.asarray([int(counts[name]) for name in names], dtype=np.int64)


def labels_from_context(ctx, component: str) -> CategoryLabels:
    """The label map of the build context's training table (`ctx.train`)."""
    table = getattr(ctx, "train", None)
    if table is None:
        raise ValueError(f"{component} needs the training table (ctx.train) to build its per-category "
                         "classifiers; it was built without training data")
    return category_labels(table.pids, table.category_ids, list(table.category_names), component)

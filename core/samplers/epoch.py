"""One epoch length for every sampler (issue 20): the training budget of a pipeline must
not depend on which sampler it uses, or the rows of an ablation compare different budgets.

The rule: an epoch is as many batches as the PK sampler (`pk`, its default K = 4, drop_last)
would make on the same training table with the same batch size,

    epoch_batches = max(1, floor(K * sum_i max(floor(n_i / K), 1) / batch_size)),

n_i the images of identity i (K * sum_i max(...) is the number of images PK plans per
epoch; for batch_size = P * K this is PK's floor(G / P), G its groups). The sampler key
`epoch_batches: N` sets N instead, for any sampler. The pipeline writes the result into
the build context (`ctx.epoch_batches`, global batches under DDP) before building the
sampler; every sampler plans exactly that many batches. A sampler that does not read it
(an older plugin) is wrapped in `FixedEpochLength`, which cuts its plan or continues it
with further passes, so the rule holds for every sampler the registry can build.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterator

import numpy as np

from core.interfaces import Episode, Sampler

#: K of the reference PK sampler (core.samplers.identity.PKSampler's default).
REFERENCE_K = 4
#: The sampler key that overrides the rule (handled by the core, not the sampler).
OVERRIDE_KEY = "epoch_batches"


def pk_epoch_batches(pids: Any, batch_size: int, k: int = REFERENCE_K) -> int:
    """Batches per epoch of the PK sampler (drop_last) on identities `pids` (module docstring)."""
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    _, counts = np.unique(np.asarray(pids), return_counts=True)
    if len(counts) == 0:
        raise ValueError("the training table has no record: an epoch cannot be planned")
    images = k * int(np.maximum(counts // k, 1).sum())
    return max(images // int(batch_size), 1)


def check_override(value: Any) -> int | None:
    """`epoch_batches` as given in YAML: a positive integer or null."""
    if value is None:
        return None
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{OVERRIDE_KEY} must be a positive integer or null (null: as many batches as the "
                         f"PK sampler makes on the training table), got {value!r}")
    return int(value)


class FixedEpochLength(Sampler):
    """`inner`'s batches, exactly `batches` per epoch: its plan cut short, or continued
    with its plans of further passes (pass r of epoch e is the inner sampler's epoch
    e * PASSES + r, so the plan still depends only on (seed, epoch)). Attributes and
    trainer-event methods are the inner sampler's."""

    PASSES = 1000

    def __init__(self, inner: Sampler, batches: int) -> None:
        self.inner, self.batches = inner, int(batches)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner.set_epoch(epoch * self.PASSES)

    def __iter__(self) -> Iterator[list[int] | Episode]:
        made = 0
        for r in range(self.PASSES):
            if r:
                self.inner.set_epoch(self.epoch * self.PASSES + r)
            empty = True
            for batch in self.inner:
                empty = False
                yield batch
                made += 1
                if made == self.batches:
                    return
            if empty:
                raise ValueError(f"sampler {type(self.inner).__name__} yielded no batch; an epoch needs {self.batches}")

    def __len__(self) -> int:
        return self.batches

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.inner, name)


def honour_epoch_length(sampler: Sampler, batches: int, what: str) -> Sampler:
    """`sampler` when it plans `batches` batches per epoch, else wrapped so that it does
    (with a warning naming the sampler: it should read `ctx.epoch_batches`)."""
    if len(sampler) == batches:
        return sampler
    warnings.warn(f"{what} plans {len(sampler)} batches per epoch, but the epoch has {batches} "
                  f"(the core's epoch-length rule, ctx.epoch_batches); its plan is cut or continued to "
                  f"{batches} batches. A sampler should plan ctx.epoch_batches batches "
                  "(docs/writing-plugins.md, 'Epoch length').", stacklevel=2)
    return FixedEpochLength(sampler, batches)

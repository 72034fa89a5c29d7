"""Count the operations that make the host wait for the GPU (issue 19, item 9), on any
device: a CUDA training step that reads a value (`.item()`, `bool(t)`, `.tolist()`) or
runs an op whose output size depends on the data (`nonzero`, boolean indexing, `unique`,
`masked_select`) stops the CPU until the GPU has caught up, and the GPU then idles while
Python launches the next kernels. On the CPU these cost nothing, so they go unnoticed:
`count_host_syncs()` counts them wherever the code runs, so a CPU test can hold a training
step to "no sync beyond logging steps".

    with count_host_syncs() as syncs:
        loss = step(batch); loss.backward()
    assert syncs.total == 0, syncs.by_op

On the CPU it cannot tell the loader's host tensors from the model's, so it counts the
model's part of a step; `core.separate_device.count_syncs()` counts a whole step (loading,
the trainer's bookkeeping, the optimizer) on the emulated device, exactly.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from typing import TYPE_CHECKING, Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

#: ATen ops whose result the host must wait for (a value read, or a data-dependent size)
SYNC_OPS = frozenset({
    "_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_dim",
    "unique_consecutive", "equal", "is_nonzero", "bincount", "histc",
})
#: Python-level reads that copy data to the host (no ATen op on a CPU tensor)
SYNC_METHODS = frozenset({"tolist", "numpy", "cpu"})

if TYPE_CHECKING:
    import numpy as np

_HOST_READ = threading.local()  # inside host_array: its read of a host tensor is no sync


class SyncCounts:
    """Host syncs counted so far: `by_op` (name -> count) and their `total`."""

    def __init__(self) -> None:
        self.by_op: collections.Counter[str] = collections.Counter()

    @property
    def total(self) -> int:
        return sum(self.by_op.values())


def sync_op(func, args: tuple, kwargs: dict | None) -> str | None:
    """The name under which ATen op `func` on a GPU's tensors makes the host wait (a
    value read, or an output whose size the data decides); None when it does not."""
    name = func.overloadpacket.__name__
    if name in SYNC_OPS:
        return name
    if name == "index" and _has_mask(args[1] if len(args) > 1 else ()):
        return "index (boolean mask)"
    if name in ("index_put", "index_put_") and _has_mask(args[1] if len(args) > 1 else ()):
        return "index_put (boolean mask)"
    if name == "repeat_interleave" and "output_size" not in (kwargs or {}) and \
            isinstance(args[0], torch.Tensor) and len(args) < 3:
        return "repeat_interleave"
    return None


def _has_mask(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in (indices or ()))


class _Dispatch(TorchDispatchMode):
    def __init__(self, counts: SyncCounts) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kind = sync_op(func, args, kwargs)
        if kind is not None:
            self.counts.by_op[kind] += 1
        return func(*args, **(kwargs or {}))


class _Function(TorchFunctionMode):
    def __init__(self, counts: SyncCounts) -> None:
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNC_METHODS and not getattr(_HOST_READ, "active", False):
            self.counts.by_op[name] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_host_syncs() -> Iterator[SyncCounts]:
    """Counts (`.total`, `.by_op`) of the host syncs the code inside would make on CUDA,
    backward included."""
    counts = SyncCounts()
    with _Function(counts), _Dispatch(counts):
        yield counts


def host_array(tensor: torch.Tensor) -> "np.ndarray":
    """A tensor that was made on the host and never went to a device (a tokenizer's output,
    a draw of the CPU generator) as a numpy array: on any device no sync, so
    `count_host_syncs` does not count it (on the CPU it cannot tell such a tensor from a
    device one). A tensor on a device is refused: reading it would be the sync."""
    if tensor.device.type != "cpu":
        raise ValueError(f"host_array reads host tensors only; this one is on {tensor.device} (a host sync)")
    _HOST_READ.active = True
    try:
        return tensor.detach().numpy()
    finally:
        _HOST_READ.active = False

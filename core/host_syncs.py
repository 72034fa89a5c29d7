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


class _Counts:
    def __init__(self) -> None:
        self.by_op: collections.Counter[str] = collections.Counter()

    @property
    def total(self) -> int:
        return sum(self.by_op.values())


class _Dispatch(TorchDispatchMode):
    def __init__(self, counts: _Counts) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNC_OPS:
            self.counts.by_op[name] += 1
        elif name == "index" and any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                                     for i in (args[1] if len(args) > 1 else ())):
            self.counts.by_op["index (boolean mask)"] += 1
        elif name == "index_put" or name == "index_put_":
            if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in (args[1] or ())):
                self.counts.by_op["index_put (boolean mask)"] += 1
        elif name == "repeat_interleave" and "output_size" not in (kwargs or {}) and \
                isinstance(args[0], torch.Tensor) and len(args) < 3:
            self.counts.by_op["repeat_interleave"] += 1
        return func(*args, **(kwargs or {}))


class _Function(TorchFunctionMode):
    def __init__(self, counts: _Counts) -> None:
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNC_METHODS and not getattr(_HOST_READ, "active", False):
            self.counts.by_op[name] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_host_syncs() -> Iterator[_Counts]:
    """Counts (`.total`, `.by_op`) of the host syncs the code inside would make on CUDA,
    backward included."""
    counts = _Counts()
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

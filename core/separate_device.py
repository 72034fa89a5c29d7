"""A device that is not the host, emulated on the CPU, so the test suite catches the
host/device mixing a first GPU run would fail on (issue 19).

On the CPU every tensor lives in one memory: a loss that builds an index with
`torch.arange(n)` (no `device=`) and uses it with the model's features, a logged Python
number stacked with device tensors, a numpy call on a device tensor, a CPU generator
handed to a device factory - all pass every CPU test and stop the first CUDA step with
"Expected all tensors to be on the same device". `emulate_separate_device()` gives a
device (`meta`, the one device torch can name without a runtime) whose tensors hold real
CPU data, compute as on the CPU, and refuse to meet host tensors where CUDA refuses:

    with emulate_separate_device() as device:
        model.to(device); loss = model(batch.to(device)).sum(); loss.backward()

A whole run: `trainer.device: meta` inside it (outside, that device is a config error);
`emulation_for(device)` lets one loop run the same code on "cpu" and on "meta". Several
processes: `torchrun --nproc-per-node 2 -m core.on_separate_device run p.yaml --set
trainer.device=meta` (core's CLI inside the emulation).

The rules follow CUDA's (the PyTorch docs' "CUDA semantics" and TensorIterator's):
- an op whose tensors are on both sides fails, except a host tensor with no dimensions
  (a "CPU scalar") in an element-wise op, host index tensors of `index` / `index_put`,
  and the copies between the two (`to`, `copy_`);
- a host generator handed to a factory on the device fails;
- a device tensor has no numpy view and no host storage (`numpy()`, `data_ptr()` fail);
- a collective given a host tensor fails (NCCL's rule; the emulated processes talk over
  gloo, which would take it), except torch's object collectives and barrier, which NCCL
  runs on the current GPU by themselves.
`count_syncs()` counts the host syncs a GPU would make (value reads, data-sized outputs,
copies to the host, blocking copies from it), exactly: host tensors cost nothing there.
The trainer treats the device as a GPU: its bf16 / fp16 apply CUDA's autocast rules there
(`core.cuda_autocast`), with fp16's gradient scaler. What it does not show: speed, and what
only a real device does (streams, NCCL's own kernels and deadlocks). Device tensors report
`device.type == "meta"`, so code that branches on `"cuda"` takes its generic path.
It is an emulation for tests, not a speed path.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import weakref
from typing import Any, Iterator

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from core.host_syncs import SyncCounts, sync_op

#: the emulated device: tensors reporting it hold CPU data (`DeviceTensor.host`)
DEVICE = torch.device("meta")

#: ops that take host index tensors beside a device tensor (CUDA copies them over)
HOST_INDICES = frozenset({"index", "index_put", "index_put_", "_index_put_impl", "_index_put_impl_"})
#: ops that move data between host and device
TRANSFERS = frozenset({"_to_copy", "copy_", "copy", "to", "_copy_from", "_copy_from_and_resize"})
#: non-pointwise ops that accept a host scalar beside device tensors (as their value)
SCALAR_VALUE = frozenset({"masked_fill", "masked_fill_", "where", "clamp", "clamp_", "index_fill", "index_fill_",
                          "fill", "fill_", "lerp", "lerp_"})


#: the emulated device's memory: host storage address -> the device tensors over it. C++
#: internals that run collectives (DDP's reducer, through its futures) get the host data
#: of device tensors and hand back plain tensors over that memory, where on a GPU they
#: would be the device tensors themselves: copies from them are device-to-device there
_DEVICE_MEMORY: "dict[int, weakref.WeakSet[torch.Tensor]]" = {}


class DeviceMixError(RuntimeError):
    """An op met host and device tensors where CUDA would refuse it."""


class DeviceTensor(torch.Tensor):
    """A tensor that reports the emulated device and computes on its CPU `host` tensor."""

    host: torch.Tensor
    __slots__ = ("host",)

    @staticmethod
    def __new__(cls, host: torch.Tensor, requires_grad: bool = False) -> "DeviceTensor":
        out = torch.Tensor._make_wrapper_subclass(
            cls, host.size(), strides=host.stride(), storage_offset=host.storage_offset(), dtype=host.dtype,
            layout=host.layout, device=DEVICE, requires_grad=requires_grad)
        out.host = host
        address = host.untyped_storage().data_ptr()
        if address:
            _DEVICE_MEMORY.setdefault(address, weakref.WeakSet()).add(out)
        return out

    def __repr__(self, *, tensor_contents=None) -> str:  # noqa: D105
        return f"DeviceTensor({self.host!r})"

    def __reduce_ex__(self, protocol):
        # saved as the host data it holds (a checkpoint of CUDA tensors loads onto the CPU
        # with map_location, as the trainer's loader does)
        return self.host.__reduce_ex__(protocol)

    @property
    def is_meta(self) -> bool:  # it holds data (torch's loaders skip copies into real meta tensors)
        return False

    # Python lists and numpy arrays as indices: torch turns them into index tensors on
    # the indexed tensor's device below the dispatcher's Python layer (a real, empty meta
    # tensor here); made on the host instead, which CUDA accepts for indexing too
    def __getitem__(self, index: Any) -> Any:
        return super().__getitem__(_host_index(index))

    def __setitem__(self, index: Any, value: Any) -> None:
        super().__setitem__(_host_index(index), value)

    def tolist(self) -> Any:  # as CUDA: a copy to the host (torch refuses it for subclasses)
        _count_sync("tolist")
        return self.host.tolist()

    def numpy(self, *, force: bool = False) -> Any:
        raise TypeError(f"can't convert {DEVICE} device type tensor to numpy. Use Tensor.cpu() to copy the "
                        "tensor to host memory first.")

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


def _host_index(index: Any) -> Any:
    if isinstance(index, tuple):
        return tuple(_host_index(i) for i in index)
    if isinstance(index, list) and all(isinstance(i, (bool, int)) for i in index):
        return torch.tensor(index, dtype=torch.bool if index and isinstance(index[0], bool) else torch.long)
    if isinstance(index, np.ndarray):
        return torch.from_numpy(index)
    return index


def _is_emulated(device: Any) -> bool:
    return device is not None and torch.device(device) == DEVICE


def _name(func) -> str:
    return func.overloadpacket.__name__


def _check_mixing(func, args: tuple, tensors: list[torch.Tensor]) -> None:
    """`tensors`: the op's tensor arguments, flattened."""
    name = _name(func)
    if name in TRANSFERS or not any(isinstance(t, DeviceTensor) for t in tensors):
        return
    exempt: set[int] = set()
    if name in HOST_INDICES and len(args) > 1:  # the index list: host indices are allowed
        exempt = {id(i) for i in args[1] if isinstance(i, torch.Tensor)}
    scalars_ok = torch.Tag.pointwise in func.tags or name in SCALAR_VALUE or name in HOST_INDICES
    written = args[0] if name.endswith("_") and args else None  # an in-place op's output
    for t in tensors:
        if isinstance(t, DeviceTensor) or id(t) in exempt:
            continue
        if t.dim() == 0 and scalars_ok and t is not written:  # a "CPU scalar" operand
            continue
        raise DeviceMixError(
            f"{func} got a host tensor (shape {tuple(t.shape)}, {t.dtype}) beside device tensors: CUDA refuses "
            f"this ('Expected all tensors to be on the same device'); create it on the device "
            f"(device=x.device) or move it with .to(x.device)")


def _check_generator(func, kwargs: dict, on_device: bool) -> None:
    generator = kwargs.get("generator")
    if on_device and generator is not None and not _is_emulated(generator.device):
        raise DeviceMixError(f"{func} makes a device tensor with a host generator: CUDA refuses this "
                             f"('Expected a 'cuda' device type for generator'); use a generator on the device "
                             f"or make the values on the host and move them")


@functools.lru_cache(maxsize=None)
def _position(func, name: str) -> int | None:
    """Where the op's schema takes argument `name` (None: it has none)."""
    return next((i for i, a in enumerate(func._schema.arguments) if a.name == name), None)


def _argument(func, args: tuple, kwargs: dict, name: str) -> Any:
    """The op's argument `name`, given by keyword or by position (`aten.to.device`)."""
    if name in kwargs:
        return kwargs[name]
    at = _position(func, name)
    return args[at] if at is not None and at < len(args) else None


def _device_argument(func, args: tuple, kwargs: dict) -> Any:
    return _argument(func, args, kwargs, "device")


def _on_host(func, args: tuple, kwargs: dict) -> tuple[Any, tuple, dict]:
    """(the op's device argument, args and kwargs with the emulated device replaced by the CPU)."""
    device = _device_argument(func, args, kwargs)
    if not _is_emulated(device):
        return device, args, kwargs
    if "device" in kwargs:
        return device, args, {**kwargs, "device": torch.device("cpu")}
    at = _position(func, "device")
    return device, (*args[:at], torch.device("cpu"), *args[at + 1:]), kwargs


def _unwrap(value: Any) -> Any:
    return value.host if isinstance(value, DeviceTensor) else value


def _dispatch(func, args: tuple, kwargs: dict):
    """Run `func` on the host data; outputs are device tensors when it runs on the device."""
    device, args, kwargs = _on_host(func, args, kwargs)
    tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
    for t in tensors:
        if not isinstance(t, DeviceTensor) and t.device == DEVICE:
            raise RuntimeError(f"{func} got a real meta tensor (no data): a constructor the emulation does not "
                               "route made it; add it to core.separate_device.FROM_DATA")
    to_device = _is_emulated(device) if device is not None else any(isinstance(t, DeviceTensor) for t in tensors)
    _check_mixing(func, args, tensors)
    _check_generator(func, kwargs, to_device)
    if _SYNC_COUNTS:
        kind = _sync_kind(func, args, kwargs, device, tensors)
        if kind is not None:
            _count_sync(kind)
    # an in-place op returns its input: the caller's tensor, host or device, not a new one
    inputs = {id(_unwrap(t)): t for t in tensors}
    out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))

    def wrap(value: Any) -> Any:
        if not isinstance(value, torch.Tensor) or isinstance(value, DeviceTensor):
            return value
        if id(value) in inputs:
            original = inputs[id(value)]
            if isinstance(original, DeviceTensor) == to_device:
                return original
            value = value.clone()  # `.to(d)` returning its input (inference mode): a copy across, as CUDA's
        if not to_device:
            return value
        with torch.inference_mode(False):  # a wrapper made inside inference mode could not be a view's
            return DeviceTensor(value)

    return tree_map(wrap, out)


#: the counters of the `count_syncs()` regions the code runs in
_SYNC_COUNTS: list[SyncCounts] = []


def _count_sync(kind: str) -> None:
    for counts in _SYNC_COUNTS:
        counts.by_op[kind] += 1


def _sync_kind(func, args: tuple, kwargs: dict, device: Any, tensors: list[torch.Tensor]) -> str | None:
    """What makes the host wait for a CUDA device in this op (None: nothing): a value
    read or a data-sized output on device tensors (`core.host_syncs.sync_op`), a copy to
    the host, or a blocking copy from the host, which CUDA makes by a stream
    synchronisation (`non_blocking=True` from pinned memory does not wait), including the
    host index tensors CUDA copies over before indexing."""
    name = _name(func)
    if name in TRANSFERS:
        if _argument(func, args, kwargs, "non_blocking"):
            return None
        source, target = _copy_ends(name, args, device)
        if source == target:
            return None
        return "copy to the host" if target == "host" else "blocking copy to the device"
    if not any(isinstance(t, DeviceTensor) for t in tensors):
        return None
    if name in HOST_INDICES and len(args) > 1 and any(
            isinstance(i, torch.Tensor) and not isinstance(i, DeviceTensor) for i in args[1] or ()):
        return f"{name} with host indices (copied to the device first)"
    return sync_op(func, args, kwargs)


def _copy_ends(name: str, args: tuple, device: Any) -> tuple[str, str]:
    """("host" | "device", "host" | "device"): where a transfer op reads and writes."""
    side = lambda t: "device" if isinstance(t, DeviceTensor) or _in_device_memory(t) else "host"  # noqa: E731
    if name in ("copy_", "copy"):  # (self, src): src's data into self's place
        return side(args[1]), side(args[0])
    if name in ("_copy_from", "_copy_from_and_resize"):
        return side(args[0]), side(args[1])
    source = side(args[0])
    return source, source if device is None else "device" if _is_emulated(device) else "host"


def _in_device_memory(tensor: Any) -> bool:
    """A plain tensor over the emulated device's memory (`_DEVICE_MEMORY`): device data."""
    if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu":
        return False
    storage = tensor.untyped_storage()
    holders = _DEVICE_MEMORY.get(storage.data_ptr())
    # a live device tensor over this very storage (not one a freed or moved storage left at
    # the address: a host allocation made there since is host memory)
    return bool(holders) and any(t.host.untyped_storage()._cdata == storage._cdata for t in list(holders))


@contextlib.contextmanager
def count_syncs() -> Iterator[SyncCounts]:
    """Counts (`.total`, `.by_op`) of the host syncs the code inside would make on a GPU,
    exactly: only what reads device data to the host, sizes an output by it, or copies
    host data over blocking. Unlike `core.host_syncs.count_host_syncs` (which on the CPU
    cannot tell the loader's host tensors from the model's) it can count a whole training
    step, data loading and the trainer's bookkeeping included. Inside
    `emulate_separate_device()`."""
    counts = SyncCounts()
    _SYNC_COUNTS.append(counts)
    try:
        yield counts
    finally:
        _SYNC_COUNTS.remove(counts)


#: torch.distributed functions whose collectives carry host tensors by design (serialised
#: objects, the barrier's token): under NCCL torch puts those on the current GPU itself
HOST_COLLECTIVES = frozenset({"broadcast_object_list", "all_gather_object", "gather_object", "scatter_object_list",
                              "barrier", "monitored_barrier"})


def _check_collective(func, args: tuple, kwargs: dict) -> None:
    """NCCL's rule (a run on GPUs communicates over NCCL): a collective takes device
    tensors only; gloo, which the emulated processes use, would take host ones silently.
    torch's object collectives and barrier are counted as host syncs (`count_syncs`): under
    NCCL they copy the pickled objects (their sizes first) to the GPU and read them back,
    and the barrier waits for the device."""
    host = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) and t.device != DEVICE]
    if not host:
        return
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name in HOST_COLLECTIVES and frame.f_globals.get("__name__", "").startswith(
                "torch.distributed"):
            _count_sync(f"{frame.f_code.co_name} (through the GPU under NCCL)")
            return
        frame = frame.f_back
    raise DeviceMixError(f"{func} got a host tensor (shape {tuple(host[0].shape)}, {host[0].dtype}) on a run "
                         f"on the device: NCCL takes device tensors only; make it on the device")


class _ToDevice(TorchDispatchMode):
    """Routes factories and copies that name the emulated device (`torch.zeros(...,
    device=d)`, `.to(d)`) and every op on device tensors to `_dispatch`; holds collectives to
    NCCL's rule; every other op runs as it would."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "c10d":
            _check_collective(func, args, kwargs)
        on_device = any(isinstance(t, torch.Tensor) and t.device == DEVICE for t in tree_flatten((args, kwargs))[0])
        if on_device or _is_emulated(_device_argument(func, args, kwargs)):
            return _dispatch(func, args, kwargs)
        return func(*args, **kwargs)


#: constructors from Python data, which make their tensor below the dispatcher's Python
#: layer (a real, empty `meta` tensor): made on the host and moved instead
FROM_DATA = frozenset({torch.tensor, torch.as_tensor, torch.asarray, torch.Tensor.new_tensor})


class _FromData(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FROM_DATA:
            method = func is torch.Tensor.new_tensor  # new_tensor(self, data): self's device by default
            data = args[1] if method else args[0]
            device = kwargs.get("device", DEVICE if method and isinstance(args[0], DeviceTensor) else None)
            if _is_emulated(device) and not isinstance(data, DeviceTensor):
                return func(*args, **{**kwargs, "device": "cpu"}).to(DEVICE)
        return func(*args, **kwargs)


@contextlib.contextmanager
def emulate_separate_device() -> Iterator[torch.device]:
    """Inside: the emulated device (yielded) keeps its tensors apart from the host's."""
    with _ToDevice(), _FromData():
        yield DEVICE


def emulation_for(device: str | torch.device) -> contextlib.AbstractContextManager:
    """`emulate_separate_device()` when `device` names the emulated device, else nothing:
    one loop runs the same code on the CPU and on the emulated device."""
    return emulate_separate_device() if _is_emulated(device) else contextlib.nullcontext()


def is_emulated(device: Any) -> bool:
    """Whether `device` names the emulated device (inside the emulation, where it is one)."""
    return _is_emulated(device) and active()


def active() -> bool:
    """Whether code runs inside `emulate_separate_device()` (where `meta` names its device)."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    return any(isinstance(mode, _ToDevice) for mode in _get_current_dispatch_mode_stack())


def host(value: Any) -> Any:
    """The CPU data behind device tensors (nested containers too), for checking results."""
    return tree_map(_unwrap, value)


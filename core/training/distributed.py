"""torch.distributed as the trainer uses it: started by `torchrun` (the engine everyone
uses; no home-made launcher), NCCL on GPUs, gloo on the CPU.

    torchrun --nproc-per-node 4 -m core run pipeline.yaml

Outside torchrun every helper here is a no-op for one process.

Every helper that communicates runs eagerly, also when called from a module that
`trainer.compile` compiles (`@_eager`, i.e. `torch.compiler.disable`). Traced, its
collectives became functional collectives inside inductor's graphs, and torch reported Work
objects left unwaited at exit ("there are still 9 unwaited collective calls";
tests/test_ddp_methods.py). These collectives move a batch's features, labels and BatchNorm
statistics, which are small, so compiling them gains nothing. Run eagerly, they are the
collectives the DDP tests check.
"""

from __future__ import annotations

import datetime
import fnmatch
import functools
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env(device_type: str) -> Dist:
    """Join the process group torchrun describes in the environment (idempotent)."""
    if not launched_by_torchrun():
        return Dist()
    info = Dist(rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    if info.world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return info


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _eager(helper: Callable) -> Callable:
    """`helper` run eagerly under DDP, even inside a compiled region (module docstring).
    With one process it is traced as before: its no-op path adds no graph break."""
    eager = torch.compiler.disable(helper)

    @functools.wraps(helper)
    def call(*args: Any, **kwargs: Any) -> Any:
        return eager(*args, **kwargs) if active() else helper(*args, **kwargs)

    return call


#: for components: a helper that does host bookkeeping for DDP (reading `batch_column`,
#: counting rows per process) runs eagerly under DDP, so torch.compile neither traces its
#: per-row Python values (a guard on each, a recompile per batch make-up) nor breaks on them
eager_under_ddp = _eager


@_eager
def barrier() -> None:
    if active():
        dist.barrier()


@_eager
def broadcast_object(value: Any, src: int = 0) -> Any:
    """Rank `src`'s `value` on every rank (run folders, metrics)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@_eager
def all_reduce_mean(values: torch.Tensor | dict[str, Any]) -> torch.Tensor | dict[str, float]:
    """The mean over processes of a tensor (same shape on every rank), or of a dict of
    scalars whose keys may differ between ranks (a loss that logs a part only when its
    batch holds some sample kind): each key is averaged over the ranks that have it, and
    every rank gets the union of the keys, sorted as rank 0's first. Values may be Python
    numbers or tensors on any device (a loss logging a float gives a CPU scalar)."""
    if isinstance(values, dict):
        return _all_reduce_mean_dict(values)
    if not active():
        return values
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def _all_reduce_mean_dict(values: dict[str, Any]) -> dict[str, float]:
    device = next((v.device for v in values.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
    if active() and dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    local = {k: torch.as_tensor(v).detach().to(device=device, dtype=torch.float64).reshape(())
             for k, v in values.items()}
    if not active():
        return {k: float(v) for k, v in local.items()}
    key_lists: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(key_lists, list(local))
    keys = list(dict.fromkeys(k for keys in key_lists for k in keys))
    sums = torch.stack([local.get(k, torch.zeros((), dtype=torch.float64, device=device)) for k in keys])
    counts = torch.tensor([float(k in local) for k in keys], dtype=torch.float64, device=device)
    both = torch.stack([sums, counts])
    dist.all_reduce(both, op=dist.ReduceOp.SUM)
    return dict(zip(keys, (both[0] / both[1].clamp(min=1)).tolist()))


@_eager
def any_true(flag: torch.Tensor) -> bool:
    """Whether `flag` (a bool tensor) is true on any rank: all ranks decide alike."""
    if active():
        flag = flag.to(torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag)


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous [start, stop) of `n` items for `rank`, sizes differing by at most one."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class batch_rows:  # noqa: N801 - a context manager, named like torch.no_grad
    """`with batch_rows(counts, labels, column):` the region of one training batch (its
    forward, backward and step end), where `batch_row_counts()` gives `counts` (every
    process's number of rows, in rank order), `batch_labels()` the label fields of every
    process's rows (`labels()`, called once when first asked) and `batch_column(name)` a
    record field of them (`column(name)`, once a name). The trainer knows all from
    the epoch's plans, exchanged once (`exchange_plans`), so the losses' gathers of a
    batch need no exchange of counts or labels at each step: on GPUs that exchange is read
    back to the host, and the host then waits for the GPU at every step. None: unknown."""

    def __init__(self, counts: Sequence[int] | None, labels: Callable[[], dict[str, Any]] | None = None,
                 column: Callable[[str], list[Any] | None] | None = None) -> None:
        self.counts = None if counts is None else [int(c) for c in counts]
        self._labels, self._made = labels, None
        self._column, self._columns = column, {}

    def labels(self) -> dict[str, Any] | None:
        if self._made is None and self._labels is not None:
            self._made = self._labels()
            for array in self._made.values():  # shared by every loss of the step: read-only
                array.setflags(write=False)
        return self._made

    def column(self, name: str) -> list[Any] | None:
        if name not in self._columns:
            self._columns[name] = None if self._column is None else self._column(name)
        return self._columns[name]

    def __enter__(self) -> "batch_rows":
        global _BATCH
        self._before, _BATCH = _BATCH, self
        return self

    def __exit__(self, *exc: Any) -> None:
        global _BATCH
        _BATCH = self._before


#: the training batch the trainer is running (`batch_rows`); None between steps
_BATCH: batch_rows | None = None


@_eager
def batch_row_counts() -> list[int] | None:
    """Every process's number of rows in the training batch being run, in rank order,
    known without communication (`batch_rows`). Hand it as `counts=` to a gather of the
    batch's rows (a loss's features and labels): the gather then skips its exchange of row
    counts. None outside DDP and outside a training step (the gathers then exchange them)."""
    return _BATCH.counts if active() and _BATCH is not None else None


@_eager
def batch_labels() -> dict[str, Any] | None:
    """The label fields (`_BATCH_FIELDS`, numpy) of every process's rows of the training
    batch being run, in rank order (`batch_rows`); None outside DDP or a training step."""
    return _BATCH.labels() if active() and _BATCH is not None else None


@_eager
def batch_column(name: str) -> tuple[list[Any] | None, slice] | None:
    """(record field `name` of every process's rows of the training batch being run, in
    rank order, None where a record lacks it, or None when no record has the field; the
    slice of this process's rows) in a DDP training step (`batch_rows`), from the table:
    per-sample flags a component needs for the whole batch (which rows are text queries, a
    row's task) without an exchange. None outside DDP or a training step."""
    if not active() or _BATCH is None or _BATCH.counts is None:
        return None
    return _BATCH.column(name), _own_rows(_BATCH.counts)


@_eager
def rows_per_process(mask: Any) -> list[int]:
    """How many of each process's rows of the training batch being run `mask` selects
    (`mask`: bool over every process's rows, in rank order, e.g. from `batch_column`): the
    counts a gather of those rows needs, known without an exchange in a DDP step."""
    import numpy as np

    counts = batch_row_counts()
    if counts is None:
        raise RuntimeError("rows_per_process: only inside a DDP training step (see batch_rows)")
    bounds = np.cumsum([0, *counts])
    return [int(np.count_nonzero(mask[a:b])) for a, b in zip(bounds[:-1], bounds[1:])]


def exchange_plans(plan: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[list[tuple[Any, Any]]] | None:
    """Every process's (record indices, roles) of each step of one epoch, from this
    process's `plan` (its shard of each step): [[(indices, roles) of rank r for r in ranks]
    for each step]. One object all_gather an epoch (numpy arrays); None outside DDP.
    Every process runs the same number of steps (the samplers' rule,
    `core.samplers.sharding`): plans of different lengths are refused."""
    if not active():
        return None
    import numpy as np

    sizes = np.asarray([len(indices) for indices, _ in plan], dtype=np.int64)
    mine = (sizes, np.asarray([i for indices, _ in plan for i in indices], dtype=np.int64),
            np.asarray([r for _, roles in plan for r in roles], dtype=np.int64))
    every = all_gather_objects(mine)
    if len({len(steps) for steps, _, _ in every}) > 1:
        raise RuntimeError(f"the processes planned different numbers of batches this epoch "
                           f"({', '.join(f'rank {r}: {len(e[0])}' for r, e in enumerate(every))}): a sampler must "
                           f"give every rank the same number of batches (core.samplers.sharding)")
    per_rank = []
    for steps, indices, roles in every:
        ends = np.cumsum(steps)
        per_rank.append([(indices[e - n:e], roles[e - n:e]) for n, e in zip(steps, ends)])
    return [list(step) for step in zip(*per_rank)]


def gather_uneven(local: torch.Tensor, counts: Sequence[int] | None = None) -> torch.Tensor:
    """Every process's rows concatenated in rank order, when processes hold different
    numbers of rows (e.g. a loss's batch features for a memory that must stay equal on
    every process); the tensor itself outside DDP. One all_gather of the sizes, one of
    the rows padded to the longest. `counts`: every process's row count when known
    (`batch_row_counts()` for a batch's rows): no exchange of the sizes then."""
    if not active():
        return local
    return _gather_padded(local, _counts(local, counts))


def gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """Concatenate every rank's contiguous shard (see `shard_range`) in rank order, so
    the result is in dataset order: all ranks get the full (n, ...) tensor."""
    if not active():
        return local
    world = dist.get_world_size()
    return _gather_padded(local, [stop - start for start, stop in (shard_range(n, r, world) for r in range(world))])


def gather_with_grad(local: torch.Tensor, counts: Sequence[int] | None = None) -> torch.Tensor:
    """Every process's rows concatenated in rank order, differentiable: the backward of
    the all_gather (`_AllGather`) sums every process's gradient of each row into the
    process that owns it. For losses defined on the whole batch (mining, alignment, batch
    statistics): each process computes the global batch's loss, DDP averages the equal
    gradients, and the update is the one-process update. Rows may differ in number
    between processes (padded; one all_gather of the counts unless `counts` gives them, as
    in `gather_uneven`); `local` itself outside DDP."""
    if not active():
        return local
    return _gather_with_grad(local, _counts(local, counts))


def gather_with_labels(features: torch.Tensor, labels: torch.Tensor,
                       counts: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(`gather_with_grad(features)`, `gather_uneven(labels)`) for rows that belong
    together (a loss's features and their identities, HSE's local features and their
    episode roles), with one all_gather of the row counts for both, or none when `counts`
    gives them (`batch_row_counts()`); the arguments themselves outside DDP."""
    if not active():
        return features, labels
    counts = _counts(features, counts)
    return _gather_with_grad(features, counts), _gather_padded(labels, counts)


def gather_with_grad_and_slice(local: torch.Tensor,
                               counts: Sequence[int] | None = None) -> tuple[torch.Tensor, slice]:
    """`gather_with_grad(local, counts)` and the slice of it that holds this process's rows:
    for a computation on the whole batch whose result each process takes back for its own
    rows (a BatchNorm over every process's rows, called on every process, maybe with no
    rows)."""
    if not active():
        return local, slice(0, local.shape[0])
    counts = _counts(local, counts)
    return _gather_with_grad(local, counts), _own_rows(counts)


def _own_rows(counts: Sequence[int]) -> slice:
    """This process's rows among every process's rows in rank order (`counts`: each one's)."""
    rank = dist.get_rank()
    start = sum(counts[:rank])
    return slice(start, start + counts[rank])


def _gather_with_grad(local: torch.Tensor, counts: list[int]) -> torch.Tensor:
    if max(counts) == 0:  # no process has rows (every process knows: the counts are shared)
        return local
    padded = local
    if local.shape[0] < max(counts):
        padded = torch.cat([local, local.new_zeros((max(counts) - local.shape[0], *local.shape[1:]))])
    parts = all_gather_with_grad(padded.contiguous())
    return torch.cat([part[:count] for part, count in zip(parts, counts)])


class _AllGather(torch.autograd.Function):
    """all_gather whose backward sums every process's gradient of each piece into the
    process that owns it (an all_reduce of the stacked gradients, then this rank's piece).

    Written on `dist.all_gather` / `dist.all_reduce` rather than
    torch.distributed.nn.functional.all_gather: that one is deprecated in torch 2.14 and,
    on gloo, made 3 of 8 two-process runs abort at exit ("terminate called without an
    active exception")."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:
        every = torch.stack([g.contiguous() for g in grads])
        dist.all_reduce(every, op=dist.ReduceOp.SUM)
        return every[dist.get_rank()]


@_eager
def all_gather_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every process's `tensor` (equal shapes), differentiable (see `_AllGather`)."""
    return _AllGather.apply(tensor)


@_eager
def _counts(local: torch.Tensor, counts: Sequence[int] | None) -> list[int]:
    """Every process's row count: `counts` when given (checked against this process's
    rows: a process whose rows differ raises, and torchrun stops the others), else
    exchanged."""
    if counts is None:
        return _row_counts(local)
    counts, rank = [int(c) for c in counts], dist.get_rank()
    if len(counts) != dist.get_world_size() or local.shape[0] != counts[rank]:
        raise ValueError(f"a gather was given the row counts {counts} for {dist.get_world_size()} processes, but "
                         f"process {rank} holds {local.shape[0]} rows: pass batch_row_counts() only for a "
                         f"tensor with one row per row of the training batch, and None otherwise")
    return counts


@_eager
def _row_counts(local: torch.Tensor) -> list[int]:
    size = torch.full((1,), local.shape[0], device=local.device)  # made there, not copied over
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s) for s in torch.cat(sizes).tolist()]


@_eager
def _gather_padded(local: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """all_gather of `local` padded to the longest of every rank's row `counts`, the
    padding cut off again. A rank with no rows may not know the rows' shape and dtype
    (an empty evaluation shard gives a (0, 0) tensor): when a count is 0, the first
    rank holding rows tells the others."""
    if min(counts) == 0 and max(counts) > 0:
        box = [(tuple(local.shape[1:]), local.dtype)]
        dist.broadcast_object_list(box, src=counts.index(max(counts)))
        shape, dtype = box[0]
        if local.shape[0] == 0:
            local = torch.zeros((0, *shape), dtype=dtype, device=local.device)
    padded = torch.zeros((max(counts), *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts)])


@_eager
def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order (a one-item list outside DDP): per-rank RNG
    states for the checkpoint."""
    if not active():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


@_eager
def all_reduce_max(value: int, device: torch.device) -> int:
    """The largest of every rank's `value` (all ranks decide alike: e.g. which signal
    stops training)."""
    if not active():
        return int(value)
    box = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return int(box.item())


@_eager
def all_reduce_sum(values: Sequence[int], device: torch.device) -> list[int]:
    """Each of `values` summed over every rank (one all_reduce): e.g. how many rows of a
    kind the whole batch holds, so that every rank takes the same branch."""
    if not active():
        return [int(v) for v in values]
    box = torch.tensor([int(v) for v in values], dtype=torch.int64, device=device)
    dist.all_reduce(box)
    return [int(v) for v in box.tolist()]


# ----------------------------------------------------------------- whole-batch methods
_BATCH_FIELDS = ("pids", "camids", "categories", "domains", "roles", "indices")


def gather_for_loss(outputs: dict[str, torch.Tensor], batch: Any,
                    keys: Sequence[str]) -> tuple[dict[str, torch.Tensor], Any]:
    """The model outputs `keys` (per-sample: one row per batch sample) and the batch's
    per-sample label fields of every process, concatenated in rank order: floating outputs
    with their gradient (`gather_with_grad`), the rest without. For a loss defined on the
    whole batch (mining, prototypes, alignment, per-half means): computed on the result it
    is the one-process loss of the global batch. The returned Batch has no images and no
    extras; its label fields have host copies (`Batch.host`) of the global batch: the
    labels are host arrays, so the loss's input checks read them without a device read. In
    a training step the trainer knows every process's rows and labels from the epoch's
    plans (`batch_rows`): nothing is exchanged but the outputs. Elsewhere the labels
    travel as the processes' host copies (one all_gather_object, which also gives every
    process's row count). Outside DDP: the arguments themselves."""
    if not active():
        return outputs, batch
    import numpy as np

    from core.records import Batch, host_to_device

    n = len(batch)
    known = batch_labels()
    if known is not None:
        counts = batch_row_counts()
        host = _checked_labels(known, counts, batch)
    else:
        every = all_gather_objects({name: np.asarray(batch.host(name)) for name in _BATCH_FIELDS})
        counts = [len(labels["pids"]) for labels in every]
        host = {name: np.concatenate([labels[name] for labels in every]) for name in _BATCH_FIELDS}
    out = {}
    for key in keys:
        value = outputs[key]
        if value.shape[0] != n:
            raise ValueError(f"gather_for_loss: output '{key}' has {value.shape[0]} rows but the batch has {n} "
                             "samples; only per-sample outputs are gathered with the batch")
        out[key] = _gather_with_grad(value, counts) if value.is_floating_point() else _gather_padded(value, counts)
    device = batch.pids.device
    fields = {name: host_to_device(array, device) for name, array in host.items()}
    gathered = Batch(images=batch.images.new_zeros((0,)), extras={}, **fields)
    for name, array in host.items():
        gathered.host_copies[name] = (fields[name], array)
    return out, gathered


@_eager
def _checked_labels(labels: dict[str, Any], counts: list[int], batch: Any) -> dict[str, Any]:
    """`labels` (the training batch's, from the plans), once this process's rows of them
    are found equal to `batch`'s host copies: a batch that is not the training batch (a
    selection of its rows, labels changed after collate) is refused with one line by the
    process whose rows differ (torchrun then stops the others, which wait in the gather;
    agreeing first would cost an exchange per step, what this path avoids)."""
    import numpy as np

    rank, mine = dist.get_rank(), _own_rows(counts)
    for name in _BATCH_FIELDS:
        if not np.array_equal(np.asarray(batch.host(name)), labels[name][mine]):
            raise ValueError(f"gather_for_loss: in a training step the batch must be the step's batch, whose "
                             f"labels every process knows from the plans; its '{name}' differ on process {rank} "
                             f"(a selection of rows, or labels changed after collate, needs its own gather)")
    return labels


def gather_host(arrays: dict[str, Any]) -> dict[str, Any]:
    """Per-sample host arrays (numpy, one row per local sample) of every process,
    concatenated in rank order (one all_gather_object; the arrays themselves outside DDP):
    a loss's row flags for the batch `gather_for_loss` gathers, read without a device sync."""
    if not active():
        return arrays
    import numpy as np

    every = all_gather_objects({k: np.asarray(v) for k, v in arrays.items()})
    return {k: np.concatenate([part[k] for part in every]) for k in arrays}


class GatheredBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (any input (N, C, ...)) whose training statistics are those of every
    process's batch together, for any backend (nn.SyncBatchNorm needs CUDA): each process
    shares its count, mean and sum of squared deviations, differentiably (the gradient
    through the statistics reaches every process, as in one process), and combines them
    (Chan et al.'s parallel variance). Outside training or DDP: a plain BatchNorm."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions (N, C, ...), got {input.dim()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)

        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, channels] + [1] * (x.dim() - 2)
        xf = x.float()
        n = x.numel() // max(channels, 1)
        mean = xf.mean(dims) if n else xf.new_zeros(channels)
        m2 = ((xf - mean.view(shape)) ** 2).sum(dims)
        stats = torch.cat([xf.new_full((1,), float(n)), mean, m2])
        every = torch.stack(all_gather_with_grad(stats))
        counts, means, m2s = every[:, :1], every[:, 1:1 + channels], every[:, 1 + channels:]
        total = counts.sum()
        g_mean = (counts * means).sum(0) / total
        g_var = (m2s + counts * (means - g_mean) ** 2).sum(0) / total
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = g_var * total / (total - 1).clamp(min=1)
                self.running_mean.mul_(1 - momentum).add_(momentum * g_mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.to(self.running_var.dtype))
        out = (xf - g_mean.view(shape)) * torch.rsqrt(g_var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def _matches(name: str, patterns: Sequence[str]) -> bool:
    """`name` or one of its parent modules matches an fnmatch pattern."""
    parts = name.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes for pattern in patterns)


def convert_sync_batchnorm(module: nn.Module, device: torch.device, skip: Sequence[str] = ()) -> nn.Module:
    """Every BatchNorm of `module` made to take its statistics from all processes —
    nn.SyncBatchNorm on CUDA, `GatheredBatchNorm` elsewhere — except inside the submodules
    named by `skip` (qualified names, fnmatch patterns): those that a step may leave
    uncalled on some processes (a synchronised BatchNorm that one process skips waits
    for it forever). Parameters and buffers are kept (the same tensors)."""
    kind = nn.SyncBatchNorm if device.type == "cuda" else GatheredBatchNorm

    def convert(child: nn.Module, name: str) -> nn.Module:
        if name and _matches(name, skip):
            return child
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, (nn.SyncBatchNorm,
                                                                                       GatheredBatchNorm)):
            new = kind(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            new.running_mean, new.running_var = child.running_mean, child.running_var
            new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            return new
        for sub_name, sub in list(child.named_children()):
            setattr(child, sub_name, convert(sub, f"{name}.{sub_name}" if name else sub_name))
        return child

    return convert(module, "")


def component_declarations(net: nn.Module, attribute: str) -> list[str]:
    """The qualified names of what the components of a TrainingModule (`backbone`, `head`,
    `losses.N`) declare in `attribute` (`conditional_modules` or `shared_buffers`,
    core.interfaces), each prefixed with its component's name."""
    named: list[tuple[str, nn.Module]] = [("backbone", net.backbone), ("head", net.head)]
    named += [(f"losses.{i}", m) for i, m in enumerate(getattr(net, "losses", ()))]
    out = []
    for prefix, component in named:
        for entry in getattr(component, attribute, ()) or ():
            out.append(f"{prefix}.{entry}")
    return out


def shared_buffer_names(net: nn.Module) -> list[str]:
    """The buffers of `net` its components declare equal on every process (memory banks
    updated from gathered features): DDP need not broadcast them from rank 0 each step."""
    patterns = component_declarations(net, "shared_buffers")
    return [name for name, _ in net.named_buffers() if patterns and any(fnmatch.fnmatchcase(name, p) for p in patterns)]

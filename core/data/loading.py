"""From a record table to batches: decode + transform one sample, collate a `Batch`.

A sample key may carry a seed, `(index, seed, role)`: the random transform then depends
on that seed alone, not on the worker that runs it or on how many batches a resumed run
skipped. Samplers hand out such keys; plain ints keep the global RNG (evaluation).
"""

from __future__ import annotations

import numbers
import random
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from core.data.spatial import SPATIAL_FIELDS, patch_masks_as_batch_field, transform_with_parts
from core.data.table import RecordTable
from core.interfaces import Dataset
from core.records import Batch

#: Extras that serve a dataset's own decoding and never reach a batch (keys starting
#: with "_" are internal too).
INTERNAL_EXTRAS = frozenset({"render_key"})


class ImageSamples(torch.utils.data.Dataset):
    """Record i of `table`, decoded by `datasets[table.source_ids[i]]` and transformed."""

    def __init__(self, table: RecordTable, datasets: list[Dataset], transform: Callable | None) -> None:
        if len(datasets) != len(table.sources):
            raise ValueError(f"ImageSamples: the table has {len(table.sources)} sources "
                             f"({', '.join(table.sources)}) but {len(datasets)} datasets were given")
        self.table = table
        self.datasets = list(datasets)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, key: int | tuple[int, ...]) -> dict[str, Any]:
        index, seed, role = _parse_key(key)
        t = self.table
        record = t.records[index]
        dataset = self.datasets[int(t.source_ids[index])]
        image = dataset.load_image(record)
        extras = {k: v for k, v in record.extras.items() if k not in INTERNAL_EXTRAS and not k.startswith("_")}
        extras.update(dataset.sample_extras(record))
        image, spatial = self._apply(image, extras, index, seed)
        extras.update(spatial)
        return {
            "image": image,
            "pid": int(t.pids[index]),
            "camid": int(t.camids[index]),
            "category": int(t.category_ids[index]),
            "domain": int(t.domain_ids[index]),
            "role": role,
            "index": index,
            "extras": extras,
        }

    def _apply(self, image: Any, extras: dict[str, Any], index: int,
               seed: int | None) -> tuple[torch.Tensor, dict[str, Any]]:
        """The transformed image and the spatial extras moved with it (core.data.spatial)."""
        if self.transform is None:
            spatial = {}
            if "part_masks" in extras:
                spatial["part_masks"] = patch_masks_as_batch_field(extras["part_masks"])
            if "part_boxes" in extras:
                spatial["part_boxes"] = torch.as_tensor(np.asarray(extras["part_boxes"], dtype=np.float32))
            return F.to_dtype(F.to_image(image), torch.float32, scale=True), spatial
        if not any(k in extras for k in SPATIAL_FIELDS):
            def run() -> tuple[torch.Tensor, dict[str, Any]]:
                return self.transform(image), {}
        else:
            def run() -> tuple[torch.Tensor, dict[str, Any]]:
                return transform_with_parts(self.transform, image, extras)
        finish = getattr(self.transform, "device_normalise", None)
        if finish is not None and finish.erasing is not None:  # uint8 out: draw the box erased on the device
            inner = run

            def run() -> tuple[torch.Tensor, dict[str, Any]]:
                out, spatial = inner()
                return out, {**spatial, "erase_box": finish.draw(out)}
        if seed is None:
            return run()
        # torchvision v2 draws from torch's CPU generator only; python's `random` is
        # seeded too for user transforms built on it. Seeding the CPU generator alone
        # costs microseconds (torch.manual_seed touches every device: ~75 us). In the
        # main process the global states are restored: dropout and resume depend on them.
        sample = mix_seed(seed, index)
        generator = torch.default_generator
        restore = torch.utils.data.get_worker_info() is None
        states = (generator.get_state(), random.getstate()) if restore else None
        generator.manual_seed(sample)
        random.seed(sample)
        try:
            return run()
        finally:
            if states is not None:
                generator.set_state(states[0])
                random.setstate(states[1])


_MASK = (1 << 63) - 1


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (splitmix64 steps): stable across runs and
    platforms, and cheap enough to call per sample."""
    x = 0x9E3779B97F4A7C15
    for part in parts:
        x = (x ^ (int(part) & _MASK)) * 0xBF58476D1CE4E5B9 & _MASK
        x ^= x >> 31
        x = x * 0x94D049BB133111EB & _MASK
        x ^= x >> 29
    return x


def _parse_key(key: Any) -> tuple[int, int | None, int]:
    """int -> (index, None, 0); (index, seed) or (index, seed, role)."""
    if isinstance(key, (tuple, list)):
        if len(key) not in (2, 3):
            raise ValueError(f"ImageSamples: a key is an index or (index, seed[, role]); got {key!r}")
        role = int(key[2]) if len(key) == 3 else 0
        return int(key[0]), (None if key[1] is None else int(key[1])), role
    return int(key), None, 0


def label_fields(table: Any, indices: np.ndarray, roles: np.ndarray) -> dict[str, np.ndarray]:
    """The label fields `collate` gives the samples of records `indices` (with episode
    `roles`), from the record table alone, as int64 arrays: the whole batch's labels under
    DDP, where each process loads its own shard (core.training.distributed.batch_rows)."""
    indices = np.asarray(indices, dtype=np.int64)
    return {"pids": np.asarray(table.pids, dtype=np.int64)[indices],
            "camids": np.asarray(table.camids, dtype=np.int64)[indices],
            "categories": np.asarray(table.category_ids, dtype=np.int64)[indices],
            "domains": np.asarray(table.domain_ids, dtype=np.int64)[indices],
            "roles": np.asarray(roles, dtype=np.int64), "indices": indices}


def record_values(table: Any, name: str, indices: np.ndarray) -> list[Any] | None:
    """Record field `name` (a record extra such as a task name or a flag) of records
    `indices`, as the records hold it (None where a record lacks it): what the samples
    carry in their extras for a public extra that the dataset's `sample_extras` leaves alone;
    None when no record of the table has it. The whole batch's per-sample fields under
    DDP, from the table alone (core.training.distributed.batch_column)."""
    try:
        column = table.column(name)
    except KeyError:
        return None
    if not hasattr(column, "has"):  # a base field: an array
        return np.asarray(column)[np.asarray(indices, dtype=np.int64)].tolist()
    return [column.get(int(i)) if column.has(int(i)) else None for i in indices]


def collate(samples: list[dict[str, Any]]) -> Batch:
    """Stack samples into a `Batch`; a DataLoader `collate_fn` (top-level, picklable). The
    batch keeps host copies of its labels and per-sample integer/bool extras (`Batch.host`)."""
    if not samples:
        raise ValueError("collate: no samples")

    def ints(name: str) -> torch.Tensor:
        return torch.tensor([s[name] for s in samples], dtype=torch.int64)

    return Batch(
        images=torch.stack([s["image"] for s in samples]),
        pids=ints("pid"), camids=ints("camid"), categories=ints("category"),
        domains=ints("domain"), roles=ints("role"), indices=ints("index"),
        extras=collate_extras([s.get("extras", {}) for s in samples]),
    ).keep_host_copies()


class PreparedCollate:
    """`collate`, then each component's batch preparer (`Backbone.batch_preparer`): the
    trainer's DataLoader `collate_fn`, so host work such as tokenizing text runs in the
    loader's worker processes, before the batch goes to the device, and not in the
    training step (issue 19: no host work and no graph break there). Picklable when the
    preparers are."""

    def __init__(self, preparers: Sequence[Callable[[Batch], None]] = ()) -> None:
        self.preparers = tuple(preparers)

    def __call__(self, samples: list[dict[str, Any]]) -> Batch:
        batch = collate(samples)
        for prepare in self.preparers:
            prepare(batch)
        return batch


def batch_preparers(components: Sequence[Any]) -> list[Callable[[Batch], None]]:
    """The batch preparers of `components` (backbone, head, losses: each may define
    `batch_preparer()`, returning a callable or None), in that order."""
    out = []
    for component in components:
        make = getattr(component, "batch_preparer", None)
        prepare = make() if callable(make) else None
        if prepare is not None:
            out.append(prepare)
    return out


def collate_extras(extras: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per key: numbers -> a tensor, equal-shape arrays/tensors -> one stacked tensor,
    anything else (strings, ragged shapes, a key some samples lack) -> a list (None where
    missing), so per-sample fields stay aligned with the batch."""
    keys: list[str] = []
    for e in extras:
        keys.extend(k for k in e if k not in keys)
    return {k: _collate_values([e.get(k) for e in extras]) for k in keys}


def _collate_values(values: list[Any]) -> Any:
    if any(v is None for v in values):
        return values
    if all(isinstance(v, bool) for v in values):
        return torch.tensor(values, dtype=torch.bool)
    if all(isinstance(v, numbers.Integral) for v in values):
        return torch.tensor([int(v) for v in values], dtype=torch.int64)
    if all(isinstance(v, numbers.Real) for v in values):
        return torch.tensor([float(v) for v in values], dtype=torch.float32)
    if all(isinstance(v, (np.ndarray, torch.Tensor)) for v in values):
        tensors = [torch.as_tensor(v) for v in values]
        if all(t.shape == tensors[0].shape and t.dtype == tensors[0].dtype for t in tensors):
            return torch.stack(tensors)
    return values

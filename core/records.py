"""The two data contracts of a pipeline: a `Record` (one image of one identity) and a
`Batch` (what travels from the loader to the losses).

Records are cheap (no decoded pixels) so that samplers and evaluators can read
identities, cameras and categories without touching images. A Batch moves to the
device as one object; components that need an optional field ask for it with
`Batch.require`, which fails with a message naming the field and its usual provider.

The per-sample metadata (identities, cameras, categories, roles, which rows are images
...) is known on the host before the batch goes to the device: `collate` keeps a numpy
copy of it (`Batch.host`), so input checks and data-dependent row selections in the
training step read it without waiting for the GPU (issue 19, item 9).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported lazily: `core --help` must not pay for it
    import numpy as np
    import torch

#: Episode roles (DESIGN.md "sampler"): outside episodic sampling every sample is 0.
ROLE_TRAIN = 0
ROLE_META_TEST = 1

#: The per-sample label fields of a Batch: (B,) int64 tensors.
LABEL_FIELDS = ("pids", "camids", "categories", "domains", "roles", "indices")
#: The prefix of a model output's entry in `Batch.host_copies` (`keep_host_output`).
_OUTPUT = "output:"

#: Where an optional Batch field usually comes from, for error messages.
FIELD_PROVIDERS: dict[str, str] = {
    "roles": "an episodic sampler (e.g. `edps`)",
    "part_masks": "a labeler (e.g. `vge-labeler`) through a `prepare` step or a dataset's `annotations:` file",
    "part_boxes": "a dataset with part boxes (the synthetic world; a manifest's part_boxes column)",
    "instruction": "an instruction dataset (e.g. `instruct-editor`)",
    "clothes_ids": "a clothes-changing dataset (e.g. the synthetic world)",
    "modality": "a cross-modality dataset (e.g. the synthetic world's infrared cameras)",
}


@dataclass
class Record:
    """One image of one identity.

    `path` names an image file; datasets that render images (the synthetic world) leave
    it None and decode through their own `load_image`. `pid` is the dataset's identity
    label (relabelled to 0..N-1 for training by the pipeline); `extras` holds per-image
    annotations some components need (part boxes, captions, clothes ids, ...).
    """

    path: str | None
    pid: int
    camid: int
    category: str = "object"
    domain: str = "default"
    split: str = "train"
    extras: dict[str, Any] = field(default_factory=dict)


class MissingBatchField(KeyError):
    """`Batch.require` of a field the batch lacks; `field` and `component` name them."""

    def __init__(self, message: str, field: str, component: str) -> None:
        super().__init__(message)
        self.field, self.component = field, component


@dataclass
class Batch:
    """A batch of samples, carried from the loader through the model to the losses.

    `roles` are episode roles (0 = meta-train, 1 = meta-test), all zero outside episodic
    sampling. `indices` are the samples' positions in their record table. `extras` maps
    field names to tensors or lists (part masks, instructions, modality, clothes ids).
    `host_copies` holds the host copies `host` reads (made by `keep_host_copies`).
    """

    images: "torch.Tensor"
    pids: "torch.Tensor"
    camids: "torch.Tensor"
    categories: "torch.Tensor"
    domains: "torch.Tensor"
    roles: "torch.Tensor"
    indices: "torch.Tensor"
    extras: dict[str, Any] = field(default_factory=dict)
    host_copies: dict[str, tuple[Any, "np.ndarray"]] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.pids.shape[0])

    # ------------------------------------------------------------------ host copies
    def _value(self, name: str) -> Any:
        return getattr(self, name) if name in LABEL_FIELDS else self.extras.get(name)

    def keep_host_copies(self) -> "Batch":
        """Keep a host copy of every label field and every per-sample integer or bool extra
        (shape (B,)) that is on the CPU (`collate` calls this, before the batch goes to
        the device). A copy, not a view of the tensor's memory: a DataLoader worker sends
        the batch through `share_memory_()`, which moves the tensor's storage and frees the
        old one, so a view would read freed memory (the CI failure of a twin test reading a
        camera id of 94245762545962). Returns the batch itself."""
        n = len(self)
        names = [*LABEL_FIELDS, *(k for k in self.extras if k not in LABEL_FIELDS)]
        for name in names:
            value = self._value(name)
            if _is_host_label(value, n):
                self.host_copies[name] = (value, value.detach().numpy().copy())
        return self

    def keep_host_copy(self, name: str) -> "Batch":
        """Keep a host copy of the per-sample field `name` of any shape (B, ...): an
        integer or bool CPU tensor that a batch preparer (`Backbone.batch_preparer`) added,
        e.g. token ids the training step reads on the host. `keep_host_copies` takes only
        (B,) fields, so that large per-sample arrays are not copied unasked."""
        value = self._value(name)
        if value is None:
            self.require(name, "Batch.keep_host_copy")
        if not _is_host_label(value, len(self), any_shape=True):
            raise ValueError(f"Batch.keep_host_copy: field '{name}' must be an integer or bool CPU tensor with "
                             f"{len(self)} rows (one per sample), got {type(value).__name__} "
                             f"{tuple(getattr(value, 'shape', ()))}")
        self.host_copies[name] = (value, value.detach().numpy().copy())
        return self

    def host(self, name: str) -> "np.ndarray":
        """The per-sample field `name` (a label field such as "pids" or "roles", or an
        extra) as a numpy array on the host. `collate` keeps a copy before the batch goes
        to the device and `to`, `pin_memory` and `select` carry it, so input checks and row
        selections that read it make no host sync (issue 19, item 9). A field without a
        copy (a batch built by hand, a field replaced after collate) is read from its
        value: a host sync when that is a tensor on a GPU. An in-place change of a field
        after collate does not reach the copy: replace the field instead."""
        import numpy as np

        value = self._value(name)
        if value is None:
            self.require(name, "Batch.host")
        entry = self.host_copies.get(name)
        if entry is not None and entry[0] is value:
            return entry[1]
        if hasattr(value, "detach") and hasattr(value, "device"):
            return value.detach().cpu().numpy()
        return np.asarray(value)

    def keep_host_output(self, name: str, value: "torch.Tensor", array: "np.ndarray") -> None:
        """Record that model output `name`, `value` (per-sample, maybe on a GPU), is `array`
        on the host: a component that builds an output from host data (instruct-editor's
        backbone: `has_image` from the batch's `text_query` flags) lets the components
        after it read the output without a host sync (`host_output`)."""
        self.host_copies[_OUTPUT + name] = (value, array)

    def host_output(self, outputs: dict[str, Any], name: str) -> "np.ndarray | None":
        """Model output `outputs[name]` as a numpy array: its recorded host copy
        (`keep_host_output`) while `outputs[name]` is the recorded tensor, else read from
        the tensor (a host sync on a GPU); None when `outputs` has no `name`."""
        value = outputs.get(name)
        if value is None:
            return None
        entry = self.host_copies.get(_OUTPUT + name)
        if entry is not None and entry[0] is value:
            return entry[1]
        import numpy as np

        return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)

    def _carry_host_copies(self, out: "Batch", pick: Any = None) -> "Batch":
        """`out` (made from this batch field by field) with this batch's host copies whose
        field `out` still holds, rows `pick` (a host bool mask) when given."""
        for name, (value, array) in self.host_copies.items():
            if not name.startswith(_OUTPUT) and self._value(name) is value and out._value(name) is not None:
                out.host_copies[name] = (out._value(name), array if pick is None else array[pick])
        return out

    def _fields(self, convert: Any) -> dict[str, Any]:
        return {f.name: convert(getattr(self, f.name)) for f in fields(self) if f.name != "host_copies"}

    # ------------------------------------------------------------------ moving
    def to(self, device: "torch.device | str", non_blocking: bool = False) -> "Batch":
        """Move every tensor (also inside `extras`) to `device`; the host copies stay."""

        def move(value: Any) -> Any:
            if hasattr(value, "to") and hasattr(value, "device"):
                return value.to(device, non_blocking=non_blocking)
            if isinstance(value, dict):
                return {k: move(v) for k, v in value.items()}
            return value

        return self._carry_host_copies(Batch(**self._fields(move)))

    def pin_memory(self) -> "Batch":
        """The batch with every CPU tensor (also inside `extras`) in page-locked memory: the
        DataLoader's `pin_memory=True` calls this on custom batch types, and only from
        pinned memory is `to(device, non_blocking=True)` an asynchronous copy."""

        def pin(value: Any) -> Any:
            if hasattr(value, "pin_memory") and hasattr(value, "device") and value.device.type == "cpu":
                return value.pin_memory()
            if isinstance(value, dict):
                return {k: pin(v) for k, v in value.items()}
            return value

        return self._carry_host_copies(Batch(**self._fields(pin)))

    def require(self, name: str, component: str) -> Any:
        """Return `extras[name]`, or fail naming the field and its usual provider."""
        if name in self.extras:
            return self.extras[name]
        hint = FIELD_PROVIDERS.get(name, "a dataset, labeler or sampler that sets it")
        have = ", ".join(sorted(self.extras)) or "none"
        raise MissingBatchField(
            f"{component} needs the batch field '{name}', which this pipeline does not "
            f"provide; it usually comes from {hint}. Extras present: {have}.", name, component
        )

    def select(self, mask: "torch.Tensor | np.ndarray") -> "Batch":
        """The sub-batch where `mask` (bool, shape (B,)) is true; extras that are
        per-sample tensors or lists are selected too, and the host copies. A host mask
        (numpy, a list) selects without a host sync; a device mask is read once."""
        import numpy as np
        import torch

        n = len(self)
        host_mask = not hasattr(mask, "detach")
        keep = np.asarray(mask, dtype=bool) if host_mask else mask.detach().cpu().numpy().astype(bool)
        rows: dict[Any, torch.Tensor] = {}  # host mask: the kept rows' index, per device

        def pick(value: Any) -> Any:
            if hasattr(value, "shape") and len(value.shape) > 0 and value.shape[0] == n:
                if not host_mask:
                    return value[mask]
                if value.device not in rows:
                    rows[value.device] = device_index(np.flatnonzero(keep), value.device)
                return value.index_select(0, rows[value.device])
            if isinstance(value, list) and len(value) == n:
                return [v for v, k in zip(value, keep.tolist()) if k]
            if isinstance(value, dict):
                return {k: pick(v) for k, v in value.items()}
            return value

        return self._carry_host_copies(Batch(**self._fields(pick)), keep)


def _is_host_label(value: Any, n: int, any_shape: bool = False) -> bool:
    """A CPU tensor of shape (n,) (with `any_shape`, (n, ...)) holding integers or bools."""
    if not (hasattr(value, "device") and hasattr(value, "dtype") and hasattr(value, "shape")):
        return False
    shape = tuple(value.shape)
    rows = len(shape) >= 1 and shape[0] == n if any_shape else shape == (n,)
    return value.device.type == "cpu" and rows and (not value.dtype.is_floating_point and not value.dtype.is_complex)


def host_to_device(array: "np.ndarray", device: "torch.device | str") -> "torch.Tensor":
    """A host array as a tensor on `device`, copied without a host sync: from page-locked
    memory with `non_blocking` on a GPU (from pageable memory the copy would wait). The
    array is copied first (small: rows, labels, masks), so the tensor never aliases it."""
    import numpy as np
    import torch

    tensor = torch.from_numpy(np.array(array))  # a copy: writeable, and no attribute dynamo cannot trace
    device = torch.device(device)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    if device.type == "meta":  # the tests' emulated GPU (core.separate_device) takes its path (nothing to pin)
        return tensor.to(device, non_blocking=True)
    return tensor.to(device)


def device_index(rows: Any, device: "torch.device | str") -> "torch.Tensor":
    """`rows` (host integers: a list or numpy array) as an int64 index tensor on `device`,
    copied without a host sync (`host_to_device`)."""
    import numpy as np

    return host_to_device(np.asarray(rows, dtype=np.int64).reshape(-1), device)

"""The two data contracts of a pipeline: a `Record` (one image of one identity) and a
`Batch` (what travels from the loader to the losses).

Records are cheap (no decoded pixels) so that samplers and evaluators can read
identities, cameras and categories without touching images. A Batch moves to the
device as one object; components that need an optional field ask for it with
`Batch.require`, which fails with a message naming the field and its usual provider.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported lazily: `core --help` must not pay for it
    import torch

#: Episode roles (DESIGN.md "sampler"): outside episodic sampling every sample is 0.
ROLE_TRAIN = 0
ROLE_META_TEST = 1

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


@dataclass
class Batch:
    """A batch of samples, carried from the loader through the model to the losses.

    `roles` are episode roles (0 = meta-train, 1 = meta-test), all zero outside episodic
    sampling. `indices` are the samples' positions in their record table. `extras` maps
    field names to tensors or lists (part masks, instructions, modality, clothes ids).
    """

    images: "torch.Tensor"
    pids: "torch.Tensor"
    camids: "torch.Tensor"
    categories: "torch.Tensor"
    domains: "torch.Tensor"
    roles: "torch.Tensor"
    indices: "torch.Tensor"
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.pids.shape[0])

    def to(self, device: "torch.device | str", non_blocking: bool = False) -> "Batch":
        """Move every tensor (also inside `extras`) to `device`."""

        def move(value: Any) -> Any:
            if hasattr(value, "to") and hasattr(value, "device"):
                return value.to(device, non_blocking=non_blocking)
            if isinstance(value, dict):
                return {k: move(v) for k, v in value.items()}
            return value

        return Batch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})

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

        return Batch(**{f.name: pin(getattr(self, f.name)) for f in fields(self)})

    def require(self, name: str, component: str) -> Any:
        """Return `extras[name]`, or fail naming the field and its usual provider."""
        if name in self.extras:
            return self.extras[name]
        hint = FIELD_PROVIDERS.get(name, "a dataset, labeler or sampler that sets it")
        have = ", ".join(sorted(self.extras)) or "none"
        raise KeyError(
            f"{component} needs the batch field '{name}', which this pipeline does not "
            f"provide; it usually comes from {hint}. Extras present: {have}."
        )

    def select(self, mask: "torch.Tensor") -> "Batch":
        """The sub-batch where `mask` (bool, shape (B,)) is true; extras that are
        per-sample tensors or lists are selected too."""
        n = len(self)

        def pick(value: Any) -> Any:
            if hasattr(value, "shape") and len(value.shape) > 0 and value.shape[0] == n:
                return value[mask]
            if isinstance(value, list) and len(value) == n:
                keep = mask.tolist()
                return [v for v, k in zip(value, keep) if k]
            if isinstance(value, dict):
                return {k: pick(v) for k, v in value.items()}
            return value

        return Batch(**{f.name: pick(getattr(self, f.name)) for f in fields(self)})


"""The interfaces of a ReID pipeline (DESIGN.md "The kinds of component").

Built-ins and plugins implement these. Each component's constructor parameters are its
YAML keys (validated from the signature); a parameter named `ctx` receives the
`BuildContext` instead, so data-derived facts never have to be typed into YAML.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from core.records import Batch, Record

class Dataset(abc.ABC):
    """Lists the records of a dataset's splits ('train', 'query', 'gallery').

    Listing must not decode images: samplers and evaluators read pids, cameras and
    categories from records alone. `load_image` decodes one record.
    """

    splits: tuple[str, ...] = ("train", "query", "gallery")

    @abc.abstractmethod
    def records(self, split: str) -> Sequence[Record]:
        """The records of `split`, in a fixed order."""

    def load_image(self, record: Record):
        """Decode `record` as an RGB PIL image; errors name the file."""
        from PIL import Image, UnidentifiedImageError

        if record.path is None:
            raise ValueError(f"{type(self).__name__}: record of pid {record.pid} has no path "
                             "and the dataset does not render images itself")
        try:
            with Image.open(record.path) as img:
                return img.convert("RGB")
        except FileNotFoundError:
            raise FileNotFoundError(f"image file not found: {record.path}") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise OSError(f"cannot read image {record.path}: {exc}") from None


@dataclass
class Episode:
    """One episodic batch: record indices and a role per index (0 meta-train, 1 meta-test)."""

    indices: list[int]
    roles: list[int]

    def __post_init__(self) -> None:
        if len(self.indices) != len(self.roles):
            raise ValueError(f"Episode has {len(self.indices)} indices but {len(self.roles)} roles")


class Sampler(abc.ABC):
    """Plans the batches of one epoch over the training record table.

    Iterating yields one list of indices (or one `Episode`) per batch. The plan depends
    only on (seed, epoch, rank), so a resumed run replays it exactly; under DDP each rank
    yields its own shard (`rank`, `world_size` come from the build context).
    """

    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @abc.abstractmethod
    def __iter__(self) -> Iterator[list[int] | Episode]:
        """Yield the batches of the current epoch."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of batches per epoch (on this rank)."""


class Backbone(nn.Module):
    """Images (+ conditioning in the batch) -> named features.

    `forward(batch)` returns a dict that always holds "global" (B, D) with
    D == `feature_dim`; it may add "tokens", part tokens, masks per layer, ...
    """

    feature_dim: int
    #: (rows, cols) of patches for token backbones, else None.
    patch_grid: tuple[int, int] | None = None

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError


class Head(nn.Module):
    """Backbone features -> the retrieval embedding ("embedding", what evaluation uses)
    plus training outputs (logits, pre-BN features, ...)."""

    def forward(self, features: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


def read_output(outputs: dict[str, torch.Tensor], key: str, component: str, hint: str = "") -> torch.Tensor:
    """`outputs[key]`, or a KeyError naming the component, the key and the outputs present,
    plus `hint` (which component usually produces it)."""
    if key not in outputs:
        raise KeyError(f"{component} reads the model output '{key}', which this model does not produce"
                       f"{' (' + hint + ')' if hint else ''}; outputs present: {', '.join(sorted(outputs)) or 'none'}")
    return outputs[key]


class Loss(nn.Module):
    """Model outputs + batch -> a scalar, or (scalar, dict of logged parts).

    The loss's weight is set in YAML (`losses: [{name: ..., weight: ...}]`), not here.
    """

    def forward(self, outputs: dict[str, torch.Tensor], batch: Batch):  # pragma: no cover
        raise NotImplementedError


@dataclass
class FeatureSet:
    """Embeddings of one split with the metadata evaluation needs."""

    embeddings: torch.Tensor
    pids: np.ndarray
    camids: np.ndarray
    categories: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    category_names: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])


class Evaluator(abc.ABC):
    """Query and gallery embeddings -> metrics (floats, percentages where the field
    reports percentages: rank-k, mAP, mINP)."""

    @abc.abstractmethod
    def evaluate(self, query: FeatureSet, gallery: FeatureSet) -> dict[str, float]:
        """Metrics of one test set."""


class Labeler(abc.ABC):
    """An offline step that writes per-image annotations (e.g. part masks) before
    training; the pipeline reads them back through a dataset's extras."""

    @abc.abstractmethod
    def label(self, dataset: Dataset, out_dir: Path) -> Path:
        """Annotate `dataset`, write the result under `out_dir`, return its path."""

"""The interfaces of a ReID pipeline (DESIGN.md "The kinds of component").

Built-ins and plugins implement these. Each component's constructor parameters are its
YAML keys (validated from the signature); a parameter named `ctx` receives the
`BuildContext` instead, so data-derived facts never have to be typed into YAML.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

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
        """Decode `record` as an RGB PIL image; errors name the file (one that does not decode:
        `UndecodableImageError`, bad input)."""
        from PIL import Image

        if record.path is None:
            raise ValueError(f"{type(self).__name__}: record of pid {record.pid} has no path "
                             "and the dataset does not render images itself")
        try:
            with Image.open(record.path) as img:
                return img.convert("RGB")
        except FileNotFoundError:
            raise FileNotFoundError(f"image file not found: {record.path}") from None
        except OSError as exc:
            if exc.errno is not None:  # the disk or the permissions, not the file's content
                raise OSError(f"cannot read image {record.path}: {exc.strerror or exc}") from None
            fault = exc
        except Exception as exc:  # noqa: BLE001 - any decoder failure (SyntaxError, ValueError, ...) is the file's
            fault = exc
        from core.data.image_check import UndecodableImageError

        raise UndecodableImageError.of(record.path, fault) from None

    def identity_namespace(self) -> Any:
        """A hashable key naming the space its pids live in, when one pid means one
        identity in every split (a train pid equal to a query pid is the same individual);
        None where it does not (the default). Two datasets with one key are compared for
        test identities seen in training (core.data.protocol_checks)."""
        return None

    def sample_extras(self, record: Record) -> dict[str, Any]:
        """Per-sample fields decoded with the image, in the loader's workers (e.g. an
        instruction image): merged into the sample's extras. Default: none."""
        return {}

    def record_key(self, record: Record) -> str:
        """A stable name of `record` within this dataset, by which annotation files
        (core.data.annotations) find it again: the image path relative to the dataset's
        `root` when it has one, else the path. Datasets without paths override this."""
        if record.path is None:
            raise ValueError(f"{type(self).__name__}: record of pid {record.pid} has no path; the dataset "
                             "must override record_key() to name its records")
        root = getattr(self, "root", None)
        if root is not None:
            try:
                return Path(record.path).resolve().relative_to(Path(root).resolve()).as_posix()
            except ValueError:
                pass
        return Path(record.path).as_posix()


@dataclass
class Episode:
    """One episodic batch: record indices and a role per index (0 meta-train, 1 meta-test)."""

    indices: list[int]
    roles: list[int]

    def __post_init__(self) -> None:
        if len(self.indices) != len(self.roles):
            raise ValueError(f"Episode has {len(self.indices)} indices but {len(self.roles)} roles")


def indices_and_roles(batch: "list[int] | Episode") -> tuple[list[int], list[int]]:
    """(record indices, roles) of one planned batch: an episode's own, role 0 for a list."""
    return (batch.indices, batch.roles) if isinstance(batch, Episode) else (batch, [0] * len(batch))


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

    #: DDP (issue 19): submodules (names relative to this component, fnmatch patterns) that
    #: a training step may leave uncalled depending on the batch (an instruction encoder
    #: for one kind of instruction, a BatchNorm for text-only rows). The trainer then lets
    #: DDP look for unused parameters, and `trainer.sync_bn` leaves their BatchNorms per
    #: process (a synchronised BatchNorm that one process skips would wait forever).
    conditional_modules: tuple[str, ...] = ()
    #: buffers (names relative to this component, fnmatch patterns) that stay equal on
    #: every process by construction (a memory bank updated from gathered features):
    #: DDP does not broadcast them from rank 0 every step.
    shared_buffers: tuple[str, ...] = ()

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def batch_preparer(self) -> Callable[[Batch], None] | None:
        """Host work on each batch, done in the data loader's workers after collate (the
        trainer's `PreparedCollate`), not in the training step: a callable that adds
        per-sample extras to the batch (e.g. text tokenized into an int64 (B, ...) tensor,
        with `Batch.keep_host_copy` for what the step reads on the host), or None. The
        forward must give the same result on a batch that was not prepared (tools that
        collate by hand). Heads and losses may define it too. Picklable (spawned
        workers). Issue 19: tokenizing in the step is host work between the device's
        kernels and a graph break under torch.compile."""
        return None


class Head(nn.Module):
    """Backbone features -> the retrieval embedding ("embedding", what evaluation uses)
    plus training outputs (logits, pre-BN features, ...)."""

    #: DDP (issue 19): submodules (names relative to this component, fnmatch patterns) that
    #: a training step may leave uncalled depending on the batch (an instruction encoder
    #: for one kind of instruction, a BatchNorm for text-only rows). The trainer then lets
    #: DDP look for unused parameters, and `trainer.sync_bn` leaves their BatchNorms per
    #: process (a synchronised BatchNorm that one process skips would wait forever).
    conditional_modules: tuple[str, ...] = ()
    #: buffers (names relative to this component, fnmatch patterns) that stay equal on
    #: every process by construction (a memory bank updated from gathered features):
    #: DDP does not broadcast them from rank 0 every step.
    shared_buffers: tuple[str, ...] = ()

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

    `features` declares which model output the loss reads; the default, "features", is
    the `bnneck` head's pre-BN feature, where Bag of Tricks (Luo et al. 2019, Sec. 4.5)
    puts the triplet loss. A loss that wants another output says so: a class attribute
    (`features = "bn_features"`, the post-BN feature), or better a constructor parameter
    of that name, so that a grid can compare the two
    (`--grid losses.1.features=features,bn_features`). `read_features` reads it with an
    error naming the loss and the outputs present; `core validate` prints what each loss
    reads. Parameters a loss holds (a center loss's table) train with the model, named
    `losses.<i>.<param>` in stage patterns.
    """

    #: the model output this loss reads (see the class docstring)
    features: str = "features"

    #: DDP (issue 19): submodules (names relative to this component, fnmatch patterns) that
    #: a training step may leave uncalled depending on the batch (an instruction encoder
    #: for one kind of instruction, a BatchNorm for text-only rows). The trainer then lets
    #: DDP look for unused parameters, and `trainer.sync_bn` leaves their BatchNorms per
    #: process (a synchronised BatchNorm that one process skips would wait forever).
    conditional_modules: tuple[str, ...] = ()
    #: buffers (names relative to this component, fnmatch patterns) that stay equal on
    #: every process by construction (a memory bank updated from gathered features):
    #: DDP does not broadcast them from rank 0 every step.
    shared_buffers: tuple[str, ...] = ()

    def read_features(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """`outputs[self.features]`, or a KeyError naming this loss and the outputs present."""
        return read_output(outputs, self.features, f"loss {type(self).__name__}",
                           "set the loss key `features`; `bnneck` produces 'features' (pre-BN) and "
                           "'bn_features' (post-BN)")

    def forward(self, outputs: dict[str, torch.Tensor], batch: Batch):  # pragma: no cover
        raise NotImplementedError


@dataclass
class FeatureSet:
    """Embeddings of one split with the metadata evaluation needs.

    `extras` holds the model outputs an evaluator asked for (`Evaluator.outputs`, one row
    per item, e.g. instruction embeddings for mAP-tau); `records` are the split's records
    (their extras: task, caption, modality, ...), in embedding order.
    """

    embeddings: torch.Tensor
    pids: np.ndarray
    camids: np.ndarray
    categories: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    category_names: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    #: a list, or the columnar table's lazy `Sequence[Record]` (core.data.columns)
    records: Sequence[Record] = field(default_factory=list)
    #: set when `embeddings` is a memory map of this .npy file (the trainer's on-disk
    #: evaluation features, issue 24): an evaluator should read it block by block, never
    #: whole (the reid evaluator then searches with `search: blocked`)
    embeddings_file: Path | None = None
    #: the device the embeddings were computed on (the trainer's, e.g. "cuda:0"): an
    #: evaluator reading memory-mapped embeddings from the host may compute its distances
    #: there (the reid evaluator's `search: blocked` does)
    compute_device: str | None = None

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])


@dataclass
class RankedGallery:
    """Which gallery items an evaluator's `evaluate` ranks for each query
    (`Evaluator.ranked_gallery`), so that tools (`core search --worst`, `core search` and
    `core explain` of a run's own splits) rank what evaluation ranks without knowing any
    method's rule.

    `ranked(rows)` takes query rows (an int array, a chunk: callers never ask for every
    query at once) and returns a (len(rows), G) bool array: True where evaluation ranks
    gallery item j for that query (as a positive or a negative), False where it leaves
    the item out (the query's identity seen by its own camera, another task's gallery, ...).
    A query's AP under this mask, averaged as `groups` says, is `evaluate`'s `key`."""

    ranked: Callable[[np.ndarray], np.ndarray]
    #: the metric of `evaluate` that the mean AP of the valid queries equals ("mAP")
    key: str = "mAP"
    #: per query, a group name (Instruct-ReID's task) when `key` is the mean over groups
    #: of each group's mean AP (reported as "<group>/mAP"); None: the mean over queries
    groups: np.ndarray | None = None
    #: what the groups are, for messages ("tasks")
    group_name: str = "groups"
    #: one line saying what is ranked, for the tools' pictures and summaries
    rule: str = "every gallery item but those of the query's identity and camera"
    #: why the tools' APs (plain distances, this mask) may differ from `key` ("" when
    #: they are equal), e.g. evaluation re-ranks with a model the tools do not run
    differs: str = ""


class Evaluator(abc.ABC):
    """Query and gallery embeddings -> metrics (floats, percentages where the field
    reports percentages: rank-k, mAP, mINP)."""

    #: model outputs besides "embedding" that extraction keeps in `FeatureSet.extras`
    outputs: tuple[str, ...] = ()
    #: whether `evaluate` reads memory-mapped embeddings (`FeatureSet.embeddings_file`)
    #: block by block; `trainer.eval_features: auto` writes large sets to disk only then
    out_of_core: bool = False

    @abc.abstractmethod
    def evaluate(self, query: FeatureSet, gallery: FeatureSet) -> dict[str, float]:
        """Metrics of one test set."""

    def ranked_gallery(self, query: FeatureSet, gallery: FeatureSet) -> RankedGallery | None:
        """Which gallery items `evaluate` ranks for each query (`RankedGallery`), read from
        the metadata alone (pids, camids, categories, records: the tools pass sets whose
        embeddings may be empty). Default, None: the standard ReID protocol, every item but
        those of the query's identity and camera (none left out when the evaluator's
        `exclude_same_camera` is false; core.evaluation.protocol.standard_ranked_gallery,
        which the tools apply). Override it when `evaluate` ranks otherwise (a gallery per
        task, a clothes rule), ideally from the same function `evaluate` uses."""
        return None


@dataclass
class Labels:
    """What a labeler's `finalize` returns: per-record `fields` (arrays with one row per
    record, in the order given), which of them training attaches to records (`attach`),
    and a `report` (e.g. the fraction of boxes replaced per part) stored with the file."""

    fields: dict[str, np.ndarray]
    attach: list[str]
    report: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


class Labeler(abc.ABC):
    """An offline step that annotates a dataset's training images before training (e.g.
    part masks from a grounding model); the core runs it (`core label`, or a pipeline's
    `prepare` step), resumably, and writes an annotation file (core.data.annotations)
    whose attached fields reach the batch through the records' extras.

    Two phases: `label_batch` is the per-image work (a model, slow, resumable: results are
    saved in chunks as they come); `finalize` sees every image's raw result at once (the
    dataset-level step: calibration from statistics, voting onto `ctx.patch_grid`).
    """

    #: images per `label_batch` call
    batch_size: int = 16

    @abc.abstractmethod
    def label_batch(self, images: list[Any], records: list[Record]) -> dict[str, np.ndarray]:
        """Raw annotations of decoded RGB images (their records beside them): arrays whose
        first axis has one row per image. A labeler that declares a third parameter
        `keys` also gets each image's key in the annotation file, "<dataset>:<record
        key>" (`Dataset.record_key`), e.g. to match another tool's output by key."""

    def finalize(self, raw: dict[str, np.ndarray], records: list[Record], ctx: Any) -> Labels:
        """The fields to store from every image's raw annotations. Default: store and
        attach the raw fields as they are."""
        return Labels(fields=dict(raw), attach=list(raw))

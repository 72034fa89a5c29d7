"""Assembling a pipeline from its YAML: data -> build context -> sampler -> backbone ->
head -> losses -> evaluator, each validated against its constructor signature.

Build order matters because later components read what earlier ones decided: the head
reads the backbone's feature dimension from the build context, the classifier the number
of identities from the training table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from core.config.loading import ConfigError, LoadedConfig
from core.config.schema import TOP_LEVEL_KEYS, StageConfig, TrainerConfig
from core.config.validation import build_dataclass, describe, validate_params
from core.context import BuildContext
from core.data.loading import PreparedCollate, batch_preparers
from core.data.paths import UNREADABLE_FILE, unreadable
from core.data.table import RecordTable
from core.data.transforms import build_transform
from core.interfaces import Dataset, Evaluator, Sampler
from core.log_setup import echo_to
from core.plugins import get_plugin_manager, local_plugin_name
from core.registry import Registry, RegistryError, build_registry
from core.records import Batch, Record


#: the kinds whose parameters form the trained model (built on the meta device by `meta=True`)
MODEL_KINDS = ("backbone", "head", "loss")


class ReIDModel(nn.Module):
    """Backbone + head. `forward(batch)` returns the backbone's features and the head's
    outputs in one dict; "embedding" is what evaluation uses."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        features = self.backbone(batch)
        if "global" not in features:
            raise KeyError(f"backbone {type(self.backbone).__name__} returned {sorted(features)}; "
                           "a backbone must return 'global' (B, D)")
        outputs = self.head(features, batch)
        if "embedding" not in outputs:
            raise KeyError(f"head {type(self.head).__name__} returned {sorted(outputs)}; "
                           "a head must return 'embedding'")
        return {**features, **outputs}


def bind_losses(model: ReIDModel, losses) -> None:
    """Call `bind(model)` on every loss that has one: a loss that keeps its own copy of the
    encoders (a momentum model) gets the model it follows. The trainer does this before
    the first training step; code that runs loss modules itself calls it too."""
    for loss in losses:
        bind = getattr(loss, "bind", None)
        if callable(bind):
            bind(model)


@dataclass
class LossTerm:
    name: str
    weight: float
    module: nn.Module
    #: the key path it was built from (`losses.1`, `stages.0.losses.0`): its provenance
    key: str = ""


@dataclass
class TestSet:
    name: str
    query: RecordTable
    gallery: RecordTable
    datasets: list[Dataset]
    #: the pipeline key it was built from ("data.test.0"; "data.train.0" for a training
    #: dataset's own query/gallery), for messages about it
    key: str = ""


@dataclass
class Pipeline:
    config: LoadedConfig
    name: str
    seed: int
    registry: Registry
    ctx: BuildContext
    train: RecordTable
    train_datasets: list[Dataset]
    test_sets: list[TestSet]
    train_transform: Any
    test_transform: Any
    sampler: Sampler
    model: ReIDModel
    evaluator: Evaluator
    stages: list[StageConfig]
    #: losses per stage (a stage without its own `losses` shares the pipeline's)
    stage_losses: list[list[LossTerm]]
    trainer: TrainerConfig
    #: component key -> {"name", "plugin", "version"}
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the annotation files of the `prepare` steps (written or found up to date)
    prepared: list[Path] = field(default_factory=list)
    #: prepare "check": the steps whose files are missing or stale (core.prepare.DeferredLabels)
    deferred_labels: list[Any] = field(default_factory=list)
    #: the `loggers:` list's experiment trackers (core.trackers; rank 0 calls them)
    loggers: list[Any] = field(default_factory=list)

    def loss_modules(self) -> nn.ModuleList:
        """Every distinct loss module (some hold parameters or memories)."""
        seen: dict[int, nn.Module] = {}
        for terms in self.stage_losses:
            for term in terms:
                seen.setdefault(id(term.module), term.module)
        return nn.ModuleList(seen.values())

    def collate(self) -> PreparedCollate:
        """The training and evaluation loaders' `collate_fn`: collate, then the batch
        preparers of the backbone, head and losses (`Backbone.batch_preparer`)."""
        return PreparedCollate(batch_preparers([self.model.backbone, self.model.head, *self.loss_modules()]))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):  # torch's words list twenty device types, exit 1
        raise ConfigError(f"'{name}' is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'",
                          key="trainer.device") from None
    if device.type == "meta":
        from core.separate_device import active

        if not active():
            raise ConfigError("device 'meta' is the tests' emulated device (core.separate_device: run under "
                              "emulate_separate_device()); use 'auto', 'cpu' or 'cuda'", key="trainer.device")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but CUDA is not available here; "
                          "use 'auto' or 'cpu'", key="trainer.device")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(f"device '{name}' asked for, but this machine has {count} CUDA device(s) "
                          f"(cuda:0..cuda:{count - 1})", key="trainer.device")
    return device


#: what a component's constructor (and a dataset listing its records) raises for bad input:
#: a file, a line, a file name it cannot read. They become ConfigErrors naming the key.
BUILD_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError)


def fault_text(exc: BaseException) -> Any:
    """What to print of a caught `BUILD_ERRORS` (a KeyError's str() adds quotes)."""
    return exc.args[0] if isinstance(exc, KeyError) and exc.args else exc


class _Builder:
    def __init__(self, cfg: LoadedConfig, registry: Registry) -> None:
        self.cfg = cfg
        self.registry = registry
        self.provenance: dict[str, dict[str, Any]] = {}
        self.pm = get_plugin_manager()
        #: build the model's parts (backbone, head, losses) on the meta device: names and
        #: shapes without memory or initialisation (`core validate` checks patterns on it)
        self.meta = False

    def spec(self, key: str, value: Any, name_key: str = "name") -> tuple[str, dict[str, Any]]:
        if isinstance(value, str):
            value = {name_key: value}
        if not isinstance(value, dict):
            raise self.cfg.error(key, f"expected a mapping with '{name_key}', got {describe(value)}")
        if name_key not in value:
            close = difflib.get_close_matches(name_key, [str(k) for k in value], n=1, cutoff=0.6)
            hint = f" (is '{close[0]}' a misspelling of '{name_key}'?)" if close else ""
            raise self.cfg.error(key, f"missing '{name_key}': which component to use{hint}")
        params = {k: v for k, v in value.items() if k != name_key}
        return value[name_key], params

    def build(self, kind: str, key: str, value: Any, ctx: BuildContext | None,
              name_key: str = "name", reserved: tuple[str, ...] = ()) -> Any:
        name, params = self.spec(key, value, name_key)
        params = {k: v for k, v in params.items() if k not in reserved}
        try:
            entry = self.registry.get(kind, name)
            target = entry.load()
        except RegistryError as exc:
            raise self.cfg.error(f"{key}.{name_key}", str(exc)) from None
        what = f"{kind} '{name}'"
        params = validate_params(target, params, self.cfg, key, what)
        if "ctx" in inspect.signature(target).parameters:
            params["ctx"] = ctx
        try:
            with torch.device("meta") if self.meta and kind in MODEL_KINDS else contextlib.nullcontext():
                component = target(**params)
        except BUILD_ERRORS as exc:
            text = str(fault_text(exc))  # components name themselves ("backbone 'timm': ..."): once is enough
            raise self.cfg.error(key, f"{what} could not be built: {text.removeprefix(what + ': ')}") from exc
        except UNREADABLE_FILE as exc:
            if kind != "dataset":  # a model's cache folder, say: not a file the user named
                raise
            raise self.cfg.error(key, f"{what} could not be built: {unreadable(exc)}") from exc
        info = self.pm.infos.get(entry.provider)
        self.provenance[key] = {"name": entry.name, "plugin": entry.provider,
                                "version": info.version if info else None}
        return component


def _build_sampler(cfg: LoadedConfig, b: "_Builder", ctx: BuildContext) -> Sampler:
    """The pipeline's sampler, planning `ctx.epoch_batches` batches per epoch: the core's
    epoch-length rule (core.samplers.epoch), or the sampler key `epoch_batches`."""
    from core.samplers.epoch import OVERRIDE_KEY, check_override, honour_epoch_length, pk_epoch_batches

    spec = cfg.data.get("sampler") or {"name": "pk"}
    name, params = b.spec("sampler", spec)
    try:
        override = check_override(params.get(OVERRIDE_KEY))
    except ValueError as exc:
        raise cfg.error(f"sampler.{OVERRIDE_KEY}", str(exc)) from None
    batch_size = params.get("batch_size")
    if batch_size is None:  # the sampler's own default
        try:
            default = inspect.signature(b.registry.get("sampler", name).load()).parameters.get("batch_size")
            batch_size = None if default is None else default.default
        except RegistryError:
            batch_size = None  # b.build names the error
    usable = isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0
    ctx.epoch_batches = override or (pk_epoch_batches(ctx.train.pids, batch_size) if usable else None)
    sampler = b.build("sampler", "sampler", spec, ctx, reserved=(OVERRIDE_KEY,))
    if ctx.epoch_batches is None:  # a sampler without a batch size: its own number
        ctx.epoch_batches = len(sampler)
    return honour_epoch_length(sampler, ctx.epoch_batches,
                               f"sampler '{name}' (plugin {b.provenance['sampler']['plugin']})")


def _as_list(cfg: LoadedConfig, key: str, value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list):
        raise cfg.error(key, f"expected a list, got {describe(value)}")
    return value


#: Keys of a data.train / data.test entry that the pipeline reads, not the dataset:
#: `name` (what the set is called in metric keys and annotation files; default the
#: dataset's YAML name), `annotations` (core.prepare) and `seen_identities` (true: the
#: test set queries training identities on purpose, core.data.protocol_checks).
DATASET_KEYS = ("annotations", "name", "seen_identities")


def _set_name(cfg: LoadedConfig, b: "_Builder", key: str, spec: Any) -> str:
    dataset = b.spec(key, spec, "dataset")[0]
    name = spec.get("name") if isinstance(spec, dict) else None
    if name is None:
        return dataset
    if not isinstance(name, str) or not name or "/" in name or ":" in name:
        raise cfg.error(f"{key}.name", f"a set's name is a non-empty string without '/' or ':' (it prefixes "
                                       f"metric keys like '<name>/mAP'); got {describe(name)}")
    return name


def _check_top_level(cfg: LoadedConfig) -> None:
    for key in cfg.data:
        if key not in TOP_LEVEL_KEYS:
            close = difflib.get_close_matches(str(key), list(TOP_LEVEL_KEYS), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise cfg.error(str(key), f"unknown top-level key '{key}'.{hint} "
                                      f"Valid keys: {', '.join(TOP_LEVEL_KEYS)}.")
    for key in ("backbone", "head", "losses", "evaluator", "stages"):
        if key not in cfg.data:
            raise cfg.error(key, f"missing section '{key}' ({TOP_LEVEL_KEYS[key]})")


def load_local_plugins(cfg: LoadedConfig) -> None:
    """Load the pipeline's `plugins:` files (paths relative to the file that names them)
    and unload those of pipelines built before it in this process."""
    pm = get_plugin_manager()
    names = set()
    for i, path in enumerate(_as_list(cfg, "plugins", cfg.data.get("plugins"))):
        if not isinstance(path, str):
            raise cfg.error(f"plugins.{i}", f"expected a path to a .py file, got {describe(path)}")
        base = Path(cfg.origin(f"plugins.{i}")).parent if cfg.origin(f"plugins.{i}") != "--set" else Path.cwd()
        names.add(local_plugin_name((base / path).resolve()))
    pm.drop_local(keep=names)
    for i, path in enumerate(cfg.data.get("plugins") or []):
        base = Path(cfg.origin(f"plugins.{i}")).parent if cfg.origin(f"plugins.{i}") != "--set" else Path.cwd()
        pm.load_file(path, base_dir=base)


@dataclass
class DataSources:
    """The datasets of `data.train` and `data.test`, built, with their set names."""

    train_specs: list
    train_names: list[str]
    train_datasets: list[Dataset]
    #: `data.test` as written; None: each train dataset's own query/gallery is its test set
    test_specs: Any
    test_pairs: list[tuple[str, Dataset]]
    #: the spec each test set was built from (`data.test.i`, or `data.train.i` by default)
    test_pair_specs: list = field(default_factory=list)


def _data_section(cfg: LoadedConfig) -> dict:
    data = cfg.data.get("data") or {}
    if not isinstance(data, dict):
        raise cfg.error("data", f"expected a mapping with 'train', 'test', 'transform', got {describe(data)}")
    unknown = set(data) - {"train", "test", "transform"}
    if unknown:
        first = sorted(unknown, key=str)[0]
        close = difflib.get_close_matches(str(first), ["train", "test", "transform"], n=1)
        hint = f"Did you mean '{close[0]}'? " if close else ""
        raise cfg.error(f"data.{first}", f"unknown key; {hint}valid keys: train, test, transform")
    return data


def _data_sources(cfg: LoadedConfig, b: "_Builder", data: dict, train: bool = True) -> DataSources:
    """The datasets; `train=False` (a model rebuilt from a weights file) builds only
    those of `data.test`."""
    train_specs = _as_list(cfg, "data.train", data.get("train"))
    if not train_specs and train:
        raise cfg.error("data.train", "at least one training dataset is needed, e.g. "
                                      "[{dataset: synthetic}]")
    if not train:
        specs = _as_list(cfg, "data.test", data.get("test"))
        pairs = [(_set_name(cfg, b, f"data.test.{i}", s),
                  b.build("dataset", f"data.test.{i}", s, None, name_key="dataset", reserved=DATASET_KEYS))
                 for i, s in enumerate(specs)]
        return DataSources([], [], [], specs, pairs, list(specs))
    train_datasets = [b.build("dataset", f"data.train.{i}", s, None, name_key="dataset", reserved=DATASET_KEYS)
                      for i, s in enumerate(train_specs)]
    train_names = [_set_name(cfg, b, f"data.train.{i}", s) for i, s in enumerate(train_specs)]
    test_specs = data.get("test")
    if test_specs is None:  # default: each train dataset's own query/gallery
        specs = train_specs
        pairs = list(zip(train_names, train_datasets))
    else:
        specs = _as_list(cfg, "data.test", test_specs)
        pairs = [(_set_name(cfg, b, f"data.test.{i}", s),
                  b.build("dataset", f"data.test.{i}", s, None, name_key="dataset", reserved=DATASET_KEYS))
                 for i, s in enumerate(specs)]
    return DataSources(train_specs, train_names, train_datasets, test_specs, pairs, list(specs))


def build_data_sources(cfg: LoadedConfig) -> DataSources:
    """Only the datasets of a pipeline (`core validate --data`): no model, no labelers."""
    load_local_plugins(cfg)
    return _data_sources(cfg, _Builder(cfg, build_registry()), _data_section(cfg))


def _test_key(sources: DataSources, i: int) -> str:
    """The key that declares test set i: `data.test.i`, or the train dataset it defaults to."""
    return f"data.{'train' if sources.test_specs is None else 'test'}.{i}"


def _dataset_name(spec: Any) -> Any:
    """The YAML name of the dataset a data.train / data.test entry declares."""
    return spec.get("dataset") if isinstance(spec, dict) else spec


def list_records(cfg: LoadedConfig, sources: DataSources
                 ) -> tuple[list[Sequence[Record]], list[tuple[Sequence[Record], Sequence[Record]]]]:
    """The records of each train dataset and (query, gallery) of each test set, as the
    readers give them (columnar tables stay columns). Datasets list their folders and
    files here, lazily, so a file name they cannot parse or a bad list file is found here:
    a ConfigError naming the pipeline file and the key that declares the dataset. A test
    split the dataset does not have (a train-only dataset standing in as its own test set)
    is empty; a dataset without a train split named in data.train is an error, not a
    silently smaller training set."""
    def listed(key: str, spec: Any, dataset: Dataset, split: str) -> Sequence[Record]:
        if split not in dataset.splits:
            if split == "train":
                raise cfg.error(key, f"dataset '{_dataset_name(spec)}' has no train split (its splits: "
                                     f"{', '.join(dataset.splits)}); name it in data.test to evaluate on it")
            if sources.test_specs is not None:  # named as a test set: its layout cannot be one
                raise cfg.error(key, f"dataset '{_dataset_name(spec)}' has no {split} split (its splits: "
                                     f"{', '.join(dataset.splits)}), so it cannot be a test set; name it in "
                                     "data.train only")
            return []
        try:
            return dataset.records(split)
        except ConfigError:
            raise
        except BUILD_ERRORS as exc:
            raise cfg.error(key, f"dataset '{_dataset_name(spec)}' could not be listed: {fault_text(exc)}") from exc
        except UNREADABLE_FILE as exc:
            raise cfg.error(key, f"dataset '{_dataset_name(spec)}' could not be listed: {unreadable(exc)}") from exc

    train = [listed(f"data.train.{i}", spec, d, "train")
             for i, (spec, d) in enumerate(zip(sources.train_specs, sources.train_datasets))]
    test = []
    for i, (_, d) in enumerate(sources.test_pairs):
        key, spec = _test_key(sources, i), sources.test_pair_specs[i]
        test.append((listed(key, spec, d, "query"), listed(key, spec, d, "gallery")))
    return train, test


def empty_split_fault(cfg: LoadedConfig, sources: DataSources, i: int, query: list, gallery: list,
                     before: tuple[int, int]) -> ConfigError | None:
    """The error for test set i with no queries or no gallery (naming the dataset and the
    split), or None. An explicit `data.test` entry needs both; a train dataset standing in
    as its own test set needs both or neither (neither: a train-only dataset, no test set).
    `before`: the (query, gallery) sizes before unreadable images were left out."""
    if (query and gallery) or (sources.test_specs is None and not query and not gallery):
        return None
    key = _test_key(sources, i)
    dataset = _dataset_name(sources.test_pair_specs[i])
    empty = [s for s, recs in (("query", query), ("gallery", gallery)) if not recs]
    counts = ", ".join(f"{len(recs)} {s}" for s, recs in (("query", query), ("gallery", gallery)) if recs)
    dropped = [f"its {n} {s} images are all unreadable (left out)" for s, n, recs
               in (("query", before[0], query), ("gallery", before[1], gallery)) if n and not recs]
    why = f" ({'; '.join(dropped)})" if dropped else ""
    role = ("a test set" if sources.test_specs is not None
            else "a training dataset whose query/gallery splits are its test set (data.test is not given)")
    return cfg.error(key, f"dataset '{dataset}' (set '{sources.test_pairs[i][0]}'), {role}, has no "
                          f"{' and no '.join(empty)} records{why}{'; it has ' + counts if counts else ''}. "
                          "Evaluation needs both: check the dataset's root and split files"
                          + (", or name a test set in data.test" if sources.test_specs is None else ""))


def test_set_warnings(cfg: LoadedConfig, sources: DataSources, i: int, label: str,
                      train_records: list[Sequence[Record]] | None, query: Sequence[Record],
                      gallery: Sequence[Record]) -> list[str]:
    """The warnings about test set i (core.data.protocol_checks), for the build and
    `core validate --data`: identities seen in training (not looked for without
    `train_records`), query images that are also gallery images."""
    out = [] if train_records is None else _seen_identities(cfg, sources, i, label, train_records, query, gallery)
    return out + _query_in_gallery(label, query, gallery)


def _seen_identities(cfg: LoadedConfig, sources: DataSources, i: int, label: str,
                     train_records: list[Sequence[Record]], query: Sequence[Record],
                     gallery: Sequence[Record]) -> list[str]:
    """Test set i's identities also in a training dataset with the same pid namespace,
    unless its entry says `seen_identities: true`."""
    from core.data.protocol_checks import (SEEN_IDENTITIES_KEY, describe_seen, identity_namespace,
                                           seen_identities)

    key, spec = _test_key(sources, i), sources.test_pair_specs[i]
    allowed = spec.get(SEEN_IDENTITIES_KEY, False) if isinstance(spec, dict) else False
    if not isinstance(allowed, bool):
        raise cfg.error(f"{key}.{SEEN_IDENTITIES_KEY}", f"expected true or false (true: this test set queries "
                                                         f"training identities on purpose), got {describe(allowed)}")
    namespace = identity_namespace(sources.test_pairs[i][1])
    if allowed or namespace is None:
        return []
    out = []
    for name, dataset, records in zip(sources.train_names, sources.train_datasets, train_records):
        if identity_namespace(dataset) != namespace:
            continue
        shared, total = seen_identities(records, query, gallery)
        if shared:
            out.append(f"warning: test set '{label}': {describe_seen(shared, total, repr(name))}: the ReID protocol "
                       "tests unseen identities, and seen ones inflate every metric. Keep each identity in training "
                       f"or in query/gallery, not both; or set `{SEEN_IDENTITIES_KEY}: true` on {key} if training "
                       "identities are queried on purpose")
    return out


def _query_in_gallery(label: str, query: Sequence[Record], gallery: Sequence[Record]) -> list[str]:
    """Query images that are also gallery images (the same path)."""
    from core.data.protocol_checks import describe_query_in_gallery, query_paths_in_gallery

    paths = query_paths_in_gallery(query, gallery)
    return [f"warning: test set '{label}': {describe_query_in_gallery(paths, len(query))}. List each image in "
            "the query or in the gallery, not both"] if paths else []


def build_pipeline(cfg: LoadedConfig, rank: int = 0, world_size: int = 1, prepare: str = "run",
                   echo: Any = None, meta: bool = False, image_check: str = "error",
                   context: BuildContext | None = None) -> Pipeline:
    """Build every component of a pipeline (no training). `prepare`: "run" runs the
    pipeline's labelers whose files are missing or stale, "force" runs them all,
    "existing" attaches their files and runs none (a resumed run: it goes on with the
    labels it started with, and a received run folder's labeler, e.g. a grounder that
    runs a model repo's code, is not run by resuming it), "check" attaches the files
    that are up to date and leaves the others in `deferred_labels` (`core validate`
    labels only its one batch), "skip" neither runs nor attaches them (inference from a
    trained run). `meta`: build the
    backbone, head and losses on the meta device (parameter names and shapes only, fast;
    the labelers are skipped) — for checks, never for training. `image_check`: unreadable
    image files of the train and test sets (core.data.image_check) stop the build
    ("error"), are left out with a warning ("skip"), or are not looked for ("off"); builds
    for inference or checks (prepare "skip", `meta`) do not look. `context`: the build
    context saved with a model's weights (core.tools.weights_file): the training data is
    not read — no training table, sampler or losses; test sets come from `data.test` only.
    `echo`: where its messages go (default: the `core.pipeline` logger, "warning: ..." as warnings)."""
    echo = echo or echo_to(logging.getLogger(__name__))
    if prepare not in ("run", "force", "existing", "check", "skip"):
        raise ValueError(f"build_pipeline: prepare must be 'run', 'force', 'existing', 'check' or 'skip'; "
                         f"got {prepare!r}")
    from core.data.image_check import MODES, screen_pipeline_records

    if image_check not in MODES:
        raise ValueError(f"build_pipeline: image_check must be one of {', '.join(MODES)}; got {image_check!r}")
    _check_top_level(cfg)
    load_local_plugins(cfg)
    registry = build_registry()
    b = _Builder(cfg, registry)
    b.meta = meta
    prepare = "skip" if meta else prepare
    data = _data_section(cfg)
    seed = cfg.data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise cfg.error("seed", f"expected an int, got {describe(seed)}")
    name = cfg.data.get("name") or cfg.file.stem

    # data
    transform_params = validate_params(build_transform, dict(data.get("transform") or {}), cfg,
                                       "data.transform", "the transform", injected=("train",))
    train_transform = build_transform(train=True, **transform_params)
    test_transform = build_transform(train=False, **transform_params)
    if context is not None:
        prepare = "skip"
    sources = _data_sources(cfg, b, data, train=context is None)
    train_specs, train_names, train_datasets = sources.train_specs, sources.train_names, sources.train_datasets
    test_specs, pairs = sources.test_specs, sources.test_pairs
    # Sequences as the readers give them (columnar tables stay columns, core.data.columns)
    train_records, test_records = list_records(cfg, sources)
    before = [(len(q), len(g)) for q, g in test_records]
    if prepare != "skip" and image_check != "off":  # every file, before the first step (not in epoch 3)
        train_records, test_records = screen_pipeline_records(
            sources, train_records, test_records, mode=image_check, echo=echo)
    train = RecordTable.build(list(zip(train_names, train_records)), relabel=True)
    if len(train) == 0 and context is None:
        raise cfg.error("data.train", "the training datasets list no training records")

    test_sets: list[TestSet] = []
    names = [n for n, _ in pairs]
    test_tables: list[tuple[int, RecordTable]] = []  # (index into pairs, table), for annotations
    for i, (set_name, dataset) in enumerate(pairs):
        label = set_name if names.count(set_name) == 1 else f"{set_name}#{i}"
        query, gallery = test_records[i]
        if not query or not gallery:
            fault = empty_split_fault(cfg, sources, i, query, gallery, before[i])
            if fault is not None:
                raise fault
            continue  # a train-only dataset
        cats = list(train.category_names) if context is None else list(context.category_names)
        test_sets.append(TestSet(
            name=label,
            query=RecordTable.build([(set_name, query)], relabel=False, category_names=cats),
            gallery=RecordTable.build([(set_name, gallery)], relabel=False, category_names=cats),
            datasets=[dataset],
            key=f"data.{'train' if test_specs is None and context is None else 'test'}.{i}",
        ))
        test_tables += [(i, test_sets[-1].query), (i, test_sets[-1].gallery)]
        for warning in test_set_warnings(cfg, sources, i, label, train_records if context is None else None,
                                         query, gallery):
            echo(warning)
    if not test_sets and context is None:  # said once, not silently an empty report
        echo("warning: this pipeline has no test set (" + (
            "data.test is empty" if test_specs is not None else
            f"data.test is not given and the training datasets ({', '.join(train_names)}) have no query/gallery "
            "records") + "): it trains without evaluation; name one in data.test to evaluate")

    trainer_cfg = build_dataclass(TrainerConfig, cfg.data.get("trainer"), cfg, "trainer", "the trainer")
    for field_name, least in (("num_workers", 0), ("batch_size_eval", 1)):  # else torch's words, exit 1
        if getattr(trainer_cfg, field_name) < least:
            raise cfg.error(f"trainer.{field_name}", f"expected an int >= {least}"
                            + (" (0: load in the main process)" if field_name == "num_workers" else "")
                            + f", got {getattr(trainer_cfg, field_name)}")
    size = transform_params.get("size", inspect.signature(build_transform).parameters["size"].default)
    if context is None:
        ctx = BuildContext.from_table(train, image_size=(int(size[0]), int(size[1])), seed=seed,
                                      rank=rank, world_size=world_size,
                                      device=str(resolve_device(trainer_cfg.device)))
        sampler = _build_sampler(cfg, b, ctx)
    else:  # a model from a weights file: what its training data decided, no sampler
        ctx = dataclasses.replace(context, rank=rank, world_size=world_size,
                                  device=str(resolve_device(trainer_cfg.device)))
        sampler = None
    backbone = b.build("backbone", "backbone", cfg.data["backbone"], ctx)
    ctx.feature_dim = int(backbone.feature_dim)
    ctx.patch_grid = getattr(backbone, "patch_grid", None)
    prepared: list[Path] = []
    deferred: list[Any] = []
    if prepare != "skip":
        from core.prepare import attach_dataset_annotations, run_prepare_steps

        attach_dataset_annotations(cfg, train_specs, train_datasets, train, ctx.patch_grid, "data.train", None)
        if test_specs is not None:
            attach_dataset_annotations(cfg, _as_list(cfg, "data.test", test_specs), [d for _, d in pairs], None,
                                       ctx.patch_grid, "data.test", test_tables)
        prepared = run_prepare_steps(cfg, b, ctx, train_names, train_specs, train_datasets, train,
                                     force=prepare == "force", may_label=prepare != "existing", echo=echo,
                                     deferred=deferred if prepare == "check" else None)
    head = b.build("head", "head", cfg.data["head"], ctx)
    model = ReIDModel(backbone, head)

    def build_losses(key: str, specs: Any) -> list[LossTerm]:
        terms = []
        spec_list = _as_list(cfg, key, specs)
        # metric keys carry the component's own name: `example:center` logs as `center`
        loss_names = [str(s if isinstance(s, str) else s.get("name")).rpartition(":")[2] for s in spec_list]
        for i, spec in enumerate(spec_list):
            loss_name, params = b.spec(f"{key}.{i}", spec)
            loss_name = loss_names[i]
            weight = params.get("weight", 1.0)
            if not isinstance(weight, (int, float)) or isinstance(weight, bool):
                raise cfg.error(f"{key}.{i}.weight", f"expected a number, got {describe(weight)}")
            module = b.build("loss", f"{key}.{i}", spec, ctx, reserved=("weight",))
            label = loss_name if loss_names.count(loss_name) == 1 else f"{loss_name}.{i}"
            terms.append(LossTerm(label, float(weight), module, key=f"{key}.{i}"))
        if not terms:
            raise cfg.error(key, "at least one loss is needed, e.g. [{name: ce}, {name: triplet}]")
        return terms

    losses = build_losses("losses", cfg.data["losses"]) if context is None else []
    evaluator = b.build("evaluator", "evaluator", cfg.data["evaluator"], ctx)

    stage_specs = _as_list(cfg, "stages", cfg.data["stages"])
    if not stage_specs:
        raise cfg.error("stages", "at least one stage is needed, e.g. [{name: main, epochs: 10}]")
    stages = [build_dataclass(StageConfig, s, cfg, f"stages.{i}", "a stage") for i, s in enumerate(stage_specs)]
    stage_losses = [build_losses(f"stages.{i}.losses", s.losses) if s.losses is not None and context is None
                    else losses for i, s in enumerate(stages)]
    from core.training.optim import check_stage  # validates optimizer/schedule keys

    for i, stage in enumerate(stages):
        check_stage(stage, cfg, f"stages.{i}")
    from core.trackers.config import build_loggers
    return Pipeline(
        config=cfg, name=str(name), seed=seed, registry=registry, ctx=ctx, train=train,
        train_datasets=train_datasets, test_sets=test_sets, train_transform=train_transform,
        test_transform=test_transform, sampler=sampler, model=model, evaluator=evaluator,
        stages=stages, stage_losses=stage_losses, trainer=trainer_cfg, provenance=b.provenance,
        prepared=prepared,
        deferred_labels=deferred,
        # trackers only for training builds: evaluating a run needs no wandb installed
        loggers=build_loggers(cfg, registry) if prepare != "skip" else [],
    )

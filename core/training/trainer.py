"""The trainer: stages of epochs of steps, evaluation before/during/after, atomic
checkpoints, an exact `--resume`, and DDP when started by torchrun.

Exact resume rests on three facts: the sampler's plan depends only on (seed, epoch,
rank); every sample's augmentation is seeded from (seed, epoch, step, record, occurrence),
so it depends neither on worker count, nor on skipped batches, nor on how a global batch
is split over processes; and the checkpoint holds model, losses, optimizer, scheduler,
EMA, position (stage, epoch, step) and the global RNG states.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from core.data.device_normalise import finish_on_device
from core.data.loading import ImageSamples, label_fields, mix_seed, record_values
from core.evaluation.features import FeatureWriter, features_tensor, open_features
from core.interfaces import Episode, FeatureSet, indices_and_roles, read_output
from core.log_setup import bar_disabled
from core.pipeline import LossTerm, Pipeline, ReIDModel, bind_losses, resolve_device
from core.plugins import get_plugin_manager
from core.records import Batch
from core.training import distributed as D
from core.training import precision as P
from core.training.blame import blame
from core.training.determinism import set_deterministic
from core.training.checkpoint import (OTHER_PIPELINE, checkpoint_entry, load_checkpoint, load_fitting, rng_state,
                                      save_checkpoint, seed_everything, set_rng_state)
from core.training.interrupt import Interrupted, deferred_signals, ignore_in_worker
from core.training.optim import build_optimizer, build_scheduler, select_parameters
from core.training.report import format_report
from core.training.run_folder import RunFolder
from core.trackers import Trackers

log = logging.getLogger(__name__)


def sample_seed(seed: int, epoch: int, step: int, slot: int) -> int:
    """The augmentation seed of one sample of one step."""
    return mix_seed(seed, epoch, step, slot)


class PlannedBatches:
    """One epoch's sampler plan as DataLoader keys (index, seed, role), from step `start`.

    A sample's seed mixes the record index and its occurrence in the batch (a PK group
    may repeat an image), not its slot, so a global batch split over ranks is augmented
    exactly as in one process. The object is reused across epochs (`set`), which lets
    the DataLoader keep its workers alive.
    """

    def __init__(self, seed: int) -> None:
        self.seed, self.plan, self.epoch, self.start = seed, [], 0, 0

    def set(self, plan: list[list[int] | Episode], epoch: int, start: int = 0) -> None:
        self.plan, self.epoch, self.start = plan, epoch, start

    def __len__(self) -> int:
        return max(len(self.plan) - self.start, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for step in range(self.start, len(self.plan)):
            item = self.plan[step]
            indices, roles = indices_and_roles(item)
            seen: dict[int, int] = {}
            keys = []
            for index, role in zip(indices, roles):
                occurrence = seen[index] = seen.get(index, -1) + 1
                keys.append((int(index), sample_seed(self.seed, self.epoch, step, int(index) * 64 + occurrence),
                             int(role)))
            yield keys


class TrainingModule(ReIDModel):
    """Backbone, head and losses as one module: DDP then synchronises the gradients of
    loss parameters too (centres, memories), and parameter names read `backbone.*`,
    `head.*`, `losses.N.*` — the names stage patterns are written against.

    `forward(batch)` is the model's (embeddings for evaluation); with `train=True` it also
    returns the weighted loss of the active stage's terms and their logged parts. The parts
    are not detached here: the caller detaches them (`detach_parts`) once the call has
    returned. Under `torch.compile` (inductor, torch 2.14) a detached copy of the loss
    returned beside the loss is a trap: inductor folds `0 + 1.0 * loss` to `loss` and lowers
    `detach` to a no-op, AOT autograd then marks the one tensor non-differentiable, and a
    stage with a single loss of weight 1 (`mgor_edps_moil_synthetic`) has a total without
    a gradient (pytorch/pytorch#100348; tests/test_compile_matches_eager.py).

    Precision contract: the model's forward runs under `autocast` (bf16/fp16 on CUDA when
    asked); the losses get its outputs as fp32 and run with autocast disabled
    (core/training/precision.py says why).
    """

    def __init__(self, model: ReIDModel, losses: nn.ModuleList) -> None:
        super().__init__(model.backbone, model.head)
        self.losses = losses
        self.terms: list[LossTerm] = []
        #: False in a stage whose losses read no model output (StageConfig.forward)
        self.model_forward = True
        #: (device, precision) of the model forward's autocast (set by the trainer)
        self.amp: tuple[torch.device, str] = (torch.device("cpu"), "fp32")
        self._losses_bound = False

    def bind_losses(self) -> None:
        """Hand the model (backbone + head, not the losses) to every loss with a
        `bind(model)` method, e.g. one that keeps a momentum copy of the encoders. Done
        before the first training step, after weights are loaded or restored, so a copy
        starts from the weights that train; binding the same model again is a no-op."""
        bind_losses(ReIDModel(self.backbone, self.head), self.losses)
        self._losses_bound = True

    def forward(self, batch: Batch, train: bool = False):
        if not train:  # evaluation: the caller chose the precision (Trainer.eval_autocast)
            return super().forward(batch)
        if not self._losses_bound:
            self.bind_losses()
        with P.autocast(*self.amp):
            outputs = super().forward(batch) if self.model_forward else {}
        outputs = P.to_fp32(outputs)
        device = batch.pids.device
        total = torch.zeros((), device=device)
        parts: dict[str, torch.Tensor] = {}
        with P.loss_region(device):
            for term in self.terms:
                out = term.module(outputs, batch)
                loss, logged = out if isinstance(out, tuple) else (out, {})
                if not torch.is_tensor(loss) or loss.dim() != 0:
                    raise _not_a_loss(term, loss)
                total = total + term.weight * loss.float()
                parts[term.name] = loss.float()
                for k, v in (logged or {}).items():
                    # a Python number logged by a loss becomes a tensor on the loss's device
                    # (made there: copying it over would wait for the GPU's stream)
                    parts[f"{term.name}/{k}"] = v.to(device).float() if torch.is_tensor(v) else \
                        torch.full((), float(v), device=device)
        return total, parts, outputs


def _not_a_loss(term: LossTerm, loss: Any) -> TypeError:
    """A loss's forward that returned something other than a 0-dim tensor (a Python float,
    a per-sample vector, a (1,) tensor) failed far from it ("'float' object has no attribute
    'float'", or torch's "grad can be implicitly created only for scalar outputs")."""
    got = f"a tensor of shape {tuple(loss.shape)}" if torch.is_tensor(loss) else f"a {type(loss).__name__}"
    where = f"{term.key}, " if term.key else ""
    return TypeError(f"loss '{term.name}' ({where}{type(term.module).__name__}).forward returned {got}; it must return "
                     "a 0-dim torch tensor (the batch's loss, with its graph), or (that tensor, a dict of values "
                     "to log)")


def detach_parts(parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The logged parts of `TrainingModule.forward(train=True)`, detached (outside any
    compiled region: see the class docstring)."""
    return {k: v.detach() for k, v in parts.items()}


@dataclass
class Position:
    """Where training stands: the next batch to run is `step` of `epoch` of `stage`;
    `global_step` counts optimisation steps, `images` the training images seen (all
    processes: what a comparison of budgets reads)."""

    stage: int = 0
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    images: int = 0


class StopTraining(Exception):
    """Raised internally when `stop_after_steps` is reached."""


def _note_skipped_queries(name: str, result: dict[str, float], queries: int, noted: set[str]) -> None:
    """Warn (once per test set) when the evaluator left queries out of every metric: under
    the standard protocol a query with no gallery item of its identity from another camera
    has no answer and is skipped (Market-1501's evaluation, torchreid, fast-reid). Few
    valid queries make every number noisier, and on a user's own data they usually mean
    camera ids or identities that do not line up; the count is in metrics.jsonl
    (`num_valid_queries`, the record's `queries`) and in report.md."""
    valid = result.get("num_valid_queries")
    if valid is None or int(valid) >= queries or name in noted:
        return
    noted.add(name)
    log.warning(f"test set '{name}': {queries - int(valid)} of {queries} queries have no gallery item of their "
                "identity that evaluation ranks (e.g. from another camera) and are left out of every metric; "
                "check the gallery's identities and camera ids if that is not expected")


def _headline(metrics: dict[str, float]) -> str:
    """mAP and rank-1 of each set for a log line (every metric is in metrics.jsonl)."""
    keys = [k for k in metrics if k.count("/") == 1 and k.endswith(("/mAP", "/rank-1"))] or list(metrics)[:6]
    return ", ".join(f"{k} {metrics[k]:.2f}" for k in keys) or "no metrics"


class NonFiniteGuard:
    """Whether a loss or gradient became NaN/Inf, kept on the device.

    Checked before every optimizer step without a host sync: the flag, the first bad
    step and that step's loss parts are device tensors, updated with `torch.where`.
    The trainer reads the flag (one sync) at logging steps, before every checkpoint and
    evaluation, and at every step on the CPU where a read costs nothing. A checkpoint is
    only written after a read that found the run finite, so the checkpoint the stop
    message names holds weights from before the divergence.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.flag = torch.zeros((), dtype=torch.bool, device=device)
        self.step = torch.zeros((), dtype=torch.long, device=device)
        self.parts: torch.Tensor | None = None
        self.names: list[str] = []

    def update(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor | None,
               parts: dict[str, torch.Tensor]) -> None:
        bad = ~torch.isfinite(loss.detach().float())
        if grad_norm is not None:
            bad = bad | ~torch.isfinite(grad_norm.float())
        first = bad & ~self.flag
        values = torch.stack([loss.detach().float(), *(v.reshape(()) for v in parts.values())])
        if self.parts is None or self.parts.shape != values.shape:
            self.parts, self.names = torch.zeros_like(values), ["loss", *parts]
        self.parts = torch.where(first, values, self.parts)
        # torch.full, not as_tensor: a number copied to a GPU would wait for its stream
        self.step = torch.where(first, torch.full((), step, dtype=torch.long, device=self.device), self.step)
        self.flag = self.flag | bad

    def tripped(self) -> bool:
        return bool(D.any_true(self.flag))

    def report(self) -> tuple[int, dict[str, float]]:
        values = self.parts.tolist() if self.parts is not None else []
        return int(self.step), dict(zip(self.names, values))


class Trainer:
    def __init__(self, pipeline: Pipeline, run: RunFolder, resume: bool = False,
                 dist: D.Dist | None = None, trust_checkpoint: bool = False) -> None:
        self.p = pipeline
        self.cfg = pipeline.trainer
        self.run = run
        self.dist = dist or D.Dist()
        self.device = resolve_device(self.cfg.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.pm = get_plugin_manager()
        seed_everything(pipeline.seed)
        set_deterministic(self.cfg.deterministic)  # issue 20: off by default (costs speed on the GPU)
        self.net = TrainingModule(pipeline.model, pipeline.loss_modules())
        # host work of the components (tokenizing, ...) done in the loader's workers
        self.collate = pipeline.collate()
        self.precision = self.cfg.training_precision()
        self.net.amp = (self.device, self.precision)
        if self.cfg.sync_bn and self.dist.enabled:  # not inside modules a step may skip on some ranks
            self.net = D.convert_sync_batchnorm(self.net, self.device,
                                                skip=D.component_declarations(self.net, "conditional_modules"))
        self.net.to(self.device)
        if self.cfg.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.model = self.net  # what evaluation runs (the EMA copy when enabled)
        self.ema = None
        if self.cfg.ema is not None:
            from core.training.ema import ExponentialMovingAverage

            self.ema = ExponentialMovingAverage(self.net, self.cfg.ema)
            self.model = self.ema.module
        self.train_samples = ImageSamples(pipeline.train, pipeline.train_datasets, pipeline.train_transform)
        self.plan = PlannedBatches(pipeline.seed)
        self.loader = DataLoader(self.train_samples, batch_sampler=self.plan, collate_fn=self.collate,
                                 num_workers=self.cfg.num_workers, pin_memory=self._pin(),
                                 persistent_workers=self.cfg.persistent_workers and self.cfg.num_workers > 0,
                                 worker_init_fn=ignore_in_worker if self.cfg.num_workers > 0 else None,
                                 generator=torch.Generator().manual_seed(pipeline.seed))
        self.scaler = P.grad_scaler(self.device, self.precision)
        #: fp16 steps the scaler skipped (inf/NaN gradients), counted on the device (no read per step)
        self.skipped = torch.zeros((), dtype=torch.long, device=self.device)
        self.guard = NonFiniteGuard(self.device)
        self.signals = None  # the SignalFlag while fit() runs
        self.position = Position()
        self.history: list[dict[str, Any]] = []  # evaluations, for the report
        self._skips_noted: set[str] = set()  # test sets whose skipped queries were warned of
        #: set by core.restore (`core eval` and the tools): whether the losses' state was
        #: loaded from the checkpoint; None here, where the losses are the ones that train
        self.losses_restored: bool | None = None
        #: whether `position.global_step` is the weights' training step; False where core.restore
        #: loaded a weights file, which records none (the evaluation line then claims no step)
        self.step_known = True
        # experiment trackers (`loggers:`), rank 0 only; they get every metrics.jsonl record
        self.trackers = Trackers(getattr(pipeline, "loggers", []) if self.dist.is_main and run.enabled else [])
        #: draws a picture for the trackers after the final evaluation, `(trainer) -> PIL
        #: image or None`; the runner sets the ranked-list picture (the trainer draws nothing)
        self.final_picture = None
        self.tracked_features = None  # (test set, query, gallery) of the last evaluation, for the trackers
        self.optimizer: torch.optim.Optimizer | None = None
        self._optimizer_stage: int | None = None  # the stage `optimizer` was built for
        self.scheduler = None
        self.forward = self.net
        self._resume_state = load_checkpoint(run.checkpoint, trust=trust_checkpoint) if resume else None
        if self._resume_state is not None:
            self._restore_weights(self._resume_state)
        if self.dist.enabled:  # same initial weights on every rank; different dropout, etc. after
            seed_everything(pipeline.seed + 1_000_003 * self.dist.rank)

    # ----------------------------------------------------------------- events
    def emit(self, event: str, **kwargs: Any) -> None:
        """Dispatch a trainer event to plugin hooks and to components defining it."""
        getattr(self.pm.hook, event)(trainer=self, **kwargs)
        for component in (self.p.sampler, self.net.backbone, self.net.head, *self.net.losses, self.p.evaluator):
            method = getattr(component, event, None)
            if callable(method):
                method(trainer=self, **kwargs)

    # ------------------------------------------------------------- precision
    def autocast(self):
        """The model forward's autocast region (training)."""
        return P.autocast(self.device, self.precision)

    def eval_autocast(self):
        """Evaluation embeddings: fp32 unless `eval_precision` asks otherwise."""
        return P.autocast(self.device, self.cfg.eval_precision)

    def _pin(self) -> bool:
        return self.cfg.pin_memory and self.device.type == "cuda"

    def _to_device(self, batch: Batch) -> Batch:
        batch = batch.to(self.device, non_blocking=True)
        batch = finish_on_device(batch, self.p.train_transform)  # uint8 images: normalised here
        if self.cfg.channels_last and batch.images.dim() == 4:
            batch.images = batch.images.contiguous(memory_format=torch.channels_last)
        return batch

    # ------------------------------------------------------------ evaluation
    def extract(self, table, datasets, outputs: Sequence[str] | None = None,
                forward: Callable[[Batch], dict[str, torch.Tensor]] | None = None,
                to_file: str | Path | None = None) -> FeatureSet:
        """Embeddings of a whole split in table order; under DDP each process embeds a
        contiguous shard and the shards are gathered, so every rank gets all rows.

        `outputs`: model outputs kept in `FeatureSet.extras` (default: what the evaluator
        names in `Evaluator.outputs`); `forward`: replaces the model's forward (a plugin
        building a memory from another pass, e.g. with pseudo-label masks). Test transform,
        eval mode, no gradients. `to_file`: the embeddings are written batch by batch to
        this memory-mapped .npy (`trainer.eval_features_dtype`) instead of being held in
        RAM, and returned as a tensor over the map (`FeatureSet.embeddings_file`); the
        extras stay in memory. Under DDP each rank writes its shard beside it and the main
        process joins them in rank order (the run folder must be shared by the ranks)."""
        samples = ImageSamples(table, datasets, self.p.test_transform)
        start, stop = D.shard_range(len(table), self.dist.rank, self.dist.world_size)
        loader = DataLoader(Subset(samples, range(start, stop)), batch_size=self.cfg.batch_size_eval,
                            shuffle=False, collate_fn=self.collate, num_workers=self.cfg.num_workers,
                            pin_memory=self._pin(), generator=torch.Generator().manual_seed(0))
        run = forward or self.model
        wanted = tuple(getattr(self.p.evaluator, "outputs", ()) or ()) if outputs is None else tuple(outputs)
        chunks: dict[str, list[torch.Tensor]] = {k: [] for k in ("embedding", *wanted)}
        who = f"evaluator {type(self.p.evaluator).__name__}"
        to_file = None if to_file is None else Path(to_file)
        shard_file = None if to_file is None else (_shard_path(to_file, self.dist.rank) if D.active() else to_file)
        if shard_file is not None:
            shard_file.unlink(missing_ok=True)  # a stale shard (a killed run) must not be joined
        writer = None
        self.model.eval()
        with torch.no_grad(), self.eval_autocast():
            for batch in loader:
                batch = self._to_device(batch)
                out = run(batch)
                rows = {k: read_output(out, k, who).float() for k in chunks}
                if self.cfg.eval_flip:
                    batch.images = batch.images.flip(-1)
                    flipped = run(batch)
                    rows = {k: (v + flipped[k].float()) / 2 for k, v in rows.items()}
                if shard_file is not None:
                    embedding = rows.pop("embedding")
                    if writer is None:
                        writer = FeatureWriter(shard_file, stop - start, embedding.shape[1],
                                               self.cfg.eval_features_dtype)
                    writer.write(embedding.cpu().numpy())
                for k, v in rows.items():
                    chunks[k].append(v)
        gathered = {}
        for k, parts in chunks.items():
            if k == "embedding" and to_file is not None:
                continue
            local = torch.cat(parts) if parts else torch.zeros(0, 0, device=self.device)
            gathered[k] = D.gather_rows(local, len(table))
        if to_file is not None:
            if writer is not None:
                writer.close()
            if D.active():
                self._join_shards(to_file, len(table))
            gathered["embedding"] = features_tensor(to_file)
        return FeatureSet(embeddings=gathered.pop("embedding"), pids=table.pids.copy(), camids=table.camids.copy(),
                          categories=table.category_ids.copy(), category_names=list(table.category_names),
                          extras=gathered, records=table.records,  # columnar: no object per image
                          embeddings_file=to_file, compute_device=str(self.device))

    def _join_shards(self, to_file: Path, num: int) -> None:
        """Every rank's shard file, joined in rank order into `to_file` by the main process
        (copied in blocks, never whole in RAM); the other ranks wait until it is there."""
        D.barrier()
        if self.dist.is_main:
            shards = [path for path in (_shard_path(to_file, r) for r in range(self.dist.world_size))
                      if path.is_file()]  # a rank with an empty shard wrote none
            writer = None
            for path in shards:
                rows = open_features(path)
                writer = writer or FeatureWriter(to_file, num, rows.shape[1], self.cfg.eval_features_dtype)
                for s in range(0, len(rows), 65536):
                    writer.write(np.asarray(rows[s:s + 65536]))
                del rows
                path.unlink()
            writer.close()
        D.barrier()

    def _features_file(self, test_name: str, split: str, rows: int) -> Path | None:
        """Where `trainer.eval_features` puts a split's embeddings: None (memory) or a
        file under `<run>/eval-features/` (see TrainerConfig)."""
        mode, above = self.cfg.eval_features, self.cfg.eval_features_disk_above
        if mode not in ("auto", "memory", "disk"):
            raise ValueError(f"trainer.eval_features must be auto, memory or disk, got {mode!r}")
        if isinstance(above, bool) or not isinstance(above, int) or above < 0:
            raise ValueError(f"trainer.eval_features_disk_above must be an integer >= 0 (items), got {above!r}")
        if rows == 0 or mode == "memory":
            return None
        if mode == "auto" and (rows <= above or not getattr(self.p.evaluator, "out_of_core", False)):
            return None
        safe = re.sub(r"[^\w.-]+", "_", test_name)
        return self.run.path / "eval-features" / f"{safe}-{split}.npy"

    def _evaluate_set(self, test, query, gallery) -> dict[str, float]:
        """The evaluator on one test set; its 'no valid query' line says which set of which
        pipeline file (the evaluator knows the records, not the key they came from)."""
        from core.evaluation.ranking import NoValidQuery

        try:
            return self.p.evaluator.evaluate(query, gallery)
        except NoValidQuery as exc:
            where = f"{self.p.config.file}: {test.key} (test set '{test.name}')" if test.key else f"test set '{test.name}'"
            raise NoValidQuery(f"{where}: {exc}") from None

    def evaluate(self, tag: str) -> dict[str, float]:
        """Evaluate every test set; keys `<set>/<metric>`, plus `mean/<metric>` over sets."""
        self.emit("on_evaluate_start")
        start = time.perf_counter()
        metrics: dict[str, float] = {}
        per_set: list[dict[str, float]] = []
        queries: dict[str, int] = {}
        for test in self.p.test_sets:
            files = [self._features_file(test.name, split, len(getattr(test, split))) for split in ("query", "gallery")]
            query = self.extract(test.query, test.datasets, to_file=files[0])
            gallery = self.extract(test.gallery, test.datasets, to_file=files[1])
            result = self._evaluate_set(test, query, gallery) if self.dist.is_main else None
            result = D.broadcast_object(result)
            if self.dist.is_main:  # every rank has mapped them (broadcast waits for all): the maps stay valid
                for file in files:
                    if file is not None:
                        file.unlink(missing_ok=True)
            per_set.append(result)
            queries[test.name] = len(test.query)
            _note_skipped_queries(test.name, result, len(test.query), self._skips_noted)
            if self.trackers and len(per_set) == 1:
                self.tracked_features = (test, query, gallery)
            metrics.update({f"{test.name}/{k}": float(v) for k, v in result.items()})
        if len(per_set) > 1:
            common = set.intersection(*(set(r) for r in per_set))
            metrics.update({f"mean/{k}": float(np.mean([r[k] for r in per_set])) for k in sorted(common)})
        self.net.train()
        record = {"event": "eval", "tag": tag, "stage": self.position.stage, "epoch": self.position.epoch,
                  "global_step": self.position.global_step, "images_seen": self.position.images,
                  "seconds": round(time.perf_counter() - start, 3), "queries": queries, **metrics}
        self.history.append(record)
        self.run.log(record)
        self.trackers.record(record)
        step = f" at step {self.position.global_step}" if self.step_known else ""
        log.info(f"evaluation '{tag}'{step}: " + _headline(metrics))
        self.emit("on_evaluate_end", metrics=metrics)
        return metrics

    # ----------------------------------------------------------- checkpoints
    def save(self) -> None:
        """Write checkpoints/last.pt, only after checking the run is still finite (the
        guard's flag and the weights), so the last checkpoint is always a good one."""
        self._check_finite(weights=True)
        rngs = D.all_gather_objects(rng_state())  # every rank's RNG: exact resume on N processes
        if self.dist.is_main:
            lines = sum(1 for _ in open(self.run.metrics_file)) if self.run.metrics_file.exists() else 0
            save_checkpoint(self.run.checkpoint, {
                "model": self.p.model.state_dict(),
                "losses": self.net.losses.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "optimizer": self.optimizer.state_dict() if self.optimizer else None,
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                #: the stage the optimizer and schedule belong to (the final checkpoint stands past it)
                "optimizer_stage": self._optimizer_stage,
                "position": vars(self.position).copy(),
                "rng": rngs[0],
                "rng_per_rank": rngs,
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "skipped_steps": int(self.skipped),
                "history": self.history,
                "metrics_lines": lines,
                "pipeline": self.p.name,
            })
            log.debug(f"checkpoint written: {self.run.checkpoint} (step {self.position.global_step})")
        D.barrier()

    def _restore_weights(self, state: dict[str, Any]) -> None:
        against = f"the model of {self.run.path / 'pipeline.yaml'}"
        parts = [(self.p.model, "model", "model"), (self.net.losses, "losses", "losses'")]
        if self.ema is not None and state.get("ema") is not None:
            parts.append((self.ema, "ema", "EMA copy's"))
        for module, key, what in parts:
            load_fitting(module, checkpoint_entry(state, key, self.run.checkpoint), self.run.checkpoint, what, against,
                         OTHER_PIPELINE)
        self.position = Position(**state["position"])
        self.history = list(state["history"])
        self.skipped = torch.full((), int(state.get("skipped_steps", 0)), dtype=torch.long, device=self.device)
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        if self.dist.is_main and self.run.metrics_file.exists():  # drop lines logged after the checkpoint
            with open(self.run.metrics_file, encoding="utf-8") as f:
                kept = f.readlines()[: state["metrics_lines"]]
            with open(self.run.metrics_file, "w", encoding="utf-8") as f:
                f.writelines(kept)

    # -------------------------------------------------------------- training
    def _global_epoch(self, stage: int, epoch: int) -> int:
        return sum(s.epochs for s in self.p.stages[:stage]) + epoch

    def _steps_per_epoch(self) -> int:
        return max(math.ceil(len(self.p.sampler) / max(self.cfg.accumulate, 1)), 1)

    def _prepare_stage(self, index: int) -> None:
        """Select the stage's parameters, build its optimizer and schedule, and wrap the
        training module for DDP / compile (the set of trained parameters changes per stage)."""
        stage = self.p.stages[index]
        self.net.terms = self.p.stage_losses[index]
        self.net.model_forward = stage.forward
        active = {id(t.module) for t in self.net.terms}
        inactive = [f"losses.{i}.*" for i, m in enumerate(self.net.losses)
                    if id(m) not in active and any(True for _ in m.parameters())]
        params = select_parameters(self.net, stage, also_frozen=inactive)
        self.optimizer = build_optimizer(params, stage)
        self.scheduler = build_scheduler(self.optimizer, stage, self._steps_per_epoch())
        self._optimizer_stage = index
        if not self.net._losses_bound:  # before DDP / compile wrap it: a loss's bind may copy the model
            self.net.bind_losses()
        forward: nn.Module = self.net
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            # unused parameters: declared by the components (Backbone/Head/Loss.conditional_modules);
            # buffers every rank already holds alike (memory banks) are not broadcast each step
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.net, D.shared_buffer_names(self.net))
            forward = DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.cfg.find_unused_parameters
                or bool(D.component_declarations(self.net, "conditional_modules")))
        if self.cfg.compile:
            forward = torch.compile(forward)
        self.forward = forward

    def fit(self) -> dict[str, float] | None:
        """Train all stages; returns the final metrics, or None when stopped early.
        SIGINT/SIGTERM save a checkpoint at the next step boundary and raise `Interrupted`.
        The experiment trackers (`loggers:`) see the whole run: start, records, final, finish."""
        from core.trackers.fanout import track_final

        finished = self._finished_metrics()
        if finished is not None:  # `--resume` of a run that ended: evaluating again would add a second 'final'
            log.info(f"{self.p.name}: the run in {self.run.path} had finished (step {self.position.global_step}); "
                     "nothing to resume, its final evaluation stands")
            changed = self._stage_overrides()
            if changed:  # `--set stages.0.epochs=40` would read as done; its stage had ended, nothing trained
                log.warning(f"--set {', '.join(changed)} does not extend a finished run: its last stage had ended "
                            "(schedule included), so nothing was trained; start a new run to train longer")
            return finished
        self.trackers.start(self.p.config.data, self.run.path)
        ok = False
        try:
            final = self._fit()
            if final is not None:
                track_final(self, final)
            ok = True
            return final
        finally:
            self.trackers.finish(ok)

    def _finished_metrics(self) -> dict[str, float] | None:
        """The final metrics of a resumed run whose checkpoint was written after its final
        evaluation (the position is past the last stage); None for any other run."""
        if self._resume_state is None or self.position.stage < len(self.p.stages):
            return None
        finals = [r for r in self.history if r.get("tag") == "final"]
        return {k: v for k, v in finals[-1].items() if "/" in k} if finals else {}

    def _stage_overrides(self) -> list[str]:
        """The `stages` keys given with --set (outermost only), e.g. ['stages.0.epochs']."""
        keys = [k for k, origin in self.p.config.origins.items()
                if origin == "--set" and (k == "stages" or k.startswith("stages."))]
        return sorted(k for k in keys if not any(k.startswith(f"{other}.") for other in keys))

    def _fit(self) -> dict[str, float] | None:
        log.info(f"{self.p.name}: {'resuming' if self._resume_state is not None else 'training'} on {self.device}"
                 + (f" ({self.dist.world_size} processes)" if self.dist.world_size > 1 else "")
                 + f", {len(self.p.stages)} stage(s); run folder {self.run.path}")
        if self._resume_state is None and self.cfg.eval_before and self.p.test_sets:
            self.evaluate("baseline (untrained)")
        try:
            with deferred_signals() as self.signals:
                for stage_index in range(self.position.stage, len(self.p.stages)):
                    self._run_stage(stage_index)
        except StopTraining:
            log.info(f"stopped at step {self.position.global_step} (trainer.stop_after_steps); "
                     f"checkpoint saved: continue with `core run --resume {self.run.path}`")
            return None
        except Exception as exc:  # the full story goes to the run's log.txt; the CLI prints one line
            import traceback

            self.run.log_text("".join(traceback.format_exception(exc)))
            raise
        finally:
            self.signals = None
        final = self.evaluate("final") if self.p.test_sets else {}
        self.save()
        self.run.write_report(format_report(self.p.name, self.history))
        return final

    def _run_stage(self, index: int) -> None:
        stage = self.p.stages[index]
        self._prepare_stage(index)
        state = self._resume_state
        resuming = state is not None and state["position"]["stage"] == index
        if resuming:
            self._restore_rng(state)
            self._resume_state = None
        # a finished run given one more stage (`--resume RUN --set stages=[...]`): its checkpoint
        # stands at this stage's start with the previous stage's optimizer and ended schedule
        if resuming and state.get("optimizer_stage", index) == index:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            log.info(f"stage {stage.name}: resumed at epoch {self.position.epoch + 1}/{stage.epochs}, "
                     f"step {self.position.step}")
        else:
            self.position = Position(stage=index, epoch=0, step=0, global_step=self.position.global_step,
                                     images=self.position.images)
            log.info(f"stage {stage.name}: {stage.epochs} epoch(s)")
            self.emit("on_stage_start", stage=stage)
        while self.position.epoch < stage.epochs:
            self._run_epoch(stage, index)
            self.position.epoch += 1
            self.position.step = 0
            epoch_done = self.position.epoch
            if self.cfg.eval_every and epoch_done % self.cfg.eval_every == 0 and epoch_done < stage.epochs:
                self._check_finite()
                self.evaluate(f"{stage.name} epoch {epoch_done}")
            self.save()
        self.emit("on_stage_end", stage=stage)
        self.position = Position(stage=index + 1, global_step=self.position.global_step, images=self.position.images)

    def _restore_rng(self, state: dict[str, Any]) -> None:
        per_rank = state.get("rng_per_rank") or []
        if len(per_rank) == self.dist.world_size:
            set_rng_state(per_rank[self.dist.rank])
        else:  # another number of processes: rank 0's state (resume not bit-exact then)
            set_rng_state(state["rng"])

    def _grad_norm(self) -> torch.Tensor | None:
        """The total gradient norm (clipping to `grad_clip` when set): one device scalar."""
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return None
        if self.cfg.grad_clip:
            return nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        norms = torch._foreach_norm([p.grad for p in params])
        return torch.linalg.vector_norm(torch.stack([n.to(params[0].grad.device) for n in norms]))

    def _optimizer_step(self, total: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        """Unscale (fp16), check loss and gradients for NaN/Inf (device-side), clip, step."""
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        norm = self._grad_norm()
        # with fp16, inf gradients are the scaler's business (it skips the step and lowers
        # the scale); the guard then watches the loss only
        self.guard.update(self.position.global_step + 1, total, None if self.scaler.is_enabled() else norm, parts)
        if self.device.type == "cpu":  # reading the guard costs nothing there: stop at the bad step
            self._check_finite()
        if self.scaler.is_enabled():
            # a skipped step lowers the scale: compared on the device (get_scale() reads it)
            before = self.scaler._get_scale_async().clone()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.skipped += self.scaler._get_scale_async() < before
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(self.net)

    def _check_finite(self, weights: bool = False) -> None:
        """Stop with the first bad step, its loss parts and the last good checkpoint named
        when the guard tripped (or, with `weights`, when a trained weight is not finite)."""
        tripped = self.guard.tripped()
        if not tripped and weights:
            params = [p.detach() for p in self.net.parameters() if p.is_floating_point()]
            finite = torch.stack([torch.isfinite(p).all() for p in params]).all() if params else torch.tensor(True)
            tripped = bool(D.any_true(~finite))
            if tripped:
                self.guard.flag = torch.ones_like(self.guard.flag)
                self.guard.step = torch.full((), self.position.global_step, dtype=torch.long, device=self.device)
        if not tripped:
            return
        step, values = self.guard.report()
        last = (f"last good checkpoint (from before the divergence): {self.run.checkpoint}; resume from it with "
                f"a lower learning rate: core run --resume {self.run.path} --set stages.{self.position.stage}"
                f".optimizer.lr=..." if self.run.checkpoint.exists() else "no checkpoint was written yet")
        loss = values.pop("loss", float("nan"))
        raise FloatingPointError(f"the loss or its gradients became NaN/Inf at optimisation step {step} "
                                 f"(stage '{self.p.stages[self.position.stage].name}', epoch {self.position.epoch + 1}); "
                                 f"loss {loss}, parts {values}; {last}")

    def _component_error(self, exc: Exception) -> Exception:
        """`exc` as one line naming the component it came from (or `exc` itself)."""
        p = self.p
        components = [(p.sampler, "sampler", *self._who("sampler")),
                      (self.net.backbone, "backbone", *self._who("backbone")),
                      (self.net.head, "head", *self._who("head"))]
        for term in self.net.terms:
            components.append((term.module, "loss", term.name,
                               str(self.p.provenance.get(term.key, {}).get("plugin", "?"))))
        found = blame(exc, components)
        if found is None:
            return exc
        if self.run.enabled:
            found.args = (f"{found.args[0]} (traceback in {self.run.log_file})",)
        return found

    def _who(self, key: str) -> tuple[str, str]:
        info = self.p.provenance.get(key, {})
        return str(info.get("name", key)), str(info.get("plugin", "?"))

    def _who_loss(self, module: nn.Module) -> str:
        for key, info in self.p.provenance.items():
            if ".losses." in f".{key}" or key.startswith("losses."):
                if key.startswith("losses.") and key.count(".") == 1:
                    index = int(key.split(".")[1])
                    main = self.p.stage_losses[0] if self.p.stage_losses else []
                    if index < len(main) and main[index].module is module:
                        return str(info.get("plugin", "?"))
        return next((str(i.get("plugin", "?")) for k, i in self.p.provenance.items() if "losses." in k), "?")

    def _run_epoch(self, stage, index: int) -> None:
        epoch = self._global_epoch(index, self.position.epoch)
        self.p.sampler.set_epoch(epoch)
        if self.position.step == 0:
            self.emit("on_epoch_start", epoch=epoch)
        try:
            plan = list(iter(self.p.sampler))
        except Exception as exc:
            raise self._component_error(exc) from exc
        self.plan.set(plan, epoch, self.position.step)
        # every rank's part of each step (one exchange an epoch): the losses' gathers of a
        # batch then exchange no row counts or labels, and make no host sync, per step
        plans = D.exchange_plans([indices_and_roles(item) for item in plan])
        accumulate = max(self.cfg.accumulate, 1)
        self.net.train()
        bar = self._progress(len(plan), f"{stage.name} {self.position.epoch + 1}/{stage.epochs}")
        bar.update(self.position.step)
        seen, tick = 0, time.perf_counter()
        for batch in self.loader:
            batch = self._to_device(batch)
            batch_rows = self._batch_rows(plans[self.position.step] if plans else None)
            # the mean over the batches of this optimizer step: the epoch's last group may
            # hold fewer than `accumulate` (as timm's train.py divides it)
            group = min(accumulate, len(plan) - self.position.step // accumulate * accumulate)
            self.position.step += 1
            sync = self.position.step % accumulate == 0 or self.position.step == len(plan)
            no_sync = getattr(self.forward, "no_sync", None) if not sync else None
            try:
                with no_sync() if no_sync else contextlib.nullcontext(), batch_rows:
                    total, parts, outputs = self.forward(batch, train=True)
                    parts = detach_parts(parts)
                    self.scaler.scale(total / group).backward()
            except (FloatingPointError, KeyboardInterrupt):
                raise
            except Exception as exc:
                raise self._component_error(exc) from exc
            seen += len(batch)
            self.position.images += len(batch) * self.dist.world_size  # shards are equal (the samplers' rule)
            bar.update(1)
            if not sync:
                continue
            self._optimizer_step(total, parts)
            self.position.global_step += 1
            step = self.position.global_step
            logged = None
            if step % max(self.cfg.log_every, 1) == 0 or self.position.step == len(plan):
                self._check_finite()
                logged = D.all_reduce_mean({"loss": total.detach().float(), **parts})  # keys may differ by rank
                rate = seen * self.dist.world_size / max(time.perf_counter() - tick, 1e-9)
                record = {"event": "train", "stage": stage.name, "epoch": epoch, "global_step": step,
                          "images_seen": self.position.images,
                          "lr": self.optimizer.param_groups[0]["lr"], "images_per_s": round(rate, 2), **logged}
                if self.scaler.is_enabled():
                    record["skipped_steps"] = int(self.skipped)
                self.run.log(record)
                self.trackers.record(record)
                bar.set_postfix(loss=f"{logged['loss']:.3f}", img_s=f"{rate:.0f}")
                parts_text = ", ".join(f"{k} {float(v):.4f}" for k, v in logged.items() if k != "loss")
                log.info(f"{stage.name} epoch {self.position.epoch + 1}/{stage.epochs} step {self.position.step}/"
                         f"{len(plan)}: loss {float(logged['loss']):.4f}" + (f" ({parts_text})" if parts_text else "")
                         + f", lr {self.optimizer.param_groups[0]['lr']:.3g}, {rate:.0f} img/s")
            with batch_rows:  # step-end updates gather the (last micro-)batch's rows
                self.emit("on_step_end", step=step, batch=batch, outputs=outputs, losses=logged or {})
            if self.cfg.checkpoint_every_steps and step % self.cfg.checkpoint_every_steps == 0:
                self.save()
            if self.cfg.stop_after_steps is not None and step >= self.cfg.stop_after_steps:
                bar.close()
                self.save()
                raise StopTraining
            if self._interrupted(step):
                bar.close()
                self.save()
                raise Interrupted(self.signals.signum or self._agreed_signal, self.position.epoch + 1,
                                  self.position.step, self.run.path, bool(self.p.config.data.get("plugins")))
        bar.close()
        self.emit("on_epoch_end", epoch=epoch)

    def _batch_rows(self, parts: list[tuple[np.ndarray, np.ndarray]] | None) -> D.batch_rows:
        """The step's `D.batch_rows`: every rank's row count and, when a component asks,
        the label fields and record fields of the whole batch (from every rank's (indices,
        roles) and the table)."""
        if parts is None:
            return D.batch_rows(None)
        table, indices = self.train_samples.table, np.concatenate([i for i, _ in parts])
        return D.batch_rows([len(i) for i, _ in parts],
                            lambda: label_fields(table, indices, np.concatenate([r for _, r in parts])),
                            lambda name: record_values(table, name, indices))

    _agreed_signal = 0

    def _interrupted(self, step: int) -> bool:
        """A signal arrived: on one process, stop at this step boundary; under DDP the
        ranks agree (one all-reduce) at logging steps, so all stop at the same step."""
        if self.signals is None:
            return False
        if not self.dist.enabled:
            return bool(self.signals)
        if step % max(self.cfg.log_every, 1) != 0:
            return False
        signum = D.all_reduce_max(self.signals.signum, self.device)
        self._agreed_signal = signum
        return signum != 0

    def _progress(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, disable=bar_disabled(self.cfg.progress and self.dist.is_main),
                    dynamic_ncols=True, leave=False)


def _shard_path(to_file: Path, rank: int) -> Path:
    """A rank's shard of a feature file under DDP (`Trainer.extract`)."""
    return to_file.with_name(f"{to_file.stem}.rank{rank}{to_file.suffix}")

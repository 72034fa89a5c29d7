"""The trainer: stages of epochs of steps, evaluation before/during/after, atomic
checkpoints and an exact `--resume`.

Exact resume rests on three facts: the sampler's plan depends only on (seed, epoch,
rank); every sample's augmentation is seeded from (seed, epoch, step, slot), so it does
not depend on worker count or skipped batches; and the checkpoint holds model, losses,
optimizer, scheduler, position (stage, epoch, step) and the global RNG states.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from core.data.loading import ImageSamples, collate
from core.interfaces import Episode, FeatureSet
from core.pipeline import Pipeline, resolve_device
from core.plugins import get_plugin_manager
from core.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state
from core.training.optim import build_optimizer, build_scheduler, select_parameters
from core.training.report import format_report
from core.training.run_folder import RunFolder

_MASK = (1 << 63) - 1


def sample_seed(seed: int, epoch: int, step: int, slot: int) -> int:
    """A per-sample augmentation seed (splitmix-style mixing, stable across runs)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + step * 0x94D049BB133111EB + slot) & _MASK
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & _MASK
    return x ^ (x >> 29)


class PlannedBatches:
    """Turns one epoch's sampler plan into DataLoader keys (index, seed, role),
    starting at step `start` (the steps before it were done before a resume)."""

    def __init__(self, plan: list[list[int] | Episode], seed: int, epoch: int, start: int = 0) -> None:
        self.plan, self.seed, self.epoch, self.start = plan, seed, epoch, start

    def __len__(self) -> int:
        return max(len(self.plan) - self.start, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for step in range(self.start, len(self.plan)):
            item = self.plan[step]
            indices, roles = (item.indices, item.roles) if isinstance(item, Episode) else (item, [0] * len(item))
            yield [(int(i), sample_seed(self.seed, self.epoch, step, slot), int(r))
                   for slot, (i, r) in enumerate(zip(indices, roles))]


@dataclass
class Position:
    """Where training stands: the next step to run is `step` of `epoch` of `stage`."""

    stage: int = 0
    epoch: int = 0
    step: int = 0
    global_step: int = 0


class StopTraining(Exception):
    """Raised internally when `stop_after_steps` is reached."""


class Trainer:
    def __init__(self, pipeline: Pipeline, run: RunFolder, resume: bool = False) -> None:
        self.p = pipeline
        self.cfg = pipeline.trainer
        self.run = run
        self.device = resolve_device(self.cfg.device)
        self.pm = get_plugin_manager()
        seed_everything(pipeline.seed)
        self.model = pipeline.model.to(self.device)
        self.losses = pipeline.loss_modules().to(self.device)
        # names users write patterns against: backbone.*, head.*, losses.N.*
        self.trainable = nn.ModuleDict({"backbone": self.model.backbone, "head": self.model.head,
                                        "losses": self.losses})
        self.train_samples = ImageSamples(pipeline.train, pipeline.train_datasets, pipeline.train_transform)
        self.position = Position()
        self.history: list[dict[str, Any]] = []  # evaluations, for the report
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self._resume_state = load_checkpoint(run.checkpoint) if resume else None
        if self._resume_state is not None:
            self._restore_weights(self._resume_state)

    # ----------------------------------------------------------------- events
    def emit(self, event: str, **kwargs: Any) -> None:
        """Dispatch a trainer event to plugin hooks and to components defining it."""
        getattr(self.pm.hook, event)(trainer=self, **kwargs)
        for component in (self.p.sampler, self.model.backbone, self.model.head, *self.losses, self.p.evaluator):
            method = getattr(component, event, None)
            if callable(method):
                method(trainer=self, **kwargs)

    # ------------------------------------------------------------- precision
    def autocast(self):
        if self.cfg.amp == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------ evaluation
    def extract(self, table, datasets) -> FeatureSet:
        samples = ImageSamples(table, datasets, self.p.test_transform)
        loader = DataLoader(samples, batch_size=self.cfg.batch_size_eval, shuffle=False, collate_fn=collate,
                            num_workers=self.cfg.num_workers, pin_memory=self._pin(),
                            generator=self._generator(-1))
        chunks = []
        self.model.eval()
        with torch.no_grad(), self.autocast():
            for batch in loader:
                chunks.append(self.model(batch.to(self.device, non_blocking=True))["embedding"].float())
        return FeatureSet(embeddings=torch.cat(chunks), pids=table.pids.copy(), camids=table.camids.copy(),
                          categories=table.category_ids.copy(), category_names=list(table.category_names))

    def evaluate(self, tag: str) -> dict[str, float]:
        """Evaluate every test set; keys `<set>/<metric>`, plus `mean/<metric>` over sets."""
        self.emit("on_evaluate_start")
        start = time.perf_counter()
        metrics: dict[str, float] = {}
        per_set: list[dict[str, float]] = []
        for test in self.p.test_sets:
            query = self.extract(test.query, test.datasets)
            gallery = self.extract(test.gallery, test.datasets)
            result = self.p.evaluator.evaluate(query, gallery)
            per_set.append(result)
            metrics.update({f"{test.name}/{k}": float(v) for k, v in result.items()})
        if len(per_set) > 1:
            common = set.intersection(*(set(r) for r in per_set))
            metrics.update({f"mean/{k}": float(np.mean([r[k] for r in per_set])) for k in sorted(common)})
        self.model.train()
        record = {"event": "eval", "tag": tag, "stage": self.position.stage, "epoch": self.position.epoch,
                  "global_step": self.position.global_step, "seconds": round(time.perf_counter() - start, 3),
                  **metrics}
        self.history.append(record)
        self.run.log(record)
        self.emit("on_evaluate_end", metrics=metrics)
        return metrics

    # -------------------------------------------------------------- training
    def _pin(self) -> bool:
        return self.cfg.pin_memory and self.device.type == "cuda"

    def _loader(self, plan, epoch: int, start: int) -> DataLoader:
        return DataLoader(self.train_samples, batch_sampler=PlannedBatches(plan, self.p.seed, epoch, start),
                          collate_fn=collate, num_workers=self.cfg.num_workers, pin_memory=self._pin(),
                          generator=self._generator(epoch))

    def _generator(self, epoch: int) -> torch.Generator:
        """A private generator for the DataLoader: its worker seeding must not draw from
        the global RNG, or a resumed run would diverge (augmentation is seeded per sample)."""
        return torch.Generator().manual_seed(sample_seed(self.p.seed, epoch, -1, 0))

    def _global_epoch(self, stage: int, epoch: int) -> int:
        return sum(s.epochs for s in self.p.stages[:stage]) + epoch

    def step(self, batch, terms) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One optimisation step: forward, weighted losses, backward, update."""
        with self.autocast():
            outputs = self.model(batch)
            total = torch.zeros((), device=self.device)
            parts: dict[str, torch.Tensor] = {}
            for term in terms:
                out = term.module(outputs, batch)
                loss, logged = out if isinstance(out, tuple) else (out, {})
                total = total + term.weight * loss.float()
                parts[term.name] = loss.detach().float()
                for k, v in (logged or {}).items():
                    parts[f"{term.name}/{k}"] = torch.as_tensor(v).detach().float()
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                     self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return total.detach(), parts, outputs

    def save(self) -> None:
        lines = sum(1 for _ in open(self.run.metrics_file)) if self.run.metrics_file.exists() else 0
        save_checkpoint(self.run.checkpoint, {
            "model": self.model.state_dict(),
            "losses": self.losses.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "position": vars(self.position).copy(),
            "rng": rng_state(),
            "history": self.history,
            "metrics_lines": lines,
            "pipeline": self.p.name,
        })

    def _restore_weights(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.losses.load_state_dict(state["losses"])
        self.position = Position(**state["position"])
        self.history = list(state["history"])
        if self.run.metrics_file.exists():  # drop lines logged after the checkpoint
            with open(self.run.metrics_file, encoding="utf-8") as f:
                kept = f.readlines()[: state["metrics_lines"]]
            with open(self.run.metrics_file, "w", encoding="utf-8") as f:
                f.writelines(kept)

    def _progress(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, disable=not self.cfg.progress or self.run.enabled is False,
                    dynamic_ncols=True, leave=False)

    def fit(self) -> dict[str, float] | None:
        """Train all stages; returns the final metrics, or None when stopped early."""
        if self._resume_state is None and self.cfg.eval_before and self.p.test_sets:
            self.evaluate("baseline (untrained)")
        try:
            for stage_index in range(self.position.stage, len(self.p.stages)):
                self._run_stage(stage_index)
        except StopTraining:
            return None
        final = self.evaluate("final") if self.p.test_sets else {}
        self.save()
        self.run.write_report(format_report(self.p.name, self.history))
        return final

    def _run_stage(self, index: int) -> None:
        stage = self.p.stages[index]
        terms = self.p.stage_losses[index]
        params = select_parameters(self.trainable, stage)
        self.optimizer = build_optimizer(params, stage)
        self.scheduler = build_scheduler(self.optimizer, stage, max(len(self.p.sampler), 1))
        resuming = self._resume_state is not None and self._resume_state["position"]["stage"] == index
        if resuming:
            self.optimizer.load_state_dict(self._resume_state["optimizer"])
            self.scheduler.load_state_dict(self._resume_state["scheduler"])
            set_rng_state(self._resume_state["rng"])
            self._resume_state = None
        else:
            self.position = Position(stage=index, epoch=0, step=0, global_step=self.position.global_step)
            self.emit("on_stage_start", stage=stage)
        while self.position.epoch < stage.epochs:
            self._run_epoch(stage, index, terms)
            self.position.epoch += 1
            self.position.step = 0
            epoch_done = self.position.epoch
            if self.cfg.eval_every and epoch_done % self.cfg.eval_every == 0 and epoch_done < stage.epochs:
                self.evaluate(f"{stage.name} epoch {epoch_done}")
            self.save()
        self.emit("on_stage_end", stage=stage)
        self.position = Position(stage=index + 1, global_step=self.position.global_step)

    def _run_epoch(self, stage, index: int, terms) -> None:
        epoch = self._global_epoch(index, self.position.epoch)
        self.p.sampler.set_epoch(epoch)
        if self.position.step == 0:
            self.emit("on_epoch_start", epoch=epoch)
        plan = list(iter(self.p.sampler))
        loader = self._loader(plan, epoch, self.position.step)
        self.model.train()
        bar = self._progress(len(plan), f"{stage.name} {self.position.epoch + 1}/{stage.epochs}")
        bar.update(self.position.step)
        seen, tick = 0, time.perf_counter()
        for batch in loader:
            batch = batch.to(self.device, non_blocking=True)
            total, parts, outputs = self.step(batch, terms)
            self.position.step += 1
            self.position.global_step += 1
            seen += len(batch)
            step = self.position.global_step
            logged = {k: float(v) for k, v in parts.items()} if (
                step % max(self.cfg.log_every, 1) == 0 or self.position.step == len(plan)) else None
            if logged is not None:
                loss = float(total)
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss} at step {step} ({logged}); "
                                             f"last good checkpoint: {self.run.checkpoint}")
                rate = seen / max(time.perf_counter() - tick, 1e-9)
                self.run.log({"event": "train", "stage": stage.name, "epoch": epoch, "global_step": step,
                              "lr": self.optimizer.param_groups[0]["lr"], "loss": loss,
                              "images_per_s": round(rate, 2), **logged})
                bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{rate:.0f}")
            bar.update(1)
            self.emit("on_step_end", step=step, batch=batch, outputs=outputs, losses=logged or {})
            if self.cfg.checkpoint_every_steps and step % self.cfg.checkpoint_every_steps == 0:
                self.save()
            if self.cfg.stop_after_steps is not None and step >= self.cfg.stop_after_steps:
                bar.close()
                self.save()
                raise StopTraining
        bar.close()
        self.emit("on_epoch_end", epoch=epoch)

"""Running pipelines end to end: what `core run` and `core validate` do, as functions
(the pytest plugin and user scripts call these too)."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from core import log_setup
from core.config.loading import ConfigError, LoadedConfig, load_pipeline
from core.restore import refuse_plugin_files, resolve_run, restore_run  # noqa: F401 - public here too


@dataclass
class RunResult:
    name: str
    run_dir: Path
    #: final metrics; None when the run stopped early (trainer.stop_after_steps)
    metrics: dict[str, float] | None
    baseline: dict[str, float] = field(default_factory=dict)
    #: the process's rank under torchrun (only rank 0 writes and prints)
    rank: int = 0


def resolved_pipeline_data(cfg: LoadedConfig) -> dict[str, Any]:
    """The pipeline as a run folder's pipeline.yaml records it (plugin files made absolute)."""
    return _absolute_plugin_paths(cfg)


def _absolute_plugin_paths(cfg: LoadedConfig) -> dict[str, Any]:
    data = dict(cfg.data)
    if data.get("plugins"):
        data["plugins"] = [str((Path(cfg.origin(f"plugins.{i}")).parent / p).resolve())
                           if cfg.origin(f"plugins.{i}") != "--set" else str(Path(p).resolve())
                           for i, p in enumerate(data["plugins"])]
    return data


def _new_run_dir(output_dir: str, name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(output_dir) / f"{name}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = Path(output_dir) / f"{name}-{stamp}-{n}"
    return path


def check_output_dir(cfg: LoadedConfig, sweep: bool = False) -> None:
    """Refuse a trainer.output_dir that no run folder (`sweep`: no sweep folder) can be made
    in (a file, a path through a file, a folder that cannot be written) before the build,
    which may label and read data for hours; it was a raw '[Errno 20] Not a directory',
    exit 1, after it (a sweep's: at once, naming neither the key nor the file)."""
    trainer = cfg.data.get("trainer")
    out = trainer.get("output_dir", "runs") if isinstance(trainer, dict) else "runs"
    if not isinstance(out, str):  # a sweep made its folder name from it: a raw TypeError
        from core.config.validation import describe

        raise cfg.error("trainer.output_dir", f"expected the folder run folders are made in (a path), "
                                              f"got {describe(out)}")
    from core.training.run_folder import folder_problem

    problem = folder_problem(Path(out))
    if problem is not None:
        raise cfg.error("trainer.output_dir", f"{problem}; trainer.output_dir is the folder the "
                                              f"{'sweep folder is' if sweep else 'run folders are'} made in "
                                              f"(give another, or {'--sweep-dir' if sweep else '--run-dir'})")


def run(pipeline: str | Path, overrides: Sequence[str] = (), run_dir: str | Path | None = None,
        resume: str | Path | None = None, overwrite: bool = False, image_check: str = "error") -> RunResult:
    """Train and evaluate one pipeline; or continue the run in `resume` exactly where it stopped.

    A new run refuses a `run_dir` that already holds a run unless `overwrite`; one process
    at a time writes a run folder (`<run>/.lock` names it). `image_check`: what to do with
    unreadable images found before training (error | skip | off). The run's log records
    (from the start, the pipeline's build included) go to `<run>/log.txt`."""
    with log_setup.run_log(log_setup.env_rank(), int(os.environ.get("WORLD_SIZE") or 1)) as log_file:
        return _run(pipeline, overrides, run_dir, resume, overwrite, image_check, log_file)


def _run(pipeline, overrides, run_dir, resume, overwrite, image_check, log_file) -> RunResult:
    from core import trust
    from core.pipeline import build_pipeline, resolve_device
    from core.training import distributed as D
    from core.training.checkpoint import seed_everything
    from core.training.run_folder import RunFolder, RunLock, claim_new
    from core.tools.search import ranked_list_image
    from core.training.trainer import Trainer

    if resume is not None:
        run_path = Path(resume)
        if not (run_path / "checkpoints" / "last.pt").is_file():
            raise FileNotFoundError(f"cannot resume {run_path}: no checkpoints/last.pt there "
                                    "(a run folder written by `core run` is expected)")
        # a resumed run continues: the stop that ended it no longer applies
        cfg = load_pipeline(run_path / "pipeline.yaml", ["trainer.stop_after_steps=null", *overrides])
        refuse_plugin_files(cfg)  # the folder may come from someone else: its plugin files are code
    else:
        cfg = load_pipeline(pipeline, overrides)
    seed_everything(cfg.data.get("seed", 0) if isinstance(cfg.data.get("seed", 0), int) else 0)
    device = (cfg.data.get("trainer") or {}).get("device", "auto")
    dist = D.init_from_env(resolve_device(device if isinstance(device, str) else "auto").type)
    if resume is None and run_dir is not None and dist.is_main:
        claim_new(Path(run_dir), overwrite)  # before any work: a refused run costs nothing
    elif resume is None and dist.is_main:
        check_output_dir(cfg)  # likewise: the run folder is made in it only after the build
    p = build_pipeline(cfg, rank=dist.rank, world_size=dist.world_size, image_check=image_check,
                       prepare="run" if resume is None else "existing")
    if resume is None:  # rank 0 names the run folder; every rank writes nothing else
        run_path = D.broadcast_object(Path(run_dir) if run_dir else _new_run_dir(p.trainer.output_dir, p.name))
    lock = RunLock(run_path)
    if dist.is_main:
        lock.acquire()
    try:
        folder = RunFolder(run_path, enabled=dist.is_main)
        log_file.attach(folder.log_file)  # rank 0: everything; other ranks: their warnings
        trainer = Trainer(p, folder, resume=resume is not None, dist=dist,
                          trust_checkpoint=trust.current().checkpoint)
        trainer.final_picture = ranked_list_image  # for the trackers (`loggers:`)
        if resume is None:
            folder.write_pipeline(_absolute_plugin_paths(cfg), p.provenance)
        folder.write_environment(str(trainer.device), p.provenance, _plugin_versions())
        metrics = trainer.fit()
        return _finish(p, trainer, run_path, metrics, dist)
    finally:
        lock.release()


def _plugin_versions() -> dict[str, str | None]:
    from core.plugins import get_plugin_manager

    return {n: i.version for n, i in get_plugin_manager().infos.items() if not i.error}


def _finish(p, trainer, run_path: Path, metrics, dist) -> "RunResult":
    from core.training import distributed as D

    if metrics is not None and p.trainer.worst_queries > 0 and dist.is_main and p.test_sets:
        from core.tools.search import worst_queries

        worst_queries(run_path, count=p.trainer.worst_queries, device=str(trainer.device),
                      progress=False, echo=lambda *_: None)
    D.barrier()  # the report (and pictures) are written by rank 0
    baseline = next((r for r in trainer.history if r["tag"].startswith("baseline")), {})
    return RunResult(name=p.name, run_dir=run_path, metrics=metrics,
                     baseline={k: v for k, v in baseline.items() if "/" in k}, rank=dist.rank)


def validate(pipeline: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Build every component and run one forward/backward step without updating weights."""
    import torch

    from core.parameter_check import check_parameter_patterns, check_patterns_on_meta
    from core.data.device_normalise import finish_on_device
    from core.data.loading import ImageSamples
    from core.pipeline import bind_losses, build_pipeline, resolve_device
    from core.training.checkpoint import seed_everything
    from core.training.optim import stage_trains
    from core.training.trainer import TrainingModule

    cfg = load_pipeline(pipeline, overrides)
    # every stage's trainable / frozen / param_groups pattern, on the meta device (fast)
    checked_on_meta = check_patterns_on_meta(cfg)
    seed_everything(0)
    # a labeler whose file is missing labels only this check's batch (into a temporary
    # file): validating muva.yaml must not run CogVLM over the whole training set first
    p = build_pipeline(cfg, prepare="check")
    device = resolve_device(p.trainer.device)
    model = p.model.to(device).train()
    losses = p.loss_modules().to(device)
    bind_losses(model, losses)  # as the trainer does before its first step (a momentum copy of the model)
    if not checked_on_meta:
        check_parameter_patterns(cfg, p.stages, p.stage_losses, TrainingModule(model, losses))
    plan = next(iter(p.sampler))
    indices = plan.indices if hasattr(plan, "indices") else plan
    roles = plan.roles if hasattr(plan, "roles") else [0] * len(indices)
    sampled_labels = []
    with tempfile.TemporaryDirectory(prefix="core-validate-") as folder:
        for step in p.deferred_labels:
            done = step.label_rows(p.train, indices, p.ctx, Path(folder))
            sampled_labels.append({"step": step.key, "labeler": step.name, "out": str(step.out),
                                   "labelled": done, "images": len(step.items)})
    samples = ImageSamples(p.train, p.train_datasets, p.train_transform)
    batch = p.collate()([samples[(i, 0, r)] for i, r in zip(indices, roles)]).to(device)
    batch = finish_on_device(batch, p.train_transform)  # uint8 training images: normalised here
    outputs = model(batch)
    values = {}
    total = torch.zeros((), device=device)
    for term in p.stage_losses[0]:
        out = term.module(outputs, batch)
        loss = out[0] if isinstance(out, tuple) else out
        values[term.name] = float(loss.detach())
        total = total + term.weight * loss
    total.backward()
    # the parameters this step trains: stage 0's patterns (a stage training its prompts
    # alone leaves the image encoder without gradient by design), as the trainer selects them
    no_grad = [n for n, q in model.named_parameters()
               if q.requires_grad and q.grad is None and stage_trains(n, p.stages[0])]
    model.zero_grad(set_to_none=True)
    losses.zero_grad(set_to_none=True)
    return {
        "name": p.name,
        "components": p.provenance,
        "train": {"images": len(p.train), "identities": p.ctx.num_identities,
                  "categories": p.ctx.identities_per_category, "batches_per_epoch": len(p.sampler)},
        "test": {t.name: {"query": len(t.query), "gallery": len(t.gallery)} for t in p.test_sets},
        "parameters": sum(q.numel() for q in model.parameters()),
        "outputs": {k: list(v.shape) for k, v in outputs.items() if hasattr(v, "shape")},
        "losses": values,
        "parameters_without_grad": no_grad,
        "device": str(device),
        #: where the stages' parameter patterns were checked: "meta", or the real model
        "patterns_checked_on": "meta" if checked_on_meta else str(device),
        #: the model output each loss reads (`Loss.features`, see docs/writing-plugins.md)
        "loss_inputs": {t.name: getattr(t.module, "features", None) for t in p.stage_losses[0]},
        #: `prepare` steps whose file is missing or stale: labelled for this batch only
        #: (`core label` or `core run` labels every training image)
        "labels_sampled": sampled_labels,
    }


def label(pipeline: str | Path, overrides: Sequence[str] = (), force: bool = False) -> list[Path]:
    """Run the pipeline's `prepare` labelers (what `core label` does); the annotation files."""
    from core.pipeline import build_pipeline

    return build_pipeline(load_pipeline(pipeline, overrides), prepare="force" if force else "run").prepared


def evaluate_run(target: str | Path, overrides: Sequence[str] = (), weights: str | Path | None = None,
                 source: str = "auto") -> dict[str, float]:
    """Evaluate a run folder's model (or a checkpoint file inside one) on its test sets; with
    `weights`, `target` is a pipeline YAML and `weights` another code base's released file
    (`source`: its reader, core.released_weights), and the metrics carry `released`: what
    was loaded from it."""
    run_dir, _, trainer = restore_run(target, overrides, weights=weights, source=source)
    if weights is not None:
        run_dir = Path(target)
    if not trainer.p.test_sets:
        hint = (" (a weights file carries no data: name test sets, e.g. --set 'data.test=[{dataset: market1501, "
                "root: data/market1501}]')" if str(target).endswith(".safetensors") else "")
        raise ConfigError(f"the pipeline has no test set with query and gallery{hint}",
                          file=str(target if str(target).endswith(".safetensors") else run_dir / "pipeline.yaml"))
    metrics = trainer.evaluate("checkpoint")
    if weights is not None:  # what was loaded, beside the numbers (core.restore.released_summary)
        metrics = {**metrics, "released": trainer.released_summary}
    return metrics

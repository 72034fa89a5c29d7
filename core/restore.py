"""Rebuilding a trained model for inference: `core eval` and the tools (extract, search,
explain, export) start here, from a run folder, a checkpoint inside one, a weights
file written by `core export --format safetensors`, or a pipeline YAML with another code
base's released weights (`--weights FILE`, core.released_weights: restore_released).

The losses' state (memories, queues, a matching head: what an evaluator may read, e.g. the
instruct-editor evaluator's ITM re-ranking) is loaded from a checkpoint as well; a weights
file holds the model only, and `trainer.losses_restored` says which (False: none loaded).

Everything read here may come from someone else: checkpoints load with
`weights_only=True` (pickle only with --trust-checkpoint) and a pipeline naming local
plugin files is refused unless --allow-plugin-files (core/trust.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from core.config.loading import ConfigError, LoadedConfig, load_pipeline

log = logging.getLogger(__name__)


def resolve_run(target: str | Path) -> tuple[Path, Path]:
    """(run folder, checkpoint file) of a run folder or of a checkpoint inside one."""
    target = Path(target)
    checkpoint = target / "checkpoints" / "last.pt" if target.is_dir() else target
    run_dir = target if target.is_dir() else target.parent.parent
    if target.is_file() and target.suffix in (".yaml", ".yml") and not (run_dir / "pipeline.yaml").is_file():
        raise FileNotFoundError(f"{target} is a pipeline YAML, not a run folder: `core run {target}` trains it; "
                                "`core eval | extract | search PIPELINE --weights FILE` evaluates another code "
                                "base's released weights in it (docs/model-zoo.md, 'Evaluating released weights')")
    if not (run_dir / "pipeline.yaml").is_file():
        raise FileNotFoundError(f"{target} is not a run folder: no pipeline.yaml in {run_dir} (give a run folder "
                                "written by `core run`, a checkpoint inside its checkpoints/, or a .safetensors "
                                "file written by `core export --format safetensors`)")
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{target}: no checkpoint at {checkpoint} (the run has not saved one yet)")
    return run_dir, checkpoint


def refuse_plugin_files(cfg: LoadedConfig) -> None:
    """A run folder's pipeline naming local plugin files (Python code) is refused unless
    the user allowed it: the folder may come from someone else."""
    from core import trust

    files = cfg.data.get("plugins") or []
    if files and not trust.current().plugin_files:
        listed = ", ".join(str(f) for f in (files if isinstance(files, list) else [files]))
        raise trust.UntrustedContent(
            f"{cfg.file}: refused: this run's pipeline imports local plugin files ({listed}), Python code that "
            f"would run now. Read them first; if you trust them, pass {trust.PLUGIN_FILES_FLAG}.")


def restore_run(target: str | Path, overrides: Sequence[str] = (), weights: str | Path | None = None,
                source: str = "auto"):
    """(run folder, checkpoint or weights file, trainer that writes nothing) with the
    trained weights loaded (the EMA copy too, which the run's evaluations used) and, from
    a checkpoint, the losses' state (`trainer.losses_restored`). With `weights`, `target`
    is a pipeline YAML and `weights` another code base's file (restore_released)."""
    if weights is not None:
        return restore_released(target, weights, source, overrides)
    if source != "auto":  # else silently ignored: the user meant released weights
        from core.config.loading import ConfigError

        raise ConfigError(f"--from {source} names the code base of released weights; give the file with --weights "
                          "FILE (the target is then the pipeline YAML), or leave --from out for a run folder")
    from core import trust
    from core.tools import weights_file
    from core.training.checkpoint import OTHER_PIPELINE, checkpoint_entry, load_checkpoint, load_fitting

    if weights_file.is_weights_file(target):
        path = Path(target)
        cfg, facts, state = weights_file.read_weights(path, overrides)
        refuse_plugin_files(cfg)
        trainer = _inference_trainer(cfg, path.parent, context=weights_file.context_from_facts(facts))
        load_fitting(trainer.p.model, state, path, "model",
                     "the model of the pipeline stored in the file" + _with_overrides(overrides),
                     "were its tensors or its pipeline edited? `core export --format safetensors` writes files "
                     "whose weights fit their pipeline")
        trainer.losses_restored = False  # the file holds the model only
        trainer.step_known = False  # nor the step it was trained to
        return path.parent, path, trainer
    run_dir, checkpoint = resolve_run(target)
    cfg = load_pipeline(run_dir / "pipeline.yaml", list(overrides))
    refuse_plugin_files(cfg)  # before the checkpoint: nothing of the folder is read first
    state = load_checkpoint(checkpoint, trust=trust.current().checkpoint)
    trainer = _inference_trainer(cfg, run_dir)
    against = f"the model of {run_dir / 'pipeline.yaml'}" + _with_overrides(overrides)
    load_fitting(trainer.p.model, checkpoint_entry(state, "model", checkpoint), checkpoint, "model", against,
                 OTHER_PIPELINE)
    trainer.losses_restored = _load_losses(trainer.net.losses, state.get("losses"), checkpoint)
    _restore_position(trainer, state.get("position"))
    if trainer.ema is not None and state.get("ema") is not None:  # its losses too: the EMA copy is of model + losses
        load_fitting(trainer.ema, state["ema"], checkpoint, "EMA copy's", against, OTHER_PIPELINE)
    return run_dir, checkpoint, trainer


def restore_released(pipeline: str | Path, weights: str | Path, source: str = "auto",
                     overrides: Sequence[str] = ()):
    """(folder of the file, the file, trainer that writes nothing) with another code base's
    released weights (core.released_weights) converted into the model `pipeline` builds.

    The pipeline says the architecture and the test data; its training data need not be
    on disk: the model is built from `data.test` (by default the training datasets' own
    query / gallery) and, for a head with a classifier, their classifier's row count. The
    file is read without pickle; the reader's `left_out`, `kept` and `notes` are logged
    and kept as `trainer.released`."""
    from core.context import BuildContext
    from core.released_weights import WeightsMismatch, pick_reader, read_weights

    path, pipeline = Path(weights), Path(pipeline)
    if not pipeline.is_file() or pipeline.suffix not in (".yaml", ".yml"):
        raise FileNotFoundError(f"{pipeline}: with --weights, the target is the pipeline YAML that says the "
                                "architecture and the test data (e.g. pipelines/bot_market1501.yaml)")
    state = read_weights(path)
    reader = pick_reader(state, source, path)
    cfg = load_pipeline(pipeline, list(overrides))
    notes = list(reader.check_pipeline(state, cfg.data)) if hasattr(reader, "check_pipeline") else []
    data = cfg.data.setdefault("data", {})
    if data.get("test") is None:  # the training datasets' own query / gallery, as a training run tests
        data["test"] = data.get("train")
    size = (data.get("transform") or {}).get("size", (256, 128))
    rows = reader.num_identities(state) if hasattr(reader, "num_identities") else None
    cameras = reader.num_cameras(state, cfg.data) if hasattr(reader, "num_cameras") else None
    context = BuildContext(train=None, num_identities=int(rows or 0), num_cameras=int(cameras or 0),
                           image_size=(int(size[0]), int(size[1])))
    try:
        trainer = _inference_trainer(cfg, path.parent, context=context)
    except ConfigError as error:  # e.g. a ResNet's file under a ViT pipeline: say what the file is
        raise ConfigError(f"{error.message}; {_file_hint(reader, state, source, path, pipeline, whose=True)}",
                          file=error.file, key=error.key) from error
    try:
        converted = reader.convert(state, trainer.p.model)
    except WeightsMismatch as error:  # the reader names the tensor and a key; say which pipelines fit the file too
        hint = _file_hint(reader, state, source, path, pipeline, whose=False)
        raise WeightsMismatch(f"{error}; {hint}" if hint else str(error)) from error
    converted.notes = list(converted.notes) + notes
    _load_converted(trainer.p.model, converted, reader.NAME, path)
    if trainer.ema is not None:  # the EMA copy was taken before loading: evaluate the loaded model
        trainer.ema, trainer.model = None, trainer.net
    trainer.losses_restored = False
    trainer.step_known = False
    trainer.released = converted
    trainer.released_summary = released_summary(converted, reader.NAME, path)
    for line in describe_conversion(converted, reader.TITLE, path):
        (log.warning if line.startswith("note:") else log.info)(line)
    return path.parent, path, trainer


def _file_hint(reader, state: dict, source: str, path: Path, pipeline: Path, whose: bool) -> str:
    """For a line saying the pipeline does not fit the file: that the file's names are not the
    reader's when --from named one that does not recognise them (and which readers do), else
    (`whose`) what the file is and the pipelines its code base's files fit, left out when the
    pipeline is the only family that fits them (the user already has it)."""
    from core.released_weights import AUTO, reader_modules

    if source != AUTO and not reader.recognise(state):
        others = [m.NAME for m in reader_modules().values() if m.recognise(state)]
        return (f"{path}'s tensor names are not {reader.TITLE}'s (--from {reader.NAME}); "
                + (f"recognised by: {', '.join(others)} (leave --from out or name that one)" if others
                   else "no reader recognises them"))
    prefixes, fits = getattr(reader, "PIPELINES", ((), ""))
    if len(prefixes) == 1 and pipeline.name.startswith(prefixes[0]):
        fits = ""
    what = (f"{path} is {reader.TITLE}'s (reader '{reader.NAME}'{', picked by --from auto' if source == AUTO else ''})"
            if whose else "")
    return "; ".join(x for x in (what, f"{reader.TITLE}'s files fit {fits}" if fits else "") if x)


def _load_converted(model, converted, reader: str, path: Path) -> None:
    """Strict both ways: every tensor of the model is converted or listed in `kept`, no
    converted name is foreign (a reader's fault, said as one line)."""
    from core.released_weights import WeightsMismatch

    own = model.state_dict()
    foreign = sorted(set(converted.state) - set(own))
    unfilled = sorted(set(own) - set(converted.state) - set(converted.kept))
    if foreign or unfilled:
        raise WeightsMismatch(f"{path}: reader '{reader}' gave {len(foreign)} names the model lacks (e.g. "
                              f"{', '.join(foreign[:2]) or '-'}) and left {len(unfilled)} of its tensors unfilled "
                              f"without a reason (e.g. {', '.join(unfilled[:2]) or '-'})")
    model.load_state_dict(converted.state, strict=False)


def released_summary(converted, reader: str, path: Path) -> dict[str, Any]:
    """What `core eval --weights --json` reports beside the metrics: the file, its reader,
    how many tensors were loaded, what was left out or kept (name -> why) and the notes."""
    return {"weights": str(path), "reader": reader, "loaded": len(converted.state),
            "left_out": dict(sorted(converted.left_out.items())), "kept": dict(converted.kept),
            "notes": list(converted.notes)}


def describe_conversion(converted, title: str, path: Path) -> list[str]:
    """What was read, left out, kept and where the protocols differ: one line each."""
    lines = [f"{path}: {len(converted.state)} tensors of {title} loaded"]
    lines += [f"left out: {name}: {why}" for name, why in sorted(converted.left_out.items())]
    by_reason: dict[str, list[str]] = {}
    for name, why in converted.kept.items():
        by_reason.setdefault(why, []).append(name)
    lines += [f"kept as built: {len(names)} tensor{'s' if len(names) > 1 else ''} (e.g. {names[0]}): {why}"
              for why, names in by_reason.items()]
    lines += [f"note: {note}" for note in converted.notes]
    return lines


def _restore_position(trainer, position: Any) -> None:
    """Stand the trainer at the checkpoint's step, so that `core eval` says which step it
    evaluates (the untrained model's 0 otherwise); one without a usable position (written
    by another tool) leaves the step unknown."""
    from core.training.trainer import Position

    try:
        trainer.position = Position(**position)
    except TypeError:  # None, or not Position's fields
        trainer.step_known = False


def _with_overrides(overrides: Sequence[str]) -> str:
    return " (with the --set overrides given)" if overrides else ""


def _load_losses(losses, state: Any, checkpoint: Path) -> bool:
    """Load the checkpoint's loss state into `losses` (the pipeline's loss modules, built as
    in training); False, with one warning line, when it has none or it does not fit (the
    losses then stay as built: evaluation embeddings never read them)."""
    import torch

    if not state:
        return False
    built = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in losses.state_dict().items()}
    try:
        losses.load_state_dict(state)
    except (RuntimeError, ValueError) as exc:
        losses.load_state_dict(built)  # nothing half-loaded
        detail = " ".join(str(exc).split()) or type(exc).__name__  # torch's message spans lines
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        log.warning(f"{checkpoint}: the losses' state does not fit this pipeline's losses ({detail}); they are "
                    "left as built (what reads them, e.g. ITM re-ranking, is skipped)")
        return False
    return True


def _inference_trainer(cfg: LoadedConfig, folder: Path, context: Any = None):
    """The pipeline built for inference (no labelers; `context`: without training data)
    and a trainer around it that writes nothing."""
    from core.pipeline import build_pipeline, resolve_device
    from core.training import distributed as D
    from core.training.checkpoint import seed_everything
    from core.training.run_folder import RunFolder
    from core.training.trainer import Trainer

    seed_everything(0)
    device = (cfg.data.get("trainer") or {}).get("device", "auto")
    dist = D.init_from_env(resolve_device(device if isinstance(device, str) else "auto").type)
    # inference needs no labels: a run's annotation files may be gone or stale
    p = build_pipeline(cfg, rank=dist.rank, world_size=dist.world_size, prepare="skip", context=context)
    return Trainer(p, RunFolder(folder, enabled=False), dist=dist)

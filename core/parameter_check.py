"""Checking a pipeline before anything trains: every stage's `trainable`, `frozen` and
`param_groups` pattern against the model's parameter names (`core validate`, and `core run`
before its first step), and everything a run's build would refuse, found the cheap way
(`check_build`: a sweep checks each of its variants so before its first run).

Apart from core/config/validation.py (which the pipeline's builder imports) because it
builds the pipeline and its training module itself.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from core.config.loading import LoadedConfig
from core.config.validation import pattern_miss

log = logging.getLogger(__name__)


def check_parameter_patterns(cfg: LoadedConfig, stages: list[Any], stage_losses: list[list[Any]],
                             module: Any) -> None:
    """Check every stage's `trainable`, `frozen` and `param_groups` pattern against the
    parameter names of `module` (backbone.*, head.*, losses.<i>.*: the trainer's
    `TrainingModule`) before anything trains, so that a typo in stage 2 does not wait for
    stage 1 to finish. A `param_groups` pattern must match a parameter that stage trains.
    Errors name the file, the key path, a did-you-mean and what names look like."""
    names = [n for n, _ in module.named_parameters()]
    loss_modules = list(module.losses)
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        _check_stages(cfg, stages, stage_losses, module, names, loss_modules)
    finally:  # select_parameters sets requires_grad: leave the module as it was
        for param, flag in flags:
            param.requires_grad_(flag)


def _check_stages(cfg: LoadedConfig, stages: list[Any], stage_losses: list[list[Any]], module: Any,
                  names: list[str], loss_modules: list[Any]) -> None:
    import fnmatch

    from core.training.optim import select_parameters

    for i, stage in enumerate(stages):
        key = f"stages.{i}"
        for field in ("trainable", "frozen"):
            for j, pattern in enumerate(getattr(stage, field) or []):
                if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                    raise cfg.error(f"{key}.{field}.{j}", f"stage '{stage.name}': {field} " + pattern_miss(pattern, names))
        active = {id(t.module) for t in stage_losses[i]}
        inactive = [f"losses.{m}.*" for m, loss in enumerate(loss_modules)
                    if id(loss) not in active and any(True for _ in loss.parameters())]
        try:
            trained = [n for n, _ in select_parameters(module, stage, also_frozen=inactive)]
        except ValueError as exc:
            raise cfg.error(key, str(exc)) from None
        for g, group in enumerate(stage.param_groups):
            for j, pattern in enumerate(group.get("params") or []):
                if any(fnmatch.fnmatchcase(n, pattern) for n in trained):
                    continue
                untrained = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
                where = f"{key}.param_groups.{g}.params.{j}"
                if untrained:
                    raise cfg.error(where, f"stage '{stage.name}': param_groups pattern '{pattern}' matches only "
                                           f"parameters this stage does not train (e.g. {untrained[0]}: frozen by "
                                           "the stage, by its component, or a loss the stage does not use).")
                raise cfg.error(where, f"stage '{stage.name}': param_groups " + pattern_miss(pattern, names))


def check_patterns_on_meta(cfg: LoadedConfig) -> bool:
    """Build the pipeline's model on the meta device (names and shapes, no memory, no
    initialisation: fast even for a ViT-B) and check every stage's patterns on it.
    Returns False, having checked nothing, when a component cannot be built on the meta
    device (it computes with its tensors at build): the caller then checks the real model."""
    try:
        p = _quiet_build(cfg, meta=True)
    except Exception:  # noqa: BLE001 - a real config error is raised again by the real build
        return False
    _check_patterns_of(cfg, p)
    return True


def check_build(cfg: LoadedConfig) -> None:
    """Raise what a run of `cfg` would refuse when it builds (bad input: exit code 2), before
    anything trains and cheaply: every component built from its keys, the model's parts on
    the meta device (names and shapes: no memory, no initialisation, no weights copied), no
    labeler run, no image file read; then every stage's parameter patterns checked, and the
    `prepare` steps' labelers and the `loggers:` trackers built from their keys (which a
    build that skips the labelling leaves out, and a run builds first thing).

    Where the meta device cannot decide, the pipeline is built for real instead (its model
    initialised, pretrained weights read), still without labelers or image reading: when a
    model part computes with its tensors at build (`.item()` of a meta tensor is an error),
    and when a constructor refused, which may be the meta device's doing (numpy of a meta
    tensor is a TypeError, which the builder tells as bad input). Every first-party
    component builds on the meta device, so only another plugin's takes that slow way; it
    is logged in one line naming the component (docs/writing-plugins.md says how to avoid
    it). A crash of that build is left to the run, which meets it as it did."""
    from core.exit_codes import exit_code
    from core.pipeline import MODEL_KINDS

    try:
        p = _quiet_build(cfg, meta=True)
    except Exception as exc:  # noqa: BLE001 - sorted below: a refusal, or the meta device cannot tell
        if exit_code(exc) == 2 and exc.__cause__ is None:
            raise  # a key refused before any constructor ran on the meta device
        kind = _failing_build(exc)[0]
        if kind is not None and kind not in MODEL_KINDS:  # a dataset, sampler, ...: not built on meta
            if exit_code(exc) == 2:
                raise  # e.g. a dataset root that is not there: the real build says the same
            return  # a crash is left to the run, which meets it as it did
        log.info(_not_on_meta(cfg, exc))
        try:
            p = _quiet_build(cfg, prepare="skip")
        except Exception as real:  # noqa: BLE001 - only bad input is this check's to raise
            if exit_code(real) == 2:
                raise
            return
    _check_patterns_of(cfg, p)
    _check_labelers_and_loggers(cfg, p)


def _check_labelers_and_loggers(cfg: LoadedConfig, p: Any) -> None:
    """Build (not run) each `prepare` step's labeler with the run's build context, and the
    `loggers:` trackers, as a training run's build does (core.prepare.run_prepare_steps,
    core.trackers.config.build_loggers): a misspelt labeler or tracker key in one variant
    of a sweep was found only when that variant's turn came."""
    from core.pipeline import _Builder
    from core.prepare import build_step_labeler, prepare_steps
    from core.trackers.config import build_loggers

    builder = _Builder(cfg, p.registry)
    for i, spec in enumerate(prepare_steps(cfg)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the run's own build shows them
            build_step_labeler(cfg, builder, p.ctx, i, spec)
    build_loggers(cfg, p.registry)


def _failing_build(exc: BaseException) -> tuple[str | None, str]:
    """(kind, "key: what (plugin P)") of the innermost component build in `exc`'s traceback;
    (None, "the pipeline") when the failure is outside any component's build."""
    from core.pipeline import _Builder

    kind, where = None, "the pipeline"
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is _Builder.build.__code__:
            local = tb.tb_frame.f_locals
            entry = local.get("entry")
            plugin = f" (plugin {entry.provider})" if getattr(entry, "provider", None) else ""
            kind, where = local.get("kind"), f"{local.get('key')}: {local.get('what')}{plugin}"
        tb = tb.tb_next
    return kind, where


def _not_on_meta(cfg: LoadedConfig, exc: BaseException) -> str:
    """One line: which component could not be built on the meta device, and why (the
    innermost component build in `exc`'s traceback; the builder's wrapper of a refusal
    gives way to its cause)."""
    where = _failing_build(exc)[1]
    reason = exc.__cause__ if exc.__cause__ is not None else exc
    text = " ".join(str(reason).split())
    text = text if len(text) <= 160 else text[:157] + "..."
    return (f"{cfg.file}: {where} cannot be built on the meta device ({type(reason).__name__}: {text}); "
            "checking by a real build instead (slow: model initialised, weights read). A constructor that "
            "reads tensor values cannot be checked cheaply: docs/writing-plugins.md")


def _quiet_build(cfg: LoadedConfig, **kwargs: Any) -> Any:
    """build_pipeline for a check. The real build that follows checks the images; this one
    needs only names and shapes. Its warnings are the real build's again (and torch's, one
    per tensor, that copying a pretrained file's values into meta parameters does nothing):
    the real build shows them."""
    from core.pipeline import build_pipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_pipeline(cfg, echo=lambda *_: None, image_check="off", **kwargs)


def _check_patterns_of(cfg: LoadedConfig, p: Any) -> None:
    from core.training.trainer import TrainingModule

    check_parameter_patterns(cfg, p.stages, p.stage_losses, TrainingModule(p.model, p.loss_modules()))

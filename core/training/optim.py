"""Per-stage parameter selection, optimizer and learning-rate schedule.

A stage trains the parameters whose names match `trainable` (all when null) minus those
matching `frozen` (glob patterns over `model.named_parameters()` names, e.g. `backbone.*`,
`*.bias`). The schedule is per optimisation step, so warmup is smooth even over one epoch.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Iterable

import torch
from torch import nn

from core.config.loading import LoadedConfig
from core.config.schema import OptimizerConfig, ParamGroupConfig, ScheduleConfig, StageConfig
from core.config.validation import build_dataclass, name_examples, pattern_miss


def check_stage(stage: StageConfig, cfg: LoadedConfig, key: str) -> None:
    """Validate a stage's optimizer and schedule sections (errors name file and key)."""
    build_dataclass(OptimizerConfig, stage.optimizer, cfg, f"{key}.optimizer", "the optimizer")
    build_dataclass(ScheduleConfig, stage.schedule, cfg, f"{key}.schedule", "the schedule")
    for i, group in enumerate(stage.param_groups):
        build_dataclass(ParamGroupConfig, group, cfg, f"{key}.param_groups.{i}", "a parameter group")
    if stage.epochs < 1:
        raise cfg.error(f"{key}.epochs", f"a stage needs at least 1 epoch, got {stage.epochs}")


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def stage_trains(name: str, stage: StageConfig) -> bool:
    """Whether the stage's `trainable` / `frozen` patterns leave parameter `name` trained."""
    return (stage.trainable is None or _matches(name, stage.trainable)) and not _matches(name, stage.frozen or [])


def select_parameters(module: nn.Module, stage: StageConfig,
                      also_frozen: Iterable[str] = ()) -> list[tuple[str, nn.Parameter]]:
    """Set requires_grad per the stage's patterns; return the trainable (name, parameter)s.

    Parameters a component froze itself (requires_grad False at build, e.g. BNNeck's bias)
    stay frozen: stage patterns only narrow what the components allow. `also_frozen` are
    patterns the trainer adds (the parameters of losses this stage does not use).
    """
    if not hasattr(module, "_core_trainable"):
        module._core_trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    allowed = module._core_trainable
    names = [n for n, _ in module.named_parameters()]
    for key, patterns in (("trainable", stage.trainable or []), ("frozen", stage.frozen)):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                raise ValueError(f"stage '{stage.name}': {key} " + pattern_miss(pattern, names))
    selected = []
    for name, param in module.named_parameters():
        on = name in allowed and stage_trains(name, stage) and not _matches(name, also_frozen)
        param.requires_grad_(on)
        if on:
            selected.append((name, param))
    if not selected:
        raise ValueError(f"stage '{stage.name}' trains no parameter: trainable={stage.trainable}, "
                         f"frozen={stage.frozen}; parameter names look like {', '.join(_examples(names))}")
    return selected


def _examples(names: list[str]) -> list[str]:
    """What parameter names look like, loss parameters included (see `name_examples`)."""
    return name_examples(names)


def param_groups(params: list[tuple[str, nn.Parameter]], stage: StageConfig) -> list[dict]:
    """Split the trainable parameters into optimizer groups: the stage's `param_groups`
    (first match wins) and the default group, each divided again by `no_weight_decay`.
    Every group records its `name` and `lr_mult` (shown in logs and checkpoints)."""
    opt = OptimizerConfig(**stage.optimizer)
    specs = [ParamGroupConfig(**g) for g in stage.param_groups]
    names = [n for n, _ in params]
    for i, spec in enumerate(specs):
        for pattern in spec.params:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                raise ValueError(f"stage '{stage.name}': param_groups.{i} "
                                 + pattern_miss(pattern, names, among="trainable parameter"))
    buckets: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for name, param in params:
        group = next((i for i, spec in enumerate(specs) if _matches(name, spec.params)), len(specs))
        no_decay = _matches(name, opt.no_weight_decay)
        buckets.setdefault((group, no_decay), []).append(param)
    groups = []
    for (index, no_decay), tensors in sorted(buckets.items()):
        spec = specs[index] if index < len(specs) else ParamGroupConfig(params=["*"])
        decay = opt.weight_decay if spec.weight_decay is None else spec.weight_decay
        groups.append({"params": tensors, "lr": opt.lr * spec.lr_mult, "lr_mult": spec.lr_mult,
                       "weight_decay": 0.0 if no_decay else decay,
                       "name": (f"group{index}" if index < len(specs) else "default") + ("/no_decay" if no_decay else "")})
    return groups


def build_optimizer(params: list[tuple[str, nn.Parameter]], stage: StageConfig) -> torch.optim.Optimizer:
    opt = OptimizerConfig(**stage.optimizer)
    groups = param_groups(params, stage)
    # the fused CUDA kernels: one launch for all parameters instead of a loop, and fp16's
    # gradient scaler hands them its inf flag instead of reading it (a host sync per step)
    fused = all(p.is_cuda and p.is_floating_point() for g in groups for p in g["params"]) or None
    if opt.name == "sgd":
        return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay,
                               nesterov=opt.nesterov, fused=fused)
    cls = torch.optim.Adam if opt.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=opt.lr, weight_decay=opt.weight_decay, betas=tuple(opt.betas), fused=fused)


def lr_factor(step: int, steps_per_epoch: int, epochs: int, schedule: ScheduleConfig, base_lr: float) -> float:
    """Multiplier of the base learning rate at optimisation step `step` (0-based)."""
    epoch = step / max(steps_per_epoch, 1)
    warmup = schedule.warmup_epochs
    if warmup > 0 and epoch < warmup:
        alpha = epoch / warmup
        return schedule.warmup_factor * (1 - alpha) + alpha
    if schedule.name == "constant":
        return 1.0
    if schedule.name == "step":
        return schedule.gamma ** sum(1 for m in schedule.milestones if epoch >= m)
    total = max(epochs - warmup, 1e-8)
    progress = min(max((epoch - warmup) / total, 0.0), 1.0)
    floor = schedule.min_lr / base_lr if base_lr > 0 else 0.0
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, stage: StageConfig, steps_per_epoch: int):
    schedule = ScheduleConfig(**stage.schedule)
    base_lr = OptimizerConfig(**stage.optimizer).lr
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, stage.epochs, schedule, base_lr))

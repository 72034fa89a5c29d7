"""The pipeline's own sections (top level, trainer, stages, optimizer, schedule) as
dataclasses, validated with the same signature rules as components."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

#: Top-level keys of a pipeline file, with what each holds (for error messages and docs).
TOP_LEVEL_KEYS: dict[str, str] = {
    "name": "run name (default: the file name)",
    "seed": "global seed (int)",
    "plugins": "local plugin files to load, relative to the pipeline file",
    "data": "train / test dataset lists and the transform",
    "prepare": "offline labelers run once before training, e.g. [{name: vge, out: labels/parts.npz, ...}]",
    "sampler": "{name: ..., params}",
    "backbone": "{name: ..., params}",
    "head": "{name: ..., params}",
    "losses": "list of {name: ..., weight: ..., params}",
    "evaluator": "{name: ..., params}",
    "stages": "list of training stages",
    "trainer": "device, amp, evaluation and checkpoint settings",
    "loggers": "experiment trackers, e.g. [tensorboard, wandb, mlflow] (docs/trackers.md)",
}


@dataclass
class OptimizerConfig:
    """`name`: sgd, adam or adamw. Betas/momentum are used by the optimizers that have them."""

    name: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    #: glob patterns of parameters trained without weight decay, e.g. ["*.bias", "*norm*"]
    no_weight_decay: list[str] = field(default_factory=list)


@dataclass
class ParamGroupConfig:
    """Parameters matching `params` (glob patterns) train at `lr_mult` x the stage's lr and
    with their own weight decay (null: the optimizer's). The first matching group wins; the
    rest form the default group. MUVA trains its new modules at 10x the base lr."""

    params: list[str]
    lr_mult: float = 1.0
    weight_decay: float | None = None


@dataclass
class ScheduleConfig:
    """Per-step learning-rate schedule: linear warmup from `warmup_factor` x lr over
    `warmup_epochs`, then cosine to `min_lr`, step decay by `gamma` at `milestones`
    (epochs), or constant."""

    name: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = 0.0
    warmup_factor: float = 0.01
    min_lr: float = 0.0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1


@dataclass
class StageConfig:
    """One training stage. `trainable` / `frozen` are glob patterns over parameter names
    (e.g. `backbone.*`, `*.bias`); `losses`, when given, replace the pipeline's losses for
    this stage. `forward: false` skips the model's forward in training steps: the losses
    get empty outputs and the batch (a stage that trains prompts against a memory, e.g.
    MUVA's stage 1, needs no image forward)."""

    name: str = "main"
    epochs: int = 1
    trainable: list[str] | None = None
    frozen: list[str] = field(default_factory=list)
    losses: list[dict[str, Any]] | None = None
    optimizer: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=dict)
    param_groups: list[dict[str, Any]] = field(default_factory=list)
    forward: bool = True


@dataclass
class TrainerConfig:
    """`device`: auto (cuda if available, else cpu), cpu, cuda, cuda:N (under torchrun each
    process takes cuda:LOCAL_RANK). `precision`: the model's forward under bf16 or fp16
    autocast on CUDA (fp16 with a gradient scaler), or fp32; losses always run in fp32
    outside autocast, and on the CPU training is fp32 whatever is set (autocast is slower
    there). `amp` is the older spelling (bf16 | none; true | false as users write it).
    `eval_precision`: the precision of
    evaluation embeddings (fp32 unless asked). `eval_every`: evaluate every N epochs (0: only before and after
    training). `eval_flip`: average each embedding with that of the mirrored image.
    `accumulate`: batches per optimisation step (gradient accumulation; each step gets the mean
    gradient of its batches, also the epoch's last step when it holds fewer). `ema`: decay of an
    exponential moving average of the weights, evaluated instead of the raw weights
    (e.g. 0.999; null: off). `compile`: torch.compile the training module (forward and
    losses; the same step as eager mode: tests/test_compile_matches_eager.py).
    `stop_after_steps`: save a checkpoint and stop after this many optimisation steps (to be
    continued with --resume). A NaN/Inf loss always stops the run. `worst_queries`: after
    the final evaluation, draw the ranked lists of the N lowest-AP queries of each test set
    into `<run>/worst-queries/` (evaluators see features only, so the trainer does it).
    `eval_features`: where evaluation embeddings are kept (issue 24): `memory` (float32
    tensors), `disk` (written batch by batch to a memory-mapped .npy under
    `<run>/eval-features/`, as `eval_features_dtype`, so a gallery of millions is never
    whole in RAM; the reid evaluator then searches it out of core, `search: blocked`, the
    same metrics), or `auto` (disk for a split of more than `eval_features_disk_above`
    items when the evaluator reads features out of core, else memory)."""

    device: str = "auto"
    precision: Literal["fp32", "bf16", "fp16"] | None = None
    amp: Literal["bf16", "none"] | bool | None = None
    eval_precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    eval_every: int = 0
    eval_before: bool = True
    batch_size_eval: int = 128
    num_workers: int = 2
    pin_memory: bool = True
    log_every: int = 10
    checkpoint_every_steps: int = 0
    stop_after_steps: int | None = None
    grad_clip: float | None = None
    accumulate: int = 1
    ema: float | None = None
    compile: bool = False
    channels_last: bool = False
    persistent_workers: bool = True
    sync_bn: bool = False
    find_unused_parameters: bool = False
    eval_flip: bool = False
    worst_queries: int = 0
    eval_features: Literal["auto", "memory", "disk"] = "auto"
    eval_features_dtype: Literal["float16", "float32"] = "float16"
    eval_features_disk_above: int = 1_000_000
    #: torch.use_deterministic_algorithms on (bit-identical GPU runs, slower kernels;
    #: core/training/determinism.py). CPU runs are bit-identical without it.
    deterministic: bool = False
    output_dir: str = "runs"
    progress: bool = True

    def training_precision(self) -> str:
        """`precision`, or what the older `amp` key says (bf16 when neither is set; `amp:
        false` is `none`, `amp: true` is `bf16`)."""
        amp_off = self.amp is not None and self.amp in ("none", False)
        if self.precision is not None:
            if self.amp is not None and amp_off != (self.precision == "fp32"):
                raise ValueError(f"trainer.amp={self.amp} contradicts trainer.precision={self.precision}; "
                                 "set precision only (fp32, bf16 or fp16)")
            return self.precision
        return "fp32" if amp_off else "bf16"


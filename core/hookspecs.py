"""The hooks a reid-core plugin can implement: one per purpose.

Registration hooks all have the shape `register_xxx(register)` (as in llm): the core
passes a callback and owns names, aliases and collisions. Call it as
`register(name, target, aliases=())`, where `target` is the component class or, to keep
start-up cheap, a lazy "module:attribute" string (nothing is imported until the
component is built). Trainer-event hooks let a plugin keep memories, schedules, logs.

Entry-point group: `reid_core`. A plugin's pyproject.toml names the module holding its
`@hookimpl` functions:

    [project.entry-points.reid_core]
    my_plugin = "my_plugin.hooks"
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    import argparse

hookspec = pluggy.HookspecMarker("reid_core")
hookimpl = pluggy.HookimplMarker("reid_core")

#: register(name, target, aliases=()) -> None
Register = Callable[..., None]


@hookspec
def register_datasets(register: Register) -> None:
    """Register dataset readers (kind `dataset`)."""


@hookspec
def register_samplers(register: Register) -> None:
    """Register batch samplers (kind `sampler`)."""


@hookspec
def register_backbones(register: Register) -> None:
    """Register backbones: images (+ conditioning) -> named features (kind `backbone`)."""


@hookspec
def register_heads(register: Register) -> None:
    """Register heads: features -> retrieval embedding + training outputs (kind `head`)."""


@hookspec
def register_losses(register: Register) -> None:
    """Register losses: outputs + batch -> scalar (kind `loss`)."""


@hookspec
def register_evaluators(register: Register) -> None:
    """Register evaluators: query/gallery embeddings -> metrics (kind `evaluator`)."""


@hookspec
def register_labelers(register: Register) -> None:
    """Register offline labelers that write per-image annotations (kind `labeler`)."""


@hookspec
def register_loggers(register: Register) -> None:
    """Register experiment trackers for the pipeline's `loggers:` list (kind `logger`)."""


@hookspec
def register_commands(subparsers: "argparse._SubParsersAction") -> None:
    """Add subcommands to the `core` CLI (set `func` with `parser.set_defaults`)."""


# Trainer events. `trainer` is the running `core.training.trainer.Trainer`; components
# may also define methods with these names, which the trainer calls on them directly.


@hookspec
def on_stage_start(trainer: Any, stage: Any) -> None:
    """A training stage is about to run its first epoch."""


@hookspec
def on_stage_end(trainer: Any, stage: Any) -> None:
    """A training stage finished its last epoch."""


@hookspec
def on_epoch_start(trainer: Any, epoch: int) -> None:
    """An epoch is about to start (after the sampler's `set_epoch`)."""


@hookspec
def on_epoch_end(trainer: Any, epoch: int) -> None:
    """An epoch ended (before periodic evaluation and checkpointing)."""


@hookspec
def on_step_end(trainer: Any, step: int, batch: Any, outputs: dict, losses: dict) -> None:
    """An optimisation step ended; `losses` holds the logged loss parts as floats."""


@hookspec
def on_evaluate_start(trainer: Any) -> None:
    """Evaluation is about to extract features."""


@hookspec
def on_evaluate_end(trainer: Any, metrics: dict) -> None:
    """Evaluation finished with `metrics` (flat, `<test set>/<metric>` keys)."""

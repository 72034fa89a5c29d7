"""What every reader of another code base's released weights returns.

A reader (one module per code base in this package: `fastreid`, `strong_baseline`,
`transreid`, `agw`, ...) turns that code base's checkpoint into the state dict of a
reid-core pipeline's model (`ReIDModel`: `backbone.*`, `head.*`), so that `core eval`
can evaluate published weights under our evaluator. A reader module defines:

- `NAME`: the `--from` value, e.g. "fastreid";
- `TITLE`: the code base, e.g. "fast-reid (JDAI-CV/fast-reid)";
- `recognise(state) -> bool`: True when the (unwrapped) state dict's names are its own;
- `convert(state, model) -> Converted`: their tensors under our names, for `model`
  (the pipeline's ReIDModel, built as the pipeline says; read its modules and shapes,
  never change it). A tensor that has no place in the model raises `WeightsMismatch`
  naming it; so does one of the model's tensors that no tensor of theirs fills (except
  what evaluation never reads, e.g. a classifier: list those in `left_out`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class WeightsMismatch(ValueError):
    """Released weights that do not fit the pipeline's model: one line naming the tensor
    (theirs or ours), the shapes, and what would fit."""


@dataclass
class Converted:
    #: our model's state-dict names (`backbone.*`, `head.*`) -> their tensors, converted
    state: dict[str, torch.Tensor]
    #: their names that are deliberately not used -> why (e.g. "the classifier: evaluation
    #: does not read it"; "fast-reid's pixel_mean: checked equal to the pipeline's norm")
    left_out: dict[str, str] = field(default_factory=dict)
    #: our names that keep their built values -> why (e.g. the classifier of a model whose
    #: released file holds none)
    kept: dict[str, str] = field(default_factory=dict)
    #: where the code base's own test protocol differs from the pipeline's, one sentence
    #: each (e.g. "fast-reid resizes test images bicubically; the pipeline bilinearly")
    notes: list[str] = field(default_factory=list)

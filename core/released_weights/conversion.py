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


def place_all(theirs: dict[str, torch.Tensor], mapping: dict[str, str], left_out: dict[str, str],
              own: dict[str, torch.Tensor], kept: dict[str, str], title: str) -> dict[str, torch.Tensor]:
    """Their tensors under our names, strictly: every tensor of theirs is mapped (`mapping`:
    theirs -> ours, one to one) or left out with why; every tensor of ours is filled or kept with
    why; each shape equal. The first misfit raises WeightsMismatch in one line naming both sides."""
    for name in theirs:
        if name not in mapping and name not in left_out:
            raise WeightsMismatch(f"{title}: the file's tensor {name} {tuple(theirs[name].shape)} has no place in the "
                                  "pipeline's model (a model variant this reader does not know)")
    out: dict[str, torch.Tensor] = {}
    placed: dict[str, str] = {}  # ours -> theirs: two of theirs on one of ours is a reader's fault
    for their, our in mapping.items():
        if our in placed:
            raise WeightsMismatch(f"{title}: the file's {placed[our]} and {their} both go to the pipeline's {our} "
                                  "(the reader maps two tensors onto one: a bug of the reader, please report it)")
        placed[our] = their
        if our not in own:
            raise WeightsMismatch(f"{title}: the file's {their} {tuple(theirs[their].shape)} goes to {our}, "
                                  "which the pipeline's model does not have")
        if tuple(theirs[their].shape) != tuple(own[our].shape):
            raise WeightsMismatch(f"{title}: the file's {their} is {tuple(theirs[their].shape)} but the pipeline's "
                                  f"{our} is {tuple(own[our].shape)}")
        out[our] = theirs[their].detach().clone().to(own[our].dtype)
    for our in own:
        if our not in out and our not in kept:
            raise WeightsMismatch(f"{title}: the pipeline's {our} {tuple(own[our].shape)} gets no tensor from the "
                                  "file (the file is of another model variant)")
    return out


def check_stem_relu(backbone: torch.nn.Module, theirs: bool, title: str, where: str) -> None:
    """Refuse a `resnet` backbone whose stem activation differs from their ResNet's (`theirs`:
    a ReLU after the stem's bn1, as torchvision's and fast-reid's; reid-strong-baseline's and
    the code copied from it have none): the same weights would compute another function."""
    ours = not isinstance(getattr(getattr(backbone, "model", None), "act1", None), torch.nn.Identity)
    if ours == theirs:
        return
    if theirs:
        raise WeightsMismatch(f"{title}: their ResNet has a ReLU after the stem's bn1 ({where}) but the pipeline's "
                              "backbone has none (stem_relu: false), so these weights would compute another function; "
                              "add --set backbone.stem_relu=true")
    raise WeightsMismatch(f"{title}: their ResNet has no ReLU after the stem's bn1 ({where}) but the pipeline's "
                          "backbone applies one, so these weights would compute another function; add --set "
                          "backbone.stem_relu=false")


def protocol_notes(data: dict, whose: str, *, interpolation: str, norm: str | None,
                   size: tuple[int, int] | None = None, metric: str = "cosine", metric_why: str = "",
                   flip: bool = False, rerank: bool = False, precision: str = "fp32") -> list[str]:
    """One note for each setting of the pipeline's test protocol (`data`: its resolved YAML)
    that differs from the code base's (`whose`: "fast-reid's", "their", ...), with the --set
    that matches it; nothing where they agree (a note is a difference, not a checklist).
    `norm` None: the code base's normalisation is checked elsewhere (e.g. against the file)."""
    from core.data.transforms import eval_resize

    transform = dict((data.get("data") or {}).get("transform") or {})
    evaluator = dict(data.get("evaluator") or {})
    trainer = dict(data.get("trainer") or {})
    ours_size = tuple(int(v) for v in transform.get("size", (256, 128)))
    rows = [  # (what, theirs, the pipeline's, the --set that matches theirs)
        ("test image size", None if size is None else f"{size[0]}x{size[1]}", f"{ours_size[0]}x{ours_size[1]}",
         None if size is None else f"data.transform.size=[{size[0]},{size[1]}]"),
        ("normalisation", norm, transform.get("norm", "imagenet"), f"data.transform.norm={norm}"),
        ("test resize", interpolation, eval_resize(transform), f"data.transform.test_interpolation={interpolation}"),
        ("ranking metric", metric, evaluator.get("metric", "cosine"), f"evaluator.metric={metric}"),
        ("re-ranking", rerank, bool(evaluator.get("rerank")), f"evaluator.rerank={str(rerank).lower()}"),
        ("flip averaging at test", flip, bool(trainer.get("eval_flip")), f"trainer.eval_flip={str(flip).lower()}"),
        ("test feature precision", precision, trainer.get("eval_precision", "fp32"),
         f"trainer.eval_precision={precision}"),
    ]
    return [f"{whose} {what} is {theirs}{metric_why if what == 'ranking metric' else ''}, the pipeline's {ours}: "
            f"--set {fix}" for what, theirs, ours, fix in rows if theirs is not None and theirs != ours]

"""fast-reid's released weights (JDAI-CV/fast-reid: its model zoo's BoT, AGW and SBS with
ResNet / IBN-a ResNet backbones) as the model of a reid-core `resnet` + `bnneck` pipeline.

Their `Baseline` holds `backbone.*` (a torchvision-named ResNet, IBN-a units as
`bn1.IN` / `bn1.BN`, non-local blocks as `NL_<stage>.<j>`), `heads.*` (the pooling's
`pool_layer.p` for learnt GeM, the BN neck, the classifier) and the input normalisation
`pixel_mean` / `pixel_std` on 0..255 pixels. Two layouts exist:

- v0 (fast-reid before 2020-09-10, the model zoo's files, v0.1.1 release):
  `heads.bnneck.*`, `heads.classifier.weight`, `pixel_mean` / `pixel_std` saved;
  the ResNet stem's max-pool padded by 1 until 2020-08-14 (our `stem_maxpool: padded`);
- v1 (since): `heads.bottleneck.0.*`, `heads.weight`; the pixel buffers are not saved
  (since 2021-03-23); the stem's max-pool unpadded in ceil mode (`stem_maxpool: ceil`).

Their blocks compute what ours do (checked against their code by embedding, see
docs/model-zoo.md): IBN-a puts IN on the first int(C/2) channels of `bn1` in every unit
of layer1-3; the non-local block is Wang et al.'s dot-product block with (in fast-reid)
one-channel theta/phi/g, after the last units of a stage, in order; GeM clamps at 1e-6.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from core.released_weights.conversion import Converted, WeightsMismatch, check_stem_relu

NAME = "fastreid"
TITLE = "fast-reid (JDAI-CV/fast-reid)"
#: the name prefixes of the first-party pipelines its files fit, and those pipelines in words
PIPELINES = (("bot_", "agw_", "sbs_"),
             "pipelines/sbs_<set>.yaml (SBS R50-ibn), bot_<set>.yaml (BoT R50) and agw_<set>.yaml (AGW R50), the "
             "last two with --set backbone.stem_relu=true (bot_msmt17 has it) and --set "
             "data.transform.test_interpolation=bicubic (as fast-reid resizes)")

#: fast-reid's MODEL.PIXEL_MEAN / PIXEL_STD (ImageNet's, on 0..255 pixels), all its configs
PIXEL_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
PIXEL_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
#: fast-reid's `GeneralizedMeanPooling` (AGW's POOL_LAYER in v1) has a fixed p, not saved
FIXED_GEM_P = 3.0
CLASSIFIER = ("heads.weight", "heads.classifier.")
NECKS = {"v0": "heads.bnneck.", "v1": "heads.bottleneck.0."}
PIXELS = ("pixel_mean", "pixel_std")


def recognise(state: dict[str, Any]) -> bool:
    """fast-reid's Baseline: `backbone.conv1.weight` and a `heads.*` BN neck."""
    return "backbone.conv1.weight" in state and any(k.startswith(tuple(NECKS.values())) for k in state)


def layout(state: dict[str, Any]) -> str:
    """"v0" (heads.bnneck) or "v1" (heads.bottleneck.0)."""
    for name, prefix in NECKS.items():
        if any(k.startswith(prefix) for k in state):
            return name
    raise WeightsMismatch("fast-reid weights: no BN neck (heads.bnneck.* or heads.bottleneck.0.*) in the file; "
                          "only WITH_BNNECK models (BoT, AGW, SBS) can be read")


def num_identities(state: dict[str, Any]) -> int | None:
    """The rows of their classifier (the training identities), for a pipeline whose head
    builds a classifier when its training data is not on disk; None without one."""
    for key in ("heads.weight", "heads.classifier.weight"):
        tensor = state.get(key)
        if isinstance(tensor, torch.Tensor) and tensor.dim() == 2:
            return int(tensor.shape[0])
    return None


def _target(name: str, era: str) -> str | None:
    """Our name for their tensor `name` (None: no rule places it)."""
    nl = re.match(r"backbone\.NL_(\d)\.(\d+)\.(.+)$", name)
    if nl:
        return f"backbone.non_local.layer{nl.group(1)}.{nl.group(2)}.{nl.group(3)}"
    if name.startswith("backbone."):
        return "backbone.model." + name[len("backbone."):]
    if name.startswith(NECKS[era]):
        return "head.bn." + name[len(NECKS[era]):]
    if name == "heads.pool_layer.p":
        return "backbone.pool.p"
    return None


def _why_no_place(name: str) -> str:
    """What a tensor without a place in our model is, and what would fit."""
    if ".se." in name:
        return "fast-reid's SE units (WITH_SE) have no place in backbone 'resnet'"
    if name.startswith("backbone.NL_"):
        return "a non-local block the pipeline does not build: set backbone.non_local to fast-reid's counts " \
               "([0, 2, 3, 0] for AGW / SBS R50)"
    if ".IN." in name or ".BN." in name:
        return "an IBN-a unit: the pipeline needs backbone.ibn=true"
    if name.startswith("heads.bottleneck.1.") or name.startswith("heads.bottleneck.0.weight"):
        return "a BN neck after an embedding conv (EMBEDDING_DIM > 0), which head 'bnneck' does not have"
    if name == "heads.pool_layer.p":
        return "GeM's learnt p (POOL_LAYER gempool / GeneralizedMeanPoolingP): the pipeline needs backbone.pooling " \
               "{name: gem}"
    if name.startswith("heads."):
        return "a head tensor of another fast-reid head (reduction / MGN branches), not a BN-neck baseline's"
    return "no tensor of the pipeline's model has this name (another backbone depth or kind?)"


def _shape_hint(target: str) -> str:
    if re.search(r"non_local\..+\.(g|theta|phi)\.", target) or re.search(r"non_local\..+\.W\.0\.weight", target):
        return "; their non-local width is the first dim of g.weight: set backbone.non_local_width to it"
    if ".bn1.IN." in target or ".bn1.BN." in target:
        return "; IBN-a halves differ"
    return " (another depth or width?)"


def convert(state: dict[str, torch.Tensor], model: nn.Module) -> Converted:
    """Their tensors under our names for `model` (a `resnet` backbone + `bnneck` head);
    strict both ways, shapes checked, their pooling / stem checked against ours."""
    era = layout(state)
    ours = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    left_out: dict[str, str] = {}
    kept: dict[str, str] = {}
    notes: list[str] = []
    rows = num_identities(state)
    for name, tensor in state.items():
        if name.startswith(CLASSIFIER) or name.startswith("heads.cls_layer."):
            left_out[name] = f"the classifier ({rows or '?'} training identities): evaluation does not read it"
            continue
        if name in PIXELS:
            left_out[name] = "fast-reid's input normalisation: checked equal to the pipeline's data.transform.norm"
            continue
        if not isinstance(tensor, torch.Tensor):
            raise WeightsMismatch(f"fast-reid weights: {name} is a {type(tensor).__name__}, not a tensor")
        target = _target(name, era)
        if target is None or target not in ours:
            raise WeightsMismatch(f"fast-reid's {name} {tuple(tensor.shape)} has no place in the pipeline's model"
                                  + (f" (it would be our {target})" if target else "") + f": {_why_no_place(name)}")
        mine = ours[target]
        if tuple(mine.shape) != tuple(tensor.shape) and not (target.endswith("pool.p") and tensor.numel() == 1
                                                             and mine.numel() == 1):
            raise WeightsMismatch(f"fast-reid's {name} is {tuple(tensor.shape)} but our {target} is "
                                  f"{tuple(mine.shape)}{_shape_hint(target)}")
        out[target] = tensor.detach().reshape(mine.shape).to(mine.dtype)
    for name in ours:
        if name in out:
            continue
        if name.endswith(".num_batches_tracked"):
            kept[name] = "BatchNorm's step count: evaluation does not read it"
        elif name.startswith("head.classifier."):
            kept[name] = "our classifier: evaluation does not read it (built with their classifier's row count)"
        elif name == "backbone.pool.p":
            kept[name] = _fixed_p(model)
        else:
            raise WeightsMismatch(f"our {name} {tuple(ours[name].shape)} is filled by no tensor of the fast-reid file "
                                  f"({era} layout): {_why_unfilled(name)}")
    notes += _pooling_notes(state, model) + _stem_notes(era, model) + _head_notes(model)
    return Converted(state=out, left_out=left_out, kept=kept, notes=notes)


def _fixed_p(model: nn.Module) -> str:
    """Our GeM p when their file holds none: fast-reid's fixed-p GeM (p = 3) only."""
    p = float(model.backbone.pool.p.detach().reshape(()))
    if p != FIXED_GEM_P:
        raise WeightsMismatch(f"our backbone.pool.p is {p:g} but the fast-reid file holds no learnt p: its pooling is "
                              f"fast-reid's GeneralizedMeanPooling with p = {FIXED_GEM_P:g} (AGW); set "
                              f"backbone.pooling.p={FIXED_GEM_P:g}")
    return f"GeM p = {FIXED_GEM_P:g}: fast-reid's GeneralizedMeanPooling (not learnt, not saved) has that value"


def _why_unfilled(name: str) -> str:
    if name.startswith("backbone.non_local."):
        return "the pipeline builds non-local blocks the file lacks (set backbone.non_local to [0, 0, 0, 0] for BoT)"
    if ".IN." in name or ".BN." in name:
        return "the pipeline builds IBN-a units the file lacks (set backbone.ibn=false)"
    if name.startswith("head."):
        return "a head tensor fast-reid's BN neck does not have (use head 'bnneck')"
    return "another depth or architecture?"


def _pooling_notes(state: dict[str, Any], model: nn.Module) -> list[str]:
    pool = getattr(model.backbone, "pool", None)
    kind = getattr(pool, "how", type(pool).__name__)
    if "heads.pool_layer.p" in state or kind == "GeneralizedMeanPooling":
        return []
    return [f"the file does not say fast-reid's pooling when it has no learnt p; the pipeline's ({kind}; "
            "avg is fast-reid's GlobalAvgPool of BoT) is taken to be the one it was trained with"]


def _stem_notes(era: str, model: nn.Module) -> list[str]:
    """fast-reid's stem: a ReLU after bn1 in every version; its max-pool changed on
    2020-08-14 (9c667d1), and v1 files are newer."""
    pool = getattr(getattr(model.backbone, "model", None), "maxpool", None)
    if not isinstance(pool, nn.MaxPool2d):
        raise WeightsMismatch("fast-reid weights need backbone 'resnet' (a ResNet stem max-pool); the pipeline's "
                              f"backbone is {type(model.backbone).__name__}")
    check_stem_relu(model.backbone, True, "fast-reid weights", "fastreid/modeling/backbones/resnet.py, every version")
    ceil = bool(pool.ceil_mode) and pool.padding in (0, (0, 0))
    if era == "v1" and not ceil:
        raise WeightsMismatch("fast-reid's v1 layout (heads.bottleneck) comes from its code since 2020-09, whose "
                              "ResNet stem max-pools without padding in ceil mode; the pipeline's pads by 1, which "
                              "shifts every window: add --set backbone.stem_maxpool=ceil")
    if era == "v0" and ceil:
        return ["the v0 layout (heads.bnneck) was written by fast-reid before 2020-09-10, with a padded stem max-pool "
                "until 2020-08-14 (the model zoo's v0.1.1 files); the pipeline's is ceil-mode: "
                "--set backbone.stem_maxpool=padded unless the file is from those four weeks"]
    return []


def _head_notes(model: nn.Module) -> list[str]:
    notes = []
    head = model.head
    if getattr(head, "embedding", "bn") != "bn":
        notes.append("fast-reid evaluates the feature after the BN neck (its head returns it in eval whatever "
                     "NECK_FEAT says; NECK_FEAT picks the triplet loss's feature); the pipeline evaluates the one "
                     "before it: --set head.embedding=bn for fast-reid's protocol")
    strided = model.backbone.model.layer4[0].conv2
    if tuple(strided.stride) != (1, 1):
        notes.append("fast-reid's model zoo configs use LAST_STRIDE 1; the pipeline's last stride is 2 "
                     "(--set backbone.last_stride=1), which the file cannot say")
    return notes


def check_pipeline(state: dict[str, Any], data: dict[str, Any]) -> list[str]:
    """The pipeline's test protocol (`data`: its resolved YAML) against fast-reid's: their
    saved pixel_mean / pixel_std must equal the pipeline's normalisation x 255 (else
    WeightsMismatch); the rest are notes."""
    from core.data.transforms import NORMS, eval_resize

    transform = dict((data.get("data") or {}).get("transform") or {})
    norm = transform.get("norm", "imagenet")
    mean, std = (tuple(v * 255 for v in part) for part in NORMS.get(norm, ((0.0,) * 3, (1.0,) * 3)))
    notes = []
    for key, ours in zip(PIXELS, (mean, std)):
        theirs = state.get(key)
        if theirs is None:
            continue
        theirs = torch.as_tensor(theirs)
        values = tuple(float(v) for v in theirs.reshape(-1))
        if len(values) != 3 or any(abs(a - b) > _tolerance(theirs.dtype, b) for a, b in zip(values, ours)):
            raise WeightsMismatch(f"fast-reid's {key} is {_fmt(values)} (0..255 pixels) but the pipeline's "
                                  f"data.transform.norm '{norm}' is {_fmt(ours)}; the model was trained on other "
                                  "inputs: set data.transform.norm to the matching one")
    if not any(k in state for k in PIXELS) and norm != "imagenet":
        notes.append(f"the file holds no pixel_mean / pixel_std; fast-reid's default is ImageNet's, the "
                         f"pipeline's norm is '{norm}': --set data.transform.norm=imagenet")
    interpolation = eval_resize(transform)
    if interpolation != "bicubic":
        notes.append(f"fast-reid resizes test images bicubically (T.Resize interpolation=3); the pipeline: "
                     f"{interpolation}: --set data.transform.test_interpolation=bicubic")
    evaluator = dict(data.get("evaluator") or {})
    metric = evaluator.get("metric", "cosine")
    if metric != "cosine":
        notes.append(f"fast-reid's TEST.METRIC is cosine; the pipeline's metric is {metric}: "
                     "--set evaluator.metric=cosine")
    if evaluator.get("rerank"):
        notes.append("fast-reid tests without re-ranking (TEST.RERANK.ENABLED False); the pipeline re-ranks")
    if (data.get("trainer") or {}).get("eval_flip"):
        notes.append("fast-reid tests without flip (TEST.FLIP.ENABLED False); the pipeline averages the flipped "
                     "image's embedding (trainer.eval_flip)")
    return notes


def _tolerance(dtype: torch.dtype, value: float) -> float:
    """How far a saved statistic may lie from ours and still be ours: 1e-3, or the spacing of
    the file's float type at `value` (a file saved in float16 holds 123.675 as 123.6875,
    in bfloat16 as 123.5: ImageNet's all the same; a grey level off is still refused)."""
    spacing = torch.finfo(dtype).eps * abs(value) if dtype.is_floating_point else 0.0
    return max(1e-3, spacing)


def _fmt(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"

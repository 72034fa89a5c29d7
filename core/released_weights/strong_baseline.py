"""reid-strong-baseline's weights (michuanhaohao/reid-strong-baseline, Luo et al. 2019, "Bag of
Tricks") read into a pipeline's `resnet` backbone and `bnneck` head.

Their model (modeling/baseline.py, `Baseline` with neck 'bnneck'): `base.*` (their ResNet,
torchvision's names; or resnet50_ibn_a's, with `bn1.IN` / `bn1.BN` in layer1-3 and an unused
`fc`), average pooling, `bottleneck` (the BNNeck, bias frozen at its value) and `classifier`.

Their plain ResNet (modeling/backbones/resnet.py) has no ReLU after the stem's bn1 (the
"add missed relu" lines are commented out, since 2019-03-25; the first version had none
either), so conv1 -> bn1 -> maxpool feeds layer1 unrectified; our `resnet` backbone applies
timm's act1 there, another function of the same weights: such files are refused unless the
pipeline sets `backbone.stem_relu: false` (the stem activation is then an identity), as
bot_market1501 does. Their resnet50_ibn_a has the ReLU and converts with `stem_relu: true`.
(TransReID's own ResNet-50 baseline, model/backbones/resnet.py, is the same code, also without the
stem ReLU, and its files have these names: they are read, and refused, the same way.)

Their released files (resnet50_model_120.pth, saved by ignite's ModelCheckpoint) are whole
pickled modules (`torch.save(model)`), which cannot be read with weights_only=True and are
never unpickled here: re-save `model.state_dict()` with your own copy of their code first.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from core.released_weights.conversion import (Converted, WeightsMismatch, check_stem_relu, place_all,
                                              protocol_notes)

NAME = "strong_baseline"
TITLE = "reid-strong-baseline (michuanhaohao/reid-strong-baseline)"
#: the name prefixes of the first-party pipelines its files fit, and those pipelines in words
PIPELINES = (("bot_",), "pipelines/bot_<set>.yaml (ResNet-50; resnet50_ibn_a with --set backbone.ibn=true "
                        "--set backbone.stem_relu=true)")
#: what to say of a file that holds a pickled module rather than a state dict
PICKLED = (f"{TITLE} saves whole pickled modules (ignite's ModelCheckpoint: torch.save(model)), which are not "
           "read here (weights_only=True); load it with their code in your own environment and save "
           "`torch.save(model.state_dict(), 'state.pth')`, then pass that file")


def recognise(state: dict[str, torch.Tensor]) -> bool:
    """Their names: a ResNet under `base.` (base.conv1, base.layer1) with `bottleneck.` and no ViT; not the AGW
    authors' Baseline (same names plus non-local blocks `base.NL_*` or GeM's `global_pool.p`: reader agw)."""
    keys = {k[7:] if k.startswith("module.") else k for k in state}
    agw = "global_pool.p" in keys or any(k.startswith("base.NL_") for k in keys)
    return not agw and {"base.conv1.weight", "base.layer1.0.conv1.weight", "bottleneck.weight"} <= keys


def num_identities(state: dict[str, torch.Tensor]) -> int | None:
    """The rows of their (global) classifier, the training identities, for a pipeline whose
    head builds a classifier when its training data is not on disk; None without one."""
    tensor = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}.get("classifier.weight")
    return int(tensor.shape[0]) if isinstance(tensor, torch.Tensor) and tensor.dim() == 2 else None


def convert(state: dict[str, torch.Tensor], model: nn.Module) -> Converted:
    theirs = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
    backbone, head = model.backbone, model.head
    if not hasattr(backbone, "forward_map") or not hasattr(getattr(backbone, "model", None), "layer4"):
        raise WeightsMismatch(f"{TITLE}: the pipeline's backbone is {type(backbone).__name__}; these weights need "
                              "`backbone: {name: resnet, ...}`")
    if "bottleneck.weight" not in theirs:
        raise WeightsMismatch(f"{TITLE}: the file has no bottleneck.* (a model with neck 'no'); the pipeline's "
                              "bnneck head needs the BNNeck's tensors")
    if not hasattr(head, "bn"):
        raise WeightsMismatch(f"{TITLE}: the pipeline's head is {type(head).__name__}; these weights need "
                              "`head: {name: bnneck}`")
    ibn = any(".IN." in k for k in theirs)
    check_stem_relu(backbone, ibn, TITLE, "their resnet50_ibn_a has one" if ibn else
                    "modeling/backbones/resnet.py, 'add missed relu' commented out; their resnet50_ibn_a has one")
    mapping: dict[str, str] = {}
    left_out: dict[str, str] = {}
    for name in theirs:
        place_baseline_tensor(name, mapping, left_out)
    return place_baseline(theirs, mapping, left_out, model, TITLE, _notes(backbone, head))


def place_baseline_tensor(name: str, mapping: dict[str, str], left_out: dict[str, str]) -> None:
    """Their Baseline's own names (modeling/baseline.py), shared by the code copied from it (the
    AGW authors'): `base.*` ResNet -> backbone.model, `bottleneck` -> the BNNeck, the ImageNet
    `fc` and the training classifier left out; any other name is left for the caller."""
    if name.startswith("base.fc."):
        left_out[name] = "their ResNet's ImageNet classifier, never called by their ReID model"
    elif re.match(r"^base\.(conv1|bn1|layer[1-4])\.", name):
        mapping[name] = f"backbone.model.{name[5:]}"
    elif name.startswith("bottleneck."):
        mapping[name] = f"head.bn.{name[len('bottleneck.'):]}"
    elif name.startswith("classifier."):
        left_out[name] = "the training classifier: evaluation does not read it"


def place_baseline(theirs: dict[str, torch.Tensor], mapping: dict[str, str], left_out: dict[str, str],
                   model: nn.Module, title: str, notes: list[str]) -> Converted:
    """The mapped tensors placed strictly in `model` (place_all), our classifier kept as built."""
    own = model.state_dict()
    kept = {k: "the training classifier: evaluation does not read it" for k in own if k.startswith("head.classifier.")}
    return Converted(state=place_all(theirs, mapping, left_out, own, kept, title), left_out=left_out, kept=kept,
                     notes=notes)


def last_stride(backbone: nn.Module) -> int:
    """The stride of the resnet backbone's last stage (their configs' LAST_STRIDE)."""
    unit = backbone.model.layer4[0]
    return (unit.conv2 if hasattr(unit, "conv3") else unit.conv1).stride[0]


def _notes(backbone: nn.Module, head: nn.Module) -> list[str]:
    """Their model's settings that the file does not record, where the pipeline's differ."""
    stride = last_stride(backbone)
    notes = []
    if stride != 1:
        notes.append(f"the last stride is not in the file (their BoT configs: LAST_STRIDE 1); the pipeline's is "
                     f"{stride}: --set backbone.last_stride=1")
    if getattr(backbone.pool, "how", None) != "avg":  # their `gap`: nn.AdaptiveAvgPool2d(1)
        pooling = type(backbone.pool).__name__ + (f" ({backbone.pool.how})" if hasattr(backbone.pool, "how") else "")
        notes.append(f"they average-pool the last map; the pipeline pools with {pooling}: --set backbone.pooling=avg")
    if head.embedding != "bn":
        notes.append("they test on the post-BN feature (TEST.NECK_FEAT 'after'); the pipeline's head uses "
                     f"embedding: {head.embedding}: --set head.embedding=bn")
    return notes


def check_pipeline(state: dict[str, torch.Tensor], data: dict) -> list[str]:
    """The pipeline's test protocol (`data`: its resolved YAML) against theirs (data/transforms/build.py's
    test transform, utils/reid_metric.py, config/defaults.py): a note where they differ."""
    return protocol_notes(data, "their", norm="imagenet", interpolation="bilinear", metric="cosine",
                          metric_why=" (L2-normalised features, TEST.FEAT_NORM 'yes', by Euclidean distance: the "
                          "ranking of cosine similarity)")

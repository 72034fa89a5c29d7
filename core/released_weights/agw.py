"""The AGW authors' weights (mangye16/ReID-Survey, Ye et al. 2021, "Deep Learning for Person
Re-identification: A Survey and Outlook") read into a pipeline's `resnet` backbone and `bnneck` head.

Their model (modeling/baseline.py, `Baseline`; configs/AGW_baseline.yml: MODEL.NAME 'resnet50_nl',
GENERALIZED_MEAN_POOL 'on'): `base.*` (modeling/backbones/resnet_nl.py, `ResNetNL`: torchvision's
ResNet names plus `NL_2.{0,1}` and `NL_3.{0,1,2}`), `global_pool.p` (GeM with learnt p, shape (1,),
eps 1e-6), `bottleneck` (the BNNeck, bias frozen) and `classifier`. In eval mode `Baseline.forward`
returns the post-BN feature; there is no NECK_FEAT option.

Where their function meets ours, checked here (and against their code: the header of
tests/fixtures/released_weights/agw_check_against_their_code.py):
- non-local blocks: `Non_local(C)` has g / theta / phi (1x1 convs with bias, C -> 1 channel, since
  inter_channels = reduc_ratio // reduc_ratio) and W = conv(1 -> C) + BatchNorm2d, z = W(y) + x with
  y = (theta^T phi / N) g: core.models.non_local.NonLocalBlock with `non_local_width: 1`. `NL_s[j]`
  runs after unit `NL_s_idx[j]` of stage s, NL_s_idx = sorted(last k units): our blocks[j] after unit
  units - k + j, the same order;
- the stem: `ResNetNL` (like their plain ResNet, copied from reid-strong-baseline) has no ReLU after
  bn1 ("add missed relu" commented out), so conv1 -> bn1 -> maxpool (padding 1): refused unless the
  pipeline sets `backbone.stem_relu: false`; their resnet50_ibn_a has the ReLU;
- GeM: clamp(min=eps).pow(p), average, pow(1/p), as core.models.pooling.GeneralizedMeanPooling;
  their p is a (1,) tensor, ours a scalar; the pipeline's eps must be theirs (1e-6). Without
  `global_pool.p` (GENERALIZED_MEAN_POOL 'off') they average-pool and the pipeline must too.

Their released files (market1501_AGW.pth, ...; their load_param takes a state dict or a whole pickled module)
are read only as state dicts (weights_only=True): re-save a pickled one with `model.state_dict()` in their code.

Files of their Baseline with neither non-local blocks nor GeM are reid-strong-baseline's model
(`--from strong_baseline` reads them; `auto` gives them to it).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from core.released_weights.conversion import Converted, WeightsMismatch, check_stem_relu, protocol_notes
from core.released_weights.strong_baseline import last_stride, place_baseline, place_baseline_tensor

NAME = "agw"
TITLE = "ReID-Survey's AGW (mangye16/ReID-Survey)"
#: the name prefixes of the first-party pipelines its files fit, and those pipelines in words
PIPELINES = (("agw_",), "pipelines/agw_<set>.yaml")
#: their GeneralizedMeanPoolingP's eps (modeling/layer/gem_pool.py)
GEM_EPS = 1e-6
_NL = re.compile(r"^base\.NL_([1-4])\.(\d+)\.")


def _unprefixed(state: dict[str, Any]) -> dict[str, Any]:
    return {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}


def recognise(state: dict[str, Any]) -> bool:
    """Their Baseline's names (`base.conv1`, `bottleneck`) with what reid-strong-baseline's lacks:
    non-local blocks (`base.NL_*`) or the learnt GeM exponent (`global_pool.p`)."""
    keys = set(_unprefixed(state))
    ours = "global_pool.p" in keys or any(_NL.match(k) for k in keys)
    return ours and "base.conv1.weight" in keys and "bottleneck.weight" in keys


def num_identities(state: dict[str, Any]) -> int | None:
    """The rows of their classifier (the training identities); None without one."""
    tensor = _unprefixed(state).get("classifier.weight")
    return int(tensor.shape[0]) if isinstance(tensor, torch.Tensor) and tensor.dim() == 2 else None


def _their_non_local(theirs: dict[str, torch.Tensor]) -> tuple[list[int], str | None]:
    """Blocks per stage in the file, and the name of one block's g weight (its rows: the embedding width)."""
    counts = [0, 0, 0, 0]
    g_name = None
    for name in theirs:
        found = _NL.match(name)
        if found:
            stage, index = int(found.group(1)), int(found.group(2))
            counts[stage - 1] = max(counts[stage - 1], index + 1)
            if name.endswith(".g.weight") and g_name is None:
                g_name = name
    return counts, g_name


def _check_model(theirs: dict[str, torch.Tensor], backbone: nn.Module, head: nn.Module) -> None:
    """One line for each way the pipeline's model would compute another function with their tensors."""
    if not hasattr(backbone, "forward_map") or not hasattr(getattr(backbone, "model", None), "layer4"):
        raise WeightsMismatch(f"{TITLE}: the pipeline's backbone is {type(backbone).__name__}; these weights need "
                              "`backbone: {name: resnet, ...}` (as pipelines/agw_market1501.yaml)")
    if "bottleneck.weight" not in theirs:
        raise WeightsMismatch(f"{TITLE}: the file has no bottleneck.* (their BNNeck); the pipeline's bnneck head "
                              "needs it")
    if not hasattr(head, "bn"):
        raise WeightsMismatch(f"{TITLE}: the pipeline's head is {type(head).__name__}; these weights need "
                              "`head: {name: bnneck}`")
    ibn = any(".IN." in k for k in theirs)
    check_stem_relu(backbone, ibn, TITLE, "their resnet50_ibn_a has one" if ibn else
                    "modeling/backbones/resnet_nl.py and resnet.py, 'add missed relu' commented out")
    pool = backbone.model.maxpool
    if not isinstance(pool, nn.MaxPool2d) or pool.ceil_mode or pool.padding not in (1, (1, 1)):
        raise WeightsMismatch(f"{TITLE}: their stem max-pool is MaxPool2d(3, 2, padding=1) but the pipeline's is "
                              f"{pool}; add --set backbone.stem_maxpool=padded")
    counts, g_name = _their_non_local(theirs)
    ours = [len(backbone.non_local[f"layer{s}"]) if f"layer{s}" in backbone.non_local else 0 for s in (1, 2, 3, 4)]
    if counts != ours:
        raise WeightsMismatch(f"{TITLE}: the file has non-local blocks {counts} (per stage) but the pipeline's "
                              f"backbone has {ours}; add --set backbone.non_local=[{','.join(map(str, counts))}]")
    if g_name is not None:
        width, block = int(theirs[g_name].shape[0]), next(iter(backbone.non_local.values()))[0]
        if block.g.out_channels != width:
            raise WeightsMismatch(f"{TITLE}: the file's non-local blocks embed in {width} channel(s) ({g_name} "
                                  f"{tuple(theirs[g_name].shape)}) but the pipeline's in {block.g.out_channels}; "
                                  f"add --set backbone.non_local_width={width}")
    gem = "global_pool.p" in theirs
    pooling = backbone.pool
    if gem and not hasattr(pooling, "p"):
        raise WeightsMismatch(f"{TITLE}: the file has global_pool.p (GeM pooling) but the pipeline pools with "
                              f"{_pooling_name(pooling)}; add --set backbone.pooling=gem")
    if gem and abs(float(getattr(pooling, "eps", GEM_EPS)) - GEM_EPS) > 1e-12:
        raise WeightsMismatch(f"{TITLE}: their GeM clamps at eps {GEM_EPS} but the pipeline's at {pooling.eps}; "
                              f"add --set backbone.pooling.eps={GEM_EPS}")
    if not gem and getattr(pooling, "how", None) != "avg":
        raise WeightsMismatch(f"{TITLE}: the file has no global_pool.p, so they average-pool "
                              f"(GENERALIZED_MEAN_POOL 'off'), but the pipeline pools with {_pooling_name(pooling)}; "
                              "add --set backbone.pooling=avg")


def _pooling_name(pooling: nn.Module) -> str:
    return getattr(pooling, "how", None) or type(pooling).__name__


def convert(state: dict[str, torch.Tensor], model: nn.Module) -> Converted:
    theirs = _unprefixed(state)
    backbone, head = model.backbone, model.head
    _check_model(theirs, backbone, head)
    if "global_pool.p" in theirs:
        p = theirs["global_pool.p"]
        if p.numel() != 1:
            raise WeightsMismatch(f"{TITLE}: the file's global_pool.p is {tuple(p.shape)}, not GeM's one exponent")
        theirs = {**theirs, "global_pool.p": p.reshape(backbone.pool.p.shape)}
    mapping: dict[str, str] = {}
    left_out: dict[str, str] = {}
    for name in theirs:  # their Baseline's names (BoT's code) plus the non-local blocks and GeM's p
        found = _NL.match(name)
        if found:
            mapping[name] = f"backbone.non_local.layer{found.group(1)}.{found.group(2)}.{name[found.end():]}"
        elif name == "global_pool.p":
            mapping[name] = "backbone.pool.p"
        else:
            place_baseline_tensor(name, mapping, left_out)
    return place_baseline(theirs, mapping, left_out, model, TITLE, _notes(backbone, head))


def _notes(backbone: nn.Module, head: nn.Module) -> list[str]:
    """Their model's settings that the file does not record, where the pipeline's may differ."""
    stride = last_stride(backbone)
    notes = []
    if stride != 1:
        notes.append(f"the last stride is not in the file (their config: MODEL.LAST_STRIDE 1); the pipeline's is "
                     f"{stride}: --set backbone.last_stride=1")
    if head.embedding != "bn":
        notes.append(f"their Baseline tests on the post-BN feature (eval mode returns the bottleneck's output); the "
                     f"pipeline's head uses embedding: {head.embedding}: --set head.embedding=bn")
    return notes


def check_pipeline(state: dict[str, Any], data: dict[str, Any]) -> list[str]:
    """The pipeline's test protocol (`data`: its resolved YAML) against theirs (data/transforms.py's eval
    transform, utils/reid_metric.py's r1_mAP_mINP, configs/AGW_baseline.yml): a note where they differ."""
    return protocol_notes(data, "their", size=(256, 128), norm="imagenet", interpolation="bilinear",
                          metric="cosine", metric_why=" (L2-normalised features, TEST.FEAT_NORM 'on', by Euclidean "
                          "distance: the ranking of cosine similarity)")

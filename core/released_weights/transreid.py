"""TransReID's released weights (damo-cv/TransReID, He et al. 2021) read into a pipeline's
`transreid` backbone and `jpm` head (or `bnneck` head without JPM).

Their files are `torch.save(model.state_dict())` of `build_transformer_local` (JPM) or
`build_transformer` (model/make_model.py): `base.*` (their ViT, model/backbones/
vit_pytorch.py: timm's names for cls_token, pos_embed, patch_embed.proj, blocks, norm; plus
`sie_embed` and an unused ImageNet-sized `fc`), with JPM `b1` (the global branch's own copy
of the last layer and norm) and `b2` (the part branch's), `bottleneck`, `bottleneck_1..4`
(the BNNecks), `classifier`, `classifier_1..4`.

With JPM their ViT stops before its last layer (`local_feature`): `base.blocks.<last>` and
`base.norm` are never run; `b1` takes their place (our `model.blocks[-1]`, `model.norm`).
Their function, checked against ours: LayerNorm eps 1e-6, the fused qkv (3, heads, dim)
layout, scale head_dim^-0.5, exact GELU; SIE adds lambda * S[camera * N_V + view] (camera
or view alone when only one is on) after the position embeddings; JPM shifts, shuffles and
cuts the patches the same way at test as in training (no randomness); the test feature is
[g, p_1/4, ..., p_4/4] of the pre-BN (NECK_FEAT 'before') or post-BN features.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from core.released_weights.conversion import Converted, WeightsMismatch, place_all, protocol_notes

NAME = "transreid"
TITLE = "TransReID (damo-cv/TransReID)"
#: the name prefixes of the first-party pipelines its files fit, and those pipelines in words
PIPELINES = (("transreid_",), "pipelines/transreid_<set>.yaml")

#: heads per width of the ViTs their factory builds (vit_base / deit_base: 768 -> 12; deit_small: 384 -> 6)
_HEADS = {768: 12, 384: 6}
_CLASSIFIER = re.compile(r"^classifier(_\d+)?\.")


def recognise(state: dict[str, torch.Tensor]) -> bool:
    """TransReID's names: a ViT under `base.` (patch_embed, pos_embed) with `bottleneck.`."""
    keys = {k[7:] if k.startswith("module.") else k for k in state}
    return "base.pos_embed" in keys and "base.patch_embed.proj.weight" in keys and "bottleneck.weight" in keys


def num_identities(state: dict[str, torch.Tensor]) -> int | None:
    """The rows of their (global) classifier, the training identities, for a pipeline whose
    head builds a classifier when its training data is not on disk; None without one."""
    tensor = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}.get("classifier.weight")
    return int(tensor.shape[0]) if isinstance(tensor, torch.Tensor) and tensor.dim() == 2 else None


def num_cameras(state: dict[str, torch.Tensor], data: dict) -> int | None:
    """The cameras of their SIE table (`base.sie_embed`: cameras x views rows, camera-major;
    views from the pipeline's `backbone.num_views` when its `sie` lists "view"), for a build
    without training data; None without SIE (their file or the pipeline's `backbone.num_cameras`
    then decides)."""
    table = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}.get("base.sie_embed")
    if not isinstance(table, torch.Tensor):
        return None
    backbone = data.get("backbone") or {}
    views = int(backbone.get("num_views") or 1) if "view" in (backbone.get("sie") or ["camera"]) else 1
    return int(table.shape[0]) // max(views, 1)


def _check_function(backbone: nn.Module, dim: int) -> None:
    """Refuse a model whose ViT computes another function than TransReID's with the same
    tensors: other LayerNorm eps, other head count, other attention scale or GELU."""
    vit = backbone.model
    for name, module in backbone.named_modules():
        if isinstance(module, nn.LayerNorm) and module.eps != 1e-6:
            raise WeightsMismatch(f"{TITLE}: the pipeline's LayerNorm backbone.{name} has eps {module.eps}; "
                                  "TransReID's ViT uses 1e-6")
    attn = vit.blocks[0].attn
    heads = _HEADS.get(dim)
    if heads is not None and attn.num_heads != heads:
        raise WeightsMismatch(f"{TITLE}: the pipeline's ViT has {attn.num_heads} attention heads at width {dim}; "
                              f"TransReID's has {heads}")
    if abs(float(attn.scale) - (dim // attn.num_heads) ** -0.5) > 1e-12:
        raise WeightsMismatch(f"{TITLE}: the pipeline's attention scale is {attn.scale}; TransReID's base/deit "
                              "ViTs use head_dim^-0.5 (their old `vit_small` with qk_scale 768^-0.5 is not supported)")
    act = vit.blocks[0].mlp.act
    if not isinstance(act, nn.GELU) or act.approximate != "none":
        raise WeightsMismatch(f"{TITLE}: the pipeline's MLP activation is {act}; TransReID's is nn.GELU() (exact)")


def _strip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}


def convert(state: dict[str, torch.Tensor], model: nn.Module) -> Converted:
    theirs = _strip(state)
    backbone, head = model.backbone, model.head
    if not (hasattr(backbone, "sie_embed") and hasattr(backbone, "jpm_block")):
        raise WeightsMismatch(f"{TITLE}: the pipeline's backbone is {type(backbone).__name__}; TransReID's weights "
                              "need `backbone: {name: transreid, ...}`")
    own = model.state_dict()
    depth, dim = len(backbone.model.blocks), int(backbone.model.embed_dim)
    last = depth - 1
    _check_function(backbone, dim)
    theirs_jpm = any(k.startswith("b1.") for k in theirs)
    if theirs_jpm != backbone.jpm:
        raise WeightsMismatch(f"{TITLE}: the file was saved {'with' if theirs_jpm else 'without'} JPM "
                              f"(b1/b2 {'present' if theirs_jpm else 'absent'}) but the pipeline's backbone has "
                              f"jpm: {str(backbone.jpm).lower()}")
    mapping: dict[str, str] = {}
    left_out: dict[str, str] = {}
    kept: dict[str, str] = {}
    for k in ("cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"):
        mapping[f"base.{k}"] = f"backbone.model.{k}"
    pos, grid = theirs.get("base.pos_embed"), backbone.patch_grid
    if pos is not None and tuple(pos.shape) != tuple(backbone.model.pos_embed.shape):
        raise WeightsMismatch(
            f"{TITLE}: the file's base.pos_embed is {tuple(pos.shape)} but the pipeline's backbone.model.pos_embed is "
            f"{tuple(backbone.model.pos_embed.shape)} (1 + {grid[0]} x {grid[1]} patches: stride {backbone.stride} at "
            f"{tuple(backbone.model.patch_embed.img_size)}); set data.transform.size and backbone.stride to the "
            "weights' (their configs: 256x128, 384x128 or 256x256; STRIDE_SIZE 12 or 16)")
    if "base.sie_embed" in theirs:
        if backbone.sie_embed is None:
            raise WeightsMismatch(f"{TITLE}: the file holds base.sie_embed {tuple(theirs['base.sie_embed'].shape)} "
                                  "(trained with SIE) but the pipeline's backbone has sie: []")
        mapping["base.sie_embed"] = "backbone.sie_embed"
        if tuple(theirs["base.sie_embed"].shape) != tuple(backbone.sie_embed.shape):
            raise WeightsMismatch(
                f"{TITLE}: the file's base.sie_embed has {theirs['base.sie_embed'].shape[0]} rows (its cameras x "
                f"views) but the pipeline's backbone.sie_embed has {backbone.sie_embed.shape[0]} "
                f"({backbone.num_cameras} cameras x {backbone.num_views} views); set backbone.num_cameras (and, "
                "for a camera x view table, sie: [camera, view] with num_views) to the weights' training set's")
    elif backbone.sie_embed is not None:
        raise WeightsMismatch(f"{TITLE}: the pipeline's backbone has SIE ({backbone.sie_kinds}) but the file holds "
                              "no base.sie_embed (trained without SIE); set backbone.sie: []")
    blocks = range(last) if theirs_jpm else range(depth)
    for name in theirs:
        found = re.match(r"^base\.blocks\.(\d+)\.(.+)$", name)
        if found and int(found.group(1)) in blocks:
            mapping[name] = f"backbone.model.blocks.{found.group(1)}.{found.group(2)}"
        elif found and theirs_jpm and int(found.group(1)) == last:
            left_out[name] = "TransReID's ViT with JPM stops before its last layer; b1 (its copy) is the one run"
        elif name.startswith("base.norm."):
            if theirs_jpm:
                left_out[name] = "TransReID's ViT with JPM never runs its final norm; b1's norm is the one run"
            else:
                mapping[name] = f"backbone.model.norm.{name[len('base.norm.'):]}"
        elif name.startswith("base.fc."):
            left_out[name] = "their ViT's ImageNet-sized classifier, never called by their ReID model"
        elif name.startswith("b1.0."):
            mapping[name] = f"backbone.model.blocks.{last}.{name[5:]}"
        elif name.startswith("b1.1."):
            mapping[name] = f"backbone.model.norm.{name[5:]}"
        elif name.startswith("b2.0."):
            mapping[name] = f"backbone.jpm_block.{name[5:]}"
        elif name.startswith("b2.1."):
            mapping[name] = f"backbone.jpm_norm.{name[5:]}"
        elif _CLASSIFIER.match(name):
            left_out[name] = "a training classifier: evaluation does not read it"
    _map_necks(theirs, head, theirs_jpm, mapping)
    for ours in own:
        if ours.startswith(("head.classifiers.", "head.classifier.")):
            kept[ours] = "a training classifier: evaluation does not read it"
    converted = place_all(theirs, mapping, left_out, own, kept, TITLE)
    return Converted(state=converted, left_out=left_out, kept=kept, notes=_notes(backbone, head, theirs_jpm))


def _map_necks(theirs: dict[str, torch.Tensor], head: nn.Module, jpm: bool, mapping: dict[str, str]) -> None:
    """bottleneck -> the global BNNeck; bottleneck_<i> -> part i's (JPM head's bns.<i>)."""
    if jpm:
        if not hasattr(head, "bns"):
            raise WeightsMismatch(f"{TITLE}: the file was saved with JPM (bottleneck_1..4) but the pipeline's head is "
                                  f"{type(head).__name__}; use `head: {{name: jpm, num_parts: 4}}`")
        parts = sorted({int(m.group(1)) for k in theirs if (m := re.match(r"^bottleneck_(\d+)\.", k))})
        if head.num_parts != len(parts) or parts != list(range(1, len(parts) + 1)):
            raise WeightsMismatch(f"{TITLE}: the file has part BNNecks {parts} but the pipeline's jpm head has "
                                  f"num_parts {head.num_parts}")
        for name in theirs:
            m = re.match(r"^bottleneck(?:_(\d+))?\.(.+)$", name)
            if m:
                mapping[name] = f"head.bns.{int(m.group(1) or 0)}.{m.group(2)}"
    else:
        if not hasattr(head, "bn"):
            raise WeightsMismatch(f"{TITLE}: the file was saved without JPM (one bottleneck) but the pipeline's head "
                                  f"is {type(head).__name__}; use `head: {{name: bnneck}}`")
        for name in theirs:
            if name.startswith("bottleneck."):
                mapping[name] = f"head.bn.{name[len('bottleneck.'):]}"


def _notes(backbone: nn.Module, head: nn.Module, jpm: bool) -> list[str]:
    """Where TransReID's test protocol (and the settings its file does not record) may differ
    from the pipeline's."""
    notes = []
    if head.embedding != "pre":
        notes.append("TransReID tests on the pre-BN features (NECK_FEAT 'before') in every shipped config; the "
                     f"pipeline's head uses embedding: {head.embedding}: --set head.embedding=pre")
    if backbone.sie_embed is not None and float(backbone.sie_coefficient) != 3.0:
        notes.append(f"the SIE coefficient is not in the file (their configs: SIE_COE 3.0); the pipeline's is "
                     f"{backbone.sie_coefficient}; SIE reads each test image's camera id (0-based), as theirs")
    if jpm and (backbone.shift not in (5, 8) or backbone.shuffle_groups != 2):
        notes.append(f"JPM's shift and shuffle are not in the file (their configs: SHIFT_NUM 5, 8 on VeRi and "
                     f"VehicleID; SHUFFLE_GROUP 2; RE_ARRANGE true); the pipeline's are shift {backbone.shift}, "
                     f"shuffle_groups {backbone.shuffle_groups}")
    return notes


def check_pipeline(state: dict[str, torch.Tensor], data: dict) -> list[str]:
    """The pipeline's test protocol (`data`: its resolved YAML) against TransReID's
    (datasets/make_dataloader.py's val transform, utils/metrics.py, its ViT configs): a note
    where they differ."""
    return protocol_notes(data, "TransReID's", norm="half", interpolation="bilinear", metric="cosine",
                          metric_why=" (features L2-normalised whatever TEST.FEAT_NORM says, by Euclidean distance: "
                          "the ranking of cosine similarity)")

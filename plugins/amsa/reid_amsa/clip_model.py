"""Building the open_clip CLIP that MUVA starts from (Sec. 3, 4.2: "our model builds upon
CLIP"), at the ReID input size, with pretrained weights from a local file or the local
open_clip / Hugging Face cache — never downloaded.

`build_clip(model, model_cfg, pretrained, quick_gelu, image_size)`:
  - `model`: a built-in open_clip architecture name (`ViT-B-16`, `ViT-B-32`, `ViT-L-14`,
    `ViT-B-16-quickgelu`, ...), or
  - `model_cfg`: an open_clip model config dict ({embed_dim, vision_cfg, text_cfg,
    quick_gelu}) for any other ViT (the tests build a tiny one);
  - `pretrained`: false (random init), true (the `openai` tag), a tag of that model
    (`openai`, `laion2b_s34b_b88k`, ...) looked up in the local cache, or a checkpoint file.
The vision tower is built at the pipeline's (height, width); pretrained position
embeddings are interpolated to the new patch grid (open_clip's `resize_pos_embed`,
bicubic; 14x14 -> 16x8 for ViT-B/16 at 256x128, as CLIP-ReID does).

Only open_clip's own `VisionTransformer` image tower and `TextTransformer` text tower
qualify (AM-MSA runs the tower's own blocks with its masks); timm- or HF-based towers
are an error that says so.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch

NAME = "backbone 'amsa_clip'"
#: the tag `pretrained: true` means (the paper's CLIP ViT-B/16 weights are OpenAI's)
DEFAULT_TAG = "openai"


def model_config(model: str, model_cfg: dict[str, Any] | None) -> dict[str, Any]:
    """A deep copy of the open_clip config: `model_cfg` when given, else the built-in one."""
    import open_clip

    if model_cfg is not None:
        cfg = copy.deepcopy(dict(model_cfg))
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
        if missing:
            raise ValueError(f"{NAME}: model_cfg lacks {', '.join(missing)}; an open_clip model config has "
                             "embed_dim, vision_cfg {image_size, layers, width, patch_size, head_width} and "
                             "text_cfg {context_length, vocab_size, width, heads, layers}")
        return cfg
    cfg = open_clip.get_model_config(model)
    if cfg is None:
        close = [m for m in open_clip.list_models() if m.lower().startswith(model.lower()[:5])][:8]
        raise ValueError(f"{NAME}: unknown open_clip model '{model}'"
                         + (f"; similar: {', '.join(close)}" if close else "")
                         + " (or give an open_clip config as `model_cfg`)")
    return copy.deepcopy(cfg)


def check_towers(cfg: dict[str, Any], label: str) -> None:
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    if vision.get("timm_model_name") or isinstance(vision.get("layers"), (list, tuple)):
        raise ValueError(f"{NAME}: '{label}' has a {'timm' if vision.get('timm_model_name') else 'ResNet'} image "
                         "tower; AM-MSA needs open_clip's own ViT (VisionTransformer), e.g. ViT-B-16, ViT-B-32, "
                         "ViT-L-14")
    if text.get("hf_model_name") or cfg.get("custom_text") or cfg.get("multimodal_cfg"):
        raise ValueError(f"{NAME}: '{label}' has a Hugging Face / custom text tower; the multi-grained prompts "
                         "need open_clip's own TextTransformer (CLIP models such as ViT-B-16)")
    for key, value in (("attentional_pool", vision.get("attentional_pool")),
                       ("patch_dropout", vision.get("patch_dropout", 0.0))):
        if value:
            raise ValueError(f"{NAME}: '{label}' sets vision_cfg.{key}={value!r}; AM-MSA reads every patch token "
                             "in grid order, so it must be off")
    if vision.get("pool_type", "tok") != "tok" or vision.get("final_ln_after_pool"):
        raise ValueError(f"{NAME}: '{label}' pools its image tower with pool_type={vision.get('pool_type')!r}; "
                         "MUVA reads the class token ('tok')")
    if text.get("embed_cls") or text.get("no_causal_mask") or text.get("pool_type", "argmax") != "argmax":
        raise ValueError(f"{NAME}: '{label}' has a text tower that is not CLIP's (causal, read at the EOT "
                         "token); the prompts need a CLIP text encoder")


def resolve_checkpoint(model: str, pretrained: bool | str) -> tuple[Path | None, dict[str, Any]]:
    """(checkpoint file or None, the tag's open_clip config or {}). A tag is looked up
    in the local cache only; a miss is an error that says how to get the file."""
    import open_clip

    if pretrained is False or pretrained is None:
        return None, {}
    if pretrained is True:
        pretrained = DEFAULT_TAG
    if not isinstance(pretrained, str):
        raise ValueError(f"{NAME}: pretrained must be false, true, an open_clip tag or a checkpoint path; "
                         f"got {pretrained!r}")
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path, {}
    tag_cfg = open_clip.get_pretrained_cfg(model, pretrained) if model else {}
    if not tag_cfg:
        if any(sep in pretrained for sep in ("/", "\\")) or path.suffix:
            raise FileNotFoundError(f"{NAME}: pretrained checkpoint not found: {path}")
        tags = open_clip.list_pretrained_tags_by_model(model) if model else []
        raise ValueError(f"{NAME}: '{pretrained}' is neither a checkpoint file nor an open_clip tag of '{model}'"
                         + (f" (tags: {', '.join(tags)})" if tags else ""))
    cached = cached_tag_file(tag_cfg)
    if cached is None:
        raise FileNotFoundError(
            f"{NAME}: the open_clip weights '{model}' / '{pretrained}' are not in the local cache (looked in "
            f"the Hugging Face cache for {tag_cfg.get('hf_hub') or '-'} and in ~/.cache/clip for "
            f"{Path(tag_cfg.get('url', '')).name or '-'}), and nothing is downloaded here. On a machine with "
            f"internet run `python -c \"import open_clip; open_clip.create_model('{model}', "
            f"pretrained='{pretrained}')\"` and copy the cache, or pass the checkpoint file: "
            f"`pretrained: /path/to/open_clip_pytorch_model.bin`; or use `pretrained: false`")
    return cached, tag_cfg


def cached_tag_file(tag_cfg: dict[str, Any]) -> Path | None:
    """The local file of an open_clip pretrained tag, found without touching the network:
    the Hugging Face cache for `hf_hub` entries (safetensors first, as open_clip does),
    ~/.cache/clip for `url` entries."""
    import os

    if tag_cfg.get("file"):
        return Path(tag_cfg["file"]) if Path(tag_cfg["file"]).is_file() else None
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache
        from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

        repo_id, filename = os.path.split(hub)
        names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        for name in names:
            found = try_to_load_from_cache(repo_id, name)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    url = tag_cfg.get("url", "")
    if url:
        candidate = Path("~/.cache/clip").expanduser() / Path(url).name
        if candidate.is_file():
            return candidate
    return None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A CLIP state dict from a .safetensors / .bin / .pt file (tensors only: a file that
    needs pickle is refused, a damaged one named), or an OpenAI TorchScript archive when
    the user trusts it: loading one runs the TorchScript it holds (its `__setstate__`
    methods), which can read and write files (torch.from_file), so torch refuses it under
    weights_only too."""
    from open_clip.factory import load_state_dict

    from core.training.checkpoint import reading_weights, trusted_torchscript

    if trusted_torchscript(path, "Use the same weights as tensors: open_clip's .safetensors (`pretrained: true` "
                                 "finds `timm/vit_base_patch16_clip_224.openai` in the Hugging Face cache for "
                                 "ViT-B-16)"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        for key in ("input_resolution", "context_length", "vocab_size"):
            state.pop(key, None)
        return state
    with reading_weights(path, ValueError, "Use a .safetensors file, or a torch.save of a plain state dict."):
        return load_state_dict(str(path))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a full CLIP checkpoint into `model`, position embeddings resized to its
    patch grid (and text context); any parameter left unfilled is an error."""
    from open_clip.model import resize_pos_embed, resize_text_pos_embed

    from core.training.checkpoint import misfit

    state = read_state_dict(path)
    # OpenAI's released archives hold fp16 weights; CPU interpolation has no Half kernel
    # ("not implemented for 'Half'") and the model is float32 anyway: widen first.
    state = {k: (v.float() if torch.is_floating_point(v) else v) for k, v in state.items()}
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    shapes = misfit(model.state_dict(), state, names=False)
    if shapes:  # another width: torch would list every tensor (strict=False still refuses shapes)
        raise ValueError(f"{NAME}: {path} does not fit this CLIP: {shapes}. Is it a checkpoint of the same "
                         "open_clip architecture (`model`, or `model_cfg`'s widths)?")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k != "logit_bias"]
    if missing:
        raise ValueError(f"{NAME}: {path} does not fit this CLIP: {len(missing)} parameters missing "
                           f"(e.g. {', '.join(missing[:4])}); unexpected keys: "
                           f"{', '.join(result.unexpected_keys[:4]) or 'none'}. Is it a checkpoint of the same "
                           "open_clip architecture (`model`)?")
    if result.unexpected_keys:
        warnings.warn(f"{NAME}: {path} has {len(result.unexpected_keys)} keys this CLIP does not use "
                      f"(e.g. {', '.join(result.unexpected_keys[:4])})", stacklevel=3)


def build_clip(model: str, model_cfg: dict[str, Any] | None, pretrained: bool | str, quick_gelu: bool | None,
               image_size: tuple[int, int]) -> tuple[torch.nn.Module, Any]:
    """(open_clip CLIP at `image_size`, its tokenizer)."""
    import open_clip

    cfg = model_config(model, model_cfg)
    label = "model_cfg" if model_cfg is not None else model
    check_towers(cfg, label)
    path, tag_cfg = resolve_checkpoint(model if model_cfg is None else "", pretrained)
    if quick_gelu is None:  # OpenAI's weights were trained with QuickGELU
        quick_gelu = bool(tag_cfg.get("quick_gelu", cfg.get("quick_gelu", False)))
    cfg["quick_gelu"] = bool(quick_gelu)
    vision = cfg["vision_cfg"]
    patch = vision.get("patch_size", 16)
    patch_hw = (patch, patch) if isinstance(patch, int) else tuple(patch)
    height, width = int(image_size[0]), int(image_size[1])
    if height % patch_hw[0] or width % patch_hw[1]:
        raise ValueError(f"{NAME}: the image size {height}x{width} (data.transform.size) is not a multiple of "
                         f"the patch size {patch_hw[0]}x{patch_hw[1]}; patches must tile the image")
    vision["image_size"] = [height, width]
    cfg.pop("custom_text", None)
    try:
        clip = open_clip.CLIP(**cfg)
    except TypeError as exc:
        raise ValueError(f"{NAME}: cannot build an open_clip CLIP from '{label}': {exc}") from None
    if path is not None:
        load_weights(clip, path)
    context = int(cfg["text_cfg"].get("context_length", 77))
    tokenizer = (open_clip.get_tokenizer(model, context_length=context) if model_cfg is None
                 else open_clip.SimpleTokenizer(context_length=context))
    return clip, tokenizer


def grid_of(visual: torch.nn.Module) -> tuple[int, int]:
    rows, cols = visual.grid_size
    return int(rows), int(cols)


def head_count(block: torch.nn.Module) -> int:
    """Attention heads of an open_clip residual block (default or custom)."""
    heads = getattr(block.attn, "num_heads", None)
    if heads is None:  # pragma: no cover - both open_clip block types define it
        raise ValueError(f"{NAME}: cannot read the number of attention heads of {type(block).__name__}")
    return int(heads)

"""The instruction encoder of IRM (paper Fig. 5a): CLIP's text encoder for text
instructions and CLIP's image encoder for image instructions (clothes templates), both
from open_clip (ours; the authors' code uses BERT / ALBEF's ViT).

For each instruction it gives what the editing transformer and mAP-tau need:
  embedding (B, E)  CLIP's joint-space embedding, L2-normalised: text and image
                    instructions are comparable (instruction similarity s, Eq. of the
                    adaptive triplet; mAP-tau);
  tokens (B, L, W)  the token states after the final LayerNorm (text: every position,
                    padding included; image: the patch tokens);
  valid (B, L)      False at text padding (after the end-of-text token).

Weights: `pretrained` is an open_clip tag (e.g. "openai", read from the local open_clip /
Hugging Face cache; nothing is downloaded here) or a local checkpoint file; `config` builds
a randomly initialised model from an open_clip model config ({embed_dim, vision_cfg,
text_cfg}), e.g. a tiny one for tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

NAME = "backbone 'instruct_editor'"
#: CLIP's image normalisation (OpenAI), used when the model declares none.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def build_clip(model: str, pretrained: str | None, config: dict[str, Any] | None,
               cache_dir: str | None = None) -> tuple[nn.Module, Any]:
    """(open_clip model, tokenizer). `config` wins over `model`/`pretrained`."""
    import open_clip

    if config is not None:
        cfg = dict(config)
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
        if missing:
            raise ValueError(f"{NAME}: clip_config lacks {', '.join(missing)}; an open_clip model config has "
                             "embed_dim, vision_cfg and text_cfg (see open_clip/model_configs/*.json)")
        custom = bool(cfg.pop("custom_text", False))
        cls = open_clip.CustomTextCLIP if custom else open_clip.CLIP
        try:
            clip = cls(**cfg)
        except TypeError as exc:
            raise ValueError(f"{NAME}: clip_config is not a valid open_clip config: {exc}") from None
        text_cfg = cfg["text_cfg"]
        context = text_cfg.get("context_length", 77) if isinstance(text_cfg, dict) else text_cfg.context_length
        return clip, open_clip.tokenizer.SimpleTokenizer(context_length=context)
    if model not in open_clip.list_models() and not model.startswith(("hf-hub:", "local-dir:")):
        raise ValueError(f"{NAME}: unknown open_clip model {model!r} (clip_model); known models include: "
                         f"{', '.join(open_clip.list_models()[:8])}, ...")
    if pretrained is not None:
        path = Path(str(pretrained)).expanduser()
        if path.suffix in (".pt", ".pth", ".bin", ".safetensors") and not path.is_file():
            raise FileNotFoundError(f"{NAME}: clip_pretrained file not found: {path}")
        if path.is_file() and not open_clip.get_pretrained_cfg(model, str(pretrained)):  # a tag wins, as in open_clip
            return clip_from_file(model, path, cache_dir), open_clip.get_tokenizer(model)
    try:  # a tag: open_clip reads its cached file with weights_only=True (a TorchScript archive is refused)
        clip = open_clip.create_model(model, pretrained=pretrained, cache_dir=cache_dir,
                                      require_pretrained=pretrained is not None)
    except Exception as exc:  # download refused, cache miss: both say the same
        raise RuntimeError(
            f"{NAME}: could not load the open_clip weights '{pretrained}' of {model} "
            f"({type(exc).__name__}: {str(exc)[:300]}). Nothing is "
            "downloaded here: give clip_pretrained as a local checkpoint file (e.g. "
            "~/weights/ViT-B-16-openai.bin), put the weights in the open_clip / Hugging Face cache "
            "(clip_cache_dir; offline, set HF_HUB_OFFLINE=1 to skip the hub's network retries), or set "
            "clip_pretrained: null for random weights.") from exc
    return clip, open_clip.get_tokenizer(model)


def clip_from_file(model: str, path: Path, cache_dir: str | None = None) -> nn.Module:
    """open_clip's `model` with the weights of the local file `path`, read as every weights
    file is (core.training.checkpoint.reading_weights): one that needs pickle is refused,
    naming the global it would call, a cut or corrupt one says so, and one whose tensors do
    not fit `model` names how (misfit); each a ValueError line, which the pipeline names
    with its key. An OpenAI TorchScript archive loads only with --trust-checkpoint: loading
    one runs the code it holds."""
    import contextlib
    import logging
    import warnings

    import open_clip
    from open_clip.factory import load_state_dict

    from core.training.checkpoint import misfit, reading_weights, trusted_torchscript

    def error(line: str) -> ValueError:
        return ValueError(f"{NAME}: clip_pretrained file {line}")

    script = trusted_torchscript(path, "Use the same weights as tensors (open_clip's .safetensors or .bin, "
                                       "e.g. from the Hugging Face cache)", error)
    def unloaded(record: logging.LogRecord) -> bool:  # open_clip's 'No pretrained weights loaded': they follow
        return not record.getMessage().startswith("No pretrained weights loaded")

    logging.getLogger().addFilter(unloaded)
    try:
        clip = open_clip.create_model(model, cache_dir=cache_dir, pretrained_image=False, pretrained_text=False)
    finally:
        logging.getLogger().removeFilter(unloaded)
    # a trusted archive is read by torch.jit, which reading_weights' weights-only reader cannot judge
    reader = contextlib.nullcontext() if script else \
        reading_weights(path, error, "Use a .safetensors file, or a torch.save of a plain state dict.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        warnings.filterwarnings("ignore", ".*TorchScript archive", UserWarning)  # torch.load -> torch.jit.load
        try:
            with reader:
                open_clip.load_checkpoint(clip, str(path), weights_only=not script)
        except RuntimeError:  # the file reads (reading_weights passed this on): its tensors may not fit
            try:
                how = misfit(clip.state_dict(), load_state_dict(str(path), weights_only=not script))
            except Exception:  # noqa: BLE001 - no better account than open_clip's own error, which then stands
                how = ""
            if not how:
                raise
            raise ValueError(f"{NAME}: clip_pretrained file {path} does not fit open_clip '{model}': {how}. Is it "
                             "a checkpoint of the same open_clip architecture (clip_model)?") from None
    return clip


class InstructionEncoder(nn.Module):
    """open_clip's text and image towers as instruction encoders (module docstring).

    `freeze_text` / `freeze_image` stop gradients into the towers (and run them without
    building a graph); the paper's setting trains with pretrained encoders.
    """

    def __init__(self, model: str = "ViT-B-16", pretrained: str | None = None, config: dict[str, Any] | None = None,
                 freeze_text: bool = True, freeze_image: bool = True, cache_dir: str | None = None) -> None:
        super().__init__()
        self.clip, self.tokenizer = build_clip(model, pretrained, config, cache_dir)
        visual = self.clip.visual
        if not hasattr(visual, "output_tokens") or not hasattr(visual, "transformer"):
            raise ValueError(f"{NAME}: the open_clip image tower {type(visual).__name__} is not a "
                             "VisionTransformer; instruction images need a ViT tower (its patch tokens)")
        self.text_tower = getattr(self.clip, "text", None)  # CustomTextCLIP; None for CLIP
        if self.text_tower is not None and not hasattr(self.text_tower, "output_tokens"):
            raise ValueError(f"{NAME}: the open_clip text tower {type(self.text_tower).__name__} does not "
                             "return token states")
        self.freeze_text, self.freeze_image = bool(freeze_text), bool(freeze_image)
        for module, frozen in ((self._text_modules(), self.freeze_text), ([visual], self.freeze_image)):
            for m in module:
                m.requires_grad_(not frozen)
        self.clip.logit_scale.requires_grad_(False)
        if getattr(self.clip, "logit_bias", None) is not None:
            self.clip.logit_bias.requires_grad_(False)
        size = visual.image_size
        self.image_size = (int(size[0]), int(size[1])) if isinstance(size, (tuple, list)) else (int(size), int(size))
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        self.register_buffer("mean", torch.tensor(cfg.get("mean", CLIP_MEAN)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", CLIP_STD)).view(1, 3, 1, 1), persistent=False)
        self.embed_dim = int(self._embed_dim())
        self.image_width = int(visual.transformer.width)
        self.text_width = int(self._text_width())

    # ---------------------------------------------------------------- shapes
    def _text_modules(self) -> list[nn.Module]:
        if self.text_tower is not None:
            return [self.text_tower]
        c = self.clip
        return [c.transformer, c.token_embedding, c.ln_final] + \
            ([c.text_projection] if isinstance(c.text_projection, nn.Module) else []) + [_ParamHolder(c)]

    def _embed_dim(self) -> int:
        proj = getattr(self.clip.visual, "proj", None)
        if proj is not None:
            return proj.shape[1]
        return self.clip.visual.output_dim

    def _text_width(self) -> int:
        if self.text_tower is not None:
            return self.text_tower.width
        return self.clip.transformer.width

    # ---------------------------------------------------------------- text
    def tokenize(self, texts: list[str], device: torch.device) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(device)

    def encode_text(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(embedding (B, E) normalised, token states (B, L, W), valid (B, L))."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_text):
            if self.text_tower is not None:
                self.text_tower.output_tokens = True
                pooled, states = self.text_tower(tokens)
            else:
                pooled, states = self._clip_text(tokens)
        eot = tokens.argmax(dim=-1)  # open_clip's tokenizers: end-of-text has the largest id
        valid = torch.arange(tokens.shape[1], device=tokens.device)[None, :] <= eot[:, None]
        return F.normalize(pooled.float(), dim=-1), states.float(), valid

    def _clip_text(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """open_clip's CLIP.encode_text, also returning the token states."""
        from open_clip.transformer import text_global_pool

        c = self.clip
        cast = c.transformer.get_cast_dtype()
        x = c.token_embedding(text).to(cast) + c.positional_embedding.to(cast)
        x = c.ln_final(c.transformer(x, attn_mask=c.attn_mask))
        pooled = text_global_pool(x, text, c.text_pool_type, eos_token_id=getattr(c, "text_eos_id", None))
        projection = c.text_projection
        if projection is not None:
            pooled = projection(pooled) if isinstance(projection, nn.Linear) else pooled @ projection
        return pooled, x

    # ---------------------------------------------------------------- images
    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images in [0, 1] (B, 3, h, w), resized to the tower's size and normalised ->
        (embedding (B, E) normalised, patch token states (B, N, W), valid (B, N))."""
        x = images.float()
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        visual = self.clip.visual
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_image):
            visual.output_tokens = True
            pooled, tokens = visual(x)
        valid = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return F.normalize(pooled.float(), dim=-1), tokens.float(), valid


class _ParamHolder(nn.Module):
    """The CLIP text tower's loose parameters (positional embedding, projection matrix)
    for `requires_grad_`, without registering them twice."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_params", [p for p in (clip.positional_embedding, clip.text_projection)
                                             if isinstance(p, nn.Parameter)])

    def requires_grad_(self, requires_grad: bool = True) -> "_ParamHolder":
        for p in self._params:
            p.requires_grad_(requires_grad)
        return self

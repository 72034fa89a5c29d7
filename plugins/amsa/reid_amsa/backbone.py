"""MUVA's CLIP image encoder with local tokens and AM-MSA (YAML name `amsa_clip`):
MUVA Sec. 3.1.1 (local visual tokens), 3.2 (Adaptively Masked Multi-head Self-Attention),
4.2 (settings).

The sequence is [CLS, local_1..local_P, patches] (P = 3: head, upper body, legs). The
local tokens are new parameters (trunc-normal, std 0.02) that share CLS's position
embedding. Every block l runs, before its self-attention,
  - Residual Mask Prediction (eq. 5, `reid_amsa.mask_predictor`) on the tokens entering
    block l: part scores M_l = MLP(LN(CrossAttn(LN(r), LN(F)) + r)) + M_{l-1};
  - Mask Gating (eqs. 6-7, `reid_amsa.masking`): sigmoid(M_l), detached, > t -> an
    additive 0 / -inf mask, the same for every head, that restricts each local token to
    CLS, itself and its part's patches;
then the block itself (open_clip's own block, called with that mask). After the last
block, ln_post + proj on CLS and the local tokens, concatenated: the multi-grained
visual token v^mg ((1 + P) x 512 = 2048-d for ViT-B/16), the output "global".

`variant: stripes` (the paper's Table 8 ablation) gates with fixed equal stripes and has
no mask predictors.

`parts: 0` is the single-grained model (Table 5, "MUVA (w/ G)"): no local tokens, no mask
predictors, no attention mask (every block is CLIP's plain self-attention), one template
(the global one); "global" is CLIP's own image feature, ln_post(CLS) @ proj, exactly
open_clip's `encode_image`. Every gating then means the same (there is nothing to gate),
and `muva_mask` refuses the model (no part scores to supervise).

The backbone also carries CLIP's frozen text encoder and the per-identity multi-grained
prompts (`reid_amsa.prompts`), as `text`, and hands them to the MUVA losses through
`ctx.extras["amsa.text"]`: one CLIP, loaded once, whose two towers stay paired.

Outputs: "global" (B, (1+P) D); "cls_feature" (B, D); "part_features" (B, P, D) (not with P = 0);
"part_mask_logits" (B, L, P, N), the accumulated scores M_l of every layer (for L_mask);
"part_masks" (B, P, N), the last layer's probabilities sigmoid(M_L) on `patch_grid`
(what `core explain` draws; the stripes or the given gate otherwise; not with P = 0).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from core.context import BuildContext
from core.interfaces import Backbone
from core.records import Batch
from reid_amsa.clip_model import NAME, build_clip, grid_of, head_count
from reid_amsa.mask_predictor import ResidualMaskPredictor
from reid_amsa.masking import attention_mask, gate, per_head, stripe_masks
from reid_amsa.prompts import PAPER_TEMPLATES, MultiGrainedText

VARIANTS = ("adaptive", "stripes")
#: where the MUVA losses find the text side (prompts + frozen text encoder)
TEXT_KEY = "amsa.text"
#: where the MUVA losses find the number of local tokens P (0: the single-grained model)
PARTS_KEY = "amsa.parts"


class AMSAClip(Backbone):
    """Keys (YAML):
      model: open_clip architecture name (any open_clip ViT: ViT-B-16, ViT-B-32, ViT-L-14, ...);
      model_cfg: an open_clip model config dict instead of `model` (tiny test models);
      pretrained: false | true (tag `openai`) | an open_clip tag from the local cache | a file;
      quick_gelu: null (from the weights' tag; OpenAI's use QuickGELU) | true | false;
      parts: local tokens P (3; 0: the single-grained model of Table 5, "w/ G");
      variant: adaptive (AM-MSA) | stripes (needs parts >= 1);
      mask_heads: cross-attention heads of the mask predictors (2; 8 for MSMT17 / multi-source);
      mask_hidden: hidden width of their MLP (null: the number of patches, as the
        authors' code has it — 128 at 256x128); threshold: t of eq. 6 (0.5);
      freeze_patch_embed: keep the patch projection fixed (true, Sec. 4.2);
      token_std: init std of the local tokens (0.02);
      text: build the frozen text encoder and the prompts (true; false for an image-only model);
      prompt_tokens: N (4); prompt_std: init std of the prompts (0.002);
      templates: 1 + P templates with a `{prompt}` placeholder (default: the paper's four;
        with parts 0 its global one alone).
    """

    def __init__(self, ctx: BuildContext, model: str = "ViT-B-16", model_cfg: dict[str, Any] | None = None,
                 pretrained: bool | str = False, quick_gelu: bool | None = None, parts: int = 3,
                 variant: Literal["adaptive", "stripes"] = "adaptive", mask_heads: int = 2,
                 mask_hidden: int | None = None, threshold: float = 0.5, freeze_patch_embed: bool = True,
                 token_std: float = 0.02, text: bool = True, prompt_tokens: int = 4, prompt_std: float = 0.002,
                 templates: list[str] | None = None) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"{NAME}: variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if parts < 0:
            raise ValueError(f"{NAME}: parts must be >= 0 (0: the single-grained model, global token only), "
                             f"got {parts}")
        if parts == 0 and variant == "stripes":
            raise ValueError(f"{NAME}: variant 'stripes' gates local tokens, and parts 0 has none; use parts >= 1 "
                             "or variant adaptive")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"{NAME}: threshold is a probability in (0, 1), got {threshold}")
        if templates is None:  # the single-grained model keeps the global template alone
            templates = list(PAPER_TEMPLATES[:1] if parts == 0 else PAPER_TEMPLATES)
        templates = list(templates)
        if text and len(templates) != parts + 1:
            raise ValueError(f"{NAME}: {len(templates)} templates for {parts} parts; the textual token pairs one "
                             f"template with each visual token (global + parts), so give {parts + 1}")
        clip, tokenizer = build_clip(model, model_cfg, pretrained, quick_gelu, ctx.image_size)
        self.visual = clip.visual
        self.parts, self.variant, self.threshold = int(parts), variant, float(threshold)
        self.patch_grid = grid_of(self.visual)
        num_patches = self.patch_grid[0] * self.patch_grid[1]
        width = int(self.visual.conv1.out_channels)
        self.embed_dim = int(self.visual.proj.shape[1])
        self.feature_dim = (1 + self.parts) * self.embed_dim
        self.local_tokens = None
        if self.parts:
            self.local_tokens = nn.Parameter(nn.init.trunc_normal_(torch.empty(self.parts, width), std=token_std))
        blocks = self.visual.transformer.resblocks
        self.heads = [head_count(b) for b in blocks]
        if variant == "adaptive" and self.parts:
            self.mask_predictors = nn.ModuleList(ResidualMaskPredictor(width, num_patches, mask_heads, mask_hidden)
                                                 for _ in blocks)
        else:
            self.mask_predictors = None
        stripes = (stripe_masks(self.patch_grid, self.parts) if self.parts
                   else torch.zeros(0, num_patches, dtype=torch.bool))
        self.register_buffer("stripes", stripes, persistent=False)
        if freeze_patch_embed:
            self.visual.conv1.requires_grad_(False)
        self.text = None
        if text and ctx.num_identities > 0:
            self.text = MultiGrainedText(clip, tokenizer, ctx.num_identities, prompt_tokens, templates,
                                         prompt_std, NAME)
        ctx.extras[TEXT_KEY] = self.text
        ctx.extras[PARTS_KEY] = self.parts

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """[CLS, locals, patches] + position embeddings, after ln_pre: (B, 1 + P + N, W)."""
        visual = self.visual
        x = visual.conv1(images.to(visual.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)  # (B, N, W), row-major patches
        pos = visual.positional_embedding.to(x.dtype)
        if pos.shape[0] != x.shape[1] + 1:
            raise ValueError(f"{NAME}: the images give {x.shape[1]} patches but the position embedding has "
                             f"{pos.shape[0] - 1}; feed images of the size the backbone was built for")
        batch = x.shape[0]
        cls = (visual.class_embedding.to(x.dtype) + pos[0]).expand(batch, 1, -1)
        tokens = [cls]
        if self.local_tokens is not None:
            tokens.append((self.local_tokens.to(x.dtype) + pos[0]).expand(batch, -1, -1))  # CLS's position
        x = torch.cat([*tokens, x + pos[1:]], dim=1)
        return visual.ln_pre(x)

    def forward(self, batch: Batch, gate_masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """`gate_masks` (B, P, N) in {0, 1}: gate every block with these part masks instead
        of the predicted ones (MUVA builds its memories with the pseudo-label masks)."""
        x = self.embed(batch.images)
        batch_size, parts = x.shape[0], self.parts
        if parts == 0:
            return self._single_grained(x, gate_masks)
        fixed = None
        if gate_masks is not None:
            if tuple(gate_masks.shape[1:]) != (parts, x.shape[1] - 1 - parts):
                raise ValueError(f"{NAME}: gate masks of shape {tuple(gate_masks.shape)} for {parts} parts on "
                                 f"{x.shape[1] - 1 - parts} patches")
            fixed = gate_masks.to(x.device) > 0.5
        elif self.variant == "stripes":
            fixed = self.stripes.expand(batch_size, -1, -1)
        scores, previous = [], None
        for index, block in enumerate(self.visual.transformer.resblocks):
            if fixed is not None:
                gates = fixed
            else:
                previous = self.mask_predictors[index](x[:, 1:1 + parts], x[:, 1 + parts:], previous)
                scores.append(previous)
                gates = gate(torch.sigmoid(previous), self.threshold)
            mask = per_head(attention_mask(gates, x.dtype), self.heads[index])
            x = block(x, attn_mask=mask)
        tokens = self.visual.ln_post(x[:, :1 + parts]) @ self.visual.proj.to(x.dtype)  # (B, 1 + P, D)
        out = {"global": tokens.flatten(1), "cls_feature": tokens[:, 0], "part_features": tokens[:, 1:]}
        if scores:
            logits = torch.stack(scores, dim=1)  # (B, L, P, N)
            out["part_mask_logits"] = logits
            out["part_masks"] = torch.sigmoid(logits[:, -1].detach())
        else:
            out["part_masks"] = fixed.to(tokens.dtype)
        return out

    def _single_grained(self, x: torch.Tensor, gate_masks: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """parts 0: CLIP's own blocks without a mask, CLS through ln_post and proj."""
        if gate_masks is not None and gate_masks.shape[1] != 0:
            raise ValueError(f"{NAME}: gate masks of shape {tuple(gate_masks.shape)} but this backbone has no "
                             "local tokens to gate (parts: 0)")
        for block in self.visual.transformer.resblocks:
            x = block(x)
        cls = self.visual.ln_post(x[:, 0]) @ self.visual.proj.to(x.dtype)  # (B, D)
        return {"global": cls, "cls_feature": cls}

    def gate_masks_from(self, source: str, batch: Batch, component: str) -> torch.Tensor | None:
        """The gate for `source`: "labels" (the batch's `part_masks`), "stripes", or
        "predicted" (None: the backbone's own). None for every source with parts 0."""
        if source == "predicted" or self.parts == 0:
            return None
        if source == "stripes":
            return self.stripes.expand(len(batch), -1, -1).float()
        try:
            masks = batch.require("part_masks", f"{component} (gating: labels)")
        except KeyError as exc:
            raise KeyError(f"{exc.args[0]} Without part masks, set the loss's `gating: stripes` or "
                           "`gating: predicted`.") from None
        return masks.float()


def text_side(ctx: BuildContext, component: str) -> MultiGrainedText:
    """The prompts + text encoder `amsa_clip` put in the build context, or a clear error."""
    text = ctx.extras.get(TEXT_KEY)
    if text is None:
        why = ("the backbone was built with `text: false`" if TEXT_KEY in ctx.extras
               else "the backbone is not `amsa_clip`")
        raise ValueError(f"{component} needs MUVA's multi-grained prompts and CLIP text encoder, which the "
                         f"`amsa_clip` backbone provides; {why}")
    return text



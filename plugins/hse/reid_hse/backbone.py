"""The dual-token ViT of HSE (YAML name `hse_vit`): MGOR Sec. 3.3, "Hierarchical Semantic
Equilibrium" (Object-Generalized Re-Identification, CVPR 2026).

A ViT with two class tokens prepended to the patches: the global token c_G (the ViT's own
class token) for category-agnostic identity evidence and a local token c_L for
category-specific detail. Both share every block and attend to the same patches; z_G and
z_L are their outputs after the final norm.

Built on timm: the core's `timm` backbone builds the `VisionTransformer` (at the
pipeline's image size, pretrained weights through timm's own loader, position embeddings
resampled), and this module only adds c_L and runs timm's own modules (patch embedding,
`_pos_embed`, blocks with an attention mask, norms). Every pretrained tensor lands in the
shared parts; c_L is the one new parameter, initialised from c_G's token (our choice,
METHODS.md) and given c_G's position embedding.

Attention (`attention`, our choice; the paper only says both tokens "attend to the same
patches"):
  - "isolated" (default): c_L reads the patches (and register tokens) and itself; no other
    token reads c_L, and c_L does not read c_G. The global path [c_G, patches] is then
    exactly the plain ViT, so meta-test losses on z_G send no gradient to c_L (the
    asymmetric supervision is exact) and inference can drop c_L: in eval mode the
    backbone runs the plain ViT, at the baseline's cost, with the same z_G.
  - "full": plain self-attention over [c_G, c_L, patches]; every token reads c_L, so z_G
    depends on c_L and global losses reach it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from core.context import BuildContext
from core.models.timm_backbone import TimmBackbone, errors_named
from core.records import Batch

NAME = "backbone 'hse_vit'"
ATTENTION = ("isolated", "full")
LOCAL_INIT = ("copy", "normal")


class DualTokenViT(TimmBackbone):
    """Outputs "global" = z_G (B, D), "local" = z_L (B, D) (training, or `attention: full`),
    and "tokens" = the final sequence without c_L ([c_G, registers, patches], class token
    first as for the core's `timm` backbone).

    Keys as the core's `timm` backbone (`arch`: any timm VisionTransformer with a class
    token and token pooling; `pretrained`: false, true = the local timm / Hugging Face
    cache, or a checkpoint path; `model_kwargs`; `drop_path_rate`; `freeze_patch_embed`),
    plus `attention` ("isolated" or "full", see the module docstring) and `local_init`
    ("copy": c_L starts as c_G's token, our choice; "normal": trunc-normal, std 0.02).
    """

    def __init__(self, ctx: BuildContext, arch: str = "vit_base_patch16_224", pretrained: bool | str = False,
                 model_kwargs: dict[str, Any] | None = None, drop_path_rate: float = 0.0,
                 freeze_patch_embed: bool = False, attention: Literal["isolated", "full"] = "isolated",
                 local_init: Literal["copy", "normal"] = "copy") -> None:
        if attention not in ATTENTION:
            raise ValueError(f"{NAME}: attention must be one of {', '.join(ATTENTION)}, got {attention!r}")
        if local_init not in LOCAL_INIT:
            raise ValueError(f"{NAME}: local_init must be one of {', '.join(LOCAL_INIT)}, got {local_init!r}")
        with errors_named(NAME):
            super().__init__(ctx, arch=arch, pretrained=pretrained, model_kwargs=model_kwargs,
                             drop_path_rate=drop_path_rate, freeze_patch_embed=freeze_patch_embed)
        self._check_model(arch)
        self.attention = attention
        vit = self.model
        token = vit.cls_token.detach().clone()
        if local_init == "normal":
            nn.init.trunc_normal_(token, std=0.02)
        # created after timm's loading, so pretrained weights only ever fill the shared parts
        self.local_token = nn.Parameter(token)

    def _check_model(self, arch: str) -> None:
        from timm.models.vision_transformer import VisionTransformer

        vit = self.model
        if not isinstance(vit, VisionTransformer):
            raise ValueError(f"{NAME}: arch '{arch}' builds a {type(vit).__name__}; HSE adds a second class "
                             "token to a timm VisionTransformer (e.g. vit_base_patch16_224, "
                             "vit_small_patch16_224, vit_tiny_patch16_224, deit_base_patch16_224)")
        if vit.cls_token is None or vit.global_pool != "token" or vit.attn_pool is not None:
            raise ValueError(f"{NAME}: arch '{arch}' has class_token={vit.cls_token is not None}, "
                             f"global_pool={vit.global_pool!r}; HSE needs a class token read out directly "
                             "(class_token: true, global_pool: 'token'; set them in model_kwargs)")

    def _local_position(self) -> torch.Tensor | int:
        """c_G's position embedding, which c_L shares (none when the model adds position
        embeddings to the patches only: `no_embed_class`, or no position embedding)."""
        vit = self.model
        if vit.pos_embed is None or vit.no_embed_class:
            return 0
        return vit.pos_embed[:, :1]

    def attention_mask(self, length: int, device: torch.device) -> torch.Tensor | None:
        """Boolean (L, L) mask for the sequence [c_G, c_L, ...] (True = may attend), or
        None for "full" attention. "isolated": column 1 (c_L) is read by c_L only, and
        row 1 (c_L) does not read column 0 (c_G)."""
        if self.attention == "full":
            return None
        mask = torch.ones(length, length, dtype=torch.bool, device=device)
        mask[:, 1] = False
        mask[1, :] = True
        mask[1, 0] = False
        return mask

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The final sequence [c_G, c_L, registers, patches] (B, 2 + R + P, D), after the
        ViT's final norm; timm's own modules throughout."""
        vit = self.model
        x = vit.patch_embed(images)
        x = vit._pos_embed(x)  # [c_G, registers, patches] + position embeddings (timm)
        x = vit.patch_drop(x)
        local = vit.pos_drop((self.local_token + self._local_position()).expand(x.shape[0], -1, -1))
        x = torch.cat([x[:, :1], local.to(x.dtype), x[:, 1:]], dim=1)
        x = vit.norm_pre(x)
        mask = self.attention_mask(x.shape[1], x.device)
        for block in vit.blocks:
            x = block(x, attn_mask=mask)
        return vit.norm(x)

    def _read_out(self, token: torch.Tensor) -> torch.Tensor:
        """timm's head path without the classifier (as `forward_head(pre_logits=True)` for
        token pooling): fc_norm, head dropout."""
        return self.model.head_drop(self.model.fc_norm(token))

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        if not self.training and self.attention == "isolated":
            # Inference uses z_G only, and with c_L isolated the global path is the plain
            # ViT: skip c_L (the same z_G, see tests/test_backbone.py).
            return super().forward(batch)
        x = self.forward_tokens(batch.images)
        return {"global": self._read_out(x[:, 0]), "local": self._read_out(x[:, 1]),
                "tokens": torch.cat([x[:, :1], x[:, 2:]], dim=1)}

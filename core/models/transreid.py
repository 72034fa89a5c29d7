"""The TransReID ViT (YAML name `transreid`): He et al. 2021, "TransReID: Transformer-based
Object Re-Identification", on any timm VisionTransformer with a class token.

- Overlapping patches (Sec. 3.1): the patch projection runs at stride S < P
  (S = 12 for P = 16), giving N = floor((H - P)/S + 1) x floor((W - P)/S + 1) patches,
  21 x 10 at 256x128; the position embeddings are resampled to that grid.
- SIE, side information embedding (Sec. 3.2): a learnable table of camera (and/or
  view) embeddings S; the input sequence becomes Z_0 = [x_cls; E x_p] + P + lambda S[r]
  with r = camera, view, or camera * N_V + view; lambda = 3 in the paper.
  The same embedding is added to every token.
- JPM, jigsaw patch module (Sec. 3.3): the last transformer layer runs twice;
  once on the whole sequence (the global feature: its class token), once, as a copy with
  its own weights, on k groups of shifted and shuffled patch tokens, each with the shared
  class token prepended (the k part features).

Outputs: "global" (B, D), "tokens" (B, 1 + N, D), and with JPM "parts" (B, k, D). The
`jpm` head (core.models.jpm_head) puts a BNNeck on each.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from core.context import BuildContext
from core.models.timm_backbone import TimmBackbone, errors_named
from core.records import Batch

NAME = "backbone 'transreid'"
SIE_KINDS = ("camera", "view")


def jigsaw(tokens: torch.Tensor, shift: int, groups: int) -> torch.Tensor:
    """TransReID's patch rearrangement (Sec. 3.3; `shuffle_unit` of the authors' code) of a
    sequence [cls, p_1 .. p_N] (B, 1 + N, D) -> the rearranged patches (B, N', D):

    shift: the patches become [p_shift .. p_N, p_1 .. p_(shift-1)] (the first shift - 1
    patches move to the end; the authors' `shift_num` = 5 moves 4);
    shuffle: the shifted patches are padded (repeating the second-to-last) to a multiple
    of `groups`, cut into `groups` equal runs and interleaved (a stride-`groups` reading).
    """
    b, _, d = tokens.shape
    x = torch.cat([tokens[:, shift:], tokens[:, 1:shift]], dim=1)
    extra = (-x.shape[1]) % groups
    if extra:
        x = torch.cat([x] + [x[:, -2:-1]] * extra, dim=1)
    return x.view(b, groups, -1, d).transpose(1, 2).reshape(b, -1, d)


class TransReIDViT(TimmBackbone):
    """Keys of `timm` (arch, pretrained, model_kwargs, drop_path_rate, freeze_patch_embed)
    plus: `stride` (patch stride; the patch size keeps its value), `sie` (list of
    "camera" / "view"; [] turns SIE off), `sie_coefficient` (lambda), `num_cameras` /
    `num_views` (table sizes; cameras default to the training table's largest camera id
    + 1; views are read from `batch.extras["view"]`), `jpm` (on/off), `jpm_groups` (k),
    `shift`, `shuffle_groups`.
    """

    def __init__(self, ctx: BuildContext, arch: str = "vit_base_patch16_224", pretrained: bool | str = False,
                 model_kwargs: dict[str, Any] | None = None, drop_path_rate: float = 0.1,
                 freeze_patch_embed: bool = False, stride: int = 12,
                 sie: list[Literal["camera", "view"]] | None = None, sie_coefficient: float = 3.0,
                 num_cameras: int | None = None, num_views: int = 0, jpm: bool = True,
                 jpm_groups: int = 4, shift: int = 5, shuffle_groups: int = 2) -> None:
        with errors_named(NAME):
            super().__init__(ctx, arch=arch, pretrained=pretrained, model_kwargs=model_kwargs,
                             drop_path_rate=drop_path_rate, freeze_patch_embed=freeze_patch_embed)
        self._check_model(arch)
        self._set_stride(int(stride))
        self._build_sie(ctx, ["camera"] if sie is None else list(sie), sie_coefficient, num_cameras, num_views)
        if jpm and (jpm_groups < 1 or shuffle_groups < 1 or not 1 <= shift <= self.num_patches):
            raise ValueError(f"{NAME}: jpm_groups and shuffle_groups must be >= 1 and shift in "
                             f"[1, {self.num_patches}]; got {jpm_groups}, {shuffle_groups}, {shift}")
        self.jpm, self.jpm_groups, self.shift, self.shuffle_groups = bool(jpm), int(jpm_groups), int(shift), int(shuffle_groups)
        # Sec. 3.3: a copy of the last layer (and norm) with its own weights, from the pretrained ones
        self.jpm_block = copy.deepcopy(self.model.blocks[-1]) if jpm else None
        self.jpm_norm = copy.deepcopy(self.model.norm) if jpm else None

    def _check_model(self, arch: str) -> None:
        from timm.models.vision_transformer import VisionTransformer

        vit = self.model
        if not isinstance(vit, VisionTransformer) or vit.cls_token is None or vit.num_prefix_tokens != 1 \
                or vit.pos_embed is None or vit.no_embed_class:
            raise ValueError(f"{NAME}: arch '{arch}' must be a timm VisionTransformer with one class token, "
                             "no register tokens and position embeddings over [cls, patches] (e.g. "
                             "vit_base_patch16_224, vit_small_patch16_224, deit_base_patch16_224)")

    def _set_stride(self, stride: int) -> None:
        from timm.layers import resample_abs_pos_embed

        pe = self.model.patch_embed
        patch = pe.patch_size
        if not 1 <= stride <= min(patch):
            raise ValueError(f"{NAME}: stride must be in [1, {min(patch)}] (the patch size), got {stride}")
        h, w = pe.img_size
        grid = ((h - patch[0]) // stride + 1, (w - patch[1]) // stride + 1)
        if stride != pe.proj.stride[0] or tuple(grid) != tuple(pe.grid_size):
            new = resample_abs_pos_embed(self.model.pos_embed.data, new_size=list(grid),
                                         old_size=list(pe.grid_size), num_prefix_tokens=1)
            self.model.pos_embed = nn.Parameter(new)
            pe.proj.stride = (stride, stride)
            pe.grid_size = grid
            pe.num_patches = grid[0] * grid[1]
        self.stride = stride
        self.patch_grid = (int(grid[0]), int(grid[1]))
        self.num_patches = self.patch_grid[0] * self.patch_grid[1]

    def _build_sie(self, ctx: BuildContext, kinds: list[str], coefficient: float,
                   num_cameras: int | None, num_views: int) -> None:
        bad = [k for k in kinds if k not in SIE_KINDS]
        if bad:
            raise ValueError(f"{NAME}: sie entries must be among {', '.join(SIE_KINDS)}, got {bad}")
        self.sie_kinds, self.sie_coefficient = kinds, float(coefficient)
        if num_cameras is None:
            if ctx.train is not None and len(ctx.train):
                num_cameras = int(ctx.train.camids.max()) + 1
            else:
                num_cameras = int(ctx.num_cameras)
        self.num_cameras = int(num_cameras) if "camera" in kinds else 1
        self.num_views = int(num_views) if "view" in kinds else 1
        if "camera" in kinds and self.num_cameras < 1:
            raise ValueError(f"{NAME}: SIE with cameras needs num_cameras >= 1 (none found in the training table)")
        if "view" in kinds and num_views < 1:
            raise ValueError(f"{NAME}: SIE with views needs `num_views` (the number of view labels)")
        self.sie_embed = None
        if kinds:
            self.sie_embed = nn.Parameter(torch.zeros(self.num_cameras * self.num_views, 1, self.model.embed_dim))
            nn.init.trunc_normal_(self.sie_embed, std=0.02)

    def side_index(self, batch: Batch) -> torch.Tensor:
        """The SIE index per sample: camera * N_V + view (camera or view alone when only one is used)."""
        n, device = batch.camids.shape[0], self.sie_embed.device
        # the unused kind's zeros made on the device (a copy from the host would wait for a GPU)
        cams = batch.camids.long() if "camera" in self.sie_kinds else torch.zeros(n, dtype=torch.long, device=device)
        if "view" in self.sie_kinds:
            if "view" not in batch.extras:
                raise KeyError(f"{NAME}: SIE with views reads batch.extras['view'] (a view label per image, "
                               "from the dataset's records), which this batch lacks")
            views = torch.as_tensor(batch.extras["view"]).long().view(-1)
        else:
            views = torch.zeros(n, dtype=torch.long, device=device)
        cams, views = cams.to(device), views.to(device)
        # the input check reads the data (compiled, a graph break): eager only
        if not torch.compiler.is_compiling():
            self._check_side(batch, n)
        return cams * self.num_views + views

    def _check_side(self, batch: Batch, n: int) -> None:
        """Every camera and view inside the SIE table, read on the batch's host copies
        (`Batch.host`: no host sync)."""
        zeros = np.zeros(n, dtype=np.int64)
        cams = batch.host("camids").astype(np.int64) if "camera" in self.sie_kinds else zeros
        views = np.asarray(batch.host("view"), dtype=np.int64).reshape(-1) if "view" in self.sie_kinds else zeros
        if ((cams >= self.num_cameras) | (cams < 0) | (views >= self.num_views)).any():
            raise ValueError(f"{NAME}: a camera id ({int(cams.max())}) or view ({int(views.max())}) is outside "
                             f"the SIE table ({self.num_cameras} cameras x {self.num_views} views); set "
                             "`num_cameras` / `num_views` to cover every split")

    def forward_tokens(self, batch: Batch) -> torch.Tensor:
        """The sequence entering the last layer (B, 1 + N, D)."""
        vit = self.model
        x = vit._pos_embed(vit.patch_embed(batch.images))  # [cls, patches] + P (+ dropout)
        if self.sie_embed is not None:
            x = x + self.sie_coefficient * self.sie_embed[self.side_index(batch)].to(x.dtype)
        x = vit.norm_pre(vit.patch_drop(x))
        for block in vit.blocks[:-1]:
            x = block(x)
        return x

    def _read_out(self, token: torch.Tensor) -> torch.Tensor:
        return self.model.head_drop(self.model.fc_norm(token))

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        x = self.forward_tokens(batch)
        tokens = self.model.norm(self.model.blocks[-1](x))
        out = {"global": self._read_out(tokens[:, 0]), "tokens": tokens}
        if self.jpm:
            cls = x[:, :1]
            patches = jigsaw(x, self.shift, self.shuffle_groups)
            length = patches.shape[1] // self.jpm_groups
            parts = [self.jpm_norm(self.jpm_block(torch.cat([cls, patches[:, i * length:(i + 1) * length]], dim=1)))[:, 0]
                     for i in range(self.jpm_groups)]
            out["parts"] = torch.stack([self._read_out(p) for p in parts], dim=1)
        return out

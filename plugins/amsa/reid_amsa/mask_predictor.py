"""Residual Mask Prediction (MUVA Sec. 3.2.1, eq. 5): one per transformer block, in a
bypass branch beside the block's self-attention.

    r'_{l-1} = CrossAttn(LN(r_{l-1}), LN(F_{l-1})) + r_{l-1}
    M_l      = MLP(LN(r'_{l-1})) + M_{l-1}            (M_0 = 0)
    M~_l     = sigmoid(M_l)

r: the P local tokens entering block l (queries); F: the N patch tokens entering block
l (keys and values). The MLP maps each part's token to one score per patch
(width -> `hidden` -> QuickGELU -> N; `hidden` defaults to N, as the authors' code has
it: 128 for ViT-B/16 at 256x128). Scores accumulate layer to layer, so a deep block only
refines the part maps of the blocks before it. r' feeds the MLP only — the local tokens
in the main sequence are changed by the block, never by this branch.

Layers and initialisation follow the authors' code (RikoLi/MUVA, model/ammsa.py and
model/utils.py): the cross-attention's q / k / v projections have no bias, its output
projection has one (PyTorch's default init); every projection weight is trunc-normal
(std 0.02); the MLP's weights are trunc-normal (std 0.02) with zero biases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from open_clip.transformer import LayerNorm, QuickGELU


class CrossAttention(nn.Module):
    """Multi-head attention of `queries` over `context`: bias-free q / k / v, an output
    projection with bias, softmax(q k^T / sqrt(d_head)) v per head."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if heads < 1 or width % heads:
            raise ValueError(f"ResidualMaskPredictor: the cross-attention heads ({heads}) must divide the token "
                             f"width ({width})")
        self.heads = int(heads)
        self.q = nn.Linear(width, width, bias=False)
        self.k = nn.Linear(width, width, bias=False)
        self.v = nn.Linear(width, width, bias=False)
        self.out = nn.Linear(width, width)
        for layer in (self.q, self.k, self.v, self.out):
            nn.init.trunc_normal_(layer.weight, std=0.02)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, count, width = queries.shape

        def split(x: torch.Tensor) -> torch.Tensor:  # (B, S, W) -> (B, heads, S, W / heads)
            return x.reshape(batch, x.shape[1], self.heads, width // self.heads).transpose(1, 2)

        attended = F.scaled_dot_product_attention(split(self.q(queries)), split(self.k(context)),
                                                  split(self.v(context)))
        return self.out(attended.transpose(1, 2).reshape(batch, count, width))


class ResidualMaskPredictor(nn.Module):
    def __init__(self, width: int, num_patches: int, heads: int = 2, hidden: int | None = None) -> None:
        super().__init__()
        hidden = int(num_patches if hidden is None else hidden)
        self.norm_local = LayerNorm(width)
        self.norm_patches = LayerNorm(width)
        self.cross_attn = CrossAttention(width, heads)
        self.norm_mlp = LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), QuickGELU(), nn.Linear(hidden, num_patches))
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, local: torch.Tensor, patches: torch.Tensor,
                previous: torch.Tensor | None = None) -> torch.Tensor:
        """local (B, P, W), patches (B, N, W), previous M_{l-1} (B, P, N) or None -> M_l (B, P, N)."""
        attended = self.cross_attn(self.norm_local(local), self.norm_patches(patches)) + local
        scores = self.mlp(self.norm_mlp(attended))
        return scores if previous is None else scores + previous

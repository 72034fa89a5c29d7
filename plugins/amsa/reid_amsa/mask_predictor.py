"""Residual Mask Prediction (MUVA Sec. 3.2.1, eq. 5): one per transformer block, in a
bypass branch beside the block's self-attention.

    r'_{l-1} = CrossAttn(LN(r_{l-1}), LN(F_{l-1})) + r_{l-1}
    M_l      = MLP(LN(r'_{l-1})) + M_{l-1}            (M_0 = 0)
    M~_l     = sigmoid(M_l)

r: the P local tokens entering block l (queries); F: the N patch tokens entering block
l (keys and values). The MLP maps each part's token to one score per patch
(width -> `hidden` (128) -> QuickGELU -> N). Scores accumulate layer to layer, so a deep
block only refines the part maps of the blocks before it. The cross-attention's q/k/v
projections have no bias (METHODS.md); r' feeds the MLP only — the local tokens in the
main sequence are changed by the block, never by this branch.
"""

from __future__ import annotations

import torch
from torch import nn

from open_clip.transformer import LayerNorm, QuickGELU


class ResidualMaskPredictor(nn.Module):
    def __init__(self, width: int, num_patches: int, heads: int = 2, hidden: int = 128) -> None:
        super().__init__()
        if heads < 1 or width % heads:
            raise ValueError(f"ResidualMaskPredictor: the cross-attention heads ({heads}) must divide the token "
                             f"width ({width})")
        self.norm_local = LayerNorm(width)
        self.norm_patches = LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, heads, bias=False, batch_first=True)
        self.norm_mlp = LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), QuickGELU(), nn.Linear(hidden, num_patches))

    def forward(self, local: torch.Tensor, patches: torch.Tensor,
                previous: torch.Tensor | None = None) -> torch.Tensor:
        """local (B, P, W), patches (B, N, W), previous M_{l-1} (B, P, N) or None -> M_l (B, P, N)."""
        keys = self.norm_patches(patches)
        attended = self.cross_attn(self.norm_local(local), keys, keys, need_weights=False)[0] + local
        scores = self.mlp(self.norm_mlp(attended))
        return scores if previous is None else scores + previous

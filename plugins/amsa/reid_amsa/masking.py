"""Mask Gating (MUVA Sec. 3.2.2, eqs. 6-7): part probabilities -> the additive attention
mask of one transformer block, and the fixed stripes of the paper's ablation (Table 8).

The sequence is [CLS, local_1 .. local_P, patch_1 .. patch_N]. Eq. 6 gives the local
rows of the mask, A[p, i] = 0 where the (detached) probability of patch i for part p
exceeds t, -inf elsewhere; eq. 7 pads it to the whole sequence. The padding is ours
(METHODS.md), the same for every head:

                CLS   local            patches
      CLS    [   0     0 ...            0 ...      ]   CLS sees everything
      local  [   0     0 on diag, -inf  A_l        ]   a part reads CLS, itself, its patches
      patch  [   0     A_l^T            0 ...      ]   a patch reads the parts it belongs to

so the global token and the patches attend as in CLIP except that a patch reads a
local token only when it lies inside that part, and a local token is never empty (it
always reads CLS and itself: no all -inf row, no NaN).
"""

from __future__ import annotations

import torch

from core.data.spatial import boxes_to_patch_masks


def gate(probabilities: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Eq. 6 as a boolean gate: True where a patch belongs to a part, p > t. The
    probabilities are detached: no gradient flows through the gate (the predictor
    learns from L_mask alone)."""
    return probabilities.detach() > threshold


def attention_mask(gates: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The additive mask (B, S, S), S = 1 + P + N, of the module docstring, from the
    boolean gates (B, P, N). Built by broadcasting from `gates` alone, so a traced model
    (`core export`) keeps a dynamic batch size."""
    if gates.dim() != 3:
        raise ValueError(f"attention_mask: gates must be (batch, parts, patches), got {tuple(gates.shape)}")
    _, parts, patches = gates.shape
    zero = torch.zeros_like(gates[:, :1, :1], dtype=dtype)  # (B, 1, 1)
    part_to_patch = zero.expand(-1, parts, patches).masked_fill(~gates.bool(), float("-inf"))
    eye = torch.eye(parts, dtype=torch.bool, device=gates.device)
    local_local = torch.zeros(parts, parts, dtype=dtype, device=gates.device).masked_fill(~eye, float("-inf"))
    size = 1 + parts + patches
    cls_row = zero.expand(-1, 1, size)
    local_rows = torch.cat([zero.expand(-1, parts, 1), zero + local_local, part_to_patch], dim=2)
    patch_rows = torch.cat([zero.expand(-1, patches, 1), part_to_patch.transpose(1, 2),
                            zero.expand(-1, patches, patches)], dim=2)
    return torch.cat([cls_row, local_rows, patch_rows], dim=1)


def per_head(mask: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, S, S) -> (B * heads, S, S), batch-major, the layout nn.MultiheadAttention and
    open_clip's Attention read a 3-D mask in: one mask shared by every head."""
    size = mask.shape[-1]
    return mask[:, None].expand(-1, heads, size, size).reshape(-1, size, size)


def stripe_masks(grid: tuple[int, int], parts: int = 3) -> torch.Tensor:
    """Fixed equal horizontal stripes (the `stripes` ablation), bool (P, rows * cols),
    row-major: part p is the band [p/P, (p+1)/P) of the image height voted onto the
    grid with the core's rule (a patch is in when the band covers half of it)."""
    if parts < 1:
        raise ValueError(f"stripe_masks: parts must be >= 1, got {parts}")
    boxes = [[0.0, p / parts, 1.0, (p + 1) / parts] for p in range(parts)]
    masks = boxes_to_patch_masks(boxes, grid)  # (P, rows, cols)
    return torch.as_tensor(masks).reshape(parts, -1)

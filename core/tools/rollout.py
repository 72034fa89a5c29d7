"""Attention rollout for ViT backbones (Abnar & Zuidema 2020, "Quantifying Attention Flow
in Transformers", Sec. 3): how much each patch flows into the class token.

Per layer l the heads' attention maps are fused (mean, as in the paper; max or min as in
common variants), the residual connection is accounted for by adding the identity and
renormalising the rows, A~_l = (A_l + I) / rowsum, and the layers are multiplied in
order, R = A~_L ... A~_2 A~_1. The class token's row of R over the patch tokens,
reshaped to the backbone's patch grid (rows x cols, row-major, any stride), is the map.
`discard_ratio` (Gildenblat's variant) zeroes the weakest fraction of each fused map's
entries before the identity is added (the class token's attention to itself is kept).
A model without a class token (global average pooling) gets the mean of all rows.

The attention weights are read without touching the model: a forward hook on each timm
`Attention` module recomputes softmax(q k^T * scale) from the module's input with its own
qkv projection and q/k norms, so the fused (SDPA) kernel still produces the outputs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

FUSIONS = ("mean", "max", "min")


def rollout(attentions: Sequence[torch.Tensor], discard_ratio: float = 0.0, head_fusion: str = "mean",
            prefix_tokens: int = 1) -> torch.Tensor:
    """Attention rollout over layers (first to last), each (B, heads, N, N) -> (B, N - prefix)
    flow from the patch tokens into token 0 (the class token; the mean of all tokens when
    `prefix_tokens` is 0)."""
    if not attentions:
        raise ValueError("rollout: no attention maps were recorded")
    if head_fusion not in FUSIONS:
        raise ValueError(f"rollout: head_fusion must be one of {', '.join(FUSIONS)}, got {head_fusion!r}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"rollout: discard_ratio must be in [0, 1), got {discard_ratio}")
    first = attentions[0]
    b, _, n, _ = first.shape
    eye = torch.eye(n, dtype=torch.float64, device=first.device)
    result = eye.expand(b, n, n).clone()
    for attn in attentions:
        a = attn.detach().double()
        fused = {"mean": lambda t: t.mean(1), "max": lambda t: t.amax(1), "min": lambda t: t.amin(1)}[head_fusion](a)
        if discard_ratio > 0:
            flat = fused.reshape(b, -1)
            drop = int(flat.shape[1] * discard_ratio)
            if drop:
                lowest = flat.topk(drop, dim=1, largest=False).indices
                mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, lowest, True)
                mask[:, 0] = False  # the class token's attention to itself stays
                fused = flat.masked_fill(mask, 0.0).reshape(b, n, n)
        fused = fused + eye
        fused = fused / fused.sum(dim=-1, keepdim=True)
        result = fused @ result
    flow = result[:, 0] if prefix_tokens else result.mean(dim=1)  # no class token: every token's flow
    return flow[:, prefix_tokens:].float()


def attention_modules(backbone: nn.Module) -> list[nn.Module]:
    """The self-attention modules of a timm ViT backbone's main blocks, in order."""
    from timm.models.vision_transformer import Attention

    vit = getattr(backbone, "model", backbone)
    blocks = getattr(vit, "blocks", None)
    if blocks is None:
        return []
    return [m for block in blocks for m in block.modules() if isinstance(m, Attention)]


def attention_weights(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T * scale) (B, heads, N, N) of a timm `Attention` for its input x (B, N, C)."""
    b, n, _ = x.shape
    qkv = module.qkv(x).reshape(b, n, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
    q, k = module.q_norm(qkv[0]), module.k_norm(qkv[1])
    return ((q * module.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1)


class AttentionRecorder:
    """Context manager: records each hooked attention module's weights, in call order."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = list(modules)
        self.maps: list[torch.Tensor] = []
        self._handles: list = []

    def _hook(self, module, args, kwargs, output):
        if kwargs.get("attn_mask") is not None or (len(args) > 1 and args[1] is not None):
            raise ValueError("rollout: attention with a mask is not supported")
        with torch.no_grad():
            self.maps.append(attention_weights(module, args[0]))

    def __enter__(self) -> "AttentionRecorder":
        self.maps = []
        self._handles = [m.register_forward_hook(self._hook, with_kwargs=True) for m in self.modules]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def rollout_maps(run_forward: Callable[[], object], backbone: nn.Module, grid: tuple[int, int],
                 discard_ratio: float = 0.0, head_fusion: str = "mean") -> torch.Tensor:
    """Run the model once and return the rollout maps (B, rows, cols) over its patch grid."""
    modules = attention_modules(backbone)
    if not modules:
        raise ValueError(f"rollout: backbone {type(backbone).__name__} has no timm ViT attention blocks "
                         "(`.model.blocks[i].attn`); rollout needs a ViT (for CNNs use --method gradcam)")
    with AttentionRecorder(modules) as recorder, torch.no_grad():
        run_forward()
    maps = recorder.maps[:len(modules)]  # the main stream's blocks, once each
    vit = getattr(backbone, "model", backbone)
    prefix = int(getattr(vit, "num_prefix_tokens", 1))
    flow = rollout(maps, discard_ratio, head_fusion, prefix)
    rows, cols = grid
    if flow.shape[1] != rows * cols:
        raise ValueError(f"rollout: {flow.shape[1]} patch tokens but the backbone's patch_grid is {grid}")
    return flow.reshape(-1, rows, cols)

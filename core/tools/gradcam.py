"""Grad-CAM for retrieval: where a CNN looks when two images are judged similar.

Grad-CAM (Selvaraju et al. 2017, Eq. 1-2) explains a score y through a convolutional
feature map A (K channels): each channel's weight is its spatially averaged gradient,
alpha_k = 1/Z sum_ij dy/dA^k_ij, and the map is ReLU(sum_k alpha_k A^k). A ReID model has
no class score; following "Visualizing Deep Similarity Networks" (Stylianou et al. 2019)
and the usual ReID practice, y is the cosine similarity between the image's embedding
and a reference embedding (the matched image's, held fixed), so the map shows the
regions of this image that make it similar to the other one.

The samples of a batch are independent in eval mode, so one backward pass of the sum of
the per-sample similarities gives every sample's own map. Gradients are taken with
`torch.autograd.grad`: the model's parameters get no `.grad`, and the hook reads the
layer's output without changing it.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def similarity_target(embeddings: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each embedding (B, D) with its reference (B, D), held fixed: (B,)."""
    return F.cosine_similarity(embeddings.float(), references.detach().float().to(embeddings.device), dim=1)


def grad_cam(embed: Callable[[], torch.Tensor], layer: nn.Module, references: torch.Tensor) -> torch.Tensor:
    """Grad-CAM maps (B, h, w) at `layer`'s resolution, not normalised.

    `embed()` runs the model and returns the embeddings (B, D); `layer` is the module whose
    output (B, K, h, w) is explained (the last conv stage); `references` (B, D) are the
    embeddings each sample's similarity is taken with.
    """
    captured: list[torch.Tensor] = []

    def keep(module: nn.Module, inputs, output):
        if not torch.is_tensor(output) or output.dim() != 4:
            raise ValueError(f"grad-cam: the target layer {type(module).__name__} outputs "
                             f"{tuple(getattr(output, 'shape', ()))}; it needs a feature map (B, C, H, W)")
        if not output.requires_grad:  # every layer up to here frozen: follow the map itself
            output.requires_grad_(True)
        captured.append(output)

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            embeddings = embed()
            if not captured:
                raise ValueError(f"grad-cam: the target layer {type(layer).__name__} did not run in the forward pass")
            activations = captured[-1]
            score = similarity_target(embeddings, references).sum()
            (gradients,) = torch.autograd.grad(score, activations)
    finally:
        handle.remove()
    weights = gradients.float().mean(dim=(2, 3), keepdim=True)        # alpha_k, Eq. 1
    return F.relu((weights * activations.detach().float()).sum(dim=1))  # Eq. 2


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, H, W) bilinearly, each map scaled to [0, 1] (min to max, as
    pytorch-grad-cam shows them); a constant map becomes zeros."""
    up = F.interpolate(maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    low = up.amin(dim=(1, 2), keepdim=True)
    span = up.amax(dim=(1, 2), keepdim=True) - low
    return torch.where(span > 0, (up - low) / span.clamp_min(1e-12), torch.zeros_like(up))


def last_feature_map_layer(run_forward: Callable[[], object], root: nn.Module) -> tuple[str, nn.Module]:
    """The module under `root` whose output is the last spatial feature map (B, C, H, W)
    computed in a forward pass: the end of the last conv stage (ResNet's last unit, a timm
    CNN's last stage or head conv). Returns (dotted name, module).

    Modules inside an attention module are passed over: their 4-D outputs (a timm
    `Attention`'s q_norm / k_norm: queries and keys (B, heads, tokens, head_dim)) are not
    spatial maps, and Grad-CAM's channel weights (Eq. 1) need K channels over h x w. A
    backbone holding a ViT under another name (Instruct-ReID's `image_encoder.model` and
    its editing blocks) otherwise got the last block's k_norm."""
    attention = [name for name, module in root.named_modules()
                 if name and (isinstance(module, nn.MultiheadAttention) or type(module).__name__.endswith("Attention"))]
    names = {module: name for name, module in root.named_modules()
             if name and not any(name.startswith(a + ".") for a in attention)}
    order: list[nn.Module] = []

    def note(module, inputs, output):
        if torch.is_tensor(output) and output.dim() == 4 and output.shape[2] * output.shape[3] > 1:
            order.append(module)

    handles = [m.register_forward_hook(note) for m in names]
    try:
        with torch.no_grad():
            run_forward()
    finally:
        for h in handles:
            h.remove()
    if not order:
        raise ValueError("grad-cam: no layer of the backbone outputs a spatial feature map (B, C, H, W); "
                         "Grad-CAM needs a CNN backbone (for ViTs use --method rollout)")
    return names[order[-1]], order[-1]


#: `--cam` names served by pytorch-grad-cam (`pip install reid-core[explain]`) -> its class
LIBRARY_CAMS = {"gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "hirescam": "HiResCAM",
                "layercam": "LayerCAM", "eigencam": "EigenCAM", "eigengradcam": "EigenGradCAM",
                "scorecam": "ScoreCAM", "ablationcam": "AblationCAM"}


class _Embedder(nn.Module):
    """images -> embeddings, for pytorch-grad-cam, which calls `model(images)`; the other
    Batch fields are the template's (repeated from its first sample for other batch sizes,
    e.g. ScoreCAM's masked copies)."""

    def __init__(self, model: nn.Module, template) -> None:
        super().__init__()
        self.model, self.template = model, template

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        import dataclasses

        t = self.template
        fields = {}
        for f in dataclasses.fields(t):
            value = getattr(t, f.name)
            if f.name != "images" and torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] != len(images):
                value = value[:1].expand(len(images), *value.shape[1:])
            fields[f.name] = value
        fields["images"] = images
        return self.model(type(t)(**fields))["embedding"]


def library_cam(name: str, model: nn.Module, layer: nn.Module, batch, references: torch.Tensor) -> torch.Tensor:
    """A pytorch-grad-cam method's maps (B, H, W) in [0, 1] at the input size, its target the
    same cosine similarity as `grad_cam`'s."""
    try:
        import pytorch_grad_cam
    except ImportError as exc:
        raise ValueError(f"--cam {name} uses pytorch-grad-cam: pip install 'reid-core[explain]' "
                         "(the built-in --cam gradcam needs nothing)") from exc
    if name not in LIBRARY_CAMS:
        raise ValueError(f"--cam {name}: unknown; choose gradcam or one of {', '.join(LIBRARY_CAMS)}")
    refs = references.detach().float()
    targets = [lambda output, r=r: F.cosine_similarity(output.float()[None], r[None].to(output.device))[0]
               for r in refs]
    with getattr(pytorch_grad_cam, LIBRARY_CAMS[name])(model=_Embedder(model, batch), target_layers=[layer]) as cam:
        maps = cam(input_tensor=batch.images, targets=targets)
    model.zero_grad(set_to_none=True)  # pytorch-grad-cam backpropagates into the parameters
    return torch.from_numpy(maps).float()

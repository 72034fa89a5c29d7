"""Hook implementations. The lazy targets keep `core plugins` free of torch and timm."""

from core.hookspecs import hookimpl


@hookimpl
def register_backbones(register):
    register("hse_vit", "reid_hse.backbone:DualTokenViT")


@hookimpl
def register_heads(register):
    register("hse", "reid_hse.head:HSEHead")


@hookimpl
def register_losses(register):
    register("hse", "reid_hse.loss:HSELoss")

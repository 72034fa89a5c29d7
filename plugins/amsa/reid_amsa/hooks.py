"""Hook implementations: lazy "module:Class" targets, so `core plugins` imports no torch."""

from core.hookspecs import hookimpl


@hookimpl
def register_backbones(register):
    register("amsa_clip", "reid_amsa.backbone:AMSAClip")


@hookimpl
def register_heads(register):
    register("muva", "reid_amsa.head:MUVAHead")


@hookimpl
def register_losses(register):
    register("muva_cmp", "reid_amsa.cmp_loss:MultiGrainedCMPLoss")
    register("muva_prototype", "reid_amsa.prototype_loss:PrototypeContrastLoss")
    register("muva_i2t", "reid_amsa.i2t_loss:ImageToTextCELoss")
    register("muva_mask", "reid_amsa.mask_loss:PartMaskLoss")

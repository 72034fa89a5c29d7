"""Hook implementations: reid-core calls these to learn what this plugin provides.

Targets are lazy "module:Class" strings, so `core plugins` and `core --help` never
import torch or this plugin's modules; a component's module is imported when a pipeline
builds it.
"""

from core.hookspecs import hookimpl


@hookimpl
def register_samplers(register):
    register("camera-pk", "reid_contrastive.sampler:CameraPKSampler")


@hookimpl
def register_losses(register):
    register("contrastive", "reid_contrastive.loss:ContrastiveLoss")


"""Hook implementations: lazy "module:Class" targets, so `core plugins` imports no torch."""

from core.hookspecs import hookimpl


@hookimpl
def register_datasets(register):
    register("instruct", "reid_instruct_editor.dataset:InstructDataset")


@hookimpl
def register_samplers(register):
    register("task_pk", "reid_instruct_editor.sampler:TaskPKSampler")


@hookimpl
def register_backbones(register):
    register("instruct_editor", "reid_instruct_editor.backbone:InstructEditor")


@hookimpl
def register_heads(register):
    register("instruct_editor", "reid_instruct_editor.head:InstructHead")


@hookimpl
def register_losses(register):
    register("instruct_id", "reid_instruct_editor.identity_loss:InstructIdentityLoss")
    register("adaptive_triplet", "reid_instruct_editor.adaptive_triplet:AdaptiveTripletLoss")
    register("irm_memory", "reid_instruct_editor.memory:IRMMemoryLoss")
    register("t2i_contrastive", "reid_instruct_editor.t2i_contrastive:T2IContrastiveLoss")
    register("t2i_matching", "reid_instruct_editor.t2i_matching:T2IMatchingLoss")


@hookimpl
def register_evaluators(register):
    register("instruct_reid", "reid_instruct_editor.evaluator:InstructReIDEvaluator")

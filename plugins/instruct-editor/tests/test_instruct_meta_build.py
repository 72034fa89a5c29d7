"""instruct-editor's head and text-to-image contrastive loss build on the meta device (a
sweep checks each variant so, before its first run: core.parameter_check.check_build),
and built for real they are what their definitions give: per task, a block of columns
over its training identities (task_classifier.py), and empty queues."""

import numpy as np
import pytest
import torch
from torch import nn

from core.context import BuildContext
from core.data.table import RecordTable
from core.records import Record
from reid_instruct_editor.head import InstructHead
from reid_instruct_editor.t2i_contrastive import T2IContrastiveLoss

DIM = 8


@pytest.fixture
def task_ctx():
    """Three tasks over six people (task -> original pids), two images each."""
    tasks = {"vi": [50], "cc": [30, 10, 20], "t2i": [40, 60]}
    records = [Record(path=None, pid=pid, camid=j, category="person", extras={"task": task})
               for task, pids in tasks.items() for pid in pids for j in range(2)]
    ctx = BuildContext.from_table(RecordTable.build([("src", records)], relabel=True), image_size=(32, 16))
    ctx.feature_dim = DIM
    return ctx


def blocks_by_definition(ctx):
    """(targets (T, N), owner (columns,)): tasks in name order, each task's identities in
    label order numbered on from the previous task's block; a plain loop."""
    rows = [(int(pid), r.extras["task"]) for pid, r in zip(ctx.train.pids, ctx.train.records)]  # relabelled
    tasks = sorted({task for _, task in rows})
    targets = [[-1] * ctx.num_identities for _ in tasks]
    owner, column = [], 0
    for t, task in enumerate(tasks):
        for pid in sorted({pid for pid, of in rows if of == task}):
            targets[t][pid] = column
            owner.append(t)
            column += 1
    return targets, owner


def test_the_instruct_head_builds_on_the_meta_device_as_it_does_for_real(task_ctx):
    real = InstructHead(task_ctx)
    with torch.device("meta"):
        meta = InstructHead(task_ctx)  # indexed a meta buffer with a mask (nonzero) before
    assert {k: v.shape for k, v in meta.state_dict().items()} == {k: v.shape for k, v in real.state_dict().items()}
    assert {k: v.shape for k, v in meta.named_buffers()} == {k: v.shape for k, v in real.named_buffers()}


def test_the_real_instruct_head_is_the_plain_construction_of_its_definition(task_ctx):
    targets, owner = blocks_by_definition(task_ctx)
    torch.manual_seed(0)
    head = InstructHead(task_ctx)
    assert head.classifiers.targets.tolist() == targets and head.classifiers.owner.tolist() == owner
    assert head.classifiers.owner.dtype == head.classifiers.targets.dtype == torch.long
    torch.manual_seed(0)  # the reference: the same draws in the same order
    projection = nn.Linear(DIM, 2 * DIM)
    layers = {k: nn.Linear(DIM, len(owner), bias=False) for k in ("bio", "clo", "global")}
    for layer in layers.values():
        nn.init.normal_(layer.weight, std=0.001)
    assert torch.equal(head.text_projection.weight, projection.weight)
    assert torch.equal(head.text_projection.bias, projection.bias)
    for k, layer in layers.items():
        assert torch.equal(head.classifiers.layers[k].weight, layer.weight), k


def test_the_t2i_contrastive_loss_builds_on_the_meta_device_with_empty_queues(task_ctx):
    with torch.device("meta"):
        meta = T2IContrastiveLoss(task_ctx, queue_size=16, dim=2 * DIM)  # copied meta buffers to numpy before
    real = T2IContrastiveLoss(task_ctx, queue_size=16, dim=2 * DIM)
    shapes = {k: v.shape for k, v in real.named_parameters()} | {k: v.shape for k, v in real.named_buffers()}
    assert {k: v.shape for k, v in meta.named_parameters()} | {k: v.shape for k, v in meta.named_buffers()} == shapes
    for loss in (meta, real):
        for name in ("image", "text"):
            ids, ptr = loss._host_queues[name]
            assert ids.dtype == np.int64 and ids.tolist() == [-1] * 16 and ptr == 0
    for name in ("image", "text"):  # the host mirror is the real buffers' copy
        assert real._host_queues[name][0].tolist() == getattr(real, f"{name}_ids").tolist()
        assert real._host_queues[name][1] == int(getattr(real, f"{name}_ptr"))

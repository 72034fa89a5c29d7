"""The HSE head builds on the meta device (a sweep checks each variant so, before its first
run: core.parameter_check.check_build), and built for real it is what its definition
(MGOR Sec. 3.3) gives: the core's BNNeck, then one bias-free classifier per training
category over that category's identities, N(0, 0.001)."""

import torch
from torch import nn

from core.models.bnneck import BNNeckHead
from reid_hse.head import HSEHead


def identities_per_category(ctx):
    """|Y_s| per training category, in the table's category order: a plain count."""
    seen = {name: set() for name in ctx.train.category_names}
    for pid, category in zip(ctx.train.pids.tolist(), ctx.train.category_ids.tolist()):
        seen[ctx.train.category_names[category]].add(pid)
    return [len(seen[name]) for name in ctx.train.category_names]


def test_the_hse_head_builds_on_the_meta_device_as_it_does_for_real(ctx):
    torch.manual_seed(0)
    real = HSEHead(ctx)
    with torch.device("meta"):
        meta = HSEHead(ctx)  # read its buffers' values (.item() of a meta tensor) before
    assert meta.width == real.width == 3
    shapes = {k: v.shape for k, v in real.state_dict().items()}
    assert {k: v.shape for k, v in meta.state_dict().items()} == shapes
    assert {k: v.shape for k, v in meta.named_buffers()} == {k: v.shape for k, v in real.named_buffers()}


def test_the_real_hse_head_is_the_plain_construction_of_its_definition(ctx):
    sizes = identities_per_category(ctx)  # animal 2, person 3, vehicle 1
    assert sizes == [2, 3, 1]
    torch.manual_seed(0)
    head = HSEHead(ctx)
    torch.manual_seed(0)  # the same draws in the same order: the neck, the layers, their N(0, 0.001)
    neck = BNNeckHead(ctx, feature="global", bias_free_bn=True, classifier=True, embedding="bn")
    layers = [nn.Linear(32, n, bias=False) for n in sizes]
    for layer in layers:
        nn.init.normal_(layer.weight, std=0.001)
    for key, value in neck.state_dict().items():
        assert torch.equal(head.neck.state_dict()[key], value), key
    for s, layer in enumerate(layers):
        assert torch.equal(head.local_classifiers[s].weight, layer.weight), s
    assert head.sizes.tolist() == sizes and head.sizes.dtype == torch.long
    assert head.offsets.tolist() == [0, 2, 5] and head.offsets.dtype == torch.long
    assert head.width == max(sizes)

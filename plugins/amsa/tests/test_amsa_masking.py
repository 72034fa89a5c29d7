"""Mask Gating (MUVA eqs. 6-7): the attention-mask layout, the masked attention of an
open_clip block against an explicit masked-softmax reference, and what a part's local
token can and cannot see."""

import math

import pytest
import torch

from reid_amsa.masking import attention_mask, gate, per_head, stripe_masks

INF = float("-inf")


def reference_attention(attn, x, mask):
    """softmax(Q K^T / sqrt(d) + mask) V per head with the same (B, S, S) mask for every
    head, then the output projection — written out from nn.MultiheadAttention's weights."""
    batch, size, width = x.shape
    heads = attn.num_heads
    d = width // heads
    q, k, v = (x @ attn.in_proj_weight.t() + attn.in_proj_bias).split(width, dim=-1)
    q, k, v = (t.reshape(batch, size, heads, d).transpose(1, 2) for t in (q, k, v))
    probabilities = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + mask[:, None], dim=-1)
    out = (probabilities @ v).transpose(1, 2).reshape(batch, size, width)
    return attn.out_proj(out), probabilities


def example_gates():
    """1 image, 3 parts on 8 patches: part 0 = {0, 1, 2}, part 1 = {2, 3, 4, 5}, part 2 empty."""
    gates = torch.zeros(1, 3, 8, dtype=torch.bool)
    gates[0, 0, :3] = True
    gates[0, 1, 2:6] = True
    return gates


def test_gate_is_eq6_strictly_above_the_threshold_and_detached():
    probabilities = torch.tensor([[[0.2, 0.5, 0.51, 0.9]]], requires_grad=True)
    gates = gate(probabilities, 0.5)
    assert gates.tolist() == [[[False, False, True, True]]] and not gates.requires_grad


def test_mask_layout_cls_open_locals_diagonal_part_rows_and_their_transpose():
    mask = attention_mask(example_gates())[0]
    P, N = 3, 8
    assert mask.shape == (1 + P + N, 1 + P + N)
    assert (mask[0] == 0).all() and (mask[:, 0] == 0).all()  # CLS sees all, all see CLS
    local = mask[1:1 + P, 1:1 + P]
    assert torch.equal(local == 0, torch.eye(P, dtype=torch.bool))  # parts see themselves only
    part_to_patch = mask[1:1 + P, 1 + P:]
    assert part_to_patch[0].tolist() == [0, 0, 0, INF, INF, INF, INF, INF]
    assert part_to_patch[1].tolist() == [INF, INF, 0, 0, 0, 0, INF, INF]
    assert (part_to_patch[2] == INF).all()
    assert torch.equal(mask[1 + P:, 1:1 + P], part_to_patch.t())  # patch -> part: the transpose
    assert (mask[1 + P:, 1 + P:] == 0).all()  # patches attend as in CLIP


def test_every_head_gets_the_same_mask():
    mask = attention_mask(torch.rand(2, 3, 8) > 0.5)
    expanded = per_head(mask, 4)
    assert expanded.shape == (8, 12, 12)
    for b in range(2):
        for h in range(4):
            assert torch.equal(expanded[b * 4 + h], mask[b])


@pytest.mark.parametrize("block_type", ["default", "custom"])
def test_masked_block_attention_equals_the_explicit_masked_softmax(tiny_backbone, tiny_clip, block_type):
    tiny_clip["vision_cfg"]["block_type"] = block_type
    backbone = tiny_backbone(model_cfg=tiny_clip).eval()
    block = backbone.visual.transformer.resblocks[0]
    torch.manual_seed(1)
    x = torch.randn(2, 1 + 3 + 8, 32)
    gates = torch.cat([example_gates(), torch.rand(1, 3, 8) > 0.5])
    mask = attention_mask(gates)
    y = block.ln_1(x)
    if block_type == "default":
        got = block.attention(q_x=y, attn_mask=per_head(mask, backbone.heads[0]))
    else:
        got = block.attn(y, attn_mask=per_head(mask, backbone.heads[0]))
    # open_clip's custom Attention keeps nn.MultiheadAttention's tensor names
    expected, _ = reference_attention(block.attn, y, mask)
    assert torch.allclose(got, expected, atol=1e-5)


def test_a_part_token_attends_only_to_its_patches_and_receives_nothing_from_the_rest(tiny_backbone):
    backbone = tiny_backbone().eval()
    attn = backbone.visual.transformer.resblocks[0].attn
    x = torch.randn(1, 12, 32)
    _, p = reference_attention(attn, x, attention_mask(example_gates()))
    p = p[0]  # (heads, S, S)
    head_token, outside_head = 1, [3, 4, 5, 6, 7]  # part 0 covers patches 0-2; patch j is column 4 + j
    assert (p[:, head_token, [4 + j for j in outside_head]] == 0).all()  # it reads nothing outside its part
    assert (p[:, head_token, [4 + j for j in (0, 1, 2)]] > 0).all()
    assert (p[:, head_token, [2, 3]] == 0).all()  # nor the other parts
    assert (p[:, [4 + j for j in outside_head], head_token] == 0).all()  # patches outside never read it
    assert (p[:, [2, 3], head_token] == 0).all()  # nor do the other parts
    assert (p[:, [4 + j for j in (0, 1, 2)], head_token] > 0).all()  # its own patches do
    assert torch.isfinite(p).all()  # the empty part 2 still reads CLS and itself: no NaN row
    assert torch.allclose(p[:, 3].sum(-1), torch.ones(p.shape[0])) and (p[:, 3, 4:] == 0).all()


def test_one_masked_block_makes_a_part_feature_depend_on_its_patches_only(tiny_backbone, tiny_clip, make_batch):
    tiny_clip["vision_cfg"]["layers"] = 1
    backbone = tiny_backbone(model_cfg=tiny_clip).eval()
    gates = example_gates().float()  # part 0 = patches 0-2: grid cells (0,0) (0,1) (1,0)
    batch = make_batch([0])
    base = backbone(batch, gate_masks=gates)["part_features"][:, 0]
    outside, inside = batch.images.clone(), batch.images.clone()
    outside[:, :, 24:32, 8:16] += 1.0  # patch 7 (row 3, column 1)
    inside[:, :, 8:16, 0:8] += 1.0  # patch 2 (row 1, column 0)
    batch.images = outside
    assert torch.allclose(backbone(batch, gate_masks=gates)["part_features"][:, 0], base, atol=1e-6)
    batch.images = inside
    assert not torch.allclose(backbone(batch, gate_masks=gates)["part_features"][:, 0], base, atol=1e-4)


def test_stripes_are_equal_disjoint_thirds_covering_the_grid():
    stripes = stripe_masks((16, 8), 3).reshape(3, 16, 8)
    rows = [torch.nonzero(s.any(1)).flatten().tolist() for s in stripes]
    assert rows == [list(range(0, 5)), list(range(5, 11)), list(range(11, 16))]
    assert (stripes.sum(0) == 1).all()  # every patch in exactly one stripe
    assert torch.equal(stripes.any(2), stripes.all(2))  # whole rows

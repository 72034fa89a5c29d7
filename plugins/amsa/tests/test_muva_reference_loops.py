"""Each expected value is written from MUVA's equations / METHODS.md
with plain loops, not from the plugin's code (the survivors of a mutation audit)."""

import math

import torch

from core.context import BuildContext


# ---- eq. 2 (L_imp): the target is the label y_i, also when the memory prefers another identity
def test_imp_target_is_the_label_even_when_the_sample_is_nearer_another_prototype(make_batch):
    from reid_amsa.prototype_loss import PrototypeContrastLoss

    loss = PrototypeContrastLoss(BuildContext(num_identities=2, feature_dim=2), temperature=0.5)
    loss.memory.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    value, parts = loss({"bn_features": torch.tensor([[0.0, 2.0], [4.0, 3.0]])}, make_batch([0, 1]))
    expected = 0.0
    for v, y in (((0.0, 2.0), 0), ((4.0, 3.0), 1)):  # both samples nearer the other prototype
        norm = math.hypot(*v)
        s = [(v[0] * m[0] + v[1] * m[1]) / norm / 0.5 for m in ((1.0, 0.0), (0.0, 1.0))]
        expected -= s[y] - math.log(sum(math.exp(t) for t in s))
    assert math.isclose(float(value), expected / 2, rel_tol=1e-6)
    assert float(parts["acc"]) == 0.0


# ---- METHODS.md's test feature: BN(concat), L2-normalised
def test_the_evaluated_embedding_is_the_normalised_bn_feature(build_ctx, make_batch):
    from reid_amsa.head import MUVAHead

    ctx = build_ctx(identities=3)
    ctx.feature_dim = 4
    head = MUVAHead(ctx).eval()
    with torch.no_grad():
        head.bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
        head.bn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0, 9.0]))
        head.bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5, 1.5]))
    x = torch.tensor([[1.0, 0.0, 3.0, -3.0], [0.5, -1.0, 2.0, 6.0]])
    with torch.no_grad():
        out = head({"global": x}, make_batch([0, 1]))
    mean, var = head.bn.running_mean.tolist(), head.bn.running_var.tolist()
    weight, bias = head.bn.weight.tolist(), head.bn.bias.tolist()
    for i in range(2):
        bn = [(float(x[i, d]) - mean[d]) / math.sqrt(var[d] + head.bn.eps) * weight[d] + bias[d] for d in range(4)]
        norm = math.sqrt(sum(b * b for b in bn))
        for d in range(4):
            assert math.isclose(float(out["embedding"][i, d]), bn[d] / norm, rel_tol=1e-5, abs_tol=1e-6)


# ---- defaults of METHODS.md ("MUVA", "AM-MSA", "Stage 2")
def test_defaults_are_the_methods_page(tiny_backbone, build_ctx, make_batch):
    from reid_amsa.prototype_loss import PrototypeContrastLoss

    backbone = tiny_backbone()  # every key at its default
    assert backbone.threshold == 0.5  # t of eq. 6
    assert all(p.cross_attn.heads == 2 for p in backbone.mask_predictors)  # `heads` = 2 (small source sets)
    std = float(backbone.local_tokens.detach().std())
    assert 0.012 < std < 0.03, std  # trunc-normal std 0.02

    loss = PrototypeContrastLoss(BuildContext(num_identities=2, feature_dim=2))  # tau 0.01, gamma 0.2
    loss.memory.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    value, _ = loss({"bn_features": torch.tensor([[0.6, 0.8]])}, make_batch([0]))
    assert math.isclose(float(value), math.log(1 + math.exp((0.8 - 0.6) / 0.01)), rel_tol=1e-6)
    loss.update(torch.tensor([[0.0, 3.0]]), torch.tensor([0]))
    m = (0.2 * 1.0 + 0.8 * 0.0, 0.2 * 0.0 + 0.8 * 1.0)  # 0.2 m + 0.8 x, x = (0, 1)
    n = math.hypot(*m)
    assert torch.allclose(loss.memory[0], torch.tensor([m[0] / n, m[1] / n]))


# ---- eq. 5 at an attention temperature where the 1/sqrt(d_head) scale matters
def test_rmp_cross_attention_scales_by_the_head_width(tiny_backbone):
    from reid_amsa.mask_predictor import CrossAttention

    torch.manual_seed(5)
    attn = CrossAttention(width=32, heads=4)
    with torch.no_grad():
        for layer in (attn.q, attn.k, attn.v):
            layer.weight.normal_(0.0, 0.3)  # attention logits O(1): neither uniform nor one-hot
    r, f = torch.randn(2, 3, 32), torch.randn(2, 8, 32)
    with torch.no_grad():
        q, k, v = r @ attn.q.weight.t(), f @ attn.k.weight.t(), f @ attn.v.weight.t()
    d = 32 // 4
    out = torch.zeros(2, 3, 32)
    for b in range(2):
        for h in range(4):
            c = slice(h * d, (h + 1) * d)
            for i in range(3):
                logits = [float(q[b, i, c] @ k[b, j, c]) / math.sqrt(d) for j in range(8)]
                z = sum(math.exp(t) for t in logits)
                out[b, i, c] = sum(math.exp(logits[j]) / z * v[b, j, c] for j in range(8))
    with torch.no_grad():
        expected = out @ attn.out.weight.t() + attn.out.bias
        assert torch.allclose(attn(r, f), expected, atol=1e-5)


# ---- Sec. 3.1.1 / METHODS "Output": ln_post + proj on CLS and on each local token
def test_every_output_token_goes_through_ln_post_and_proj(tiny_backbone, make_batch):
    backbone = tiny_backbone().eval()
    seen = []
    last = backbone.visual.transformer.resblocks[-1]
    handle = last.register_forward_hook(lambda module, args, output: seen.append(output.detach().clone()))
    try:
        with torch.no_grad():
            out = backbone(make_batch([0, 1]))
    finally:
        handle.remove()
    x, ln, proj = seen[0], backbone.visual.ln_post, backbone.visual.proj
    for b in range(2):
        for t in range(4):  # CLS, head, upper body, legs
            row = x[b, t]
            mean = row.mean()
            var = ((row - mean) ** 2).mean()
            normed = (row - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias
            want = normed @ proj
            got = out["cls_feature"][b] if t == 0 else out["part_features"][b, t - 1]
            assert torch.allclose(got, want, atol=1e-5), (b, t)


# ---- eq. 3: what is stored for the update carries no graph
def test_the_features_kept_for_the_memory_update_are_detached(make_batch):
    from reid_amsa.prototype_loss import PrototypeContrastLoss

    loss = PrototypeContrastLoss(BuildContext(num_identities=2, feature_dim=2)).train()
    loss.memory.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    x = torch.tensor([[1.0, 2.0]], requires_grad=True)
    loss({"bn_features": x}, make_batch([1]))
    assert all(not f.requires_grad for f, _ in loss._pending)

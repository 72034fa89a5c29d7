"""Gradient flow of HSE's terms (MGOR Sec. 3.3) through its two tokens and its heads.

    l_glob = CE(g(z_G), y)         on meta-train and meta-test
    l_spec = CE(g^(s)(z_L), y~)    on meta-train only

For each term the gradient reaching the backbone outputs z_G and z_L, the two class
tokens c_G and c_L, the global classifier g and every per-category classifier g^(s) must
be non-zero exactly where the paper's asymmetric supervision sends it, and equal
autograd on an independent re-statement written here (BatchNorm by hand, each sample
scored by its own category's classifier in a loop, local indices from a sorted list,
torch's label-smoothed cross-entropy per row). Detaching z_L, a token, or a classifier
changes one of these gradients, so it fails here.
"""

import pytest
import torch
import torch.nn.functional as F

from reid_hse.backbone import DualTokenViT
from reid_hse.head import HSEHead
from reid_hse.loss import HSELoss

EPS = 0.1
ROLES = [0, 1] * 8  # 16 samples (8 identities x 2 images): alternating meta-train / meta-test


@pytest.fixture
def setup(build_ctx, make_batch, tiny_vit):
    # categories (sorted): animal 2 identities, person 3, vehicle 3
    ctx = build_ctx({"person": 3, "vehicle": 3, "animal": 2})
    torch.manual_seed(0)
    backbone = DualTokenViT(ctx, **tiny_vit).train()
    ctx.feature_dim = backbone.feature_dim
    head = HSEHead(ctx).train()
    with torch.no_grad():  # classifiers larger than their N(0, 0.001) init: well-conditioned gradients
        head.neck.classifier.weight.normal_(0.0, 0.3)
        for classifier in head.local_classifiers:
            classifier.weight.normal_(0.0, 0.3)
    return ctx, backbone, head, make_batch(ctx, roles=ROLES, seed=1)


def batch_norm(x, rows, weight, bias, eps):
    """BatchNorm (biased variance) with the statistics of `rows`, applied to every row."""
    ref = x[rows]
    return (x - ref.mean(0)) / torch.sqrt(ref.var(0, unbiased=False) + eps) * weight + bias


def reference(ctx, head, z_g, z_l, batch):
    """(l_glob(B_train) + l_glob(B_test), l_spec(B_train)) from the paper's equations."""
    train, test = batch.roles == 0, batch.roles == 1
    y = batch.pids
    every = torch.ones_like(train)
    bn = head.neck.bn
    logits = batch_norm(z_g, every, bn.weight, bn.bias, bn.eps) @ head.neck.classifier.weight.t()
    glob = (F.cross_entropy(logits[train], y[train], label_smoothing=EPS)
            + F.cross_entropy(logits[test], y[test], label_smoothing=EPS))
    names = list(ctx.train.category_names)
    pids, cats = ctx.train.pids.tolist(), ctx.train.category_ids.tolist()
    members = {s: sorted({p for p, c in zip(pids, cats) if c == s}) for s in range(len(names))}  # Y_s
    z_local = batch_norm(z_l, train, head.local_bn.weight, head.local_bn.bias, head.local_bn.eps)
    spec = []
    for b in train.nonzero().flatten().tolist():
        s = int(batch.categories[b])
        row = z_local[b] @ head.local_classifiers[s].weight.t()  # g^(s): |Y_s| logits
        target = members[s].index(int(y[b]))  # y~, the local index of y in Y_s
        spec.append(F.cross_entropy(row[None], torch.tensor([target]), label_smoothing=EPS))
    return glob, torch.stack(spec).mean()


def run(ctx, backbone, head, batch, **weights):
    features = backbone(batch)
    outputs = {**features, **head(features, batch)}
    total, parts = HSELoss(ctx, label_smoothing=EPS, **weights)(outputs, batch)
    return total, parts, features


def parameters(backbone, head):
    return {"c_G": backbone.model.cls_token, "c_L": backbone.local_token, "g": head.neck.classifier.weight,
            **{f"g^({s})": c.weight for s, c in enumerate(head.local_classifiers)}}


def grads(value, tensors):
    return torch.autograd.grad(value, list(tensors), allow_unused=True, retain_graph=True)


def norm(g):
    return 0.0 if g is None else float(g.abs().sum())


#: (term, HSE weights, what it reaches: z_G rows, z_L rows, parameters with a gradient).
#: l_spec reaches c_G too: the patches read c_G in every block and c_L reads the patches
#: (the tiny ViT has 2 blocks); l_glob never reaches c_L (isolated attention: nothing reads c_L).
TERMS = [("glob", {"global_weight": 1.0, "local_weight": 0.0}, ("all", "none", {"c_G", "g"})),
         ("spec", {"global_weight": 0.0, "local_weight": 1.0},
          ("none", "train", {"c_G", "c_L", "g^(0)", "g^(1)", "g^(2)"}))]


@pytest.mark.parametrize("term, weights, reaches", TERMS, ids=[t[0] for t in TERMS])
def test_each_term_sends_the_papers_gradient_to_its_token_and_heads(setup, term, weights, reaches):
    ctx, backbone, head, batch = setup
    total, parts, features = run(ctx, backbone, head, batch, **weights)
    z_g, z_l = features["global"], features["local"]
    glob, spec = reference(ctx, head, z_g, z_l, batch)
    expected = glob if term == "glob" else spec
    got_total = parts["glob_train"] + parts["glob_test"] if term == "glob" else parts["spec_train"]
    torch.testing.assert_close(got_total, expected.detach(), rtol=1e-5, atol=1e-6)
    params = parameters(backbone, head)
    tensors = [z_g, z_l, *params.values()]
    got, want = grads(total, tensors), grads(expected, tensors)
    for name, a, b in zip(["z_G", "z_L", *params], got, want):
        if b is None:
            assert norm(a) == 0.0, f"{term} reaches {name}, which its equation does not use"
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-8, msg=f"{term}: gradient on {name}")
    rows_g, rows_l, reached = reaches
    train = batch.roles == 0
    g_zg, g_zl = got[0], got[1]
    if rows_g == "all":
        assert (g_zg.abs().sum(1) > 0).all(), "l_glob must reach z_G of every sample (both halves)"
    else:
        assert norm(g_zg) == 0.0
    if rows_l == "train":
        assert (g_zl[train].abs().sum(1) > 0).all(), "l_spec must reach z_L of every meta-train sample"
        assert norm(g_zl[~train]) == 0.0, "l_spec must not reach z_L of meta-test samples"
    else:
        assert norm(g_zl) == 0.0
    for name, g in zip(params, got[2:]):
        assert (norm(g) > 0) == (name in reached), f"{term}: gradient on {name} is {norm(g)}"


def test_the_hse_total_is_the_plain_weighted_sum(setup):
    ctx, backbone, head, batch = setup
    total, _, features = run(ctx, backbone, head, batch, global_weight=0.7, local_weight=1.6)
    glob, spec = reference(ctx, head, features["global"], features["local"], batch)
    expected = 0.7 * glob + 1.6 * spec
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-6)
    params = list(parameters(backbone, head).values()) + [p for p in backbone.parameters() if p.requires_grad]
    got, want = grads(total, params), grads(expected, params)
    for a, b in zip(got, want):
        if b is None:
            assert norm(a) == 0.0
    # float32 through the blocks, sums in another order (some entries, e.g. attention key
    # biases, are 0 up to rounding): compare the whole gradient vector
    a = torch.cat([g.flatten() for g in got if g is not None])
    b = torch.cat([g.flatten() for g in want if g is not None])
    assert float((a - b).norm()) <= 1e-4 * float(b.norm())


def test_the_shared_blocks_learn_from_both_tokens(setup):
    """Both tokens share every block: l_glob and l_spec each move the shared weights."""
    ctx, backbone, head, batch = setup
    block = backbone.model.blocks[0].attn.qkv.weight
    for weights in ({"global_weight": 1.0, "local_weight": 0.0}, {"global_weight": 0.0, "local_weight": 1.0}):
        total, _, _ = run(ctx, backbone, head, batch, **weights)
        (g,) = grads(total, [block])
        assert norm(g) > 0, weights

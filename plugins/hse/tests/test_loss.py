"""The HSE loss (MGOR Sec. 3.3): l_glob = CE(g(z_G), y), l_spec = CE(g^(s)(z_L), y~);
meta-train: l_glob + l_spec, meta-test: l_glob only; without episodes both on the batch."""

import pytest
import torch
import torch.nn.functional as F

from reid_hse.loss import HSELoss, smoothed_cross_entropy

# 12 samples (6 identities x 2 images): alternate meta-train / meta-test
EPISODE = [0, 1] * 6


def step(model, batch):
    backbone, head, loss = model
    outputs = {**(features := backbone(batch)), **head(features, batch)}
    return loss(outputs, batch), outputs


def local_parameters(model):
    backbone, head, _ = model
    return {"c_L": backbone.local_token, "BN_L": head.local_bn.weight,
            **{f"g^({i})": c.weight for i, c in enumerate(head.local_classifiers)}}


def grads(model, total):
    backbone, head, _ = model
    params = list(local_parameters(model).values())
    return torch.autograd.grad(total, params, allow_unused=True, retain_graph=True)


def test_meta_test_samples_send_no_gradient_to_the_local_path(ctx, model, make_batch):
    backbone, head, loss = model
    batch = make_batch(ctx, roles=[1] * len(ctx.train))  # every sample meta-test
    (total, parts), _ = step(model, batch)
    assert float(parts["spec_train"]) == 0.0 and float(parts["glob_test"]) > 0
    for name, grad in zip(local_parameters(model), grads(model, total)):
        assert grad is None or torch.count_nonzero(grad) == 0, name
    (g_cls,) = torch.autograd.grad(total, [head.neck.classifier.weight], retain_graph=True)
    assert torch.count_nonzero(g_cls) > 0  # the global path is trained


def test_local_gradients_do_not_depend_on_the_meta_test_samples(ctx, model, make_batch):
    batch = make_batch(ctx, roles=EPISODE)
    (total, _), _ = step(model, batch)
    reference = grads(model, total)
    test = batch.roles == 1
    batch.images[test] = torch.randn_like(batch.images[test]) * 3  # other meta-test images
    (total, _), _ = step(model, batch)
    for name, a, b in zip(local_parameters(model), reference, grads(model, total)):
        torch.testing.assert_close(a, b, msg=f"{name} changed with the meta-test images")
        if name != "g^(2)":  # vehicle has one identity: a one-class CE is 0, with no gradient
            assert torch.count_nonzero(a) > 0, f"{name} gets no gradient from meta-train"


def test_with_full_attention_the_global_terms_reach_the_local_token(ctx, tiny_vit, make_batch):
    from reid_hse.backbone import DualTokenViT
    from reid_hse.head import HSEHead

    torch.manual_seed(0)
    backbone = DualTokenViT(ctx, attention="full", **tiny_vit).train()
    model = (backbone, HSEHead(ctx).train(), HSELoss(ctx))
    (total, _), _ = step(model, make_batch(ctx, roles=[1] * len(ctx.train)))
    (g_local,) = torch.autograd.grad(total, [backbone.local_token])
    assert torch.count_nonzero(g_local) > 0  # why `isolated` is the default


def test_terms_match_plain_cross_entropy_per_half_and_per_category(ctx, model, make_batch):
    backbone, head, _ = model
    loss = HSELoss(ctx, global_weight=2.0, local_weight=0.5, label_smoothing=0.0)
    batch = make_batch(ctx, roles=EPISODE)
    outputs = {**(features := backbone(batch)), **head(features, batch)}
    total, parts = loss(outputs, batch)
    train, test = batch.roles == 0, batch.roles == 1
    logits, y = outputs["logits"], batch.pids
    glob_train, glob_test = F.cross_entropy(logits[train], y[train]), F.cross_entropy(logits[test], y[test])
    local_index = {0: 0, 1: 1, 2: 2, 3: 0, 4: 0, 5: 1}  # y -> y~ (person 0,1,2; vehicle 3; animal 4,5)
    spec = []
    for b in train.nonzero().flatten().tolist():
        s, target = int(batch.categories[b]), local_index[int(y[b])]
        row = outputs["local_bn_features"][b] @ head.local_classifiers[s].weight.t()  # g^(s)(BN_L(z_L))
        spec.append(F.cross_entropy(row[None], torch.tensor([target])))
    spec_train = torch.stack(spec).mean()
    torch.testing.assert_close(parts["glob_train"], glob_train.detach())
    torch.testing.assert_close(parts["glob_test"], glob_test.detach())
    torch.testing.assert_close(parts["spec_train"], spec_train.detach())
    torch.testing.assert_close(total, 2.0 * (glob_train + glob_test) + 0.5 * spec_train)


def test_without_episodes_both_terms_cover_the_whole_batch(ctx, model, make_batch):
    backbone, head, _ = model
    loss = HSELoss(ctx, label_smoothing=0.0)
    batch = make_batch(ctx)  # roles all 0, as from the `pk` sampler
    outputs = {**(features := backbone(batch)), **head(features, batch)}
    total, parts = loss(outputs, batch)
    assert float(parts["glob_test"]) == 0.0
    torch.testing.assert_close(parts["glob_train"], F.cross_entropy(outputs["logits"], batch.pids).detach())
    local = outputs["local_logits"]
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 0, 0, 0, 0, 1, 1])
    torch.testing.assert_close(parts["spec_train"], F.cross_entropy(local, targets).detach())  # -inf columns: no mass
    torch.testing.assert_close(total, parts["glob_train"] + parts["spec_train"], check_device=False)


def test_label_smoothing_spreads_over_the_rows_own_classes_only():
    logits = torch.tensor([[1.0, 2.0, float("-inf")], [0.5, -1.0, 3.0]])
    targets = torch.tensor([1, 2])
    got = smoothed_cross_entropy(logits, targets, 0.1)
    expected = (F.cross_entropy(logits[:1, :2], targets[:1], label_smoothing=0.1)
                + F.cross_entropy(logits[1:], targets[1:], label_smoothing=0.1)) / 2
    torch.testing.assert_close(got, expected)


def test_a_category_that_disagrees_with_the_identity_is_an_error(ctx, model, make_batch):
    batch = make_batch(ctx)
    batch.categories[0] = 2
    with pytest.raises(ValueError, match="sample 0 has identity 0 of category 'person' but batch.categories says 2"):
        step(model, batch)


def test_unknown_roles_are_an_error(ctx, model, make_batch):
    with pytest.raises(ValueError, match="episode roles are 0 \\(meta-train\\) and 1 \\(meta-test\\)"):
        step(model, make_batch(ctx, roles=[2] * len(ctx.train)))


@pytest.mark.parametrize("kwargs, key", [({"global_weight": -1}, "global_weight"),
                                         ({"local_weight": "x"}, "local_weight"),
                                         ({"label_smoothing": 1.0}, "label_smoothing")])
def test_invalid_values_name_the_key(ctx, kwargs, key):
    with pytest.raises(ValueError, match=f"loss 'hse': {key}"):
        HSELoss(ctx, **kwargs)


def test_missing_local_logits_name_the_head(ctx, model, make_batch):
    _, _, loss = model
    batch = make_batch(ctx)
    with pytest.raises(KeyError, match="the `hse` head produces 'local_logits'"):
        loss({"logits": torch.zeros(len(batch), 6)}, batch)

"""The HSE head (MGOR Sec. 3.3): global classifier g on z_G, per-category classifiers
g^(s) on z_L indexed by the local index; evaluation reads z_G only."""

import json

import torch

from reid_hse.head import HSEHead


def test_one_classifier_per_category_over_its_identities(ctx, model):
    _, head, _ = model
    # categories in the table's order: animal (2 identities), person (3), vehicle (1)
    assert [c.weight.shape for c in head.local_classifiers] == [(2, 32), (3, 32), (1, 32)]
    assert head.neck.classifier.weight.shape == (6, 32)


def test_local_logits_are_each_samples_own_category_classifier_padded_with_minus_inf(ctx, model, make_batch):
    _, head, _ = model
    batch = make_batch(ctx)
    z_local = torch.randn(len(batch), 32)
    logits = head.local_logits(z_local, batch.categories)
    assert logits.shape == (len(batch), 3)  # the largest category: person, 3 identities
    for b, s in enumerate(batch.categories.tolist()):
        expected = z_local[b] @ head.local_classifiers[s].weight.t()
        n = expected.shape[0]
        torch.testing.assert_close(logits[b, :n], expected)
        assert torch.isneginf(logits[b, n:]).all()


def test_training_outputs_hold_both_paths(ctx, model, make_batch):
    backbone, head, _ = model
    batch = make_batch(ctx)
    features = backbone(batch)
    out = head(features, batch)
    assert out["logits"].shape == (len(batch), 6)
    assert out["local_logits"].shape == (len(batch), 3)
    assert torch.equal(out["features"], features["global"])
    assert torch.equal(out["local_features"], features["local"])


def test_local_batchnorm_takes_its_statistics_from_the_meta_train_rows_only(ctx, model, make_batch):
    _, head, _ = model
    z_local = torch.randn(12, 32) * 3 + 5
    roles = torch.tensor([0, 1] * 6)
    train = z_local[roles == 0]
    expected = (z_local - train.mean(0)) / torch.sqrt(train.var(0, unbiased=False) + head.local_bn.eps)
    torch.testing.assert_close(head.local_norm(z_local, roles), expected)
    changed = z_local.clone()
    changed[roles == 1] = torch.randn(6, 32) * 10  # other meta-test samples: same meta-train rows
    torch.testing.assert_close(head.local_norm(changed, roles)[roles == 0], expected[roles == 0])
    whole = (z_local - z_local.mean(0)) / torch.sqrt(z_local.var(0, unbiased=False) + head.local_bn.eps)
    torch.testing.assert_close(head.local_norm(z_local, torch.zeros(12, dtype=torch.long)), whole)  # no episodes


def test_inference_embedding_is_the_normalised_global_feature_only(ctx, model, make_batch):
    backbone, head, _ = model
    batch = make_batch(ctx)
    backbone(batch), head(backbone(batch), batch)  # a training step sets the BN statistics
    backbone.eval(), head.eval()
    features = backbone(batch)
    out = head(features, batch)
    assert "local_logits" not in out and "logits" not in out and "local" not in features
    torch.testing.assert_close(out["embedding"], head.neck.bn(features["global"]))
    with torch.no_grad():  # the local classifiers play no part in the embedding
        for c in head.local_classifiers:
            c.weight.normal_()
    torch.testing.assert_close(head(backbone(batch), batch)["embedding"], out["embedding"])


def test_a_category_without_a_classifier_is_an_error_naming_the_training_categories(ctx, model):
    _, head, _ = model
    import pytest

    with pytest.raises(ValueError, match="category id 5.*animal, person, vehicle"):
        head.local_logits(torch.randn(2, 32), torch.tensor([0, 5]))


def test_head_without_training_data_says_what_it_needs(build_ctx):
    import pytest

    ctx = build_ctx({"person": 2})
    ctx.train = None
    ctx.identities_per_category = {}  # nor a weights file's facts
    with pytest.raises(ValueError, match="head 'hse' needs the training table"):
        HSEHead(ctx)


def test_local_batchnorm_bias_is_frozen_by_default_and_free_without_bias_free_bn(ctx):
    """README (head keys): bias_free_bn true freezes the BN biases, the local BN's too."""
    ctx.feature_dim = 32
    assert not HSEHead(ctx).local_bn.bias.requires_grad
    assert HSEHead(ctx, bias_free_bn=False).local_bn.bias.requires_grad


def test_per_category_classifiers_start_from_normal_std_0_001(build_ctx):
    """README: classifiers bias-free, init N(0, 0.001)."""
    torch.manual_seed(0)
    ctx = build_ctx({"person": 60, "vehicle": 40}, feature_dim=64)
    weights = torch.cat([c.weight.detach().flatten() for c in HSEHead(ctx).local_classifiers])
    assert all(c.bias is None for c in HSEHead(ctx).local_classifiers)
    assert abs(float(weights.mean())) < 1e-4
    assert 0.0009 < float(weights.std()) < 0.0011


def test_head_rebuilds_from_a_weights_files_facts_without_the_training_table(ctx, model, make_batch):
    """`core export --format safetensors` keeps the build context's facts (identities per
    category, category names), not the training table; `core eval` of that file rebuilds
    the head from them, so the per-category classifiers must come out the same shape."""
    from core.tools.weights_file import CONTEXT_FIELDS, context_from_facts

    backbone, head, _ = model
    batch = make_batch(ctx)
    head(backbone(batch), batch)
    facts = json.loads(json.dumps({name: getattr(ctx, name) for name in CONTEXT_FIELDS}))  # as the file stores them
    rebuilt = HSEHead(context_from_facts(facts))
    assert rebuilt.category_names == head.category_names
    rebuilt.load_state_dict(head.state_dict())  # strict: every classifier fits
    backbone.eval(), head.eval(), rebuilt.eval()
    features = backbone(batch)
    torch.testing.assert_close(rebuilt(features, batch)["embedding"], head(features, batch)["embedding"])

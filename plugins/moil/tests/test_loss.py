"""Specification of the `moil` loss (MGOR Sec. 3.2): a hand-worked episode, the roles
contract, logging, weights and gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

from core.records import Batch
from reid_moil.loss import MOILLoss


def make_batch(pids, roles):
    n = len(pids)
    zeros = torch.zeros(n, dtype=torch.long)
    return Batch(images=torch.zeros(n, 1), pids=torch.tensor(pids), camids=zeros, categories=zeros,
                 domains=zeros, roles=torch.tensor(roles), indices=torch.arange(n))


def hand_worked_case():
    """Eight samples, 1-D features, four identities; halves interleaved in the batch.

    meta-train: identity 0 at 0 and 2, identity 1 at 3 and 6; logits all zero.
    meta-test:  identity 2 at 0 and 4, identity 3 at 20 and 22; logits ln 3 on the own
                identity, 0 elsewhere.
    """
    train_z, test_z = [0.0, 2.0, 3.0, 6.0], [0.0, 4.0, 20.0, 22.0]
    train_y, test_y = [0, 0, 1, 1], [2, 2, 3, 3]
    z, pids, roles, logits = [], [], [], []
    for a, ya, b, yb in zip(train_z, train_y, test_z, test_y):
        z += [[a], [b]]
        pids += [ya, yb]
        roles += [0, 1]
        logits += [[0.0] * 4, [math.log(3) if c == yb else 0.0 for c in range(4)]]
    outputs = {"features": torch.tensor(z), "logits": torch.tensor(logits)}
    return outputs, make_batch(pids, roles)


def test_hand_worked_episode():
    # L_id(train): logits 0 over 4 identities -> -ln(1/4) = ln 4 = 1.386294 per sample.
    # L_met(train), margin 0.3, distances |x - x'|:
    #   anchor 0: d_ap 2 (to 2), d_an 3 (to 3) -> [2 - 3 + 0.3]+ = 0
    #   anchor 2: d_ap 2,         d_an 1 (to 3) -> [2 - 1 + 0.3]+ = 1.3
    #   anchor 3: d_ap 3 (to 6),  d_an 1 (to 2) -> [3 - 1 + 0.3]+ = 2.3
    #   anchor 6: d_ap 3,         d_an 4 (to 2) -> [3 - 4 + 0.3]+ = 0      mean 3.6 / 4 = 0.9
    # L_id(test): p(own) = 3 / (3 + 1 + 1 + 1) = 1/2 -> ln 2 = 0.693147.
    # Alignment: train prototypes 1 and 4.5 -> D+ = {1, 1, 1.5, 1.5}, D- = {3.5};
    #            test prototypes 2 and 21   -> D+ = {2, 2, 1, 1},     D- = {19}.
    #   S(D+) = mean |sorted differences| = (0 + 0 + 0.5 + 0.5) / 4 = 0.25; S(D-) = 15.5.
    # Total (all weights 1): ln 4 + 0.9 + ln 2 + 15.75 = 18.729442.
    outputs, batch = hand_worked_case()
    total, parts = MOILLoss(label_smoothing=0.0)(outputs, batch)
    assert float(parts["id_train"]) == pytest.approx(math.log(4))
    assert float(parts["met_train"]) == pytest.approx(0.9)
    assert float(parts["id_test"]) == pytest.approx(math.log(2))
    assert float(parts["pair_pos"]) == pytest.approx(0.25)
    assert float(parts["pair_neg"]) == pytest.approx(15.5)
    assert float(parts["pair"]) == pytest.approx(15.75)
    assert float(total) == pytest.approx(math.log(8) + 16.65)


def test_each_terms_weight_is_a_yaml_key():
    # 0.5 ln 4 + 2 * 0.9 + 3 ln 2 + 0.1 * 15.75 = 4 ln 2 + 3.375 = 6.147589
    outputs, batch = hand_worked_case()
    loss = MOILLoss(id_train_weight=0.5, metric_weight=2.0, id_test_weight=3.0, pair_weight=0.1, label_smoothing=0.0)
    total, parts = loss(outputs, batch)
    assert float(total) == pytest.approx(4 * math.log(2) + 3.375)
    assert float(parts["pair"]) == pytest.approx(15.75)  # parts are logged unweighted


def test_every_term_is_logged():
    outputs, batch = hand_worked_case()
    _, parts = MOILLoss()(outputs, batch)
    assert {"id_train", "met_train", "id_test", "pair", "pair_pos", "pair_neg", "acc_train", "acc_test"} <= set(parts)
    assert all(v.dim() == 0 and not v.requires_grad for v in parts.values())


def test_batch_without_meta_test_roles_is_an_error_naming_edps():
    outputs, batch = hand_worked_case()
    batch.roles = torch.zeros_like(batch.roles)
    with pytest.raises(ValueError, match="needs episodes.*no meta-test \\(role 1\\).*`edps`.*no_episodes: train_only"):
        MOILLoss()(outputs, batch)


def test_batch_without_meta_train_roles_is_an_error_too():
    outputs, batch = hand_worked_case()
    batch.roles = torch.ones_like(batch.roles)
    with pytest.raises(ValueError, match="no meta-train \\(role 0\\).*edps"):
        MOILLoss()(outputs, batch)


def test_unknown_roles_are_an_error():
    outputs, batch = hand_worked_case()
    batch.roles[0] = 2
    with pytest.raises(ValueError, match="roles holds \\[2\\]"):
        MOILLoss()(outputs, batch)


def test_train_only_treats_a_batch_without_episodes_as_meta_train():
    outputs, batch = hand_worked_case()
    batch.roles = torch.zeros_like(batch.roles)
    total, parts = MOILLoss(no_episodes="train_only", label_smoothing=0.0)(outputs, batch)
    assert float(parts["id_test"]) == float(parts["pair"]) == 0.0
    assert float(total) == pytest.approx(float(parts["id_train"]) + float(parts["met_train"]))


def test_train_only_treats_an_all_meta_test_batch_as_meta_train_too():
    """`no_episodes: train_only`: a batch without both roles is meta-train as a whole, also
    when its roles are all 1. Reference: torch's cross-entropy over the whole batch."""
    outputs, batch = hand_worked_case()
    batch.roles = torch.ones_like(batch.roles)
    total, parts = MOILLoss(no_episodes="train_only", label_smoothing=0.0)(outputs, batch)
    expected = F.cross_entropy(outputs["logits"], batch.pids)
    assert float(parts["id_train"]) == pytest.approx(float(expected))
    assert float(parts["id_test"]) == float(parts["pair"]) == 0.0
    assert float(parts["met_train"]) > 0.0


def test_gradients_are_finite_and_reach_every_feature():
    torch.manual_seed(0)
    pids = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5]
    roles = [0] * 8 + [1] * 12 + [0] * 2  # halves of different sizes: 3 vs 3 identities
    features = torch.randn(len(pids), 16, requires_grad=True)
    classifier = torch.nn.Linear(16, 6, bias=False)
    outputs = {"features": features, "logits": classifier(features)}
    total, _ = MOILLoss()(outputs, make_batch(pids, roles))
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(features.grad).all()
    assert (features.grad.abs().sum(dim=1) > 0).all()
    assert torch.isfinite(classifier.weight.grad).all()


def test_identical_features_give_finite_gradients():
    features = torch.ones(8, 4, requires_grad=True)  # every residual and distance is zero
    outputs = {"features": features, "logits": features @ torch.ones(4, 4)}
    total, _ = MOILLoss()(outputs, make_batch([0, 0, 1, 1, 2, 2, 3, 3], [0, 0, 0, 0, 1, 1, 1, 1]))
    total.backward()
    assert torch.isfinite(features.grad).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"pair_weight": -1.0}, "pair_weight must be a number >= 0"),
    ({"no_episodes": "skip"}, "no_episodes must be one of error, train_only"),
    ({"label_smoothing": 1.0}, "loss 'moil': label_smoothing must be in \\[0, 1\\)"),
    ({"metric": "l1"}, "loss 'moil': metric must be one of euclidean, cosine"),
])
def test_invalid_keys_are_errors_that_name_the_key_and_valid_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MOILLoss(**kwargs)


def test_moil_is_registered_through_the_entry_point():
    from core.registry import build_registry

    entry = build_registry().get("loss", "moil")
    assert entry.provider == "moil" and entry.load() is MOILLoss

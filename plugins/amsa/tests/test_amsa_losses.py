"""MUVA's losses against hand-worked cases: L_cmp (eq. 1), L_imp (eq. 2), L_i2tce
(eq. 4), L_mask (eqs. 8-9), and the memories: centroids, the momentum update with the
hardest sample (eq. 3), and when each memory is (re)built."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from core.context import BuildContext

from reid_amsa.memory import class_centroids, hardest_per_identity, momentum_update


class FixedText(nn.Module):
    """A stand-in for the prompts + text encoder: identity c -> rows[c]."""

    def __init__(self, rows):
        super().__init__()
        self.rows = torch.as_tensor(rows, dtype=torch.float32)
        self.num_identities, self.output_dim = self.rows.shape
        self.calls = []

    def forward(self, identities):
        self.calls.append(identities.tolist())
        return self.rows[identities]

    def all_identities(self, chunk=256):
        return self.rows.clone()


def ctx_with(rows=None, identities=2, feature_dim=2, grid=None):
    ctx = BuildContext(num_identities=identities, feature_dim=feature_dim, patch_grid=grid)
    if rows is not None:
        ctx.extras["amsa.text"] = FixedText(rows)
    return ctx


def fake_trainer(*active):
    return SimpleNamespace(net=SimpleNamespace(terms=[SimpleNamespace(module=m) for m in active]))


# ----------------------------------------------------------------- L_cmp (eq. 1)
def test_cmp_is_cross_entropy_of_the_normalised_text_token_against_vpm1(make_batch):
    from reid_amsa.cmp_loss import MultiGrainedCMPLoss

    loss = MultiGrainedCMPLoss(ctx_with([[3.0, 4.0], [0.0, 2.0]]))
    loss.memory.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    value, parts = loss({}, make_batch([0, 0, 0]))  # one identity: t_0 = (0.6, 0.8)
    # -log e^0.6 / (e^0.6 + e^0.8) = log(1 + e^0.2)
    assert math.isclose(float(value), math.log(1 + math.exp(0.2)), rel_tol=1e-6)
    assert float(parts["acc"]) == 0.0
    assert loss.text.calls == [[0]]  # each identity of the batch once


def test_cmp_averages_over_the_batchs_identities(make_batch):
    from reid_amsa.cmp_loss import MultiGrainedCMPLoss

    loss = MultiGrainedCMPLoss(ctx_with([[3.0, 4.0], [0.0, 2.0]]), temperature=0.5)
    loss.memory.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    value, _ = loss({}, make_batch([1, 0, 1]))
    first = math.log(1 + math.exp((0.8 - 0.6) / 0.5))  # identity 0: logits (1.2, 1.6)
    second = math.log(1 + math.exp((0.0 - 1.0) / 0.5))  # identity 1: t = (0, 1), logits (0, 2)
    assert math.isclose(float(value), (first + second) / 2, rel_tol=1e-6)


def test_vpm1_is_built_when_its_stage_starts_and_only_then(make_batch, monkeypatch):
    import reid_amsa.cmp_loss as module

    loss = module.MultiGrainedCMPLoss(ctx_with([[1.0, 0.0], [0.0, 1.0]]))
    features = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    pids = torch.tensor([0, 0, 1])
    monkeypatch.setattr(module, "training_features", lambda trainer, key, gating, who: (features, pids))
    loss.on_stage_start(fake_trainer(), stage=None)  # not one of this stage's losses
    assert (loss.memory == 0).all()
    loss.on_stage_start(fake_trainer(loss), stage=None)
    h = 1 / math.sqrt(2)
    assert torch.allclose(loss.memory, torch.tensor([[h, h], [h, h]]))  # mean of (1,0), (0,1); (1,1)/sqrt2


# ----------------------------------------------------------------- memories (eq. 3)
def test_centroids_are_normalised_means_of_normalised_features_and_zero_when_absent():
    m = class_centroids(torch.tensor([[3.0, 4.0], [0.0, 5.0], [2.0, 0.0]]), torch.tensor([0, 0, 2]), 3)
    expected0 = torch.tensor([0.3, 0.9]) / math.sqrt(0.9)  # mean of (0.6, 0.8) and (0, 1), normalised
    assert torch.allclose(m[0], expected0) and (m[1] == 0).all() and torch.allclose(m[2], torch.tensor([1.0, 0.0]))


def test_the_hardest_sample_is_the_least_similar_to_its_identitys_memory():
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    feats = torch.tensor([[0.8, 0.6], [0.6, 0.8], [0.0, 2.0], [1.0, 1.0]])
    ids, hardest = hardest_per_identity(feats, torch.tensor([0, 0, 1, 1]), memory)
    assert ids.tolist() == [0, 1]
    assert torch.allclose(hardest, torch.tensor([[0.6, 0.8], [1 / math.sqrt(2), 1 / math.sqrt(2)]]))


def test_momentum_update_mixes_0_2_of_the_memory_with_0_8_of_the_hardest_sample():
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    momentum_update(memory, torch.tensor([[0.8, 0.6], [0.6, 0.8]]), torch.tensor([0, 0]), momentum=0.2)
    mixed = torch.tensor([0.2 + 0.8 * 0.6, 0.8 * 0.8])  # (0.68, 0.64)
    assert torch.allclose(memory[0], mixed / mixed.norm())
    assert torch.equal(memory[1:], torch.tensor([[0.0, 1.0], [0.6, 0.8]]))  # identities not in the batch


# ----------------------------------------------------------------- L_imp (eq. 2) and VPM-2
def test_prototype_loss_is_cross_entropy_of_cosines_over_tau(make_batch):
    from reid_amsa.prototype_loss import PrototypeContrastLoss

    loss = PrototypeContrastLoss(ctx_with(), temperature=0.5)
    loss.memory.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    value, _ = loss({"bn_features": torch.tensor([[5.0, 0.0], [3.0, 4.0]])}, make_batch([0, 1]))
    first = math.log(1 + math.exp(-2.0))  # cosines (1, 0) / 0.5
    second = math.log(1 + math.exp((0.6 - 0.8) / 0.5))  # cosines (0.6, 0.8) / 0.5, target 1
    assert math.isclose(float(value), (first + second) / 2, rel_tol=1e-6)


def test_vpm2_is_rebuilt_each_epoch_of_its_stage_and_updated_after_each_step(make_batch, monkeypatch):
    import reid_amsa.prototype_loss as module

    loss = module.PrototypeContrastLoss(ctx_with(), momentum=0.2)
    features, pids = torch.tensor([[1.0, 0.0], [0.0, 4.0]]), torch.tensor([0, 1])
    monkeypatch.setattr(module, "training_features", lambda trainer, key, gating, who: (features, pids))
    loss.on_epoch_start(fake_trainer(), epoch=0)
    assert (loss.memory == 0).all()  # stage 1: not active
    loss.on_epoch_start(fake_trainer(loss), epoch=3)
    assert torch.equal(loss.memory, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    outputs = {"bn_features": torch.tensor([[0.0, 3.0], [3.0, 3.0]])}  # identity 1: (0, 1) and (h, h)
    loss.on_step_end(fake_trainer(loss), step=1, batch=make_batch([1, 1]), outputs=outputs, losses={})
    h = 1 / math.sqrt(2)
    mixed = torch.tensor([0.8 * h, 0.2 + 0.8 * h])
    assert torch.allclose(loss.memory[1], mixed / mixed.norm())
    assert torch.equal(loss.memory[0], torch.tensor([1.0, 0.0]))


# ----------------------------------------------------------------- L_i2tce (eq. 4)
def _smoothed_ce(logits, target, eps):
    """-sum_c q_c log softmax(logits)_c, q = (1 - eps) 1[c = target] + eps / C, from the equation."""
    log_z = math.log(sum(math.exp(v) for v in logits))
    q = [(1 - eps) * (c == target) + eps / len(logits) for c in range(len(logits))]
    return -sum(qc * (v - log_z) for qc, v in zip(q, logits))


def test_i2t_default_is_eq4s_cosine_with_smoothed_labels(make_batch):
    from reid_amsa.i2t_loss import ImageToTextCELoss

    loss = ImageToTextCELoss(ctx_with([[2.0, 0.0], [0.0, 5.0]]))  # defaults: cosine, eps 0.1, T 1
    loss.on_stage_start(fake_trainer(loss), stage=None)  # TPM = the normalised textual tokens
    assert torch.equal(loss.memory, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    value, _ = loss({"features": torch.tensor([[3.0, 4.0], [0.0, -2.0]])}, make_batch([0, 1]))
    first = _smoothed_ce([0.6, 0.8], 0, 0.1)  # cos((3, 4), e_c) = (0.6, 0.8)
    second = _smoothed_ce([0.0, -1.0], 1, 0.1)
    assert math.isclose(float(value), (first + second) / 2, rel_tol=1e-6)


def test_i2t_raw_form_is_the_authors_raw_feature_times_raw_text_token(make_batch):
    from reid_amsa.i2t_loss import ImageToTextCELoss

    loss = ImageToTextCELoss(ctx_with([[2.0, 0.0], [1.0, 5.0]]), form="raw", label_smoothing=0.1)
    loss.build_memory()
    assert torch.equal(loss.memory, torch.tensor([[2.0, 0.0], [1.0, 5.0]]))  # not normalised
    value, _ = loss({"features": torch.tensor([[0.5, 0.25]])}, make_batch([0]))  # f . t = (1.0, 1.75)
    assert math.isclose(float(value), _smoothed_ce([1.0, 1.75], 0, 0.1), rel_tol=1e-6)


def test_i2t_cosine_gradient_reaches_the_feature_orthogonally_and_never_the_prototypes(make_batch):
    from reid_amsa.i2t_loss import ImageToTextCELoss

    loss = ImageToTextCELoss(ctx_with([[2.0, 1.0], [-1.0, 3.0]]))
    loss.build_memory()
    f = torch.tensor([[3.0, 4.0]], requires_grad=True)
    value, _ = loss({"features": f}, make_batch([1]))
    value.backward()
    assert f.grad is not None and float(f.grad.norm()) > 1e-3
    assert abs(float((f.grad * f.detach()).sum())) < 1e-6  # a cosine does not depend on |f|
    assert not loss.memory.requires_grad and loss.memory.grad is None


def test_i2t_unknown_form_is_a_clear_error():
    from reid_amsa.i2t_loss import ImageToTextCELoss

    with pytest.raises(ValueError, match="form must be one of cosine, raw"):
        ImageToTextCELoss(ctx_with([[1.0, 0.0]], identities=1), form="dot")


# ----------------------------------------------------------------- L_mask (eqs. 8-9)
def test_mask_loss_is_bce_plus_dice_over_parts_patches_and_layers(make_batch):
    from reid_amsa.mask_loss import PartMaskLoss

    logits = torch.zeros(1, 2, 1, 2)  # p = 0.5 everywhere in layer 0
    logits[0, 1, 0] = torch.tensor([math.log(3.0), -math.log(3.0)])  # p = (0.75, 0.25) in layer 1
    g = torch.tensor([[[1.0, 0.0]]])
    batch = make_batch([0], extras={"part_masks": g})
    value, parts = PartMaskLoss(ctx_with(grid=(2, 1)))({"part_mask_logits": logits}, batch)
    bce = (2 * math.log(2) + 2 * -math.log(0.75)) / 4
    s = 1e-3
    dice0 = (2 * 0.5 + s) / (1.0 + 1.0 + s)
    dice1 = (2 * 0.75 + s) / (1.0 + 1.0 + s)
    assert math.isclose(float(parts["bce"]), bce, rel_tol=1e-6)
    assert math.isclose(float(parts["dice"]), 1 - (dice0 + dice1) / 2, rel_tol=1e-6)
    assert math.isclose(float(value), bce + 1 - (dice0 + dice1) / 2, rel_tol=1e-6)
    assert float(parts["iou"]) == 1.0  # layer 1 thresholded at 0.5 is the target


def test_mask_loss_with_stripes_targets_the_equal_thirds(make_batch):
    from reid_amsa.mask_loss import PartMaskLoss
    from reid_amsa.masking import stripe_masks

    stripes = stripe_masks((6, 1), 3).float()  # rows {0,1}, {2,3}, {4,5}
    perfect = (stripes * 40 - 20).expand(1, 1, 3, 6)
    value, parts = PartMaskLoss(ctx_with(grid=(6, 1)), target="stripes")({"part_mask_logits": perfect}, make_batch([0]))
    assert float(value) < 1e-3 and float(parts["iou"]) == 1.0


def test_mask_loss_names_the_missing_field_and_wrong_shapes(make_batch):
    from reid_amsa.mask_loss import PartMaskLoss

    loss = PartMaskLoss(ctx_with(grid=(2, 1)))
    with pytest.raises(KeyError, match="part_masks.*vge-labeler"):
        loss({"part_mask_logits": torch.zeros(1, 2, 3, 2)}, make_batch([0]))
    with pytest.raises(ValueError, match="label the images again"):
        wrong = make_batch([0], extras={"part_masks": torch.zeros(1, 3, 4)})
        loss({"part_mask_logits": torch.zeros(1, 2, 3, 2)}, wrong)


def test_losses_without_the_amsa_text_side_name_the_backbone():
    from reid_amsa.cmp_loss import MultiGrainedCMPLoss

    with pytest.raises(ValueError, match="amsa_clip"):
        MultiGrainedCMPLoss(ctx_with())

"""IRM's losses against hand-worked cases: the adaptive triplet (Eqs. 11-13), the
identification losses, and IRM++'s memory bank (the exact form of memory.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from core.losses.triplet import TripletLoss
from reid_instruct_editor.adaptive_triplet import AdaptiveTripletLoss, adaptive_triplet
from reid_instruct_editor.identity_loss import InstructIdentityLoss
from reid_instruct_editor.memory import IRMMemoryLoss, memory_loss


def batch_of(make_batch, pids):
    return make_batch(["x"] * len(pids), pids=pids)


def test_adaptive_triplet_hand_case():
    # anchor 0 on a line: positives at 1.0 (s = 0.2) and 3.0 (s = 0.9), negative at 2.5
    x = torch.tensor([[0.0], [1.0], [3.0], [2.5]])
    pids = torch.tensor([0, 0, 0, 1])
    s = torch.ones(4, 4)
    s[0, 1], s[0, 2] = 0.2, 0.9
    total, parts = adaptive_triplet(x, pids, s, margin=0.3, l11_weight=0.1)
    # anchor 0: p1 = 2 (d 3.0, s1 0.9), p2 = 1 (d 1.0, s2 0.2), n = 3 (d 2.5)
    a13 = max(0.0, 3.0 - 2.5 + 0.3 * 0.9)  # 0.77
    a11 = max(0.0, 1.0 * (3.0 - 1.0) + 0.3 * 0.7)  # 2.21: the more similar instruction is farther
    # anchor 1: positives 0 (d 1.0), 2 (d 2.0) -> p1 = 2 (s 1), p2 = 0 (s 1); n = 3 (d 1.5)
    b13, b11 = max(0.0, 2.0 - 1.5 + 0.3), 0.0
    # anchor 2: positives 0 (d 3.0, s 1), 1 (d 2.0, s 1); n = 3 (d 0.5)
    c13, c11 = max(0.0, 3.0 - 0.5 + 0.3), 0.0
    # anchor 3: no positive, leaves both means
    l13 = (a13 + b13 + c13) / 3
    l11 = (a11 + b11 + c11) / 3
    assert math.isclose(float(parts["l13"]), l13, rel_tol=1e-5)
    assert math.isclose(float(parts["l11"]), l11, rel_tol=1e-5)
    assert math.isclose(float(total), 0.1 * l11 + l13, rel_tol=1e-5)


def test_l11_is_zero_when_the_closer_instruction_is_nearer_by_the_margin():
    x = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
    pids = torch.tensor([0, 0, 0, 1])
    s = torch.ones(4, 4)
    s[0, 1], s[0, 2] = 0.9, 0.2  # the nearer positive has the more similar instruction
    # anchor 0: p1 = 2 (s 0.2), p2 = 1 (s 0.9): sign(0.2 - 0.9) (3 - 1) + 0.3 * 0.7 = -2 + 0.21 < 0
    _, full = adaptive_triplet(x, pids, s)
    assert float(full["l11"]) == 0.0


def test_with_one_instruction_it_is_batch_hard_triplet(make_batch):
    torch.manual_seed(0)
    features = torch.randn(12, 8)
    pids = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    batch = batch_of(make_batch, pids.tolist())
    constant = torch.randn(1, 16).repeat(12, 1)
    outputs = {"features": features, "instruction_embedding": constant}
    ours, parts = AdaptiveTripletLoss(features=["features"], weights=[1.0], margin=0.3)(outputs, batch)
    reference, _ = TripletLoss(margin=0.3, features="features")(outputs, batch)
    assert math.isclose(float(ours), float(reference), rel_tol=1e-5)
    assert float(parts["features/l11"]) == 0.0


def test_the_weighted_sum_over_features_skips_rows_without_an_image(make_batch):
    torch.manual_seed(1)
    pids = [0, 0, 1, 1, 0, 1]
    batch = batch_of(make_batch, pids)
    outputs = {"bio_bn": torch.randn(6, 4), "clo_bn": torch.randn(6, 4), "global": torch.randn(6, 4),
               "instruction_embedding": torch.randn(6, 5), "has_image": torch.tensor([True] * 4 + [False] * 2)}
    loss, parts = AdaptiveTripletLoss()(outputs, batch)
    s = F.normalize(outputs["instruction_embedding"], dim=1)
    s = s @ s.t()
    p = torch.tensor(pids)
    expect = 0.5 * adaptive_triplet(outputs["bio_bn"], p, s)[0] + 0.5 * adaptive_triplet(outputs["clo_bn"], p, s)[0]
    expect = expect + adaptive_triplet(outputs["global"][:4], p[:4], s[:4, :4])[0]
    assert math.isclose(float(loss), float(expect), rel_tol=1e-5)
    assert {"bio_bn", "clo_bn", "global"} <= set(parts)


def test_identification_losses_are_weighted_label_smoothed_ce(make_batch):
    torch.manual_seed(2)
    batch = batch_of(make_batch, [0, 1, 2, 1])
    logits = {k: torch.randn(4, 3) for k in ("bio_logits", "clo_logits", "global_logits")}
    has_image = torch.tensor([True, True, False, True])
    loss, parts = InstructIdentityLoss(label_smoothing=0.1)({**logits, "has_image": has_image}, batch)
    y = batch.pids

    def ce(z, t):
        return F.cross_entropy(z, t, label_smoothing=0.1)

    expect = 0.5 * ce(logits["bio_logits"], y) + 0.5 * ce(logits["clo_logits"], y) + \
        ce(logits["global_logits"][has_image], y[has_image])
    assert math.isclose(float(loss), float(expect), rel_tol=1e-5)
    assert math.isclose(float(parts["global"]), float(ce(logits["global_logits"][has_image], y[has_image])),
                        rel_tol=1e-5)


def test_memory_loss_hand_case():
    # two slots on the axes, temperature 0.5; sample 0 of identity 0 at 45 degrees
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    filled = torch.tensor([True, True])
    f = F.normalize(torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]), dim=1)
    pids = torch.tensor([0, 0, 1])
    s = torch.tensor([[1.0, 0.8, 0.0], [0.8, 1.0, 0.0], [0.0, 0.0, 1.0]])
    loss, parts = memory_loss(f, pids, s, memory, filled, temperature=0.5, tau=0.5, soft_weight=0.4)
    z = f @ memory.t() / 0.5
    log_p = torch.log_softmax(z, dim=1)
    hard = -(log_p[0, 0] + log_p[1, 0] + log_p[2, 1]) / 3
    p = torch.softmax(z, dim=1)
    q0 = q1 = (p[0] + p[1]) / 2  # samples 0 and 1: one identity, instructions alike (0.8 >= 0.5)
    q2 = p[2]  # alone
    soft = -((q0 * log_p[0]).sum() + (q1 * log_p[1]).sum() + (q2 * log_p[2]).sum()) / 3
    assert math.isclose(float(parts["hard"]), float(hard), rel_tol=1e-5)
    assert math.isclose(float(parts["soft"]), float(soft), rel_tol=1e-5)
    assert math.isclose(float(loss), 0.6 * float(hard) + 0.4 * float(soft), rel_tol=1e-5)
    # below tau the positives do not share targets: the soft term then has no gradient
    s_far = torch.eye(3)
    f_req = f.clone().requires_grad_(True)
    out, _ = memory_loss(f_req, pids, s_far, memory, filled, 0.5, 0.5, 1.0)
    (grad,) = torch.autograd.grad(out, f_req)
    assert torch.allclose(grad, torch.zeros_like(grad), atol=1e-6)


def test_memory_slots_are_filled_then_momentum_updated(make_batch, build_ctx):
    ctx = build_ctx(num_identities=3)
    loss = IRMMemoryLoss(ctx, dim=2, momentum=0.2)
    batch = batch_of(make_batch, [0, 0, 2])
    emb = torch.tensor([[3.0, 0.0], [0.0, 3.0], [0.0, -1.0]])
    outputs = {"embedding": emb, "instruction_embedding": torch.ones(3, 4)}
    value, parts = loss(outputs, batch)
    loss.on_step_end()  # the trainer's call after the optimisation step: the update
    assert torch.isfinite(value)
    first = F.normalize(torch.tensor([1.0, 1.0]), dim=0)  # identity 0: mean of its unit features
    # filled at first sight, then updated with the same mean: unchanged
    assert torch.allclose(loss.memory[0], first, atol=1e-6)
    assert torch.allclose(loss.memory[2], torch.tensor([0.0, -1.0]))
    assert loss.filled.tolist() == [True, False, True] and math.isclose(float(parts["filled"]), 2 / 3, rel_tol=1e-6)
    emb2 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, -1.0]])
    loss({"embedding": emb2, "instruction_embedding": torch.ones(3, 4)}, batch)
    loss.on_step_end()
    expect = F.normalize(0.2 * first + 0.8 * torch.tensor([1.0, 0.0]), dim=0)
    assert torch.allclose(loss.memory[0], expect, atol=1e-6)
    loss.eval()
    before = loss.memory.clone()
    loss({"embedding": emb, "instruction_embedding": torch.ones(3, 4)}, batch)
    loss.on_step_end()
    assert torch.equal(loss.memory, before)  # evaluation never writes the memory


def test_memory_backward_works_after_the_in_place_update(make_batch, build_ctx):
    ctx = build_ctx(num_identities=2)
    loss = IRMMemoryLoss(ctx, dim=3)
    emb = torch.randn(4, 3, requires_grad=True)
    value, _ = loss({"embedding": emb, "instruction_embedding": torch.ones(4, 2)}, batch_of(make_batch, [0, 1, 0, 1]))
    value.backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all()


def test_bad_keys_are_named():
    with pytest.raises(ValueError, match="one weight per"):
        AdaptiveTripletLoss(features=["bio_bn"], weights=[0.5, 0.5])
    with pytest.raises(ValueError, match="label_smoothing"):
        InstructIdentityLoss(label_smoothing=1.5)

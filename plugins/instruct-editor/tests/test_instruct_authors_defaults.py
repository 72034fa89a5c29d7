"""What the authors' code does by default, pinned: s of the adaptive triplet is detached,
one identity classifier per task, plain cross-entropy (no label smoothing)."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from core.context import BuildContext
from core.data.table import RecordTable
from core.records import Record
from reid_instruct_editor.adaptive_triplet import AdaptiveTripletLoss
from reid_instruct_editor.head import InstructHead
from reid_instruct_editor.identity_loss import InstructIdentityLoss


def test_s_receives_no_gradient(make_batch):
    """s = cosine of instruction embeddings enters L13 and L11 as a margin: a detached
    constant (the paper: the instruction encoder is not trained through the triplet)."""
    torch.manual_seed(0)
    pids = [0, 0, 0, 1, 1, 1]
    batch = make_batch(["x"] * 6, pids=pids)
    features = (0.05 * torch.randn(6, 4)).requires_grad_(True)  # close together: every hinge is active
    instructions = torch.randn(6, 8, requires_grad=True)
    outputs = {"features": features, "instruction_embedding": instructions}
    loss, parts = AdaptiveTripletLoss(features=["features"], weights=[1.0])(outputs, batch)
    assert float(parts["features/l13"]) > 0 and float(parts["features/l11"]) > 0
    loss.backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    assert instructions.grad is None or torch.count_nonzero(instructions.grad) == 0


def table_of(tasks_and_pids):
    records = [Record(path=None, pid=p, camid=i % 2, category="person", extras={"task": t})
               for i, (t, p) in enumerate(tasks_and_pids)]
    return RecordTable.build([("src", records)], relabel=True)


def test_one_classifier_per_task_over_its_own_identities(make_batch):
    # task A has identities 0, 1, 2; task B has 1, 3 (identity 1 in both, as in the synthetic world)
    table = table_of([("A", 0), ("A", 0), ("A", 1), ("A", 2), ("B", 1), ("B", 3), ("B", 3)])
    ctx = BuildContext.from_table(table)
    ctx.feature_dim = 4
    torch.manual_seed(0)
    head = InstructHead(ctx).train()
    layer = head.classifiers.layers["bio"]
    assert layer.weight.shape[0] == 3 + 2  # two blocks, not one over 4 identities
    feats = {k: torch.randn(4, 4) for k in ("bio", "clo", "global")}
    batch = make_batch(["x"] * 4, pids=[1, 2, 1, 3])
    batch.extras["task"] = ["A", "A", "B", "B"]
    out = head(feats, batch)
    logits, targets = out["bio_logits"], out["id_targets"]
    finite = torch.isfinite(logits)
    assert finite[:2].sum(1).tolist() == [3, 3] and finite[2:].sum(1).tolist() == [2, 2]
    assert targets.tolist() == [1, 2, 3, 4]  # A: 0->0, 1->1, 2->2; B: 1->3, 3->4
    # CE of a row equals the CE of its task's own classifier (its block of weights)
    w = layer.weight
    by_hand = F.cross_entropy(out["bio_bn"][:1] @ w[:3].t(), torch.tensor([1]))
    assert math.isclose(float(F.cross_entropy(logits[:1], targets[:1]).detach()), float(by_hand.detach()), rel_tol=1e-5)
    # a task-A row trains task A's classifier only
    layer.weight.grad = None
    F.cross_entropy(logits[:1], targets[:1]).backward()
    assert torch.count_nonzero(layer.weight.grad[3:]) == 0 and torch.count_nonzero(layer.weight.grad[:3]) > 0


def test_the_shared_classifier_is_an_option(make_batch):
    table = table_of([("A", 0), ("A", 1), ("B", 2)])
    ctx = BuildContext.from_table(table)
    ctx.feature_dim = 4
    head = InstructHead(ctx, classifier_per_task=False).train()
    batch = make_batch(["x"] * 2, pids=[0, 2])
    batch.extras["task"] = ["A", "B"]
    out = head({k: torch.randn(2, 4) for k in ("bio", "clo", "global")}, batch)
    assert torch.isfinite(out["bio_logits"]).all() and out["bio_logits"].shape == (2, 3)
    assert out["id_targets"].tolist() == [0, 2]


def test_identification_loss_is_plain_cross_entropy_by_default(make_batch):
    torch.manual_seed(3)
    batch = make_batch(["x"] * 4, pids=[0, 1, 2, 1])
    logits = {k: torch.randn(4, 3) for k in ("bio_logits", "clo_logits", "global_logits")}
    loss, _ = InstructIdentityLoss()(logits, batch)
    y = batch.pids
    expect = 0.5 * F.cross_entropy(logits["bio_logits"], y) + 0.5 * F.cross_entropy(logits["clo_logits"], y) + \
        F.cross_entropy(logits["global_logits"], y)
    assert math.isclose(float(loss), float(expect), rel_tol=1e-6)


def test_label_smoothing_spreads_over_the_rows_task_only(make_batch):
    """Smoothing (our option) over a row's own classes: equal to torch's smoothed CE on
    the finite block alone."""
    torch.manual_seed(4)
    block = torch.randn(2, 3)
    logits = torch.cat([block, torch.full((2, 2), float("-inf"))], dim=1)
    batch = make_batch(["x"] * 2, pids=[0, 0])
    outputs = {"bio_logits": logits, "id_targets": torch.tensor([2, 0])}
    loss, _ = InstructIdentityLoss(logits=["bio_logits"], weights=[1.0], label_smoothing=0.1)(outputs, batch)
    expect = F.cross_entropy(block, torch.tensor([2, 0]), label_smoothing=0.1)
    assert np.isclose(float(loss), float(expect), rtol=1e-6)


def test_a_row_whose_identity_is_not_of_its_task_is_an_error_read_without_a_host_sync(make_batch):
    """Identity 3 (label 2) belongs to task B only: a task-A row of it has no column in A's
    classifier. The check reads the batch's host copies (issue 19, item 9)."""
    import pytest

    from core.host_syncs import count_host_syncs

    table = table_of([("A", 0), ("A", 1), ("B", 1), ("B", 3)])
    ctx = BuildContext.from_table(table)
    ctx.feature_dim = 4
    head = InstructHead(ctx).train()
    feats = {k: torch.randn(2, 4) for k in ("bio", "clo", "global")}
    good = make_batch(["x"] * 2, pids=[1, 2]).keep_host_copies()
    good.extras["task"] = ["A", "B"]
    with count_host_syncs() as syncs:
        head(feats, good)
    assert syncs.total == 0, syncs.by_op
    bad = make_batch(["x"] * 2, pids=[1, 2]).keep_host_copies()
    bad.extras["task"] = ["A", "A"]
    with pytest.raises(ValueError, match="batch row 1 \\(identity 2\\) is not an identity of its task 'A'"):
        head(feats, bad)

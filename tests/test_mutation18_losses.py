"""Losses (core.losses) on cases that tell apart the plausible bugs the other loss tests
let through (mutation review, branch mutation18); references are plain loops over the
papers' definitions."""

from __future__ import annotations

import math

import pytest
import torch

from core.losses.cross_entropy import CrossEntropyLoss
from tests.test_losses import make_batch


def test_ce_accuracy_is_the_share_of_rows_whose_largest_logit_is_the_target():
    # argmax per row: 0, 1, 2; targets 0, 1, 0 -> 2/3. (argmin per row: 1, 0, 1 -> 0.)
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0], [1.0, 0.0, 4.0]])
    _, logs = CrossEntropyLoss(label_smoothing=0.1)({"logits": logits}, make_batch([0, 1, 0]))
    assert logs["acc"].item() == pytest.approx(2 / 3)


def test_ce_equals_the_smoothed_target_distribution_written_out():
    """-sum_i q_i log p_i with q_i = (1 - eps) [i = y] + eps / N, each term by a loop."""
    g = torch.Generator().manual_seed(0)
    logits, targets, eps = torch.randn(6, 7, generator=g, dtype=torch.float64), [0, 3, 6, 2, 2, 5], 0.1
    expected = 0.0
    for row, y in zip(logits.tolist(), targets):
        log_z = math.log(sum(math.exp(v) for v in row))
        expected += -sum(((1 - eps) * (i == y) + eps / len(row)) * (v - log_z) for i, v in enumerate(row))
    loss, _ = CrossEntropyLoss(label_smoothing=eps)({"logits": logits}, make_batch(targets))
    assert loss.item() == pytest.approx(expected / len(targets), rel=1e-6)


def test_wrt_one_identity_batch_has_no_anchor_and_is_a_connected_zero():
    """AGW's loss needs a negative per anchor: in a one-identity batch no anchor has one,
    so every anchor leaves the mean (loss 0), as with the batch-hard triplet. Counting them
    would give log(1 + exp(d_ap - 0)) > 0 per anchor: a loss from no negative at all."""
    from core.losses.weighted_triplet import WeightedRegularizedTriplet

    x = torch.tensor([[0.0], [1.0], [3.0]], requires_grad=True)
    value, logs = WeightedRegularizedTriplet()({"features": x}, make_batch([4, 4, 4]))
    value.backward()
    assert value.item() == 0.0 and logs["d_ap"].item() == 0.0
    assert torch.equal(x.grad, torch.zeros_like(x))

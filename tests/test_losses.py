"""Specification of the built-in losses `ce` and `triplet` against hand-worked cases."""

import math

import pytest
import torch

from core.losses.cross_entropy import CrossEntropyLoss
from core.losses.triplet import TripletLoss, cosine_distances, euclidean_distances
from core.records import Batch


def make_batch(pids):
    pids = torch.as_tensor(pids)
    zeros = torch.zeros_like(pids)
    return Batch(images=torch.zeros(len(pids), 3, 4, 4), pids=pids, camids=zeros, categories=zeros,
                 domains=zeros, roles=zeros, indices=torch.arange(len(pids)))


# --- cross-entropy with label smoothing -------------------------------------------------

def test_ce_matches_hand_worked_label_smoothing():
    # logits (ln 2, 0, 0) -> p = (1/2, 1/4, 1/4); eps = 0.3, N = 3 -> eps / N = 0.1.
    # target 0: q = (0.8, 0.1, 0.1), loss = 0.8 ln 2 + 0.2 * 2 ln 2 = 1.2 ln 2
    # target 1: q = (0.1, 0.8, 0.1), loss = 0.1 ln 2 + 0.9 * 2 ln 2 = 1.9 ln 2
    # mean = 1.55 ln 2 = 1.07437...; top-1 accuracy 1/2 (argmax is class 0)
    logits = torch.tensor([[math.log(2), 0.0, 0.0]] * 2)
    loss, logs = CrossEntropyLoss(label_smoothing=0.3)({"logits": logits}, make_batch([0, 1]))
    assert loss.item() == pytest.approx(1.55 * math.log(2), rel=1e-6)
    assert logs["acc"].item() == pytest.approx(0.5)


def test_ce_without_smoothing_is_plain_cross_entropy():
    logits = torch.randn(5, 7)
    pids = torch.tensor([0, 3, 6, 2, 2])
    loss, _ = CrossEntropyLoss(label_smoothing=0.0)({"logits": logits}, make_batch(pids))
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, pids).item(), rel=1e-6)


def test_ce_gradient_flows_to_logits():
    logits = torch.randn(4, 3, requires_grad=True)
    loss, _ = CrossEntropyLoss()({"logits": logits}, make_batch([0, 1, 2, 0]))
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_ce_reads_the_configured_output_key():
    loss, _ = CrossEntropyLoss(logits="cls")({"cls": torch.zeros(2, 4)}, make_batch([0, 1]))
    assert loss.item() == pytest.approx(math.log(4))


def test_ce_missing_logits_names_the_key_and_outputs_present():
    with pytest.raises(KeyError, match="'logits'.*embedding, features"):
        CrossEntropyLoss()({"features": torch.zeros(2, 3), "embedding": torch.zeros(2, 3)}, make_batch([0, 1]))


def test_ce_label_smoothing_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="label_smoothing"):
        CrossEntropyLoss(label_smoothing=1.0)


# --- batch-hard triplet ------------------------------------------------------------------

# Four points on a line: identity 0 at 0 and 1, identity 1 at 3 and 7.
#   anchor 0: d_ap = 1, d_an = min(3, 7) = 3 -> [1 - 3 + 0.3]_+ = 0
#   anchor 1: d_ap = 1, d_an = min(2, 6) = 2 -> [1 - 2 + 0.3]_+ = 0
#   anchor 3: d_ap = 4, d_an = min(3, 2) = 2 -> [4 - 2 + 0.3]_+ = 2.3
#   anchor 7: d_ap = 4, d_an = min(7, 6) = 6 -> [4 - 6 + 0.3]_+ = 0
# loss = 2.3 / 4 = 0.575; mean d_ap = 2.5; mean d_an = 3.25; one active triplet of four.
LINE = [[0.0], [1.0], [3.0], [7.0]]
LINE_PIDS = [0, 0, 1, 1]


def test_triplet_batch_hard_matches_hand_worked_case():
    loss, logs = TripletLoss(margin=0.3)({"features": torch.tensor(LINE)}, make_batch(LINE_PIDS))
    assert loss.item() == pytest.approx(0.575, abs=1e-5)
    assert logs["d_ap"].item() == pytest.approx(2.5, abs=1e-5)
    assert logs["d_an"].item() == pytest.approx(3.25, abs=1e-5)
    assert logs["frac_active"].item() == pytest.approx(0.25)


def test_triplet_gradient_matches_hand_worked_case():
    # Only anchor 3 is active: loss = (|3 - 7| - |3 - 1| + 0.3) / 4, so
    # d/dx = (0, +1/4, (-1 - 1)/4, +1/4) for the points (0, 1, 3, 7).
    x = torch.tensor(LINE, requires_grad=True)
    loss, _ = TripletLoss(margin=0.3)({"features": x}, make_batch(LINE_PIDS))
    loss.backward()
    assert x.grad.flatten().tolist() == pytest.approx([0.0, 0.25, -0.5, 0.25], abs=1e-5)


def test_triplet_soft_margin_matches_hand_worked_case():
    # d_ap - d_an per anchor: -2, -1, 2, -2; loss = mean log(1 + exp(.))
    expected = (2 * math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)) + math.log1p(math.exp(2))) / 4
    for loss_fn in (TripletLoss(soft_margin=True), TripletLoss(margin=None)):
        loss, _ = loss_fn({"features": torch.tensor(LINE)}, make_batch(LINE_PIDS))
        assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_triplet_anchor_without_positive_is_excluded():
    # A lone identity far away has no positive: the mean stays over the four valid anchors.
    feats = torch.tensor(LINE + [[100.0]])
    loss, logs = TripletLoss(margin=0.3)({"features": feats}, make_batch(LINE_PIDS + [2]))
    assert loss.item() == pytest.approx(0.575, abs=1e-5)
    assert logs["d_an"].item() == pytest.approx(3.25, abs=1e-5)


def test_triplet_without_valid_anchor_is_zero_and_connected():
    x = torch.randn(3, 5, requires_grad=True)
    loss, _ = TripletLoss()({"features": x}, make_batch([0, 1, 2]))  # no positives at all
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_triplet_identical_features_give_finite_gradients():
    x = torch.ones(4, 8, requires_grad=True)  # every distance is zero
    loss, _ = TripletLoss(margin=0.3)({"features": x}, make_batch([0, 0, 1, 1]))
    loss.backward()
    assert loss.item() == pytest.approx(0.3, abs=1e-5)
    assert torch.isfinite(x.grad).all()


def test_triplet_normalize_uses_unit_vectors():
    # Scaled copies of the same directions give the same loss once normalised.
    x = torch.randn(6, 4)
    batch = make_batch([0, 0, 1, 1, 2, 2])
    scale = torch.tensor([[1.0], [5.0], [0.5], [2.0], [3.0], [0.1]])
    a, _ = TripletLoss(normalize=True)({"features": x}, batch)
    b, _ = TripletLoss(normalize=True)({"features": x * scale}, batch)
    assert a.item() == pytest.approx(b.item(), abs=1e-5)


def test_cosine_distance_is_half_squared_euclidean_of_unit_vectors():
    x = torch.nn.functional.normalize(torch.randn(5, 3), dim=1)
    assert torch.allclose(cosine_distances(x), euclidean_distances(x) ** 2 / 2, atol=1e-5)


def test_triplet_cosine_metric_matches_hand_worked_case():
    # Unit vectors at 0 and 90 degrees (identity 0), 180 degrees (identity 1) and 45 deg (identity 1):
    # cosine distances: d(e1, e2) = 1, d(e1, -e1) = 2, d(e1, d45) = 1 - 1/sqrt2, d(e2, d45) = 1 - 1/sqrt2,
    # d(e2, -e1) = 1, d(-e1, d45) = 1 + 1/sqrt2.
    r = 1 / math.sqrt(2)
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [r, r]])
    # anchors: e1: 1 - (1 - r); e2: 1 - (1 - r); -e1: (1 + r) - 1; d45: (1 + r) - (1 - r)
    gaps = [r, r, r, 2 * r]
    expected = sum(max(0.0, g + 0.1) for g in gaps) / 4
    loss, _ = TripletLoss(margin=0.1, metric="cosine")({"features": feats}, make_batch([0, 0, 1, 1]))
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_triplet_unknown_metric_names_valid_values():
    with pytest.raises(ValueError, match="euclidean, cosine"):
        TripletLoss(metric="manhattan")


def test_triplet_missing_feature_key_names_outputs_present():
    with pytest.raises(KeyError, match="'features'.*embedding"):
        TripletLoss()({"embedding": torch.zeros(2, 3)}, make_batch([0, 0]))


# --- T7: batch-hard triplet, an anchor without a negative ----------------------------------------

def test_triplet_one_identity_batch_has_no_valid_anchor():
    from core.losses.triplet import TripletLoss
    x = torch.tensor([[0.0], [1.0], [5.0], [9.0]], requires_grad=True)
    loss, logs = TripletLoss(margin=0.3)({"features": x}, make_batch([3, 3, 3, 3]))
    assert loss.item() == 0.0 and logs["d_ap"].item() == 0.0 and logs["frac_active"].item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))

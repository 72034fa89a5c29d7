"""Gradient flow of every term of the MOIL total (MGOR Sec. 3.2) to the backbone features.

The paper's episode loss, one backward pass, no inner update step:

    L = L_id(B_train; theta) + L_met(B_train; theta) + L_id(B_test; theta) + lambda L_pair

For each term the gradient that `moil` sends to the backbone features z (and to the
classifier) must be non-zero where the term depends on them and equal autograd on an
independent re-statement written here from the paper's equations (torch's own
label-smoothed cross-entropy, a per-anchor loop for the batch-hard triplet, per-identity
loops for the prototypes and POT's 1-D Wasserstein distance). A detached term — the
meta-test logits, either half of the alignment, the prototypes — changes one of these
gradients, so it fails here.
"""

import ot
import pytest
import torch
import torch.nn.functional as F

from core.records import Batch
from reid_moil.alignment import pairwise_alignment
from reid_moil.loss import MOILLoss

pytestmark = pytest.mark.filterwarnings("ignore:The use of `x.T`:UserWarning")  # POT 0.9 on torch

EPS = 0.1  # label smoothing
MARGIN = 0.3
K = 4


def episode(seed: int = 0, train_ids=(0, 1, 2, 3), test_ids=(4, 5, 6, 7), dim: int = 8):
    """Backbone features z (a leaf: what the backbone hands the head), a bias-free linear
    classifier on them, and an EDPS-shaped batch: K images per identity, meta-train
    identities first, halves of equal size."""
    g = torch.Generator().manual_seed(seed)
    pids = torch.tensor([y for y in (*train_ids, *test_ids) for _ in range(K)])
    roles = torch.tensor([0] * (K * len(train_ids)) + [1] * (K * len(test_ids)))
    centres = torch.randn(int(pids.max()) + 1, dim, generator=g)
    z = (centres[pids] + 0.8 * torch.randn(len(pids), dim, generator=g)).requires_grad_(True)
    weight = (0.5 * torch.randn(int(pids.max()) + 1, dim, generator=g)).requires_grad_(True)
    n = len(pids)
    zeros = torch.zeros(n, dtype=torch.long)
    batch = Batch(images=torch.zeros(n, 1), pids=pids, camids=zeros, categories=zeros, domains=zeros,
                  roles=roles, indices=torch.arange(n))
    return z, weight, batch


def outputs_of(z, weight):
    return {"features": z, "logits": z @ weight.t()}


# ---- independent re-statements of the paper's terms ------------------------------------

def ref_id(z, weight, pids, mask):
    """L_id on one half: label-smoothed softmax CE (torch's own definition)."""
    return F.cross_entropy(z[mask] @ weight.t(), pids[mask], label_smoothing=EPS)


def ref_triplet(z, pids, mask):
    """Batch-hard triplet (Hermans et al. 2017, Eq. 5), one anchor at a time."""
    x, y = z[mask], pids[mask]
    terms = []
    for a in range(len(y)):
        d = [torch.linalg.vector_norm(x[a] - x[j]) for j in range(len(y))]
        d_ap = torch.stack([d[j] for j in range(len(y)) if y[j] == y[a] and j != a]).max()
        d_an = torch.stack([d[j] for j in range(len(y)) if y[j] != y[a]]).min()
        terms.append(torch.clamp(MARGIN + d_ap - d_an, min=0.0))
    return torch.stack(terms).mean()


def ref_pair_distances(x, y):
    """z_i = mu_{y_i} + r_i: D+ = |r_i|, D- = |mu_a - mu_b| over identity pairs."""
    labels = sorted(set(y.tolist()))
    mu = {c: x[y == c].mean(0) for c in labels}
    d_pos = torch.stack([torch.linalg.vector_norm(x[i] - mu[int(y[i])]) for i in range(len(y))])
    d_neg = torch.stack([torch.linalg.vector_norm(mu[a] - mu[b])
                         for i, a in enumerate(labels) for b in labels[i + 1:]])
    return d_pos, d_neg


def ref_pair(z, pids, train, test):
    """(S(D+_train, D+_test), S(D-_train, D-_test)), S = POT's 1-D Wasserstein (p = 1)."""
    pos_a, neg_a = ref_pair_distances(z[train], pids[train])
    pos_b, neg_b = ref_pair_distances(z[test], pids[test])
    return ot.wasserstein_1d(pos_a, pos_b, p=1), ot.wasserstein_1d(neg_a, neg_b, p=1)


def reference_terms(z, weight, batch):
    train, test = batch.roles == 0, batch.roles == 1
    pos, neg = ref_pair(z, batch.pids, train, test)
    return {"id_train": ref_id(z, weight, batch.pids, train),
            "met_train": ref_triplet(z, batch.pids, train),
            "id_test": ref_id(z, weight, batch.pids, test),
            "pair": pos + neg}


ONLY = {  # MOIL weights that keep one term of the total
    "id_train": dict(id_train_weight=1.0, metric_weight=0.0, id_test_weight=0.0, pair_weight=0.0),
    "met_train": dict(id_train_weight=0.0, metric_weight=1.0, id_test_weight=0.0, pair_weight=0.0),
    "id_test": dict(id_train_weight=0.0, metric_weight=0.0, id_test_weight=1.0, pair_weight=0.0),
    "pair": dict(id_train_weight=0.0, metric_weight=0.0, id_test_weight=0.0, pair_weight=1.0),
}

#: Which half's features each term reaches (True: meta-train rows, False: meta-test rows).
REACHES = {"id_train": (True, False), "met_train": (True, False), "id_test": (False, True), "pair": (True, True)}


def grad(value, tensors):
    return torch.autograd.grad(value, tensors, allow_unused=True, retain_graph=True)


@pytest.mark.parametrize("term", list(ONLY))
@pytest.mark.parametrize("seed", [0, 1])
def test_each_term_sends_the_papers_gradient_to_the_backbone_features(term, seed):
    z, weight, batch = episode(seed)
    total, parts = MOILLoss(label_smoothing=EPS, margin=MARGIN, **ONLY[term])(outputs_of(z, weight), batch)
    expected = reference_terms(z, weight, batch)[term]
    torch.testing.assert_close(parts[term], expected.detach(), rtol=1e-5, atol=1e-6)
    (g_z,) = grad(total, [z])
    (e_z,) = grad(expected, [z])
    torch.testing.assert_close(g_z, e_z, rtol=1e-4, atol=1e-7)
    train = batch.roles == 0
    for rows, reached in ((train, REACHES[term][0]), (~train, REACHES[term][1])):
        norm = float(g_z[rows].abs().sum())
        assert (norm > 0) == reached, f"{term}: gradient on {'meta-train' if rows is train else 'meta-test'} " \
                                      f"features is {norm}"


@pytest.mark.parametrize("term", ["id_train", "id_test"])
def test_both_cross_entropies_train_the_classifier_with_the_same_parameters(term):
    z, weight, batch = episode(0)
    total, _ = MOILLoss(label_smoothing=EPS, **ONLY[term])(outputs_of(z, weight), batch)
    (g_w,) = grad(total, [weight])
    (e_w,) = grad(reference_terms(z, weight, batch)[term], [weight])
    assert float(g_w.abs().sum()) > 0
    torch.testing.assert_close(g_w, e_w, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("half", ["positive", "negative"])
def test_both_alignment_distributions_reach_both_halves(half):
    """S(D+_train, D+_test) and S(D-_train, D-_test) separately: each sends its paper
    gradient to the features of both halves (a detached half gives zero rows)."""
    z, _, batch = episode(2)
    train, test = batch.roles == 0, batch.roles == 1
    got = pairwise_alignment(z[train], batch.pids[train], z[test], batch.pids[test])
    ref = ref_pair(z, batch.pids, train, test)
    i = 0 if half == "positive" else 1
    torch.testing.assert_close(got[i], ref[i].to(got[i].dtype), rtol=1e-5, atol=1e-6)
    (g_z,) = grad(got[i], [z])
    (e_z,) = grad(ref[i], [z])
    torch.testing.assert_close(g_z, e_z.to(g_z.dtype), rtol=1e-4, atol=1e-7)
    assert float(g_z[train].abs().sum()) > 0 and float(g_z[test].abs().sum()) > 0


def test_the_total_is_a_plain_sum_at_one_set_of_parameters():
    """No inner update: the gradient of the weighted total, with respect to the features
    and the classifier, is the weighted sum of the terms' gradients all taken at the same
    theta (an adaptation step theta' = theta - a grad L_train before L_test would change it)."""
    z, weight, batch = episode(3)
    weights = dict(id_train_weight=0.7, metric_weight=1.3, id_test_weight=0.4, pair_weight=2.0)
    total, _ = MOILLoss(label_smoothing=EPS, margin=MARGIN, **weights)(outputs_of(z, weight), batch)
    ref = reference_terms(z, weight, batch)
    expected = 0.7 * ref["id_train"] + 1.3 * ref["met_train"] + 0.4 * ref["id_test"] + 2.0 * ref["pair"]
    torch.testing.assert_close(total, expected.to(total.dtype), rtol=1e-5, atol=1e-6)
    for got, want in zip(grad(total, [z, weight]), grad(expected, [z, weight])):
        torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-4, atol=1e-7)


def test_id_train_plus_id_test_is_twice_the_cross_entropy_over_the_batch():
    """Read as the paper states it (plain sum, no inner update), L_id^train + L_id^test on
    halves of equal size is exactly 2 x CE over the whole batch, in value and gradient.
    So an ablation row 'with MOIL' also doubles the CE weight: it needs a 'CE weight 2'
    control (README, 'What MOIL is, read literally')."""
    z, weight, batch = episode(4)
    total, _ = MOILLoss(label_smoothing=EPS, metric_weight=0.0, pair_weight=0.0)(outputs_of(z, weight), batch)
    doubled = 2.0 * F.cross_entropy(z @ weight.t(), batch.pids, label_smoothing=EPS)
    torch.testing.assert_close(total, doubled, rtol=1e-5, atol=1e-6)
    for got, want in zip(grad(total, [z, weight]), grad(doubled, [z, weight])):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)

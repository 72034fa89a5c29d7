"""The 1-D Wasserstein term (MGOR Sec. 3.2, S(., .)) against POT, the reference."""

import numpy as np
import ot
import pytest
import torch

from reid_moil.alignment import pair_distances, pairwise_alignment
from reid_moil.wasserstein import wasserstein_1d

SIZES = [(1, 1), (1, 5), (4, 4), (3, 7), (10, 4), (32, 32), (28, 6), (64, 120)]


@pytest.mark.parametrize("n, m", SIZES)
def test_equals_pots_wasserstein_1d_on_random_samples(n, m):
    rng = np.random.default_rng(n * 1000 + m)
    for _ in range(20):
        u, v = rng.normal(size=n) * rng.uniform(0.1, 3), rng.normal(size=m) + rng.uniform(-2, 2)
        ours = float(wasserstein_1d(torch.tensor(u), torch.tensor(v)))
        assert ours == pytest.approx(ot.wasserstein_1d(u, v, p=1), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("n, m", [(3, 7), (10, 4), (5, 5)])
def test_equals_pots_exact_transport_cost_on_the_line(n, m):
    rng = np.random.default_rng(7)
    u, v = rng.exponential(size=n), rng.exponential(size=m) * 2
    cost = ot.emd2(np.full(n, 1 / n), np.full(m, 1 / m), np.abs(u[:, None] - v[None, :]))
    assert float(wasserstein_1d(torch.tensor(u), torch.tensor(v))) == pytest.approx(cost, rel=1e-9)


def test_is_zero_for_identical_distributions_of_any_size():
    x = torch.tensor([0.5, 2.0, 2.0, 7.0])
    assert float(wasserstein_1d(x, x.flip(0))) == 0.0
    assert float(wasserstein_1d(x, x.repeat(3))) == 0.0  # the same distribution, three times the samples


def test_hand_worked_different_sizes():
    # u = {0, 1} (mass 1/2 each), v = {0, 0, 3} (1/3 each): quantile levels 1/3, 1/2, 2/3, 1;
    # |F^-1 - G^-1| on (0,1/3]: |0-0|, (1/3,1/2]: |0-0|, (1/2,2/3]: |1-0|, (2/3,1]: |1-3|
    # W1 = 1/6 * 1 + 1/3 * 2 = 5/6.
    assert float(wasserstein_1d(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0, 3.0]))) == pytest.approx(5 / 6)


def test_gradients_flow_and_pass_gradcheck():
    u = torch.tensor([0.3, -1.2, 2.5, 0.9], dtype=torch.float64, requires_grad=True)
    v = torch.tensor([1.0, 0.1, -0.4], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(wasserstein_1d, (u, v))
    wasserstein_1d(u, v).backward()
    assert torch.isfinite(u.grad).all() and u.grad.abs().sum() > 0


def test_empty_sample_is_an_error():
    with pytest.raises(ValueError, match="non-empty"):
        wasserstein_1d(torch.zeros(0), torch.ones(3))


def test_pairwise_alignment_equals_pot_on_numpy_distances_with_halves_of_different_sizes():
    rng = np.random.default_rng(3)
    z_train, z_test = rng.normal(size=(12, 5)), rng.normal(size=(8, 5)) * 1.5
    p_train, p_test = np.repeat([0, 1, 2], 4), np.repeat([5, 6], 4)

    def reference(z, pids):
        labels = np.unique(pids)
        proto = np.stack([z[pids == y].mean(0) for y in labels])
        pos = np.linalg.norm(z - proto[np.searchsorted(labels, pids)], axis=1)
        neg = [np.linalg.norm(proto[i] - proto[j]) for i in range(len(labels)) for j in range(i + 1, len(labels))]
        return pos, np.array(neg)

    (pos_a, neg_a), (pos_b, neg_b) = reference(z_train, p_train), reference(z_test, p_test)
    pos, neg = pairwise_alignment(torch.tensor(z_train), torch.tensor(p_train), torch.tensor(z_test), torch.tensor(p_test))
    assert float(pos) == pytest.approx(ot.wasserstein_1d(pos_a, pos_b), rel=1e-9)
    assert float(neg) == pytest.approx(ot.wasserstein_1d(neg_a, neg_b), rel=1e-9)


def test_pair_distances_are_residual_norms_and_prototype_distances():
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0]])
    pos, neg = pair_distances(z, torch.tensor([7, 7, 9, 9]))
    assert pos.tolist() == pytest.approx([1.0, 1.0, 1.0, 1.0])
    assert neg.tolist() == pytest.approx([(1 + 25) ** 0.5])  # prototypes (1, 0) and (0, 5)

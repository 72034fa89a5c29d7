"""The losses of the BoT / AGW / SBS / TransReID baselines against their papers' formulas
on hand-worked cases: CosFace, ArcFace, class-level circle loss, centre loss, weighted
regularised triplet, supervised contrastive; plus gradients (what must and must not get one)."""

import math

import pytest
import torch

from core.context import BuildContext
from core.losses.center import CenterLoss
from core.losses.margin_softmax import ArcFaceLoss, CircleSoftmaxLoss, CosFaceLoss
from core.losses.supcon import SupConLoss
from core.losses.weighted_triplet import WeightedRegularizedTriplet
from core.records import Batch
import torch.nn.functional as F


def make_batch(pids):
    pids = torch.as_tensor(pids)
    zeros = torch.zeros_like(pids)
    return Batch(images=torch.zeros(len(pids), 3, 4, 4), pids=pids, camids=zeros, categories=zeros,
                 domains=zeros, roles=zeros, indices=torch.arange(len(pids)))


def with_proxies(cls, proxies, **kwargs):
    proxies = torch.as_tensor(proxies, dtype=torch.float32)
    loss = cls(BuildContext(num_identities=proxies.shape[0], feature_dim=proxies.shape[1]), **kwargs)
    with torch.no_grad():
        loss.proxies.copy_(proxies)
    return loss


def softmax_nll(logits, target):
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))


# --- CosFace / ArcFace / circle ---------------------------------------------------------

def test_cosface_subtracts_the_margin_from_the_target_cosine_only():
    # x = (3, 0) -> cosines (1, 0) with proxies e1, e2 (scaled: only directions count);
    # s = 2, m = 0.5: logits (2 (1 - 0.5), 2 * 0) = (1, 0)
    loss = with_proxies(CosFaceLoss, [[5.0, 0.0], [0.0, 0.3]], scale=2.0, margin=0.5)
    value, _ = loss({"bn_features": torch.tensor([[3.0, 0.0]])}, make_batch([0]))
    assert value.item() == pytest.approx(softmax_nll([1.0, 0.0], 0), rel=1e-6)


def test_arcface_adds_the_angular_margin_to_the_target_angle():
    # x at 60 degrees from proxy 0 and 30 from proxy 1; s = 1, m = 0.5 rad:
    # logits (cos(pi/3 + 0.5), cos(pi/6))
    x = torch.tensor([[math.cos(math.pi / 3), math.sin(math.pi / 3)]])
    loss = with_proxies(ArcFaceLoss, [[1.0, 0.0], [0.0, 1.0]], scale=1.0, margin=0.5)
    value, _ = loss({"bn_features": x}, make_batch([0]))
    assert value.item() == pytest.approx(softmax_nll([math.cos(math.pi / 3 + 0.5), math.cos(math.pi / 6)], 0),
                                         rel=1e-5)


def test_arcface_beyond_pi_minus_m_uses_the_monotone_fallback():
    # target angle 170 degrees, m = 0.5: t + m > pi, so logit_y = cos t - m sin m
    t = math.radians(170)
    x = torch.tensor([[math.cos(t), math.sin(t)]])
    loss = with_proxies(ArcFaceLoss, [[1.0, 0.0], [0.0, 1.0]], scale=1.0, margin=0.5)
    value, _ = loss({"bn_features": x}, make_batch([0]))
    expected = softmax_nll([math.cos(t) - 0.5 * math.sin(0.5), math.sin(t)], 0)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def circle_reference(s_p, s_n, scale, m):
    """Circle loss with one positive (Sun et al. 2020): log(1 + sum_j exp(g a_n (s_n - m)) exp(-g a_p (s_p - 1 + m)))."""
    a_p, a_n = max(1 + m - s_p, 0.0), [max(v + m, 0.0) for v in s_n]
    inner = sum(math.exp(scale * a * (v - m)) for a, v in zip(a_n, s_n))
    return math.log(1 + inner * math.exp(-scale * a_p * (s_p - (1 - m))))


def test_circle_matches_the_papers_formula_with_one_positive():
    x = torch.tensor([[math.cos(math.pi / 3), math.sin(math.pi / 3)]])  # cosines 0.5, 0.866
    loss = with_proxies(CircleSoftmaxLoss, [[1.0, 0.0], [0.0, 1.0]], scale=2.0, margin=0.25, label_smoothing=0.0)
    value, _ = loss({"bn_features": x}, make_batch([0]))
    assert value.item() == pytest.approx(circle_reference(0.5, [math.sin(math.pi / 3)], 2.0, 0.25), rel=1e-5)


def test_circle_weights_are_constants_for_the_gradient():
    # d loss / d s_y with a_p held constant is -g a_p (1 - softmax_y); with a_p differentiated it is not
    torch.manual_seed(0)
    x = torch.randn(3, 4, requires_grad=True)
    loss = with_proxies(CircleSoftmaxLoss, torch.randn(5, 4), scale=4.0, margin=0.25, label_smoothing=0.0)
    pids = torch.tensor([0, 2, 4])
    value, _ = loss({"bn_features": x}, make_batch(pids))
    (grad,) = torch.autograd.grad(value, x)
    cos = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(loss.proxies, dim=1).t()
    c = cos.detach()
    logits = torch.where(torch.nn.functional.one_hot(pids, 5).bool(),
                         4.0 * (1.25 - c).clamp(min=0) * (cos - 0.75), 4.0 * (c + 0.25).clamp(min=0) * (cos - 0.25))
    (expected,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, pids), x)
    assert torch.allclose(grad, expected, atol=1e-6)


@pytest.mark.parametrize("cls, defaults", [
    (CosFaceLoss, {"scale": 64.0, "margin": 0.35, "label_smoothing": 0.0}),  # CosFace Sec. 4: s 64, m 0.35
    (ArcFaceLoss, {"scale": 64.0, "margin": 0.5, "label_smoothing": 0.0}),  # ArcFace Sec. 4: s 64, m 0.5
    (CircleSoftmaxLoss, {"scale": 64.0, "margin": 0.35, "label_smoothing": 0.1}),  # fast-reid Base-SBS.yml
])
def test_margin_losses_keep_their_own_defaults_and_typed_yaml_schema(cls, defaults, tmp_path):
    """Each loss's constructor signature is its YAML schema (core.config.validation): the
    defaults are the loss's own, built with them, and a wrong type is still refused."""
    from core.config.loading import ConfigError, LoadedConfig
    from core.config.validation import validate_params

    loss = cls(BuildContext(num_identities=3, feature_dim=4))
    assert {k: getattr(loss, k) for k in defaults} == defaults and loss.features == "bn_features"
    cfg = LoadedConfig(data={}, file=tmp_path / "p.yaml")
    assert validate_params(cls, {"margin": 0.2}, cfg, "losses.0", cls.yaml_name, injected=("ctx",)) == {"margin": 0.2}
    with pytest.raises(ConfigError, match="losses.0.margin.*expected float"):
        validate_params(cls, {"margin": "wide"}, cfg, "losses.0", cls.yaml_name, injected=("ctx",))


@pytest.mark.parametrize("cls", [CosFaceLoss, ArcFaceLoss, CircleSoftmaxLoss])
def test_margin_losses_train_their_proxies_and_the_features(cls):
    loss = cls(BuildContext(num_identities=6, feature_dim=8))
    x = torch.randn(4, 8, requires_grad=True)
    value, logs = loss({"bn_features": x}, make_batch([0, 1, 5, 5]))
    value.backward()
    assert x.grad.abs().sum() > 0 and loss.proxies.grad.abs().sum() > 0
    assert 0.0 <= logs["acc"].item() <= 1.0


def test_margin_loss_names_the_missing_output():
    loss = CosFaceLoss(BuildContext(num_identities=3, feature_dim=2))
    with pytest.raises(KeyError, match="bn_features"):
        loss({"features": torch.zeros(1, 2)}, make_batch([0]))


# --- centre loss --------------------------------------------------------------------------

def test_center_loss_is_the_mean_squared_distance_to_the_identity_centre():
    loss = CenterLoss(BuildContext(num_identities=3, feature_dim=2))
    with torch.no_grad():
        loss.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [9.0, 9.0]]))
    x = torch.tensor([[1.0, 0.0], [1.0, 3.0]], requires_grad=True)
    value, logs = loss({"features": x}, make_batch([0, 1]))
    assert value.item() == pytest.approx((1.0 + 4.0) / 2)
    value.backward()
    # dL/dc_y = -2 (x - c_y) / B; the unused centre gets nothing
    assert torch.allclose(loss.centers.grad, torch.tensor([[-1.0, 0.0], [0.0, -2.0], [0.0, 0.0]]))
    assert torch.allclose(x.grad, torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    assert logs["dist"].item() == pytest.approx(1.5)


# --- weighted regularised triplet --------------------------------------------------------

def wrt_reference(x, pids):
    """AGW's Eq. with softmax weights over each anchor's positives (others of its identity)
    and negatives, written out with plain loops over 1-D features."""
    total, count = 0.0, 0
    for i, (xi, pi) in enumerate(zip(x, pids)):
        pos = [abs(xi - xj) for j, (xj, pj) in enumerate(zip(x, pids)) if pj == pi and j != i]
        neg = [abs(xi - xj) for xj, pj in zip(x, pids) if pj != pi]
        wp = [math.exp(d) for d in pos]
        wn = [math.exp(-d) for d in neg]
        d_ap = sum(w * d for w, d in zip(wp, pos)) / sum(wp)
        d_an = sum(w * d for w, d in zip(wn, neg)) / sum(wn)
        total += math.log(1 + math.exp(d_ap - d_an))
        count += 1
    return total / count


def test_wrt_matches_the_softmax_weighted_formula():
    x = [0.0, 1.0, 1.5, 3.0, 4.0, 2.0]
    pids = [0, 0, 0, 1, 1, 1]
    loss = WeightedRegularizedTriplet()
    value, _ = loss({"features": torch.tensor(x)[:, None]}, make_batch(pids))
    assert value.item() == pytest.approx(wrt_reference(x, pids), rel=1e-5)


def test_wrt_gradient_reaches_every_feature_of_a_valid_batch():
    x = torch.randn(8, 5, requires_grad=True)
    value, _ = WeightedRegularizedTriplet()({"features": x}, make_batch([0, 0, 1, 1, 2, 2, 3, 3]))
    value.backward()
    assert torch.isfinite(x.grad).all() and (x.grad.abs().sum(dim=1) > 0).all()


def test_wrt_without_positives_is_a_connected_zero():
    x = torch.randn(3, 4, requires_grad=True)
    value, _ = WeightedRegularizedTriplet()({"features": x}, make_batch([0, 1, 2]))
    value.backward()
    assert value.item() == 0.0 and x.grad is not None


# --- supervised contrastive ----------------------------------------------------------------

def test_supcon_matches_eq2_on_a_hand_case():
    # z0 = e1, z1 = e2, z2 = -e1 (scale does not matter: features are normalised); tau = 1.
    # anchor 0: P = {1}: -log(e^0 / (e^0 + e^-1)); anchor 1: P = {0}: -log(e^0 / (e^0 + e^0));
    # anchor 2 has no positive and is left out.
    z = torch.tensor([[2.0, 0.0], [0.0, 5.0], [-1.0, 0.0]])
    value, _ = SupConLoss(temperature=1.0)({"features": z}, make_batch([0, 0, 1]))
    expected = (math.log(1 + math.exp(-1)) + math.log(2)) / 2
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_supcon_temperature_divides_the_similarities():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]])
    value, _ = SupConLoss(temperature=0.5)({"features": z}, make_batch([0, 0, 1, 1]))
    sims = z @ z.t() / 0.5
    expected = 0.0
    for i, p in ((0, 1), (1, 0), (2, 3), (3, 2)):
        others = [j for j in range(4) if j != i]
        expected += -(sims[i, p] - torch.logsumexp(sims[i, others], dim=0)).item()
    assert value.item() == pytest.approx(expected / 4, rel=1e-6)


def test_supcon_step_makes_no_host_sync():
    """Anchors without a positive leave the mean through masks (issue 19: a boolean
    selection or a Python branch on the data stops the host every step on a GPU)."""
    from core.host_syncs import count_host_syncs

    x = torch.randn(6, 4, requires_grad=True)
    batch = make_batch([0, 0, 1, 1, 2, 3])
    with count_host_syncs() as syncs:
        value, _ = SupConLoss()({"features": x}, batch)
        value.backward()
    assert syncs.total == 0, syncs.by_op
    z, ids = torch.nn.functional.normalize(x.detach(), dim=1), [0, 0, 1, 1, 2, 3]
    sims = z @ z.t() / 0.1
    per_anchor = []  # a plain loop over Eq. 2; anchors 4 and 5 have no positive
    for i in range(6):
        positives = [p for p in range(6) if p != i and ids[p] == ids[i]]
        others = [a for a in range(6) if a != i]
        if positives:
            per_anchor.append(-sum((sims[i, p] - torch.logsumexp(sims[i, others], 0)).item()
                                   for p in positives) / len(positives))
    assert value.item() == pytest.approx(sum(per_anchor) / len(per_anchor), rel=1e-5)


@pytest.mark.parametrize("pids", [[0, 1, 2], [5]], ids=["no positive", "one sample"])
def test_supcon_without_positives_is_a_connected_zero_with_finite_gradients(pids):
    x = torch.randn(len(pids), 4, requires_grad=True)
    value, _ = SupConLoss()({"features": x}, make_batch(pids))
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(x.grad).all()


def test_supcon_gradient_reaches_the_features():
    x = torch.randn(6, 4, requires_grad=True)
    value, _ = SupConLoss()({"features": x}, make_batch([0, 0, 1, 1, 2, 2]))
    value.backward()
    assert (x.grad.abs().sum(dim=1) > 0).all()


# --- W2, W3: weighted regularised triplet -----------------------------------------------------------

def wrt_loop(x, pids):
    """AGW's WRT per anchor with a plain loop (softmax weights kept in the graph, as the authors' code),
    averaged over anchors that have a positive and a negative."""
    terms = []
    for i in range(len(x)):
        pos = [(x[i] - x[j]).norm() for j in range(len(x)) if pids[j] == pids[i] and j != i]
        neg = [(x[i] - x[j]).norm() for j in range(len(x)) if pids[j] != pids[i]]
        if not pos or not neg:
            continue
        pos, neg = torch.stack(pos), torch.stack(neg)
        d_ap = (torch.exp(pos) / torch.exp(pos).sum() * pos).sum()
        d_an = (torch.exp(-neg) / torch.exp(-neg).sum() * neg).sum()
        terms.append(torch.log1p(torch.exp(d_ap - d_an)))
    return torch.stack(terms).mean()


def test_wrt_value_and_gradient_match_a_plain_loop_with_lone_identities():
    from core.losses.weighted_triplet import WeightedRegularizedTriplet
    x0 = torch.randn(7, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pids = [0, 0, 0, 1, 1, 2, 3]  # identities 2 and 3 have no positive: left out of the mean
    x = x0.float().requires_grad_()
    ours, _ = WeightedRegularizedTriplet()({"features": x}, make_batch(pids))
    ours.backward()
    xr = x0.clone().requires_grad_()
    ref = wrt_loop(xr, pids)
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(x.grad.double(), xr.grad, atol=1e-6, rtol=1e-5)


# --- S2: SupCon with several positives per anchor -------------------------------------------------

def test_supcon_averages_over_several_positives_per_anchor():
    from core.losses.supcon import SupConLoss
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(1))
    pids = [0, 0, 0, 1, 1, 1, 2, 3]  # K = 3: two positives per anchor of ids 0, 1
    z = F.normalize(x.double(), dim=1)
    sims = z @ z.t() / 0.2
    per_anchor = []
    for i in range(8):
        positives = [p for p in range(8) if p != i and pids[p] == pids[i]]
        others = [a for a in range(8) if a != i]
        if positives:
            lse = torch.logsumexp(sims[i, others], 0)
            per_anchor.append(-sum((sims[i, p] - lse).item() for p in positives) / len(positives))
    value, _ = SupConLoss(temperature=0.2)({"features": x}, make_batch(pids))
    assert value.item() == pytest.approx(sum(per_anchor) / len(per_anchor), rel=1e-5)


# --- M2, M7: margin softmax losses: label smoothing and accuracy --------------------------------------

def smoothed_ce(logits, targets, eps):
    """Szegedy et al.: q = (1 - eps) 1[y] + eps / N, loss = -sum q log p, batch mean."""
    logp = torch.log_softmax(logits, 1)
    q = torch.full_like(logp, eps / logits.shape[1])
    q[torch.arange(len(targets)), targets] += 1 - eps
    return -(q * logp).sum(1).mean()


@pytest.mark.parametrize("name", ["cosface", "arcface", "circle"])
def test_margin_losses_apply_their_label_smoothing(name):
    from core.losses.margin_softmax import ArcFaceLoss, CircleSoftmaxLoss, CosFaceLoss
    g = torch.Generator().manual_seed(2)
    proxies, x, t = torch.randn(5, 4, generator=g), torch.randn(3, 4, generator=g), torch.tensor([0, 2, 4])
    cos = F.normalize(x.double(), dim=1) @ F.normalize(proxies.double(), dim=1).t()
    target = F.one_hot(t, 5).bool()
    s, m = 4.0, 0.35
    cls, logits = {
        "cosface": (CosFaceLoss, torch.where(target, s * (cos - m), s * cos)),
        "arcface": (ArcFaceLoss, torch.where(target, s * torch.cos(torch.acos(cos) + m), s * cos)),
        "circle": (CircleSoftmaxLoss, torch.where(target, s * (1 + m - cos).clamp(min=0) * (cos - 1 + m),
                                                  s * (cos + m).clamp(min=0) * (cos - m))),
    }[name]
    loss = cls(BuildContext(num_identities=5, feature_dim=4), scale=s, margin=m, label_smoothing=0.2)
    with torch.no_grad():
        loss.proxies.copy_(proxies)
    value, _ = loss({"bn_features": x}, make_batch(t))
    assert value.item() == pytest.approx(smoothed_ce(logits, t, 0.2).item(), rel=1e-5)


def test_margin_loss_accuracy_is_the_nearest_proxy():
    from core.losses.margin_softmax import CosFaceLoss
    loss = CosFaceLoss(BuildContext(num_identities=3, feature_dim=3))
    with torch.no_grad():
        loss.proxies.copy_(torch.eye(3))
    x = torch.tensor([[2.0, 0.1, 0.0], [0.0, 3.0, 0.2], [0.1, 0.0, 1.0]])  # nearest proxies 0, 1, 2
    assert loss({"bn_features": x}, make_batch([0, 1, 0]))[1]["acc"].item() == pytest.approx(2 / 3)

"""Batch-hard triplet (core.losses.triplet) with K >= 3 images per identity, and distances
that low precision cannot corrupt (issue 19: with |a|^2 + |b|^2 - 2ab under bf16 autocast,
features of norm ~26 had distance errors up to 2.0 against a 0.3 margin)."""

import pytest
import torch

from core.cuda_autocast import emulate_cuda_autocast
from core.losses.triplet import TripletLoss, cosine_distances, euclidean_distances
from core.records import Batch


def make_batch(pids):
    n = len(pids)
    zeros = torch.zeros(n, dtype=torch.long)
    return Batch(images=torch.zeros(n, 3, 4, 4), pids=torch.tensor(pids), camids=zeros, categories=zeros,
                 domains=zeros, roles=zeros, indices=torch.arange(n))


# K = 3, 1-D features: A = {0, 2, 3}, B = {4, 5, 8}, margin 1.
# anchor  hardest pos  nearest neg   [1 + d_ap - d_an]_+   (easiest positive instead)
#   0        3 (->3)      4 (->4)          0                    [1 + 2 - 4]_+ = 0
#   2        2 (->0)      2 (->4)          1                    [1 + 1 - 2]_+ = 0
#   3        3 (->0)      1 (->4)          3                    [1 + 1 - 1]_+ = 1
#   4        4 (->8)      1 (->3)          4                    [1 + 1 - 1]_+ = 1
#   5        3 (->8)      2 (->3)          2                    [1 + 1 - 2]_+ = 0
#   8        4 (->4)      5 (->3)          0                    [1 + 3 - 5]_+ = 0
# loss = 10 / 6 (easiest positive: 2 / 6); mean d_ap = 19 / 6, mean d_an = 15 / 6; 4 of 6 active.
K3 = [[0.0], [2.0], [3.0], [4.0], [5.0], [8.0]]
K3_PIDS = [0, 0, 0, 1, 1, 1]


def test_triplet_takes_the_hardest_of_several_positives():
    loss, logs = TripletLoss(margin=1.0)({"features": torch.tensor(K3)}, make_batch(K3_PIDS))
    assert loss.item() == pytest.approx(10 / 6, abs=1e-5)
    assert logs["d_ap"].item() == pytest.approx(19 / 6, abs=1e-5)
    assert logs["d_an"].item() == pytest.approx(15 / 6, abs=1e-5)
    assert logs["frac_active"].item() == pytest.approx(4 / 6)


def test_triplet_k3_gradient_reaches_only_the_hardest_pairs():
    """d loss / d x by hand: each active anchor a pulls its hardest positive p and pushes its
    nearest negative n: +-1/6 on x_a, x_p, x_n along the 1-D line."""
    x = torch.tensor(K3, requires_grad=True)
    TripletLoss(margin=1.0)({"features": x}, make_batch(K3_PIDS))[0].backward()
    # anchor 2 (p=0, n=4), 3 (p=0, n=4), 4 (p=8, n=3), 5 (p=8, n=3); d/dx_a of |a-p| - |a-n|
    expected = torch.zeros(6)
    for a, p, n in ((1, 0, 3), (2, 0, 3), (3, 5, 2), (4, 5, 2)):
        va, vp, vn = K3[a][0], K3[p][0], K3[n][0]
        sp, sn = (1.0 if va > vp else -1.0), (1.0 if va > vn else -1.0)
        expected[a] += (sp - sn) / 6
        expected[p] -= sp / 6
        expected[n] += sn / 6
    torch.testing.assert_close(x.grad[:, 0], expected)


def test_triplet_k4_matches_a_plain_loop_in_float64():
    g = torch.Generator().manual_seed(0)
    pids = [i // 4 for i in range(16)]
    x = torch.randn(16, 8, generator=g)
    loss, _ = TripletLoss(margin=0.3)({"features": x}, make_batch(pids))
    xd = x.double()
    terms = []
    for a in range(16):
        d = [(xd[a] - xd[j]).norm().item() for j in range(16)]
        d_ap = max(d[j] for j in range(16) if pids[j] == pids[a] and j != a)
        d_an = min(d[j] for j in range(16) if pids[j] != pids[a])
        terms.append(max(0.0, 0.3 + d_ap - d_an))
    assert loss.item() == pytest.approx(sum(terms) / 16, abs=1e-5)


def large_norm_features(seed=0, n_ids=16, k=4, dim=256, norm=26.0, spread=0.2):
    """Features as a trained ReID model gives them: a large common component (norm ~26),
    identities a short distance apart, images close to their identity."""
    g = torch.Generator().manual_seed(seed)
    common = torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=0) * norm
    centres = common + 2 * spread * torch.randn(n_ids, dim, generator=g) / dim ** 0.5
    x = centres.repeat_interleave(k, 0) + spread * torch.randn(n_ids * k, dim, generator=g) / dim ** 0.5
    return x, [i // k for i in range(n_ids * k)]


def reference_loss(x, pids, margin):
    d = torch.cdist(x.double(), x.double())
    p = torch.tensor(pids)
    same = p[:, None] == p[None, :]
    eye = torch.eye(len(p), dtype=torch.bool)
    d_ap = torch.where(same & ~eye, d, torch.tensor(-1.0, dtype=torch.float64)).max(1).values
    d_an = torch.where(~same, d, torch.tensor(1e9, dtype=torch.float64)).min(1).values
    return torch.relu(margin + d_ap - d_an).mean().item(), d


@pytest.mark.parametrize("context", ["cpu_autocast_bf16", "cuda_autocast_bf16", "cuda_autocast_fp16"])
def test_triplet_is_exact_under_low_precision_autocast(context):
    x, pids = large_norm_features()
    expected, _ = reference_loss(x, pids, 0.3)
    ctx = {"cpu_autocast_bf16": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
           "cuda_autocast_bf16": lambda: emulate_cuda_autocast(torch.bfloat16),
           "cuda_autocast_fp16": lambda: emulate_cuda_autocast(torch.float16)}[context]
    with ctx():
        loss, _ = TripletLoss(margin=0.3)({"features": x}, make_batch(pids))
    assert loss.item() == pytest.approx(expected, abs=1e-4)


def test_norm_expansion_form_in_bf16_fails_on_these_features():
    """The case above is a real trap: |a|^2 + |b|^2 - 2ab in bf16 errs by far more than
    the margin on these features (so the test above could fail)."""
    x, pids = large_norm_features()
    _, d = reference_loss(x, pids, 0.3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sq = (x * x).sum(1)
        naive = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.t())).clamp(min=1e-12).sqrt()
    assert (naive.float().double() - d).abs().max().item() > 0.3


def test_distance_matrices_are_exact_under_cpu_autocast():
    x, _ = large_norm_features(n_ids=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        e, c = euclidean_distances(x), cosine_distances(x)
    assert e.dtype == torch.float32 and c.dtype == torch.float32
    torch.testing.assert_close(e.double(), torch.cdist(x.double(), x.double()), atol=1e-4, rtol=0)
    xn = torch.nn.functional.normalize(x.double(), dim=1)
    torch.testing.assert_close(c.double(), 1 - xn @ xn.t(), atol=1e-5, rtol=0)


def test_triplet_gradient_under_autocast_matches_float64():
    x, pids = large_norm_features(n_ids=8)
    xa = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        TripletLoss(margin=0.3)({"features": xa}, make_batch(pids))[0].backward()
    xd = x.double().requires_grad_(True)
    p = torch.tensor(pids)
    d = torch.cdist(xd, xd)
    same, eye = p[:, None] == p[None, :], torch.eye(len(p), dtype=torch.bool)
    d_ap = torch.where(same & ~eye, d, torch.full_like(d, -1.0)).max(1).values
    d_an = torch.where(~same, d, torch.full_like(d, 1e9)).min(1).values
    torch.relu(0.3 + d_ap - d_an).mean().backward()
    cos = torch.nn.functional.cosine_similarity(xa.grad.double().flatten(), xd.grad.flatten(), dim=0)
    assert cos.item() > 0.999

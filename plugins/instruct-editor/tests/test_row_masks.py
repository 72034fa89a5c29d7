"""The losses restricted to some rows (text-only rows have no image features) take the
rows as masks on the whole batch, not as a selected sub-batch: a selection's size is known
only to the data, one host sync per selection on a GPU (issue 19, item 9). The masked
losses equal the losses of the selected sub-batch, values and gradients."""

import pytest
import torch

from core.host_syncs import count_host_syncs
from reid_instruct_editor.adaptive_triplet import adaptive_triplet
from reid_instruct_editor.identity_loss import smoothed_cross_entropy


def _case(seed, n=18, d=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * 3
    pids = torch.arange(n) % 5  # K = 3 or 4 per identity
    rows = torch.rand(n, generator=g) > 0.3
    e = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=1)
    return x, pids, rows, e @ e.t()


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("seed", range(4))
def test_masked_adaptive_triplet_is_the_loss_of_the_selected_rows(seed, metric):
    x, pids, rows, s = _case(seed)
    x[~rows] = 0.0  # text-only rows carry zeros in the backbone's image outputs
    a = x.clone().requires_grad_(True)
    want, want_parts = adaptive_triplet(a[rows], pids[rows], s[rows][:, rows], 0.3, 0.1, metric)
    want.backward()
    b = x.clone().requires_grad_(True)
    with count_host_syncs() as syncs:
        got, parts = adaptive_triplet(b, pids, s, 0.3, 0.1, metric, rows)
        got.backward()
    assert syncs.total == 0, syncs.by_op
    assert want > 0 and want_parts["l11"] > 0
    assert got.item() == pytest.approx(want.item(), rel=1e-6, abs=1e-7)
    for k in ("l11", "l13"):
        assert parts[k].item() == pytest.approx(want_parts[k].item(), rel=1e-6, abs=1e-7)
    assert torch.allclose(b.grad, a.grad, atol=1e-6)
    assert torch.count_nonzero(b.grad[~rows]) == 0


def test_masked_adaptive_triplet_with_no_row_is_zero():
    x, pids, _, s = _case(0)
    x.requires_grad_(True)
    loss, parts = adaptive_triplet(x, pids, s, rows=torch.zeros(len(pids), dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and parts["l13"].item() == 0.0 and torch.count_nonzero(x.grad) == 0


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("seed", range(3))
def test_masked_cross_entropy_is_the_loss_of_the_selected_rows(seed, eps):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(12, 7, generator=g) * 4
    logits[::3, 5:] = float("-inf")  # per-task classifiers: other tasks' columns masked
    targets = torch.randint(0, 5, (12,), generator=g)
    rows = torch.rand(12, generator=g) > 0.4
    a = logits.clone().requires_grad_(True)
    want = smoothed_cross_entropy(a[rows], targets[rows], eps)
    want.backward()
    b = logits.clone().requires_grad_(True)
    with count_host_syncs() as syncs:
        got = smoothed_cross_entropy(b, targets, eps, rows)
        got.backward()
    assert syncs.total == 0
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert torch.allclose(b.grad, a.grad, atol=1e-7) and torch.count_nonzero(b.grad[~rows]) == 0
    # the plain mean is torch's cross entropy (an independent reference), masked columns aside
    if eps == 0.0:
        plain = smoothed_cross_entropy(logits, targets, 0.0)
        assert plain.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, targets).item(), rel=1e-6)

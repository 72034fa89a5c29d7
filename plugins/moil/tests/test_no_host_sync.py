"""MOIL's terms on masks over the whole episode, not on selected halves (a selection's
size is known only to the data: a host sync per selection on a GPU, issue 19 item 9). The
reference is the definition: the core's `ce` and `triplet` on the selected sub-batches and
the alignment of the selected halves; values and gradients must agree."""

import pytest
import torch

from core.host_syncs import count_host_syncs
from core.losses.cross_entropy import CrossEntropyLoss
from core.losses.triplet import TripletLoss
from core.records import Batch
from reid_moil.alignment import masked_pairwise_alignment, pairwise_alignment
from reid_moil.loss import MOILLoss
from reid_moil.wasserstein import wasserstein_1d, weighted_wasserstein_1d


def _episode(seed, n=24, classes=8):
    g = torch.Generator().manual_seed(seed)
    pids = torch.randint(0, 6, (n,), generator=g)
    roles = (torch.rand(n, generator=g) > 0.5).long()
    z = torch.randn(n, 8, generator=g) * 2
    logits = torch.randn(n, classes, generator=g) * 3
    zeros = torch.zeros(n, dtype=torch.long)
    batch = Batch(images=torch.zeros(n, 1), pids=pids, camids=zeros, categories=zeros, domains=zeros, roles=roles,
                  indices=torch.arange(n)).keep_host_copies()  # as collate makes it
    return z, logits, batch


def _select(batch, mask):
    n = int(mask.sum())
    zeros = torch.zeros(n, dtype=torch.long)
    return Batch(images=torch.zeros(n, 1), pids=batch.pids[mask], camids=zeros, categories=zeros, domains=zeros,
                 roles=zeros, indices=torch.arange(n))


@pytest.mark.parametrize("margin", [0.3, None])
@pytest.mark.parametrize("seed", range(3))
def test_moil_on_masks_is_moil_on_the_selected_halves(seed, margin):
    z, logits, batch = _episode(seed)
    train, test = batch.roles == 0, batch.roles == 1
    za, la = z.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    ce, tri = CrossEntropyLoss(0.1), TripletLoss(margin=margin, gather=False)
    id_train, ce_train = ce({"logits": la[train]}, _select(batch, train))
    id_test, ce_test = ce({"logits": la[test]}, _select(batch, test))
    met, tri_log = tri({"features": za[train]}, _select(batch, train))
    pos, neg = pairwise_alignment(za[train], batch.pids[train], za[test], batch.pids[test])
    want = id_train + met + id_test + pos + neg
    want.backward()
    zb, lb = z.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    loss = MOILLoss(margin=margin)
    with count_host_syncs() as syncs:
        got, parts = loss({"features": zb, "logits": lb}, batch)
        got.backward()
    assert syncs.total == 0, syncs.by_op  # the roles' check reads the batch's host copy
    expect = {"id_train": id_train, "met_train": met, "id_test": id_test, "pair_pos": pos, "pair_neg": neg,
              "acc_train": ce_train["acc"], "acc_test": ce_test["acc"], "d_ap": tri_log["d_ap"],
              "d_an": tri_log["d_an"]}
    for k, v in expect.items():
        assert parts[k].item() == pytest.approx(v.item(), rel=1e-5, abs=1e-6), k
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert torch.allclose(za.grad, zb.grad, atol=1e-5) and torch.allclose(la.grad, lb.grad, atol=1e-6)


def test_alignment_halves_with_one_identity_or_unequal_sizes():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(10, 4, generator=g)
    pids = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 4])
    train = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], dtype=torch.bool)  # one identity: no D-
    pos, neg = masked_pairwise_alignment(z, pids, train, ~train)
    want_pos, want_neg = pairwise_alignment(z[train], pids[train], z[~train], pids[~train])
    assert pos.item() == pytest.approx(want_pos.item(), rel=1e-6) and neg.item() == want_neg.item() == 0.0
    train = torch.tensor([1, 0, 1, 1, 0, 1, 0, 0, 1, 0], dtype=torch.bool)  # 4 identities vs 3
    pos, neg = masked_pairwise_alignment(z, pids, train, ~train)
    want_pos, want_neg = pairwise_alignment(z[train], pids[train], z[~train], pids[~train])
    assert pos.item() == pytest.approx(want_pos.item(), rel=1e-6)
    assert neg.item() == pytest.approx(want_neg.item(), rel=1e-6) and neg.item() > 0


@pytest.mark.parametrize("seed", range(5))
def test_weighted_wasserstein_is_the_wasserstein_of_the_selected_values(seed):
    g = torch.Generator().manual_seed(seed)
    u, v = torch.randn(13, generator=g), torch.randn(9, generator=g) * 2 + 1
    mu, mv = torch.rand(13, generator=g) > 0.4, torch.rand(9, generator=g) > 0.3
    u[~mu] = float("inf")  # excluded values never count
    got = weighted_wasserstein_1d(u, mu, v, mv)
    assert got.item() == pytest.approx(wasserstein_1d(u[mu], v[mv]).item(), rel=1e-6)
    assert weighted_wasserstein_1d(u, torch.zeros_like(mu), v, mv).item() == 0.0


def test_moil_compiles_to_one_graph():
    """No graph break under torch.compile (issue 19): `fullgraph=True` fails on any break.
    The eager backend traces without generating code (fast on the CPU)."""
    torch._dynamo.reset()
    z, logits, batch = _episode(0)
    loss = MOILLoss()
    compiled = torch.compile(loss, fullgraph=True, backend="eager")
    got, parts = compiled({"features": z, "logits": logits}, batch)
    want, want_parts = loss({"features": z, "logits": logits}, batch)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)

"""The meta-train / meta-test halves as masks over the whole batch, not selected
sub-batches (a selection's size is known only to the data: a host sync per selection on a
GPU, issue 19 item 9): the values and gradients are those of the selected halves."""

import pytest
import torch

from core.host_syncs import count_host_syncs
from reid_hse.loss import smoothed_cross_entropy


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("seed", range(3))
def test_masked_cross_entropy_is_the_cross_entropy_of_the_selected_rows(seed, eps):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(12, 6, generator=g) * 3
    logits[1::2, 4:] = float("-inf")  # padded local logits of a smaller category
    targets = torch.randint(0, 4, (12,), generator=g)
    rows = torch.rand(12, generator=g) > 0.5
    rows[1], rows[3] = False, True
    targets[1] = 5  # an excluded row whose target is a -inf column: its CE is inf, left out
    a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    want = smoothed_cross_entropy(a[rows], targets[rows], eps)
    want.backward()
    with count_host_syncs() as syncs:
        got = smoothed_cross_entropy(b, targets, eps, rows)
        got.backward()
    assert syncs.total == 0, syncs.by_op
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert torch.allclose(a.grad, b.grad, atol=1e-7) and torch.count_nonzero(b.grad[~rows]) == 0
    none = smoothed_cross_entropy(logits, targets, eps, torch.zeros(12, dtype=torch.bool))
    assert none.item() == 0.0


def _plain_norm(head, z, reference):
    mean = reference.mean(0)
    var = reference.var(0, unbiased=False) if len(reference) > 1 else torch.ones_like(mean)
    return (z - mean) / torch.sqrt(var + head.local_bn.eps) * head.local_bn.weight + head.local_bn.bias


def test_local_norm_statistics_without_a_selection(model):
    _, head, _ = model
    z = torch.randn(10, head.local_bn.num_features, generator=torch.Generator().manual_seed(5)) * 2 + 1
    cases = {"episode": torch.tensor([0, 1] * 5), "no meta-train row": torch.ones(10, dtype=torch.long),
             "one meta-train row": torch.tensor([1] * 9 + [0])}
    for name, roles in cases.items():
        train = roles == 0
        reference = z[train] if train.any() else z
        with count_host_syncs() as syncs:
            got = head.local_norm(z, roles)
        assert syncs.total == 0, (name, syncs.by_op)
        torch.testing.assert_close(got, _plain_norm(head, z, reference), msg=name)


def test_local_norm_and_logits_compile_to_one_graph(model):
    """No graph break under torch.compile (issue 19): `fullgraph=True` fails on any break
    (the input check on the categories runs in eager mode only)."""
    _, head, _ = model
    torch._dynamo.reset()
    z = torch.randn(10, head.local_bn.num_features, generator=torch.Generator().manual_seed(6))
    roles, categories = torch.tensor([0, 1] * 5), torch.tensor([0, 1] * 5)

    def both(z, roles, categories):
        return head.local_logits(head.local_norm(z, roles), categories)

    got = torch.compile(both, fullgraph=True, backend="eager")(z, roles, categories)
    torch.testing.assert_close(got, both(z, roles, categories))

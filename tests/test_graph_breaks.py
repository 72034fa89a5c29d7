"""Components that compile to one graph (issue 19, item 9): `torch.compile(fullgraph=True)`
fails on any graph break. The eager backend traces without generating code, so these run
in seconds on the CPU; the per-pipeline counts are in bench/graph_breaks.py (BENCHMARKS.md)."""

import math

import pytest
import torch

from core.host_syncs import count_host_syncs
from core.losses.weighted_triplet import WeightedRegularizedTriplet
from core.records import Batch


def _batch(pids):
    n = len(pids)
    zeros = torch.zeros(n, dtype=torch.long)
    return Batch(images=torch.zeros(n, 1), pids=torch.tensor(pids), camids=zeros, categories=zeros,
                 domains=zeros, roles=zeros, indices=torch.arange(n))


def _wrt_loop(x, pids):
    """AGW's WRT (Sec. 4.1) with plain loops over 1-D features; anchors without a positive
    or a negative are left out of the mean."""
    total, count = 0.0, 0
    for i, (xi, pi) in enumerate(zip(x, pids)):
        pos = [abs(xi - xj) for j, (xj, pj) in enumerate(zip(x, pids)) if pj == pi and j != i]
        neg = [abs(xi - xj) for xj, pj in zip(x, pids) if pj != pi]
        if not pos or not neg:
            continue
        wp, wn = [math.exp(d) for d in pos], [math.exp(-d) for d in neg]
        d_ap = sum(w * d for w, d in zip(wp, pos)) / sum(wp)
        d_an = sum(w * d for w, d in zip(wn, neg)) / sum(wn)
        total += math.log(1 + math.exp(d_ap - d_an))
        count += 1
    return total / count


def test_wrt_leaves_out_anchors_without_positives_with_no_sync_and_one_graph():
    x = [0.0, 1.0, 1.5, 3.0, 4.0, 2.0, 7.0]
    pids = [0, 0, 0, 1, 1, 1, 2]  # identity 2 alone: its anchor leaves the mean
    loss = WeightedRegularizedTriplet()
    features = torch.tensor(x)[:, None].requires_grad_(True)
    with count_host_syncs() as syncs:
        value, _ = loss({"features": features}, _batch(pids))
        value.backward()
    assert syncs.total == 0, syncs.by_op
    assert value.item() == pytest.approx(_wrt_loop(x, pids), rel=1e-5)
    assert torch.isfinite(features.grad).all()
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="eager")
    again, _ = compiled({"features": torch.tensor(x)[:, None]}, _batch(pids))
    assert again.item() == pytest.approx(value.item(), rel=1e-6)

"""VPM-2's momentum update (MUVA eq. 3) for every identity at once: no per-identity loop,
no host sync on a GPU (issue 19 item 9). The reference is the per-identity loop of the
definition: the identity's hardest sample (lowest similarity to its memory row, the first
on ties), mixed 0.2 / 0.8 with the memory row and normalised; other rows unchanged."""

import pytest
import torch
import torch.nn.functional as F

from core.host_syncs import count_host_syncs
from reid_amsa.memory import momentum_update


def _loop_update(memory, features, labels, momentum):
    memory = memory.clone()
    x = F.normalize(features, dim=1)
    for c in sorted(set(labels.tolist())):
        rows = [i for i in range(len(labels)) if labels[i] == c]
        sims = [float(x[i] @ memory[c]) for i in rows]
        hardest = x[rows[sims.index(min(sims))]]
        memory[c] = F.normalize(momentum * memory[c] + (1 - momentum) * hardest, dim=0)
    return memory


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_update_is_the_per_identity_loop(seed):
    g = torch.Generator().manual_seed(seed)
    memory = F.normalize(torch.randn(10, 6, generator=g), dim=1)
    features = torch.randn(16, 6, generator=g) * 3
    labels = torch.randint(0, 7, (16,), generator=g)  # identities 7..9 absent
    features[labels == labels[0]] = features[0].clone()  # ties: the first row is the hardest
    want = _loop_update(memory, features, labels, 0.2)
    got = memory.clone()
    with count_host_syncs() as syncs:
        momentum_update(got, features, labels, 0.2)
    assert syncs.total == 0, syncs.by_op
    torch.testing.assert_close(got, want)
    absent = torch.ones(10, dtype=torch.bool)
    absent[labels] = False
    assert torch.equal(got[absent], memory[absent])

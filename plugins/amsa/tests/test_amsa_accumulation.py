"""VPM-2's update after a step uses every micro-batch of the step (gradient accumulation,
issue 19: the trainer's on_step_end sees only the last micro-batch's outputs)."""

import math
from types import SimpleNamespace

import torch

from core.context import BuildContext


def test_vpm2_update_after_accumulated_step_uses_every_micro_batch(make_batch):
    from reid_amsa.prototype_loss import PrototypeContrastLoss

    loss = PrototypeContrastLoss(BuildContext(num_identities=2, feature_dim=2), momentum=0.2)
    loss.memory.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    trainer = SimpleNamespace(net=SimpleNamespace(terms=[SimpleNamespace(module=loss)]))
    # identity 1 in two micro-batches: (3, 3) in the first, (0, 3) in the second; the hardest
    # (least similar to its slot (0, 1)) of the step's two is (3, 3), from the first one
    first = {"bn_features": torch.tensor([[3.0, 3.0]])}
    second = {"bn_features": torch.tensor([[0.0, 3.0]])}
    loss(first, make_batch([1]))
    loss(second, make_batch([1]))
    loss.on_step_end(trainer, step=1, batch=make_batch([1]), outputs=second, losses={})
    h = 1 / math.sqrt(2)
    mixed = torch.tensor([0.8 * h, 0.2 + 0.8 * h])  # as with both samples in one batch
    assert torch.allclose(loss.memory[1], mixed / mixed.norm())
    # and the next step starts afresh: only its own micro-batches
    loss(first, make_batch([1]))
    before = loss.memory.clone()
    loss.on_step_end(trainer, step=2, batch=make_batch([1]), outputs=first, losses={})
    expected = 0.2 * before[1] + 0.8 * torch.tensor([h, h])
    assert torch.allclose(loss.memory[1], expected / expected.norm())

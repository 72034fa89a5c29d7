"""Specification of the shared weights reader (core.training.checkpoint): which files are
refused and why, which are left to the loader, and that load_fitting accepts what torch's
strict load_state_dict accepts. Each expectation comes from what torch, safetensors or
the zip format say of the file, not from the reader's own code. Tiny tensors only."""

from __future__ import annotations

import pytest
import torch

from core.training.checkpoint import CheckpointError, load_fitting


class Scaled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.scale = torch.nn.Parameter(torch.tensor(2.0))  # 0-d


def test_load_fitting_takes_a_one_element_tensor_for_a_scalar_as_torch_does(tmp_path):
    """torch's _load_from_state_dict loads a (1,) tensor into a 0-d parameter (files written
    by torch 0.3): 'strict as torch's' must not refuse it as another shape."""
    state = {**Scaled().state_dict(), "scale": torch.tensor([5.0])}
    reference = Scaled()
    reference.load_state_dict(state)  # the reference: torch accepts it
    module = Scaled()
    load_fitting(module, state, tmp_path / "old.pt", "model", "the model", "hint")
    assert module.scale.item() == 5.0 and module.scale.dim() == 0


def test_load_fitting_refuses_a_three_element_tensor_for_a_scalar(tmp_path):
    state = {**Scaled().state_dict(), "scale": torch.zeros(3)}
    with pytest.raises(RuntimeError, match="size mismatch for scale"):
        Scaled().load_state_dict(state)  # the reference: torch refuses it
    with pytest.raises(CheckpointError, match=r"1 tensor of another shape \(e.g. scale is \[3\] in the file, \[\] in"):
        load_fitting(Scaled(), state, tmp_path / "x.pt", "model", "the model", "hint")

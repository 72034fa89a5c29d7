"""A loss's forward returns a 0-dim tensor (or that and a dict of logged values): the
contract of core.interfaces.Loss. A plugin author's loss returning a Python float, or a
per-sample vector, failed far from it ("'float' object has no attribute ...", torch's "grad
can be implicitly created only for scalar outputs"), naming neither the loss nor the rule."""

from __future__ import annotations

import pytest
import torch

from core.interfaces import Loss
from core.testing import TINY_PIPELINE


class FloatReturningLoss(Loss):
    def forward(self, outputs, batch):
        return float(outputs["features"].pow(2).mean())


class VectorReturningLoss(Loss):
    def forward(self, outputs, batch):
        return outputs["features"].pow(2).mean(dim=1)  # per sample: (B,)


class OneElementLoss(Loss):
    def forward(self, outputs, batch):
        return outputs["features"].pow(2).mean().reshape(1)  # (1,): failed in the logging's stack


class ScalarLoss(Loss):
    def forward(self, outputs, batch):
        return outputs["features"].pow(2).mean()


@pytest.mark.parametrize("target, got", [(FloatReturningLoss, "a float"),
                                         (VectorReturningLoss, "a tensor of shape (16,)"),
                                         (OneElementLoss, "a tensor of shape (1,)")])
def test_a_loss_returning_a_float_or_a_vector_is_one_line_naming_it(tmp_path, run_tiny_pipeline,
                                                                   register_component, target, got):
    register_component("loss", "contract_probe", target)
    config = {**TINY_PIPELINE, "losses": [{"name": "ce"}, {"name": "contract_probe"}]}
    with pytest.raises(TypeError) as caught:
        run_tiny_pipeline(config)
    line = str(caught.value)
    assert line.startswith(f"loss 'contract_probe' (losses.1, {target.__name__}).forward returned {got}; "
                           "it must return a 0-dim torch tensor"), line
    assert "\n" not in line


def test_a_0_dim_loss_trains(tmp_path, run_tiny_pipeline, register_component):
    """The check refuses nothing the contract allows."""
    register_component("loss", "contract_probe_scalar", ScalarLoss)
    config = {**TINY_PIPELINE, "losses": [{"name": "ce"}, {"name": "contract_probe_scalar"}]}
    run_tiny_pipeline(config)
    assert (tmp_path / "run-pipeline" / "report.md").is_file()

"""Fixtures shared by the core's tests (plugin authors get theirs from core.testing)."""

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

# tests/pipeline_twins.py, importable by the test modules as `pipeline_twins` (pytest's
# importlib mode does not put tests/ on sys.path; conftest is imported before them)
if "pipeline_twins" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("pipeline_twins", Path(__file__).with_name("pipeline_twins.py"))
    sys.modules["pipeline_twins"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["pipeline_twins"])

#: A local plugin file for tests: a head without BatchNorm (per-process batch statistics
#: would rightly differ from a one-process batch's, so comparisons of DDP or gradient
#: accumulation against one big batch need a BN-free model) and a loss that turns NaN at
#: a chosen call.
TEST_COMPONENTS = textwrap.dedent("""
    from torch import nn
    from core.hookspecs import hookimpl
    from core.interfaces import Head, Loss

    class LinearHead(Head):
        def __init__(self, ctx):
            super().__init__()
            self.classifier = nn.Linear(ctx.feature_dim, ctx.num_identities)

        def forward(self, features, batch):
            x = features["global"]
            return {"features": x, "embedding": x, "logits": self.classifier(x)}

    class NanAtStep(Loss):
        def __init__(self, step: int = 3):
            super().__init__()
            self.step, self.calls = step, 0

        def forward(self, outputs, batch):
            self.calls += 1
            value = outputs["features"].sum() * 0
            return value + (float("nan") if self.calls == self.step else 0.0)

    class InfGradAtStep(Loss):
        # finite (zero) loss whose gradient is NaN at a chosen call: sqrt at 0
        def __init__(self, step: int = 3):
            super().__init__()
            self.step, self.calls = step, 0

        def forward(self, outputs, batch):
            self.calls += 1
            x = outputs["features"]
            return (x * 0).sqrt().sum() if self.calls == self.step else x.sum() * 0

    class BrokenLoss(Loss):
        # fails at its first call with a shape error, as a plugin's bug would
        def forward(self, outputs, batch):
            return (outputs["features"] @ outputs["features"]).sum()

    @hookimpl
    def register_heads(register):
        register("linear_test", LinearHead)

    @hookimpl
    def register_losses(register):
        register("nan_at_step", NanAtStep)
        register("inf_grad_at_step", InfGradAtStep)
        register("broken_test", BrokenLoss)
""")


@pytest.fixture
def test_components(tmp_path):
    """Write the test-components plugin file into tmp_path; name it `./test_components.py`
    under `plugins:` in a pipeline written to the same folder."""
    path = tmp_path / "test_components.py"
    path.write_text(TEST_COMPONENTS)
    return path

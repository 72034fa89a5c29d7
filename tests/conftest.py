"""Fixtures shared by the core's tests (plugin authors get theirs from core.testing, which
these tests have too: `torchrun`, `one_torch_thread`, ...)."""

import copy
import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

# tests/pipeline_twins.py and tests/layout_fixtures.py, importable by the test modules as
# `pipeline_twins` and `layout_fixtures` (pytest's importlib mode does not put tests/ on
# sys.path; conftest is imported before them)
for _name in ("pipeline_twins", "layout_fixtures"):
    if _name not in sys.modules:
        _spec = importlib.util.spec_from_file_location(_name, Path(__file__).with_name(f"{_name}.py"))
        sys.modules[_name] = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(sys.modules[_name])

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


@pytest.fixture
def ddp_pipeline_file(tmp_path, test_components):
    """`write(name, epochs, train=None)`: the pipeline file (in tmp_path, next to
    test_components.py) that the multi-process tests compare with one process: the tiny
    pipeline with the BatchNorm-free `linear_test` head, cross-entropy, SGD (Adam divides
    by sqrt(v) and turns float noise in exactly-zero gradients, the key bias of attention,
    into full-size steps, which would hide what DDP computes), every step logged, no
    evaluation before training; `train` replaces the training data list."""
    from core.testing import TINY_PIPELINE

    def write(name: str, epochs: int, train: list | None = None) -> Path:
        config = copy.deepcopy(TINY_PIPELINE)
        config.update(plugins=["./test_components.py"], head={"name": "linear_test"}, losses=[{"name": "ce"}])
        config["stages"][0].update(epochs=epochs, optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9})
        config["trainer"].update(eval_before=False, log_every=1)
        if train is not None:
            config["data"]["train"] = train
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config))
        return path

    return write


@pytest.fixture
def instruction_conditioned_runs(monkeypatch):
    """Runs loaded by the tools (core.tools.loading.load_run) whose backbone, like
    Instruct-ReID's, reads the batch field 'instruction' besides the images: what the
    tools meet when an IRM model gets images without instructions."""
    import core.tools.loading as loading

    real = loading.load_run

    def instruction_conditioned(*args, **kwargs):
        run = real(*args, **kwargs)
        forward = run.model.backbone.forward

        def reading_instructions(batch):
            batch.require("instruction", "backbone 'instruct_editor'")
            return forward(batch)

        run.model.backbone.forward = reading_instructions
        return run

    monkeypatch.setattr(loading, "load_run", instruction_conditioned)

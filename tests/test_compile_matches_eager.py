"""`trainer.compile: true` trains what eager mode trains (issue 19). The trainer wraps its
training module (forward under autocast, every loss outside it) in torch.compile; here
with the `aot_eager` backend: dynamo's capture and guards and AOT autograd, without code
generation, so any difference would come from what dynamo captured (the batch's host
copies read as numpy, the eager-only input checks, irm's graph breaks, buffers updated in
the step), not from a kernel's rounding. For each first-party pipeline's twin and stage,
the losses and gradients of the first batches (irm: twelve, each task twice) equal eager
mode bit for bit. Inductor on the CPU, with its random numbers made by eager's generator, is in
BENCHMARKS.md (its kernels round differently: not a bit-for-bit check)."""

import functools
import shutil
import warnings

import pytest
import torch
from torch._dynamo.utils import counters

from core.pipeline import build_pipeline
from core.training.run_folder import RunFolder
from core.training.trainer import Trainer
from pipeline_twins import ALL, first_batches, small_config, step_gradients

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _trainer(name, folder, compile_):
    torch.manual_seed(0)
    p = build_pipeline(small_config(name, folder, [f"trainer.compile={'true' if compile_ else 'false'}"]),
                       echo=lambda *a, **k: None)
    return p, Trainer(p, RunFolder(folder / "run", enabled=False))


def _steps(trainer, stage, batches):
    trainer._prepare_stage(stage)
    return step_gradients(trainer.forward, trainer.net, batches)


@pytest.mark.parametrize("name", ALL)
def test_the_compiled_training_step_is_the_eager_one(name, tmp_path, monkeypatch):
    warnings.filterwarnings("ignore")
    (tmp_path / "eager").mkdir()
    (tmp_path / "compiled").mkdir()
    p, eager = _trainer(name, tmp_path / "eager", False)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    _, compiled = _trainer(name, tmp_path / "compiled", True)
    # irm: every task twice (the second pass meets shapes dynamo has made dynamic); irm++
    # adds a memory to the same code
    count = 12 if name == "irm_synthetic" else 3
    # dynamo's caches are emptied once: a later stage meets the graphs compiled in the
    # earlier ones, as in the trainer (which does not reset dynamo between stages); a frame
    # past dynamo's recompile limit fails (it would run eagerly: eager compared with eager)
    torch._dynamo.reset()
    counters.clear()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        for stage in range(len(p.stages)):
            batches = first_batches(p, count)
            want = _steps(eager, stage, batches)
            got = _steps(compiled, stage, batches)
            assert type(compiled.forward).__name__ == "OptimizedModule" and counters["stats"]["unique_graphs"] > 0
            for b, ((parts, grads), (c_parts, c_grads)) in enumerate(zip(want, got)):
                assert sorted(parts) == sorted(c_parts) and sorted(grads) == sorted(c_grads), (stage, b)
                differ = [k for k in parts if not torch.equal(parts[k], c_parts[k])]
                differ += [k for k in grads if not torch.equal(grads[k], c_grads[k])]
                assert not differ, (stage, b, differ[:6])


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="inductor on the CPU compiles C++")
def test_a_single_loss_of_weight_one_keeps_its_gradient_under_inductor(tmp_path):
    """The trap of TrainingModule's docstring, with inductor itself (the trainer's
    default backend): mgor_edps_moil_synthetic trains one loss (moil) with weight 1, so
    inductor folds the total to the loss; when the module also returned the loss
    detached, the compiled total had no gradient and backward failed ("element 0 of
    tensors does not require grad"). Inductor's kernels round differently from eager's:
    the losses and gradients are compared within 1e-4 of the largest, with inductor's
    random numbers drawn by eager's generator."""
    import torch._inductor.config as inductor_config

    warnings.filterwarnings("ignore")
    name = "mgor_edps_moil_synthetic"
    (tmp_path / "eager").mkdir()
    (tmp_path / "compiled").mkdir()
    p, eager = _trainer(name, tmp_path / "eager", False)
    _, compiled = _trainer(name, tmp_path / "compiled", True)
    batch, = first_batches(p, 1)
    torch._dynamo.reset()
    # (config.patch, not monkeypatch: undoing a monkeypatch deletes the config entry)
    with inductor_config.patch(fallback_random=True):
        (want_parts, want), = _steps(eager, 0, [batch])
        (got_parts, got), = _steps(compiled, 0, [batch])  # fails at backward on the trap
    assert sorted(want) == sorted(got) and len(want) > 0
    for k, v in want_parts.items():
        assert torch.allclose(v, got_parts[k], rtol=1e-4, atol=1e-5), k
    scale = max(float(g.abs().max()) for g in want.values())
    worst = max(float((want[k] - got[k]).abs().max()) for k in want)
    assert worst <= 1e-4 * scale, worst / scale


def test_the_trainer_detaches_the_logged_parts_before_it_keeps_them(tmp_path):
    """TrainingModule returns its parts undetached (the trap above); the trainer must detach
    them itself, or the NaN guard and the log would hold each step's autograd graph."""
    (tmp_path / "run").mkdir()
    p = build_pipeline(small_config("quickstart", tmp_path, ["trainer.stop_after_steps=2"]),
                       echo=lambda *a, **k: None)
    trainer = Trainer(p, RunFolder(tmp_path / "run", enabled=False))
    seen = []
    step = trainer._optimizer_step
    trainer._optimizer_step = lambda total, parts: (seen.append(parts), step(total, parts))[1]
    trainer.fit()
    assert len(seen) == 2 and all(parts for parts in seen)
    assert not any(v.requires_grad for parts in seen for v in parts.values())


def test_losses_are_bound_before_the_module_is_wrapped(tmp_path):
    """A loss's `bind` may copy the model (irm's momentum copies): the trainer binds before
    DDP / torch.compile wrap the module, so the copy is not traced inside the first
    compiled call (there it cost dynamo a recompile per module class, up to its limit)."""
    p = build_pipeline(small_config("irm_synthetic", tmp_path, ["trainer.compile=true"]), echo=lambda *a, **k: None)
    trainer = Trainer(p, RunFolder(tmp_path / "run", enabled=False))
    momentum = [m for m in trainer.net.losses if hasattr(m, "momentum_model")]
    assert momentum and all(m.momentum_model is None for m in momentum)
    trainer._prepare_stage(0)  # no forward yet
    assert all(m.momentum_model is not None for m in momentum)
    assert type(trainer.forward).__name__ == "OptimizedModule"

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

from core.config.loading import load_pipeline
from core.data.loading import ImageSamples
from core.interfaces import Episode
from core.pipeline import build_pipeline
from core.training.run_folder import RunFolder
from core.training.trainer import Trainer, detach_parts
from pipeline_twins import PIPELINES, TRAINER, TWINS, twin_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: the baselines' synthetic pipelines are CPU-sized already: fewer identities, smaller batches
BASELINES = ["data.train.0.identities=8", "data.train.0.test_identities=4", "sampler.batch_size=16"]
NAMES = sorted(TWINS) + ["agw_synthetic", "bot_synthetic", "sbs_synthetic", "transreid_synthetic"]


def _trainer(name, folder, compile_):
    torch.manual_seed(0)
    extra = [f"trainer.compile={'true' if compile_ else 'false'}"]
    cfg = load_pipeline(twin_config(name, folder, extra)) if name in TWINS else \
        load_pipeline(PIPELINES / f"{name}.yaml", [*BASELINES, *TRAINER, *extra])
    p = build_pipeline(cfg, echo=lambda *a, **k: None)
    return p, Trainer(p, RunFolder(folder / "run", enabled=False))


def _steps(trainer, stage, batches):
    trainer._prepare_stage(stage)
    out = []
    for b, batch in enumerate(batches):
        torch.manual_seed(100 + b)
        total, parts, _ = trainer.forward(batch, train=True)
        parts = detach_parts(parts)
        total.backward()
        grads = {k: q.grad.clone() for k, q in trainer.net.named_parameters() if q.grad is not None}
        trainer.net.zero_grad(set_to_none=True)
        out.append(({k: v.detach().clone() for k, v in parts.items()}, grads))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_the_compiled_training_step_is_the_eager_one(name, tmp_path, monkeypatch):
    warnings.filterwarnings("ignore")
    (tmp_path / "eager").mkdir()
    (tmp_path / "compiled").mkdir()
    p, eager = _trainer(name, tmp_path / "eager", False)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    _, compiled = _trainer(name, tmp_path / "compiled", True)
    samples = ImageSamples(p.train, p.train_datasets, p.train_transform)
    # irm: every task twice (the second pass meets shapes dynamo has made dynamic); irm++
    # adds a memory to the same code
    count = 12 if name == "irm_synthetic" else 3
    for stage in range(len(p.stages)):
        batches = []
        for plan, _ in zip(p.sampler, range(count)):
            indices, roles = (plan.indices, plan.roles) if isinstance(plan, Episode) else (plan, [0] * len(plan))
            batches.append(eager.collate([samples[(i, 0, r)] for i, r in zip(indices, roles)]))
        want = _steps(eager, stage, batches)
        torch._dynamo.reset()
        counters.clear()
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
    samples = ImageSamples(p.train, p.train_datasets, p.train_transform)
    plan = next(iter(p.sampler))
    batch = eager.collate([samples[(i, 0, r)] for i, r in zip(plan.indices, plan.roles)])
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

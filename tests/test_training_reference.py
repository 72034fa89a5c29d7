"""What a run trains, against independent references: torch's own optimizers and
schedulers driven by hand, a hand-computed clipped step, and an uninterrupted run."""

import copy
import math

import pytest
import torch
import yaml
from torch import nn

from core.config.loading import load_pipeline
from core.config.schema import StageConfig
from core.interfaces import Loss
from core.pipeline import build_pipeline
from core.testing import TINY_PIPELINE
from core.training import precision as P
from core.training.checkpoint import load_checkpoint, seed_everything
from core.training.optim import build_optimizer, build_scheduler, param_groups
from core.training.run_folder import RunFolder, read_metrics
from core.training.trainer import Trainer


# ------------------------------------------------------------------ optimizer
def _module():
    torch.manual_seed(0)
    return nn.ModuleDict({"backbone": nn.Linear(3, 4), "head": nn.Sequential(nn.Linear(4, 2), nn.BatchNorm1d(2))})


@pytest.mark.parametrize("optimizer", [
    {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01},
    {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    {"name": "adam", "lr": 0.01, "betas": [0.8, 0.9], "weight_decay": 0.1},
    {"name": "adamw", "lr": 0.01, "betas": [0.8, 0.9], "weight_decay": 0.1},
])
def test_the_optimizer_steps_as_torchs_with_the_groups_hyperparameters(optimizer):
    """Three steps of build_optimizer against one torch optimizer per parameter, built by
    hand with the lr and decay the config gives that parameter: biases and norms without
    decay, `head.*` at 10x the lr, `*.bias` of the head in group 0 (the first match wins)."""
    stage = StageConfig(optimizer={**optimizer, "no_weight_decay": ["*.bias", "head.1.*"]},
                        param_groups=[{"params": ["head.*"], "lr_mult": 10.0},
                                      {"params": ["*.bias"], "lr_mult": 2.0, "weight_decay": 0.5}])
    ours, theirs = _module(), _module()
    opt = build_optimizer(list(ours.named_parameters()), stage)
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[optimizer["name"]]
    extra = ({"momentum": 0.9, "nesterov": optimizer.get("nesterov", False)} if cls is torch.optim.SGD
             else {"betas": tuple(optimizer["betas"])})
    by_hand = []
    for name, p in theirs.named_parameters():
        head, bias, norm = name.startswith("head."), name.endswith(".bias"), name.startswith("head.1.")
        lr = optimizer["lr"] * (10.0 if head else 2.0 if bias else 1.0)
        decay = 0.0 if (bias or norm) else optimizer["weight_decay"]
        by_hand.append(cls([p], lr=lr, weight_decay=decay, **extra))
    for step in range(3):
        torch.manual_seed(step)
        grads = [torch.randn_like(p) for p in ours.parameters()]
        for model, optimizers in ((ours, [opt]), (theirs, by_hand)):
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            for o in optimizers:
                o.step()
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, msg=name)


# ------------------------------------------------------------------ schedule
def _reference(kind, optimizer, spe, epochs, warmup, factor, gamma=0.1, milestones=(), min_lr=0.0):
    """torch's schedulers: LinearLR for the warmup, then CosineAnnealingLR to min_lr
    (SequentialLR), or MultiStepLR at absolute epochs times a LinearLR (ChainedScheduler)."""
    S = torch.optim.lr_scheduler
    w = round(warmup * spe)
    warm = S.LinearLR(optimizer, start_factor=factor, end_factor=1.0, total_iters=w)
    if kind == "cosine":
        cos = S.CosineAnnealingLR(optimizer, T_max=epochs * spe - w, eta_min=min_lr)
        return S.SequentialLR(optimizer, [warm, cos], milestones=[w])
    steps = S.MultiStepLR(optimizer, milestones=[m * spe for m in milestones], gamma=gamma)
    return S.ChainedScheduler([warm, steps])


@pytest.mark.parametrize("kind, schedule", [
    ("cosine", {"name": "cosine", "warmup_epochs": 2, "warmup_factor": 0.1, "min_lr": 0.001}),
    ("cosine", {"name": "cosine", "warmup_epochs": 0, "min_lr": 0.0}),
    ("step", {"name": "step", "warmup_epochs": 2, "warmup_factor": 0.25, "milestones": [3, 5], "gamma": 0.5}),
])
def test_the_schedule_steps_as_torchs_schedulers(kind, schedule):
    """build_scheduler, stepped once per optimisation step, gives the lr of torch's own
    schedulers at every step (the lr each optimizer.step uses), every epoch of the stage."""
    spe, epochs = 4, 7
    stage = StageConfig(epochs=epochs, optimizer={"name": "sgd", "lr": 0.2}, schedule=schedule)
    p, q = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    ours = build_optimizer([("w", p)], stage)
    sched = build_scheduler(ours, stage, spe)
    theirs = torch.optim.SGD([q], lr=0.2)
    ref = _reference(kind, theirs, spe, epochs, schedule["warmup_epochs"], schedule.get("warmup_factor", 0.01),
                     schedule.get("gamma", 0.1), schedule.get("milestones", ()), schedule.get("min_lr", 0.0))
    for step in range(spe * epochs):
        assert ours.param_groups[0]["lr"] == pytest.approx(theirs.param_groups[0]["lr"], rel=1e-9, abs=1e-12), step
        ours.step(), theirs.step()
        sched.step(), ref.step()


# ------------------------------------------------------ the schedule in a run
def _run_config(tmp_path, **trainer):
    config = copy.deepcopy(TINY_PIPELINE)
    config["sampler"]["epoch_batches"] = 5
    config["stages"][0].update(epochs=2, optimizer={"name": "sgd", "lr": 0.1},
                               schedule={"name": "cosine", "warmup_epochs": 1, "warmup_factor": 0.1})
    config["trainer"].update(eval_before=False, **trainer)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    return Trainer(build_pipeline(load_pipeline(path)), RunFolder(tmp_path / "run", enabled=False))


def test_a_run_steps_the_optimizer_once_per_accumulated_step_at_the_scheduled_lr(tmp_path):
    """5 batches an epoch accumulated by 2: 3 optimizer steps an epoch (the last of one
    batch), each at the lr torch's LinearLR + CosineAnnealingLR give that step."""
    trainer = _run_config(tmp_path, accumulate=2)
    seen = []
    trainer.net.head.on_stage_start = lambda trainer, stage: trainer.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"]))
    trainer.fit()
    theirs = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = _reference("cosine", theirs, 3, 2, 1, 0.1)
    expected = []
    for _ in range(6):
        expected.append(theirs.param_groups[0]["lr"])
        theirs.step(), ref.step()
    assert seen == pytest.approx(expected, rel=1e-9)


def _gradients_per_step(tmp_path, accumulate, batches):
    """The gradient each optimizer step receives, over `batches` batches of one epoch, with
    SGD at lr 0 (every batch meets the same weights: its gradient is the batch's own)."""
    config = copy.deepcopy(TINY_PIPELINE)
    config["sampler"]["epoch_batches"] = batches
    config["stages"][0].update(epochs=1, optimizer={"name": "sgd", "lr": 0.0}, schedule={"name": "constant"})
    config["trainer"].update(eval_before=False, accumulate=accumulate)
    path = tmp_path / f"acc{accumulate}.yaml"
    path.write_text(yaml.safe_dump(config))
    seed_everything(0)
    trainer = Trainer(build_pipeline(load_pipeline(path)), RunFolder(tmp_path / f"run{accumulate}", enabled=False))
    grads = []
    trainer.net.head.on_stage_start = lambda trainer, stage: trainer.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: grads.append(torch.cat([q.grad.flatten() for g in opt.param_groups
                                                          for q in g["params"] if q.grad is not None]).clone()))
    trainer.fit()
    return grads


def test_each_optimizer_step_gets_the_mean_gradient_of_its_batches_also_the_last_partial_group(tmp_path):
    """accumulate 2 over 3 batches: steps of (b0 + b1) / 2 and of b2 alone, the mean over the
    batches each step holds (timm's train.py divides the last partial group by its size);
    reference: the per-batch gradients of accumulate 1."""
    single = _gradients_per_step(tmp_path, 1, 3)
    grouped = _gradients_per_step(tmp_path, 2, 3)
    assert len(single) == 3 and len(grouped) == 2
    torch.testing.assert_close(grouped[0], (single[0] + single[1]) / 2, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grouped[1], single[2], rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ clipping
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_one_clipped_sgd_step_moves_the_weights_by_lr_times_the_clip(tmp_path, monkeypatch, precision):
    """SGD, lr 1, no momentum or decay, grad_clip 1e-3 (far below the gradient's norm):
    the first step changes the trained weights by a vector of norm exactly 1e-3. Under fp16
    (emulated as in test_precision) the gradients are unscaled before they are clipped."""
    if precision == "fp16":
        monkeypatch.setattr(P, "grad_scaler", lambda device, precision: torch.amp.GradScaler(
            "cpu", init_scale=2.0 ** 8, enabled=precision == "fp16"))
    config = copy.deepcopy(TINY_PIPELINE)
    config["stages"][0]["optimizer"] = {"name": "sgd", "lr": 1.0, "momentum": 0.0, "weight_decay": 0.0}
    config["trainer"].update(eval_before=False, grad_clip=1e-3, stop_after_steps=1, precision=precision,
                             amp=None)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    trainer = Trainer(build_pipeline(load_pipeline(path)), RunFolder(tmp_path / "run"))
    before = {n: p.detach().clone() for n, p in trainer.net.named_parameters()}
    assert trainer.fit() is None
    assert int(trainer.skipped) == 0
    moved = torch.stack([(p.detach() - before[n]).norm() for n, p in trainer.net.named_parameters()]).norm()
    assert moved.item() == pytest.approx(1e-3, rel=1e-3)


# ---------------------------------------------------------------------- EMA
def test_evaluation_embeds_with_the_ema_weights_in_eval_mode(tmp_path):
    """With an EMA, extraction gives what a copy of the EMA module, put in eval mode by
    hand, embeds (not the raw weights, not batch statistics of BatchNorm)."""
    config = copy.deepcopy(TINY_PIPELINE)
    config["trainer"].update(ema=0.5, eval_before=False)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    trainer = Trainer(build_pipeline(load_pipeline(path)), RunFolder(tmp_path / "run"))
    trainer.fit()
    test = trainer.p.test_sets[0]
    got = trainer.extract(test.query, test.datasets).embeddings
    from core.data.loading import ImageSamples, collate

    samples = ImageSamples(test.query, test.datasets, trainer.p.test_transform)
    batch = collate([samples[i] for i in range(len(samples))])
    reference = copy.deepcopy(trainer.ema.module).eval()
    raw = copy.deepcopy(trainer.net).eval()
    with torch.no_grad():
        expected, unaveraged = reference(batch)["embedding"], raw(batch)["embedding"]
    assert not torch.allclose(expected, unaveraged)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------- resume
class RandomDraws(Loss):
    """Logs one draw of each global RNG (torch, numpy, Python) per step; adds nothing."""

    def forward(self, outputs, batch):
        import random

        import numpy as np

        return outputs["features"].sum() * 0, {"torch": torch.rand(()).item(), "numpy": float(np.random.rand()),
                                                "python": random.random()}


def test_resume_restores_the_ema_and_every_rng(tmp_path, register_component):
    """Stopped after 3 steps and resumed: the EMA weights and the draws of the global RNGs
    are those of the uninterrupted run."""
    from core.runner import run

    register_component("loss", "random_draws_test", RandomDraws)
    config = copy.deepcopy(TINY_PIPELINE)
    config["losses"].append({"name": "random_draws_test"})
    config["stages"][0]["epochs"] = 3
    config["trainer"].update(ema=0.9, eval_before=False, log_every=1)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    full = run(path, [], run_dir=tmp_path / "full")
    stopped = run(path, ["trainer.stop_after_steps=3"], run_dir=tmp_path / "stopped")
    resumed = run(None, [], resume=stopped.run_dir)
    keys = ("random_draws_test/torch", "random_draws_test/numpy", "random_draws_test/python", "loss")
    draws = lambda d: [tuple(r[k] for k in keys) for r in read_metrics(d) if r["event"] == "train"]  # noqa: E731
    assert len(draws(full.run_dir)) > 3 and draws(full.run_dir) == draws(resumed.run_dir)
    a = load_checkpoint(full.run_dir / "checkpoints" / "last.pt")["ema"]
    b = load_checkpoint(resumed.run_dir / "checkpoints" / "last.pt")["ema"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --------------------------------------------------------- switches by hand
def test_deterministic_mode_turns_off_a_benchmark_mode_set_before():
    """`deterministic: true` must switch cuDNN's autotuner off even when something earlier
    in the process (a previous run, user code) switched it on."""
    from core.training.determinism import set_deterministic

    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    try:
        torch.backends.cudnn.benchmark = True
        set_deterministic(True)
        assert torch.backends.cudnn.benchmark is False
    finally:
        set_deterministic(before[0])
        torch.backends.cudnn.benchmark = before[1]


@pytest.mark.parametrize("precision, scaled", [("fp32", False), ("bf16", False), ("fp16", True)])
def test_only_fp16_gets_a_gradient_scaler(precision, scaled):
    """bf16 has fp32's exponent range: no loss scaling (precision.py's contract); on the
    emulated separate device (CUDA's paths, on the CPU) fp16 gets an enabled scaler."""
    from core.separate_device import emulate_separate_device

    with emulate_separate_device() as device:
        assert P.grad_scaler(device, precision).is_enabled() is scaled

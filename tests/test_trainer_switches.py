"""Trainer switches: gradient accumulation, NaN/Inf stop, parameter groups, EMA,
flip-averaged extraction, torch.compile, channels_last."""

import copy

import pytest
import torch
import yaml
from torch import nn

from core.config.loading import load_pipeline
from core.config.schema import StageConfig
from core.pipeline import build_pipeline
from core.runner import run
from core.testing import TINY_PIPELINE
from core.training.checkpoint import load_checkpoint
from core.training.optim import param_groups
from core.training.run_folder import RunFolder, read_metrics
from core.training.trainer import Trainer

@pytest.fixture
def write_pipeline(tmp_path, test_components):

    def _write(config, name="p.yaml"):
        config = copy.deepcopy(config)
        config["plugins"] = ["./test_components.py"]
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config))
        return path

    return _write


def deterministic_config(batch_size, accumulate):
    """A BN-free model, CE only, no random augmentation, plain SGD: gradients add up."""
    config = copy.deepcopy(TINY_PIPELINE)
    config["data"]["transform"] = {"size": [32, 16], "pad": 0, "flip": 0.0}
    config.update(sampler={"name": "random", "batch_size": batch_size, "drop_last": True},
                  head={"name": "linear_test"}, losses=[{"name": "ce"}])
    config["stages"][0].update(epochs=1, optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0})
    config["trainer"].update(eval_before=False, accumulate=accumulate, log_every=1)
    return config


def test_gradient_accumulation_equals_the_larger_batch(write_pipeline, tmp_path):
    """Batches of 8 accumulated twice make the same SGD steps as batches of 16 (the random
    sampler's permutation is cut the same way)."""
    big = run(write_pipeline(deterministic_config(16, 1), "big.yaml"), run_dir=tmp_path / "big")
    small = run(write_pipeline(deterministic_config(8, 2), "small.yaml"), run_dir=tmp_path / "small")
    steps = lambda d: [r["global_step"] for r in read_metrics(d) if r["event"] == "train"]  # noqa: E731
    assert steps(big.run_dir) == steps(small.run_dir) == [1, 2, 3, 4]
    a = load_checkpoint(big.run_dir / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(small.run_dir / "checkpoints" / "last.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)


def test_a_nan_loss_stops_the_run_naming_step_parts_and_checkpoint(write_pipeline, tmp_path):
    config = copy.deepcopy(TINY_PIPELINE)
    config["losses"].append({"name": "nan_at_step", "step": 3})
    config["trainer"].update(eval_before=False, checkpoint_every_steps=1)
    with pytest.raises(FloatingPointError) as err:
        run(write_pipeline(config), run_dir=tmp_path / "run")
    msg = str(err.value)
    assert "the loss or its gradients became NaN/Inf at optimisation step 3" in msg
    assert "'nan_at_step': nan" in msg and "'ce':" in msg
    assert f"last good checkpoint (from before the divergence): {tmp_path / 'run' / 'checkpoints' / 'last.pt'}" in msg
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["position"]["global_step"] == 2


def test_param_groups_set_lr_multipliers_and_weight_decay():
    module = nn.ModuleDict({"backbone": nn.Linear(2, 2), "head": nn.Linear(2, 2)})
    params = list(module.named_parameters())
    stage = StageConfig(optimizer={"lr": 0.01, "weight_decay": 0.1, "no_weight_decay": ["*.bias"]},
                        param_groups=[{"params": ["head.*"], "lr_mult": 10.0}])
    groups = {g["name"]: g for g in param_groups(params, stage)}
    assert set(groups) == {"group0", "group0/no_decay", "default", "default/no_decay"}
    assert groups["group0"]["lr"] == pytest.approx(0.1) and groups["group0"]["weight_decay"] == 0.1
    assert groups["group0/no_decay"]["params"] == [module["head"].bias]
    assert groups["group0/no_decay"]["weight_decay"] == 0.0
    assert groups["default"]["lr"] == pytest.approx(0.01) and groups["default"]["params"] == [module["backbone"].weight]


def test_param_group_pattern_matching_nothing_is_an_error():
    module = nn.ModuleDict({"backbone": nn.Linear(2, 2)})
    stage = StageConfig(param_groups=[{"params": ["neck.*"], "lr_mult": 10.0}])
    with pytest.raises(ValueError, match="param_groups.0 pattern 'neck.\\*' matches no trainable parameter"):
        param_groups(list(module.named_parameters()), stage)


def test_param_group_lr_multiplier_survives_the_schedule(tiny_pipeline_config, run_tiny_pipeline):
    config = tiny_pipeline_config
    config["stages"][0].update(optimizer={"name": "sgd", "lr": 0.01},
                               schedule={"name": "constant"},
                               param_groups=[{"params": ["head.*"], "lr_mult": 10.0}])
    config["trainer"]["eval_before"] = False
    result = run_tiny_pipeline(config)
    groups = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["optimizer"]["param_groups"]
    assert sorted(g["lr"] for g in groups) == pytest.approx([0.01, 0.1])


def test_param_group_keys_are_validated(tiny_pipeline_config, run_tiny_pipeline):
    from core.config.loading import ConfigError

    config = tiny_pipeline_config
    config["stages"][0]["param_groups"] = [{"params": ["head.*"], "lr_multiplier": 10}]
    with pytest.raises(ConfigError, match="stages.0.param_groups.0.lr_multiplier: unknown key .*Did you mean 'lr_mult'"):
        run_tiny_pipeline(config)


def build_trainer(tmp_path, config):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    p = build_pipeline(load_pipeline(path))
    return Trainer(p, RunFolder(tmp_path / "run"))


@pytest.mark.parametrize("decay", [0.0, 1.0])
def test_ema_weights_follow_the_decay(tmp_path, decay):
    """decay 0: the EMA is the latest weights; decay 1: it keeps the weights of its first
    update (torch's AveragedModel starts from a copy at the first step)."""
    config = copy.deepcopy(TINY_PIPELINE)
    config["trainer"].update(ema=decay, eval_before=False)
    trainer = build_trainer(tmp_path, config)
    key = "backbone.model.blocks.0.mlp.fc1.weight"
    first = {}
    trainer.net.head.on_step_end = lambda trainer, step, **_: first.setdefault(key, trainer.net.state_dict()[key].clone())
    trainer.fit()
    ema, raw = trainer.ema.module.state_dict(), trainer.net.state_dict()
    assert not torch.equal(first[key], raw[key])
    assert torch.equal(ema[key], raw[key] if decay == 0.0 else first[key])
    assert trainer.model is trainer.ema.module  # evaluation uses the EMA weights


def test_ema_updates_as_torchs_averaged_model_and_by_the_formula():
    """core.training.ema (no host sync per update) against torch's EMA, AveragedModel with
    get_ema_multi_avg_fn and use_buffers (the reference it replaces; same state dict), and
    the float weights against the formula: W_0 = W_model, W <- d W + (1 - d) W_model."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from core.training.ema import ExponentialMovingAverage

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    decay = 0.9
    ours = ExponentialMovingAverage(model, decay)
    theirs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    by_hand = None
    for _ in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(5, 4))  # BatchNorm's running statistics and its integer count move
        ours.update_parameters(model)
        theirs.update_parameters(model)
        current = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        by_hand = current if by_hand is None else {k: decay * by_hand[k] + (1 - decay) * current[k] for k in current}
    mine, reference = ours.state_dict(), theirs.state_dict()
    assert list(mine) == list(reference)
    for key in reference:
        torch.testing.assert_close(mine[key], reference[key], rtol=0, atol=0, msg=key)
    for key, value in by_hand.items():
        torch.testing.assert_close(mine[f"module.{key}"], value, msg=key)


def test_flip_averaged_embeddings(tmp_path):
    config = copy.deepcopy(TINY_PIPELINE)
    config["trainer"].update(eval_flip=True)
    trainer = build_trainer(tmp_path, config)
    test = trainer.p.test_sets[0]
    flipped = trainer.extract(test.query, test.datasets).embeddings
    trainer.cfg.eval_flip = False
    plain = trainer.extract(test.query, test.datasets).embeddings
    from core.data.loading import ImageSamples, collate

    samples = ImageSamples(test.query, test.datasets, trainer.p.test_transform)
    batch = collate([samples[i] for i in range(len(samples))])
    batch.images = batch.images.flip(-1)
    with torch.no_grad():
        mirrored = trainer.model(batch)["embedding"]
    torch.testing.assert_close(flipped, (plain + mirrored) / 2, rtol=1e-5, atol=1e-6)


def test_compile_and_channels_last_train(tiny_pipeline_config, run_tiny_pipeline):
    config = tiny_pipeline_config
    config["backbone"] = {"name": "timm", "arch": "resnet18", "model_kwargs": {"layers": [1, 1, 1, 1]}}
    config["trainer"].update(compile=True, channels_last=True, eval_before=False)
    result = run_tiny_pipeline(config)
    losses = [r["loss"] for r in read_metrics(result.run_dir) if r["event"] == "train"]
    assert losses and all(loss == loss for loss in losses)
    assert result.metrics["synthetic/mAP"] > 0

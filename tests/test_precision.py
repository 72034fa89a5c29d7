"""Mixed precision as the trainer applies it (issue #19): the model's forward under
autocast, the losses in fp32 outside it; fp16 with a gradient scaler whose skipped steps
are counted and whose state is checkpointed. CUDA's autocast is emulated with the CPU's
(same API), so these run without a GPU."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

import core.training.precision as P
from core.runner import run
from core.testing import TINY_PIPELINE
from core.training.checkpoint import load_checkpoint

RECORDER = '''
import torch
from core.hookspecs import hookimpl
from core.interfaces import Loss

SEEN = []

class Recorder(Loss):
    def forward(self, outputs, batch):
        floating = {k: v.dtype for k, v in outputs.items() if torch.is_tensor(v) and v.is_floating_point()}
        SEEN.append((torch.is_autocast_enabled("cpu"), outputs["features"].dtype,
                     (outputs["features"] @ outputs["features"].T).dtype, floating))
        return outputs["features"].sum() * 0

@hookimpl
def register_losses(register):
    register("recorder_test", Recorder)
'''


def _cpu_autocast(dtype):
    def autocast(device, precision):
        return torch.autocast("cpu", dtype=dtype) if precision in P.DTYPES else P.contextlib.nullcontext()

    return autocast


def _write(tmp_path, extra_losses=(), **trainer):
    config = copy.deepcopy(TINY_PIPELINE)
    config["plugins"] = ["./recorder.py"]
    config["losses"] += list(extra_losses)
    config["trainer"].update(eval_before=False, **trainer)
    (tmp_path / "recorder.py").write_text(RECORDER)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_losses_get_fp32_outputs_and_run_outside_autocast(tmp_path, monkeypatch):
    """With the model under bf16 autocast, a loss sees fp32 features and its own matmul is
    fp32: `.float()` inside autocast would not be enough (the matmul would be bf16)."""
    monkeypatch.setattr(P, "autocast", _cpu_autocast(torch.bfloat16))
    path = _write(tmp_path, [{"name": "recorder_test"}], precision="bf16")
    import sys

    run(path, run_dir=tmp_path / "run", overrides=["stages.0.epochs=1"])
    seen = next(m for name, m in sys.modules.items() if name.startswith("reid_core_local") and hasattr(m, "SEEN")).SEEN
    assert seen and all(s[:3] == (False, torch.float32, torch.float32) for s in seen), seen
    # every floating output, the classifier's logits (a Linear's bf16 under autocast) among them
    assert all("logits" in s[3] and set(s[3].values()) == {torch.float32} for s in seen), seen


def test_the_model_forward_does_run_under_autocast(tmp_path, monkeypatch):
    """The other half of the contract: the backbone's matmuls do run in bf16 (its first
    Linear's output), while what reaches the losses is fp32."""
    from core.config.loading import load_pipeline
    from core.pipeline import build_pipeline
    from core.training.run_folder import RunFolder
    from core.training.trainer import Trainer

    monkeypatch.setattr(P, "autocast", _cpu_autocast(torch.bfloat16))
    p = build_pipeline(load_pipeline(_write(tmp_path, precision="bf16")), echo=lambda *_: None)
    trainer = Trainer(p, RunFolder(tmp_path / "r", enabled=False))
    dtypes = []
    linear = next(m for m in p.model.backbone.modules() if isinstance(m, torch.nn.Linear))
    handle = linear.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    from core.data.loading import ImageSamples, collate

    batch = collate([ImageSamples(p.train, p.train_datasets, p.test_transform)[i] for i in range(4)])
    trainer.net.terms = p.stage_losses[0]
    total, parts, outputs = trainer.net(batch, train=True)
    handle.remove()
    assert dtypes == [torch.bfloat16] and outputs["global"].dtype == torch.float32 and total.dtype == torch.float32


def test_evaluation_embeddings_are_fp32_unless_asked(tmp_path, monkeypatch):
    from core.config.loading import load_pipeline
    from core.pipeline import build_pipeline
    from core.training.run_folder import RunFolder
    from core.training.trainer import Trainer

    monkeypatch.setattr(P, "autocast", _cpu_autocast(torch.bfloat16))
    seen = []
    for eval_precision in ("fp32", "bf16"):
        p = build_pipeline(load_pipeline(_write(tmp_path, precision="bf16", eval_precision=eval_precision)),
                           echo=lambda *_: None)
        trainer = Trainer(p, RunFolder(tmp_path / "r", enabled=False))
        linear = next(m for m in p.model.backbone.modules() if isinstance(m, torch.nn.Linear))
        handle = linear.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        trainer.extract(p.test_sets[0].query, p.test_sets[0].datasets)
        handle.remove()
    assert seen[0] == torch.float32 and seen[-1] == torch.bfloat16


def test_precision_and_the_older_amp_key_must_agree(tmp_path):
    from core.config.schema import TrainerConfig

    assert TrainerConfig(amp="none").training_precision() == "fp32"
    assert TrainerConfig().training_precision() == "bf16"
    assert TrainerConfig(precision="fp16").training_precision() == "fp16"
    with pytest.raises(ValueError, match="contradicts"):
        TrainerConfig(amp="none", precision="bf16").training_precision()


@pytest.mark.parametrize("written, precision",
                         [("false", "fp32"), ("true", "bf16"), ("none", "fp32"), ("bf16", "bf16")])
def test_amp_written_as_a_yaml_boolean_means_what_it_says(tmp_path, written, precision):
    """Users write `amp: false`; it was refused as a wrong type. It means no autocast (fp32),
    `amp: true` the default bf16, through the same YAML loading and validation as a run."""
    from core.config.loading import load_pipeline
    from core.config.schema import TrainerConfig
    from core.config.validation import build_dataclass

    config = copy.deepcopy(TINY_PIPELINE)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    cfg = load_pipeline(tmp_path / "p.yaml", [f"trainer.amp={written}"])
    trainer = build_dataclass(TrainerConfig, cfg.data["trainer"], cfg, "trainer", "the trainer")
    assert trainer.training_precision() == precision
    if written == "false":
        cfg = load_pipeline(tmp_path / "p.yaml", ["trainer.amp=false", "trainer.precision=bf16"])
        with pytest.raises(ValueError, match="contradicts"):
            build_dataclass(TrainerConfig, cfg.data["trainer"], cfg, "trainer", "the trainer").training_precision()


def test_fp16_skips_steps_with_inf_gradients_counts_them_and_checkpoints_the_scaler(tmp_path, monkeypatch,
                                                                                     test_components):
    """fp16 with a gradient scaler (emulated on the CPU): an inf gradient is the scaler's
    business — the step is skipped, the scale halves, training goes on (the NaN guard does
    not stop the run), and the scaler's state and the skipped count are in the checkpoint."""
    monkeypatch.setattr(P, "autocast", _cpu_autocast(torch.float16))
    monkeypatch.setattr(P, "grad_scaler", lambda device, precision: torch.amp.GradScaler(
        "cpu", init_scale=2.0 ** 8, enabled=precision == "fp16"))
    config = copy.deepcopy(TINY_PIPELINE)
    config["plugins"] = ["./test_components.py"]  # its loss's gradient is NaN at the 2nd call
    config["losses"] = [{"name": "ce"}, {"name": "inf_grad_at_step", "step": 2}]
    config["trainer"].update(eval_before=False, precision="fp16")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    result = run(tmp_path / "p.yaml", run_dir=tmp_path / "run")
    assert result.metrics is not None
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["skipped_steps"] == 1
    assert state["scaler"]["scale"] == 2.0 ** 7
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())

"""The trainer: exact resume, the run folder, stages, schedules, events, atomic writes."""

import json

import pytest
import torch
import yaml
from torch import nn

from core.config.loading import load_pipeline
from core.config.schema import ScheduleConfig, StageConfig
from core.pipeline import build_pipeline
from core.training.checkpoint import atomic_write_bytes, load_checkpoint
from core.training.optim import lr_factor, select_parameters
from core.training.run_folder import RunFolder, read_metrics
from core.training.trainer import PlannedBatches, Trainer, sample_seed


def two_epoch_config(config):
    config["stages"][0]["epochs"] = 2
    config["trainer"]["eval_before"] = False
    return config


def test_resume_continues_exactly_where_it_stopped(tiny_pipeline_config, run_tiny_pipeline):
    """Stop mid-epoch after 3 steps, resume (with a different worker count), and end with
    the same weights and the same loss curve as an uninterrupted run."""
    config = two_epoch_config(tiny_pipeline_config)
    full = run_tiny_pipeline(config, name="full.yaml")

    stopped = run_tiny_pipeline(config, ["trainer.stop_after_steps=3"], name="stopped.yaml")
    assert stopped.metrics is None
    assert load_checkpoint(stopped.run_dir / "checkpoints" / "last.pt")["position"]["global_step"] == 3
    from core.runner import run

    resumed = run(None, ["trainer.num_workers=2"], resume=stopped.run_dir)

    a = load_checkpoint(full.run_dir / "checkpoints" / "last.pt")
    b = load_checkpoint(resumed.run_dir / "checkpoints" / "last.pt")
    assert a["position"] == b["position"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    losses = lambda run_dir: [r["loss"] for r in read_metrics(run_dir) if r["event"] == "train"]  # noqa: E731
    assert losses(full.run_dir) == losses(resumed.run_dir)
    assert resumed.metrics == pytest.approx(full.metrics)


def test_resuming_a_finished_run_changes_nothing_and_returns_its_final_metrics(tiny_pipeline_config,
                                                                              run_tiny_pipeline):
    """`core run --resume RUN` of a run that had finished evaluated it again and appended a
    second 'final' row to report.md and metrics.jsonl (a third on the next resume). There is
    nothing to resume: the folder stays byte for byte, the result is its final evaluation."""
    from core.runner import run

    done = run_tiny_pipeline(two_epoch_config(tiny_pipeline_config))
    files = ["metrics.jsonl", "report.md", "checkpoints/last.pt"]
    before = {name: (done.run_dir / name).read_bytes() for name in files}
    again = run(None, [], resume=done.run_dir)
    assert again.metrics == done.metrics
    for name in files:
        assert (done.run_dir / name).read_bytes() == before[name], name


def test_resuming_a_finished_run_with_a_longer_last_stage_says_it_trained_nothing(tiny_pipeline_config,
                                                                                    run_tiny_pipeline, caplog):
    """`--resume RUN --set stages.0.epochs=4` of a run that had finished its 2 epochs extends an
    unfinished run, but a finished one stands past its last stage: nothing trains, and only an
    info line said 'nothing to resume', so the --set read as applied. A warning names it."""
    import json
    import logging

    from core.runner import run

    done = run_tiny_pipeline(two_epoch_config(tiny_pipeline_config))
    steps = [json.loads(x).get("global_step") for x in (done.run_dir / "metrics.jsonl").read_text().splitlines()]
    with caplog.at_level(logging.INFO, logger="core"):
        again = run(None, ["stages.0.epochs=4"], resume=done.run_dir)
    assert again.metrics == done.metrics
    after = [json.loads(x).get("global_step") for x in (done.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert after == steps  # nothing trained
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("--set stages.0.epochs does not extend a finished run" in w for w in warned), warned


def test_run_folder_holds_pipeline_metrics_report_environment(tiny_pipeline_config, run_tiny_pipeline):
    result = run_tiny_pipeline(tiny_pipeline_config)
    folder = result.run_dir
    pipeline_text = (folder / "pipeline.yaml").read_text()
    assert "#   losses.1: triplet (plugin core 0.1.0)" in pipeline_text
    assert yaml.safe_load(pipeline_text)["losses"] == tiny_pipeline_config["losses"]
    env = json.loads((folder / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert env["components"]["backbone"] == {"name": "timm", "plugin": "core", "version": "0.1.0"}
    records = read_metrics(folder)
    evals = [r for r in records if r["event"] == "eval"]
    assert [r["tag"] for r in evals] == ["baseline (untrained)", "final"]
    train = [r for r in records if r["event"] == "train"]
    assert train and {"loss", "lr", "images_per_s", "ce", "triplet", "ce/acc"} <= set(train[0])
    report = (folder / "report.md").read_text()
    assert "| baseline (untrained) |" in report and "| final |" in report
    assert result.baseline["synthetic/mAP"] == evals[0]["synthetic/mAP"]
    assert (folder / "checkpoints" / "last.pt").is_file()


def test_periodic_evaluation_every_n_epochs(tiny_pipeline_config, run_tiny_pipeline):
    config = tiny_pipeline_config
    config["stages"][0]["epochs"] = 3
    config["trainer"].update(eval_every=1, eval_before=False)
    result = run_tiny_pipeline(config)
    tags = [r["tag"] for r in read_metrics(result.run_dir) if r["event"] == "eval"]
    assert tags == ["main epoch 1", "main epoch 2", "final"]


def test_stages_train_only_their_selected_parameters(tiny_pipeline_config, tmp_path):
    config = tiny_pipeline_config
    config["stages"] = [
        {"name": "head-only", "epochs": 1, "trainable": ["head.*"], "optimizer": {"name": "sgd", "lr": 0.1}},
        {"name": "all", "epochs": 1, "frozen": ["backbone.model.patch_embed.*"], "optimizer": {"name": "adam"}},
    ]
    config["trainer"]["eval_before"] = False
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    p = build_pipeline(load_pipeline(path))
    start = {k: v.clone() for k, v in p.model.state_dict().items()}
    trainer = Trainer(p, RunFolder(tmp_path / "run"))
    trainer._run_stage(0)
    after_first = {k: v.clone() for k, v in p.model.state_dict().items()}
    assert all(torch.equal(start[k], after_first[k]) for k in start if k.startswith("backbone."))
    assert not torch.equal(start["head.classifier.weight"], after_first["head.classifier.weight"])
    trainer._run_stage(1)
    end = p.model.state_dict()
    assert torch.equal(after_first["backbone.model.patch_embed.proj.weight"], end["backbone.model.patch_embed.proj.weight"])
    assert not torch.equal(after_first["backbone.model.blocks.0.mlp.fc1.weight"], end["backbone.model.blocks.0.mlp.fc1.weight"])


def test_parameter_selection_keeps_component_freezes():
    module = nn.ModuleDict({"backbone": nn.Linear(2, 2), "head": nn.BatchNorm1d(2)})
    module["head"].bias.requires_grad_(False)  # e.g. BNNeck's frozen bias
    names = [n for n, _ in select_parameters(module, StageConfig(trainable=None))]
    assert names == ["backbone.weight", "backbone.bias", "head.weight"]
    names = [n for n, _ in select_parameters(module, StageConfig(trainable=["head.*"]))]
    assert names == ["head.weight"]
    names = [n for n, _ in select_parameters(module, StageConfig(frozen=["*.bias"]))]
    assert names == ["backbone.weight", "head.weight"]
    with pytest.raises(ValueError, match="trains no parameter"):
        select_parameters(module, StageConfig(trainable=["head.*"], frozen=["head.*"]))


def test_a_pattern_that_matches_no_parameter_is_an_error():
    module = nn.ModuleDict({"backbone": nn.Linear(2, 2)})
    with pytest.raises(ValueError, match="frozen pattern 'backbone.patch_embed.\\*' matches no parameter; "
                                         "names look like backbone.weight"):
        select_parameters(module, StageConfig(frozen=["backbone.patch_embed.*"]))


class _ReportsCuda(torch.nn.Parameter):
    """A parameter that reports a GPU; its data stays on the CPU, where torch has the
    fused optimizer kernels too, so an optimizer can be built over it."""

    @property
    def is_cuda(self) -> bool:
        return True


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_every_optimizer_is_fused_for_parameters_on_a_gpu(name):
    """On CUDA the optimizer the stage names runs its fused kernel (one launch for all
    parameters, and fp16's gradient scaler hands it the inf flag instead of reading it
    every step: `_step_supports_amp_scaling`); elsewhere torch's default."""
    from core.config.schema import StageConfig
    from core.training.optim import build_optimizer

    stage = StageConfig(optimizer={"name": name, "lr": 0.1})
    on_gpu = build_optimizer([("w", _ReportsCuda(torch.randn(3)))], stage)
    on_cpu = build_optimizer([("w", torch.nn.Parameter(torch.randn(3)))], stage)
    assert on_gpu.defaults["fused"] is True and on_gpu._step_supports_amp_scaling
    assert not on_cpu.defaults["fused"]


def test_warmup_then_cosine_schedule():
    s = ScheduleConfig(name="cosine", warmup_epochs=1, warmup_factor=0.1, min_lr=0.0)
    # 10 steps per epoch, 3 epochs, base lr 1.0
    assert lr_factor(0, 10, 3, s, 1.0) == pytest.approx(0.1)
    assert lr_factor(5, 10, 3, s, 1.0) == pytest.approx(0.1 * 0.5 + 0.5)  # half-way through warmup
    assert lr_factor(10, 10, 3, s, 1.0) == pytest.approx(1.0)  # cosine starts at the top
    assert lr_factor(20, 10, 3, s, 1.0) == pytest.approx(0.5)  # half-way: (1 + cos(pi/2)) / 2
    assert lr_factor(30, 10, 3, s, 1.0) == pytest.approx(0.0)


def test_step_schedule_and_min_lr():
    s = ScheduleConfig(name="step", milestones=[2, 4], gamma=0.1)
    assert [lr_factor(e * 10, 10, 6, s, 1.0) for e in range(6)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    c = ScheduleConfig(name="cosine", min_lr=0.01)
    assert lr_factor(100, 10, 10, c, 0.1) == pytest.approx(0.1)  # ends at min_lr / base_lr


def test_planned_batches_resume_at_a_step_and_carry_roles():
    from core.interfaces import Episode

    planned = PlannedBatches(seed=7)
    planned.set([[0, 1], Episode([2, 3], [0, 1]), [4, 5]], epoch=2, start=1)
    keys = list(planned)
    assert [[k[0] for k in batch] for batch in keys] == [[2, 3], [4, 5]]
    assert [k[2] for k in keys[0]] == [0, 1]
    assert keys[0][0][1] == sample_seed(7, 2, 1, 2 * 64)


def test_sample_seeds_follow_the_record_not_its_slot():
    """A record keeps its augmentation wherever it sits in the batch (a rank's slice of a
    global batch), and a repeated record gets a fresh seed for each occurrence."""
    planned = PlannedBatches(seed=0)
    planned.set([[5, 9, 5]], epoch=0)
    (whole,) = list(planned)
    planned.set([[9]], epoch=0)
    (part,) = list(planned)
    assert part[0][1] == whole[1][1]
    assert whole[0][1] != whole[2][1]
    assert len({sample_seed(0, e, s, j) for e in range(3) for s in range(50) for j in range(64)}) == 3 * 50 * 64


def test_trainer_events_reach_plugins_and_components(tiny_pipeline_config, tmp_path):
    """The example plugin's on_epoch_end hook records epochs in the build context."""
    config = two_epoch_config(tiny_pipeline_config)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    p = build_pipeline(load_pipeline(path))
    calls = []
    p.model.head.on_stage_start = lambda trainer, stage: calls.append(("stage", stage.name))
    Trainer(p, RunFolder(tmp_path / "run")).fit()
    assert p.ctx.extras["example_epochs_seen"] == [0, 1]
    assert calls == [("stage", "main")]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")

    def failing(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_bytes(target, failing)
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_center_loss_from_the_example_plugin_trains(tiny_pipeline_config, run_tiny_pipeline):
    config = tiny_pipeline_config
    config["losses"].append({"name": "center", "weight": 0.01})
    config["trainer"]["eval_before"] = False
    result = run_tiny_pipeline(config)
    ckpt = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")
    assert ckpt["losses"]["2.centers"].shape == (16, 32)  # 8 identities x 2 categories, feature dim 32
    assert all("center" in r for r in read_metrics(result.run_dir) if r["event"] == "train")


@pytest.mark.parametrize("optimizer", [{"name": "sgd", "lr": 0.05, "momentum": 0.9}, {"name": "adam", "lr": 0.05}])
def test_a_stage_added_to_a_finished_run_starts_with_its_own_optimizer_and_schedule(tiny_pipeline_config,
                                                                                      run_tiny_pipeline, optimizer):
    """`--resume RUN --set stages=[..., new stage]` of a finished run: its last checkpoint
    stands at the new stage's start but holds the finished stage's optimizer and ended
    cosine schedule, which were loaded into the new stage (into SGD: a KeyError; into Adam:
    silently, the old lr and the schedule past its end). The new stage now trains as a fresh
    stage would: the lr it logs is its own constant 0.05 at every step."""
    import json

    from core.runner import run

    done = run_tiny_pipeline(two_epoch_config(tiny_pipeline_config))
    stages = [tiny_pipeline_config["stages"][0],
              {"name": "more", "epochs": 1, "optimizer": optimizer, "schedule": {"name": "constant"}}]
    run(None, [f"stages={json.dumps(stages)}", "trainer.log_every=1"], resume=done.run_dir)
    records = [json.loads(x) for x in (done.run_dir / "metrics.jsonl").read_text().splitlines()]
    more = [r for r in records if r.get("event") == "train" and r.get("stage") == "more"]
    assert more and all(r["lr"] == pytest.approx(0.05) for r in more), [r.get("lr") for r in more]

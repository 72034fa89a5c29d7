"""Experiment trackers (`loggers:`): each logger's offline output is read back with the
tracker's own reader (TensorBoard's EventAccumulator, the W&B offline run file, an MLflow
file store), and compared with what the run wrote itself (metrics.jsonl), the reference."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.trackers import ExperimentLogger
from core.trackers.fanout import flatten_config, record_scalars


def _records(run_dir: Path, event: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


class MemoryLogger(ExperimentLogger):
    """Records every call (what a plugin's logger would receive)."""

    name = "memory"
    calls: list[tuple] = []

    def __init__(self, label: str = "m") -> None:
        self.label = label

    def start(self, config, run_dir):
        self.calls.append(("start", dict(config), Path(run_dir)))

    def log_metrics(self, step, metrics):
        self.calls.append(("metrics", step, dict(metrics)))

    def log_image(self, name, image, step):
        self.calls.append(("image", name, image.size, step))

    def log_hparams(self, hparams, metrics):
        self.calls.append(("hparams", dict(hparams), dict(metrics)))

    def log_artifact(self, run_dir):
        self.calls.append(("artifact", Path(run_dir), sorted(p.name for p in Path(run_dir).iterdir())))

    def finish(self, ok=True):
        self.calls.append(("finish", ok))


class BrokenLogger(ExperimentLogger):
    name = "broken"
    finished = False

    def log_metrics(self, step, metrics):
        raise ConnectionError("tracking server unreachable")

    def finish(self, ok=True):
        BrokenLogger.finished = True


# ------------------------------------------------------------------ the hook


def test_a_plugin_logger_sees_the_whole_run_and_a_failing_one_is_dropped(
        tiny_pipeline_config, run_tiny_pipeline, register_component, caplog):
    register_component("logger", "memory", MemoryLogger)
    register_component("logger", "broken", BrokenLogger)
    MemoryLogger.calls = []
    cfg = tiny_pipeline_config
    cfg["loggers"] = [{"name": "memory", "label": "x"}, "broken"]
    cfg["trainer"]["log_every"] = 1
    with caplog.at_level("WARNING", logger="core.trackers.fanout"):
        result = run_tiny_pipeline(cfg)
    calls = MemoryLogger.calls
    assert [c[0] for c in calls][0] == "start" and calls[-1] == ("finish", True)
    assert calls[0][1]["loggers"] == cfg["loggers"] and calls[0][2] == result.run_dir
    # every train and eval record of metrics.jsonl, at its global step, and nothing else
    logged = [(c[1], c[2]) for c in calls if c[0] == "metrics"]
    expected = [record_scalars(r) for r in map(json.loads, (result.run_dir / "metrics.jsonl").read_text().splitlines())]
    assert logged == expected
    train = _records(result.run_dir, "train")
    assert [s for s, m in logged if "train/loss" in m] == [r["global_step"] for r in train]
    assert [m["train/lr"] for _, m in logged if "train/lr" in m] == [r["lr"] for r in train]
    # the final metrics with the flat configuration, then the finished run folder
    hparams = next(c for c in calls if c[0] == "hparams")
    assert hparams[2] == result.metrics
    assert hparams[1]["stages.0.optimizer.lr"] == cfg["stages"][0]["optimizer"]["lr"]
    order = [c[0] for c in calls]
    assert order.index("image") < order.index("hparams") < order.index("artifact") < order.index("finish")
    artifact = next(c for c in calls if c[0] == "artifact")
    assert artifact[1] == result.run_dir and "report.md" in artifact[2]
    image = next(c for c in calls if c[0] == "image")
    assert image[1] == "ranked_list" and image[3] == train[-1]["global_step"]
    # the broken logger was switched off after its first failure; training went on
    assert result.metrics is not None and not BrokenLogger.finished
    warned = [r.getMessage() for r in caplog.records if "logger 'broken'" in r.getMessage()]
    assert len(warned) == 1 and "tracking server unreachable" in warned[0]


def test_only_rank_0_logs(tiny_pipeline_config, tmp_path, register_component):
    import yaml

    from core.config.loading import load_pipeline
    from core.pipeline import build_pipeline
    from core.training.distributed import Dist
    from core.training.run_folder import RunFolder
    from core.training.trainer import Trainer

    register_component("logger", "memory", MemoryLogger)
    cfg = tiny_pipeline_config
    cfg["loggers"] = ["memory"]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    p = build_pipeline(load_pipeline(tmp_path / "p.yaml"))
    assert len(p.loggers) == 1
    main = Trainer(p, RunFolder(tmp_path / "r0"), dist=Dist(rank=0))
    other = Trainer(p, RunFolder(tmp_path / "r1", enabled=False), dist=Dist(rank=1))
    assert main.trackers.loggers == p.loggers
    assert not other.trackers and other.trackers.loggers == []


def test_record_scalars_prefix_train_values_and_skip_labels():
    step, train = record_scalars({"event": "train", "stage": "main", "epoch": 0, "global_step": 7, "lr": 0.1,
                                  "loss": 2.0, "ce/acc": 0.5, "images_seen": 64})
    assert step == 7 and train == {"train/lr": 0.1, "train/loss": 2.0, "train/ce/acc": 0.5, "train/images_seen": 64.0}
    step, ev = record_scalars({"event": "eval", "tag": "final", "stage": 1, "epoch": 0, "global_step": 9,
                               "seconds": 1.5, "market/mAP": 80.0, "market/rank-1": 90.0})
    assert step == 9 and ev == {"eval/seconds": 1.5, "market/mAP": 80.0, "market/rank-1": 90.0}


def test_flatten_config_gives_dotted_scalar_keys():
    flat = flatten_config({"a": {"b": 1, "c": [1, 2]}, "d": [{"e": "x"}], "f": None, "g": True})
    assert flat == {"a.b": 1, "a.c": "1, 2", "d.0.e": "x", "f": "null", "g": True}


# ----------------------------------------------------------------- configuration


def _build(cfg, tmp_path):
    import yaml

    from core.config.loading import load_pipeline
    from core.pipeline import build_pipeline

    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    return build_pipeline(load_pipeline(tmp_path / "p.yaml"))


def test_unknown_logger_is_one_line_naming_the_key_and_the_valid_names(tiny_pipeline_config, tmp_path):
    from core.config.loading import ConfigError

    tiny_pipeline_config["loggers"] = ["tensorbord"]
    with pytest.raises(ConfigError) as err:
        _build(tiny_pipeline_config, tmp_path)
    text = str(err.value)
    assert "\n" not in text and "loggers.0" in text and "'tensorboard'" in text
    assert "mlflow, tensorboard, wandb" in text


def test_a_bad_logger_key_or_shape_is_one_line(tiny_pipeline_config, tmp_path):
    pytest.importorskip("tensorboard")
    from core.config.loading import ConfigError

    tiny_pipeline_config["loggers"] = [{"name": "tensorboard", "flush_sec": 5}]
    with pytest.raises(ConfigError, match=r"loggers\.0\.flush_sec.*Did you mean 'flush_secs'"):
        _build(tiny_pipeline_config, tmp_path)
    tiny_pipeline_config["loggers"] = {"tensorboard": True}
    with pytest.raises(ConfigError, match="expected a list of logger names"):
        _build(tiny_pipeline_config, tmp_path)


def test_a_missing_tracker_package_names_the_extra(tiny_pipeline_config, tmp_path, monkeypatch):
    import importlib.util

    from core.config.loading import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    tiny_pipeline_config["loggers"] = ["wandb"]
    with pytest.raises(ConfigError, match=r"loggers\.0: logger 'wandb' needs the wandb package.*reid-core\[wandb\]"):
        _build(tiny_pipeline_config, tmp_path)


# ------------------------------------------------------------------ TensorBoard


def test_tensorboard_run_has_the_scalars_ranked_list_and_hparams_of_the_run(tiny_pipeline_config, run_tiny_pipeline):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg = tiny_pipeline_config
    cfg["loggers"] = ["tensorboard"]
    cfg["trainer"]["log_every"] = 1
    result = run_tiny_pipeline(cfg)
    events = EventAccumulator(str(result.run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    train, evals = _records(result.run_dir, "train"), _records(result.run_dir, "eval")
    # scalars read back equal metrics.jsonl's, step for step (float32 in the event file)
    for key in ("loss", "lr", "ce", "triplet"):
        read = [(e.step, e.value) for e in events.Scalars(f"train/{key}")]
        assert [s for s, _ in read] == [r["global_step"] for r in train]
        np.testing.assert_allclose([v for _, v in read], [r[key] for r in train], rtol=1e-6)
    read = [(e.step, e.value) for e in events.Scalars("synthetic/mAP")]
    assert read == [(r["global_step"], pytest.approx(r["synthetic/mAP"], rel=1e-6)) for r in evals]
    assert len(evals) == 2  # untrained baseline and final
    # the ranked-list picture at the last step: 4 query rows of equal height, a valid PNG
    image = events.Images("ranked_list")[-1]
    assert image.step == train[-1]["global_step"] and image.height % 4 == 0
    import io

    assert Image.open(io.BytesIO(image.encoded_image_string)).size == (image.width, image.height)
    # hparams: the configuration with the final metrics, for the HParams tab
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["stages.0.optimizer.lr"].number_value == pytest.approx(1e-3)
    assert start.hparams["backbone.name"].string_value == "timm"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {f"final/{k}" for k in result.metrics}
    final = events.Scalars("final/synthetic/mAP")
    assert final[-1].value == pytest.approx(result.metrics["synthetic/mAP"], rel=1e-6)
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "vit_tiny_patch16_224" in text and "tensorboard" in text


# ------------------------------------------------------------- Weights & Biases


def _wandb_records(path: Path) -> list:
    """The records of an offline W&B run file: W&B's LevelDB-style log (7-byte file
    header; 32 KiB blocks of chunks with crc32, little-endian length, type), each record
    a `wandb_internal_pb2.Record`."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, out, pending = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def _fake_run_folder(path: Path) -> Path:
    (path / "checkpoints").mkdir(parents=True)
    (path / "checkpoints" / "last.pt").write_bytes(b"weights")
    (path / "report.md").write_text("# report\n")
    (path / "metrics.jsonl").write_text("{}\n")
    return path


def test_wandb_offline_run_holds_config_metrics_summary_and_the_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from core.trackers.wandb_logger import WandbLogger

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = _fake_run_folder(tmp_path / "run")
    logger = WandbLogger(project="test")
    logger.start({"seed": 3, "stages": [{"optimizer": {"lr": 0.01}}]}, run_dir)
    logger.log_metrics(1, {"train/loss": 2.5, "train/lr": 0.01})
    logger.log_metrics(2, {"train/loss": 1.5, "train/lr": 0.005})
    logger.log_image("ranked_list", Image.new("RGB", (40, 20), (200, 10, 10)), 2)
    logger.log_hparams({"seed": 3}, {"market/mAP": 42.0})
    logger.log_artifact(run_dir)
    logger.finish()
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    import time

    import wandb

    wandb.teardown()  # W&B's service writes the run file in blocks: closing it flushes the last one
    deadline = time.monotonic() + 60
    while True:
        records = _wandb_records(files[0])
        kinds = [r.WhichOneof("record_type") for r in records]
        if "exit" in kinds or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "run" in kinds, kinds
    run = records[kinds.index("run")].run
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["seed"] == 3 and config["stages"][0]["optimizer"]["lr"] == 0.01
    history = [{(i.key or "/".join(i.nested_key)): i.value_json for i in r.history.item}
               for r, k in zip(records, kinds) if k == "history"]
    losses = [(int(h["_step"]), float(h["train/loss"])) for h in history if "train/loss" in h]
    assert losses == [(1, 2.5), (2, 1.5)]
    assert any(k.startswith("ranked_list") for h in history for k in h), [list(h) for h in history]
    summary = {}
    for r, k in zip(records, kinds):
        if k == "summary":
            summary.update({(i.key or "/".join(i.nested_key)): i.value_json for i in r.summary.update})
    assert float(summary["final/market/mAP"]) == 42.0
    artifact = records[kinds.index("artifact")].artifact
    assert artifact.type == "run-folder"
    assert sorted(c.path for c in artifact.manifest.contents) == ["checkpoints/last.pt", "metrics.jsonl", "report.md"]
    assert records[kinds.index("exit")].exit.exit_code == 0


# ------------------------------------------------------------------------ MLflow


def test_mlflow_file_store_holds_params_metrics_final_metrics_and_the_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from core.trackers.mlflow_logger import MLflowLogger

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this
    uri = (tmp_path / "mlruns").as_uri()
    run_dir = _fake_run_folder(tmp_path / "run")
    logger = MLflowLogger(tracking_uri=uri, experiment="reid-test")
    logger.start({"seed": 3, "stages": [{"optimizer": {"lr": 0.01}}]}, run_dir)
    run_id = logger.run_id
    logger.log_metrics(1, {"train/ce": 2.5, "train/ce/acc": 0.25})
    logger.log_metrics(2, {"train/ce": 1.5, "train/ce/acc": 0.5})
    logger.log_image("ranked_list", Image.new("RGB", (40, 20)), 2)
    logger.log_hparams({"seed": 3}, {"market/mAP": 42.0})
    logger.log_artifact(run_dir)
    logger.finish()
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["seed"] == "3" and run.data.params["stages.0.optimizer.lr"] == "0.01"
    history = client.get_metric_history(run_id, "train.ce")
    assert sorted((m.step, m.value) for m in history) == [(1, 2.5), (2, 1.5)]
    assert [m.value for m in client.get_metric_history(run_id, "train.ce.acc")] == [0.25, 0.5]
    assert run.data.metrics["final.market.mAP"] == 42.0
    top = {a.path for a in client.list_artifacts(run_id, "run")}
    assert top == {"run/checkpoints", "run/metrics.jsonl", "run/report.md"}
    assert [a.path for a in client.list_artifacts(run_id, "run/checkpoints")] == ["run/checkpoints/last.pt"]
    assert [a.path for a in client.list_artifacts(run_id, "images")] == ["images/ranked_list-2.png"]


def test_mlflow_marks_a_failed_run(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from core.trackers.mlflow_logger import MLflowLogger

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    logger = MLflowLogger(tracking_uri=uri)
    logger.start({}, tmp_path)
    run_id = logger.run_id
    logger.finish(ok=False)
    assert MlflowClient(tracking_uri=uri).get_run(run_id).info.status == "FAILED"


def test_a_logger_that_cannot_start_ends_the_run_and_finishes_the_others(tmp_path):
    from core.trackers import Trackers

    class NoStart(ExperimentLogger):
        name = "nostart"

        def start(self, config, run_dir):
            raise PermissionError("not logged in")

    MemoryLogger.calls = []
    trackers = Trackers([MemoryLogger(), NoStart()])
    with pytest.raises(RuntimeError, match="logger 'nostart' could not start: PermissionError: not logged in"):
        trackers.start({}, tmp_path)
    assert [c[0] for c in MemoryLogger.calls] == ["start", "finish"] and MemoryLogger.calls[-1] == ("finish", False)
    trackers.record({"event": "train", "global_step": 1, "loss": 1.0})  # not started: nothing logged
    assert len(MemoryLogger.calls) == 2


def test_builds_for_inference_do_not_build_the_trackers(tiny_pipeline_config, tmp_path, monkeypatch):
    """`core eval/extract/search` of a run whose pipeline names wandb work without wandb."""
    import importlib.util

    import yaml

    from core.config.loading import load_pipeline
    from core.pipeline import build_pipeline

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    tiny_pipeline_config["loggers"] = ["wandb"]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(tiny_pipeline_config))
    assert build_pipeline(load_pipeline(tmp_path / "p.yaml"), prepare="skip").loggers == []

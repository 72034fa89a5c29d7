"""Issue 24, beyond one machine: 2 CPU processes (gloo, torchrun) train from a manifest
(the columnar record table read from a CSV file) with the same global batch as one
process, and give its loss curve: the table and the PK sampler shard by rank
(docs/multi-node.md). The multi-node launch differs only in torchrun's rendezvous flags."""

import copy
import os
import subprocess
import sys

import pytest
import yaml

from core.data.synthetic import SyntheticWorld
from core.data.synthetic.export import export_world
from core.runner import run
from core.testing import TINY_PIPELINE
from core.training.run_folder import read_metrics


@pytest.fixture
def manifest_pipeline(tmp_path, test_components):
    world = SyntheticWorld(identities=8, test_identities=4, images_per_identity=4, cameras=2, render_size=[32, 16])
    export_world(world, tmp_path / "world")
    config = copy.deepcopy(TINY_PIPELINE)
    config["data"]["train"] = [{"dataset": "manifest", "path": str(tmp_path / "world" / "manifest.csv")}]
    config.update(plugins=["./test_components.py"], head={"name": "linear_test"}, losses=[{"name": "ce"}])
    config["stages"][0].update(epochs=1, optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9})
    config["trainer"].update(eval_before=False, log_every=1)
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_two_processes_train_from_a_manifest_like_one_process(manifest_pipeline, tmp_path):
    single = run(manifest_pipeline, run_dir=tmp_path / "single")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", "--rdzv-id", "issue24",
         "-m", "core", "run", str(manifest_pipeline), "--run-dir", str(tmp_path / "ddp")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    curve = lambda d: [(r["global_step"], r["loss"]) for r in read_metrics(d) if r["event"] == "train"]  # noqa: E731
    one, two = curve(single.run_dir), curve(tmp_path / "ddp")
    assert len(one) >= 2 and [s for s, _ in one] == [s for s, _ in two]
    assert [loss for _, loss in two] == pytest.approx([loss for _, loss in one], rel=1e-4)
    evals = [r for r in read_metrics(tmp_path / "ddp") if r["event"] == "eval"]
    assert evals and any(key.endswith("mAP") for key in evals[-1])

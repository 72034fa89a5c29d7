"""Issue 24, beyond one machine: 2 CPU processes (gloo, torchrun) train from a manifest
(the columnar record table read from a CSV file) with the same global batch as one
process, and give its loss curve: the table and the PK sampler shard by rank
(docs/multi-node.md). The multi-node launch differs only in torchrun's rendezvous flags."""

import pytest

from core.data.synthetic import SyntheticWorld
from core.data.synthetic.export import export_world
from core.runner import run
from core.training.run_folder import read_metrics


@pytest.fixture
def manifest_pipeline(tmp_path, ddp_pipeline_file):
    world = SyntheticWorld(identities=8, test_identities=4, images_per_identity=4, cameras=2, render_size=[32, 16])
    export_world(world, tmp_path / "world")
    return ddp_pipeline_file("manifest.yaml", epochs=1,
                             train=[{"dataset": "manifest", "path": str(tmp_path / "world" / "manifest.csv")}])


def test_two_processes_train_from_a_manifest_like_one_process(manifest_pipeline, tmp_path, torchrun):
    single = run(manifest_pipeline, run_dir=tmp_path / "single")
    # the multi-node rendezvous flags (docs/multi-node.md), on one node, not --standalone
    multi_node = ("--nnodes", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", "--rdzv-id", "issue24")
    torchrun("-m", "core", "run", manifest_pipeline, "--run-dir", tmp_path / "ddp", rendezvous=multi_node, timeout=300)
    curve = lambda d: [(r["global_step"], r["loss"]) for r in read_metrics(d) if r["event"] == "train"]  # noqa: E731
    one, two = curve(single.run_dir), curve(tmp_path / "ddp")
    assert len(one) >= 2 and [s for s, _ in one] == [s for s, _ in two]
    assert [loss for _, loss in two] == pytest.approx([loss for _, loss in one], rel=1e-4)
    evals = [r for r in read_metrics(tmp_path / "ddp") if r["event"] == "eval"]
    assert evals and any(key.endswith("mAP") for key in evals[-1])

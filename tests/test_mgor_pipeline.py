"""Cross-plugin integration: pipelines/mgor_edps_moil_synthetic.yaml, where edps episodes
feed moil through the core Batch contract (needs both plugins: the `all` environment)."""

from pathlib import Path

from core.runner import run, validate

PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "mgor_edps_moil_synthetic.yaml"

#: Two categories of 8 identities, a 1-layer ViT, one short epoch: a few seconds on a CPU.
TINY = ["data.train.0.categories=[person, ship]", "data.train.0.identities=8", "data.train.0.test_identities=4",
        "data.train.0.images_per_identity=4", "data.train.0.cameras=2", "data.train.0.render_size=[32, 32]",
        "data.transform.size=[32, 32]", "data.transform.pad=2", "sampler.batch_size=16",
        "backbone.model_kwargs={patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}",
        "stages.0.epochs=1", "stages.0.schedule.warmup_epochs=0", "trainer.eval_every=0",
        "trainer.progress=false", "trainer.num_workers=0", "trainer.device=cpu"]


def test_pipeline_as_shipped_builds_and_steps():
    summary = validate(PIPELINE)
    assert summary["components"]["sampler"]["plugin"] == "edps"
    assert summary["components"]["losses.0"]["plugin"] == "moil"
    assert summary["train"]["categories"] == {"animal": 100, "person": 100, "ship": 100, "vehicle": 100}
    assert summary["outputs"]["embedding"] == [64, 128]
    assert set(summary["losses"]) == {"moil"}
    assert not summary["parameters_without_grad"]


def test_pipeline_runs_end_to_end_and_logs_every_moil_term(tmp_path):
    result = run(PIPELINE, TINY, run_dir=tmp_path / "run")
    assert "synthetic/mAP" in result.metrics
    logged = (result.run_dir / "metrics.jsonl").read_text()
    for term in ("moil/id_train", "moil/met_train", "moil/id_test", "moil/pair_pos", "moil/pair_neg"):
        assert f'"{term}"' in logged

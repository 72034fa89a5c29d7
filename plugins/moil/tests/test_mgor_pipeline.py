"""moil without episodes: the MGOR pipeline with a plain sampler fails naming `edps`.
(The pipeline with edps itself is a cross-plugin test: tests/test_mgor_pipeline.py.)"""

from pathlib import Path

import pytest

from core.runner import run

PIPELINE = Path(__file__).resolve().parents[3] / "pipelines" / "mgor_edps_moil_synthetic.yaml"

#: Two categories of 8 identities, a 1-layer ViT, one short epoch: a few seconds on a CPU.
TINY = ["data.train.0.categories=[person, ship]", "data.train.0.identities=8", "data.train.0.test_identities=4",
        "data.train.0.images_per_identity=4", "data.train.0.cameras=2", "data.train.0.render_size=[32, 32]",
        "data.transform.size=[32, 32]", "data.transform.pad=2", "sampler.batch_size=16",
        "backbone.model_kwargs={patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}",
        "stages.0.epochs=1", "stages.0.schedule.warmup_epochs=0", "trainer.eval_every=0",
        "trainer.progress=false", "trainer.num_workers=0", "trainer.device=cpu"]

def test_pipeline_with_a_non_episodic_sampler_fails_naming_edps(tmp_path):
    with pytest.raises(ValueError, match="`edps`"):
        run(PIPELINE, [*TINY, "sampler={name: pk, batch_size: 16, k: 4}"], run_dir=tmp_path / "run")

"""`core run --resume` through the real trainer: a run stopped inside the text-to-image
stage and resumed ends with the momentum copies (t2i_contrastive's text model and
t2i_matching's text + fusion + MLM model) of an uninterrupted run, bit for bit. Before
the copies were checkpointed, a resume restarted them from the live weights."""

from pathlib import Path

import pytest
import torch

from core.runner import run
from core.training.checkpoint import load_checkpoint

PIPELINE = Path(__file__).resolve().parents[3] / "pipelines" / "irm++_synthetic.yaml"
WORLD = "{identities: 8, test_identities: 6, images_per_identity: 8, render_size: [32, 16]}"
TINY = [f"data.train.0.world={WORLD}", f"data.test.0.world={WORLD}",
        "data.train.0.instruction_size=[16, 16]", "data.test.0.instruction_size=[16, 16]",
        "data.transform.size=[32, 16]", "data.transform.pad=2", "sampler.batch_size=16",
        "backbone.model_kwargs={patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}",
        "backbone.clip_config={embed_dim: 32, vision_cfg: {image_size: 16, patch_size: 8, width: 32, layers: 1, "
        "head_width: 16}, text_cfg: {context_length: 48, vocab_size: 49408, width: 32, heads: 2, layers: 1}}",
        "stages.0.epochs=1", "stages.1.epochs=1", "stages.0.schedule.warmup_epochs=0",
        "stages.1.schedule.warmup_epochs=0", "trainer.eval_every=0", "trainer.eval_before=false",
        "trainer.progress=false", "trainer.num_workers=0", "trainer.device=cpu"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def momentum_copies(checkpoint):
    """{loss index: the saved momentum copy} of a checkpoint's losses."""
    return {k: v["momentum_copy"] for k, v in checkpoint["losses"].items()
            if k.endswith("_extra_state") and v.get("momentum_copy") is not None}


def test_resume_ends_with_the_momentum_copies_of_an_uninterrupted_run(tmp_path):
    full = run(PIPELINE, TINY, run_dir=tmp_path / "full")
    a = load_checkpoint(full.run_dir / "checkpoints" / "last.pt")
    steps = a["position"]["global_step"]
    copies = momentum_copies(a)
    assert len(copies) == 4  # t2i_contrastive and t2i_matching, in each of the two stages
    stop = steps - 2  # inside the last stage, where the text-to-image losses train
    stopped = run(PIPELINE, [*TINY, f"trainer.stop_after_steps={stop}"], run_dir=tmp_path / "stopped")
    assert stopped.metrics is None
    assert len(momentum_copies(load_checkpoint(stopped.run_dir / "checkpoints" / "last.pt"))) == 4
    resumed = run(None, [], resume=stopped.run_dir)
    b = load_checkpoint(resumed.run_dir / "checkpoints" / "last.pt")
    assert b["position"] == a["position"]
    again = momentum_copies(b)
    assert again.keys() == copies.keys()
    for loss, state in copies.items():
        for key, value in state.items():
            assert torch.equal(value, again[loss][key]), (loss, key)


def test_a_run_evaluates_with_itm_reranking(tmp_path):
    """The trainer binds its model and matching loss at evaluation; extraction keeps the
    ViT tokens; every task reports, the caption queries re-ranked."""
    plain = run(PIPELINE, [*TINY, "trainer.eval_before=true"], run_dir=tmp_path / "plain")
    result = run(PIPELINE, [*TINY, "trainer.eval_before=true", "evaluator.itm_rerank=4"], run_dir=tmp_path / "rr")
    for key in ("instruct/text-to-image/mAP", "instruct/free/text-to-image/mAP", "instruct/traditional/mAP"):
        assert key in result.metrics, key
    assert result.metrics["instruct/itm_reranked"] == 1.0  # the final evaluation; the baseline's is 0
    assert "instruct/itm_reranked" not in plain.metrics
    # image-query tasks are untouched by the re-ranking (same training, same seed)
    assert result.metrics["instruct/traditional/mAP"] == pytest.approx(plain.metrics["instruct/traditional/mAP"])
    assert result.metrics["instruct/free/traditional/mAP"] == pytest.approx(plain.metrics["instruct/free/traditional/mAP"])

"""Cross-plugin integration: MUVA end to end — the vge labeler's `prepare` step writes the
part pseudo-labels, amsa's backbone, head and losses train both stages on them (they meet
through the annotation file and the batch field `part_masks`; the `all` environment)."""

from pathlib import Path

import pytest

from core.runner import run, validate

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
TINY_CLIP = ("{embed_dim: 16, quick_gelu: true, vision_cfg: {layers: 2, width: 32, patch_size: 8, head_width: 16}, "
             "text_cfg: {context_length: 20, vocab_size: 49408, width: 16, heads: 2, layers: 1}}")
#: 16 people x 4 images at 32x16 (a 4 x 2 patch grid), a 2-block CLIP, 1 + 3 epochs.
TINY = ["data.train.0.identities=16", "data.train.0.test_identities=4", "data.train.0.images_per_identity=4",
        "data.train.0.cameras=2", "data.train.0.render_size=[64, 32]", "data.transform.size=[32, 16]",
        "sampler.batch_size=16", f"backbone.model_cfg={TINY_CLIP}", "stages.0.epochs=1",
        "stages.1.epochs=3", "stages.1.schedule.warmup_epochs=1", "stages.1.schedule.milestones=[2]",
        "trainer.eval_every=0", "trainer.progress=false", "trainer.num_workers=0", "trainer.device=cpu"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is fastest


def test_synthetic_muva_labels_then_trains_both_stages_end_to_end(tmp_path):
    labels = tmp_path / "labels" / "parts.npz"
    result = run(PIPELINES / "muva_synthetic.yaml", [*TINY, f"prepare.0.out={labels}"], run_dir=tmp_path / "run")
    assert labels.is_file()  # written by the vge labeler (record_boxes grounder)
    assert "synthetic/mAP" in result.metrics
    logged = (result.run_dir / "metrics.jsonl").read_text()
    for term in ("muva_cmp", "muva_cmp/acc", "ce", "muva_prototype", "muva_i2t", "muva_mask/bce",
                 "muva_mask/dice", "muva_mask/iou"):
        assert f'"{term}"' in logged, term
    resolved = (result.run_dir / "pipeline.yaml").read_text()
    assert "amsa_clip" in resolved and "vge" in resolved


def test_paper_setting_pipeline_builds_and_steps_with_its_stages_on_a_tiny_clip(tmp_path):
    """pipelines/muva.yaml as shipped (stages, parameter groups, losses, labeler), with the
    data and the CLIP swapped for the synthetic world and a tiny random model."""
    world = ("[{dataset: synthetic, categories: [person], identities: 16, test_identities: 2, "
             "images_per_identity: 4, render_size: [64, 32]}]")
    summary = validate(PIPELINES / "muva.yaml", [
        f"data.train={world}", "data.test=null", "data.transform.size=[32, 16]", f"backbone.model_cfg={TINY_CLIP}",
        "backbone.pretrained=false", f"prepare.0.out={tmp_path / 'parts.npz'}",
        "prepare.0.grounder={name: record_boxes}",
        "sampler.batch_size=16", "trainer.device=cpu", "trainer.num_workers=0"])
    assert summary["components"]["backbone"]["plugin"] == "amsa"
    assert set(summary["losses"]) == {"muva_cmp"}  # stage 1
    assert summary["outputs"]["part_mask_logits"] == [16, 2, 3, 8]

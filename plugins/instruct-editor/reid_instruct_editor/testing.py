"""Overrides that shrink the CPU twins (pipelines/irm_synthetic.yaml, irm++_synthetic.yaml)
to seconds on a CPU, for end-to-end tests (this plugin's and the core's integration tests)
and a plugin author's smoke run: `core run pipelines/irm++_synthetic.yaml --set ...` with
each of `TINY_TWIN`, or `core.runner.run(path, TINY_TWIN)`.

8 people, a 2-block ViT on 32 x 16 images and a one-layer CLIP, one epoch per stage,
no evaluation but the final one. Plain strings: importing this module imports no torch.
"""

from __future__ import annotations

WORLD = "{identities: 8, test_identities: 6, images_per_identity: 8, render_size: [32, 16]}"

TINY_TWIN: tuple[str, ...] = (
    f"data.train.0.world={WORLD}", f"data.test.0.world={WORLD}",
    "data.train.0.instruction_size=[16, 16]", "data.test.0.instruction_size=[16, 16]",
    "data.transform.size=[32, 16]", "data.transform.pad=2", "sampler.batch_size=16",
    "backbone.model_kwargs={patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}",
    "backbone.clip_config={embed_dim: 32, vision_cfg: {image_size: 16, patch_size: 8, width: 32, layers: 1, "
    "head_width: 16}, text_cfg: {context_length: 48, vocab_size: 49408, width: 32, heads: 2, layers: 1}}",
    "stages.0.epochs=1", "stages.1.epochs=1", "stages.0.schedule.warmup_epochs=0",
    "stages.1.schedule.warmup_epochs=0", "trainer.eval_every=0", "trainer.eval_before=false",
    "trainer.progress=false", "trainer.num_workers=0", "trainer.device=cpu",
)

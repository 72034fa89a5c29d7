"""Every first-party synthetic pipeline (pipelines/quickstart.yaml, pipelines/*_synthetic.yaml)
shrunk to a few identities and a one-block model, for tests that must cover each method's
components (CUDA autocast emulation, DDP against one process) in seconds.

`twin_config(name, tmp_path)` resolves the pipeline file with its `_base_` and the
overrides below and writes it to `tmp_path`: the written file is self-contained.
`small_config(name, tmp_path)` also covers the baselines' synthetic pipelines (core
components only, already CPU-sized: fewer identities and smaller batches here), and
`first_batches(p, n)` makes a built pipeline's first batches as the trainer does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from core.config.loading import LoadedConfig, dump, load_pipeline

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"

TINY_VIT = "{patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}"
TRAINER = ["trainer.device=cpu", "trainer.num_workers=0", "trainer.progress=false", "trainer.eval_before=false",
           "trainer.log_every=1", "trainer.eval_every=0"]

TWINS: dict[str, list[str]] = {
    "quickstart": [
        "data.train.0.identities=4", "data.train.0.test_identities=2", "data.train.0.render_size=[32, 16]",
        "data.transform.size=[32, 16]", "sampler.batch_size=16", f"backbone.model_kwargs={TINY_VIT}"],
    "mgor_edps_moil_synthetic": [
        "data.train.0.identities=4", "data.train.0.test_identities=2", "data.train.0.render_size=[32, 32]",
        "data.transform.size=[32, 32]", "sampler.batch_size=32", f"backbone.model_kwargs={TINY_VIT}"],
    "mgor_synthetic": [
        "data.train.0.identities=4", "data.train.0.test_identities=2", "data.train.0.render_size=[32, 16]",
        "data.test.0.identities=4", "data.test.0.test_identities=2", "data.test.0.render_size=[32, 16]",
        "data.test.1.identities=4", "data.test.1.test_identities=2", "data.test.1.render_size=[32, 16]",
        "data.transform.size=[32, 16]", "sampler.batch_size=32", f"backbone.model_kwargs={TINY_VIT}"],
    "muva_synthetic": [
        "data.train.0.identities=8", "data.train.0.test_identities=2", "data.train.0.images_per_identity=4",
        "sampler.batch_size=16",
        "backbone.model_cfg.vision_cfg={layers: 2, width: 32, patch_size: 8, head_width: 16}",
        "backbone.model_cfg.text_cfg={context_length: 20, vocab_size: 49408, width: 32, heads: 2, layers: 1}"],
    "irm_synthetic": [
        "data.train.0.world.identities=8", "data.train.0.world.test_identities=4",
        "data.train.0.world.images_per_identity=8", "data.test=[]", "sampler.batch_size=16",
        f"backbone.model_kwargs={TINY_VIT}",
        "backbone.clip_config={embed_dim: 32, vision_cfg: {image_size: 32, patch_size: 8, width: 32, layers: 1, "
        "head_width: 16}, text_cfg: {context_length: 64, vocab_size: 49408, width: 32, heads: 2, layers: 1}}"],
}
TWINS["irm++_synthetic"] = TWINS["irm_synthetic"]


def twin_config(name: str, folder: Path, extra: list[str] | tuple[str, ...] = ()) -> Path:
    """Write the tiny twin of pipelines/<name>.yaml into `folder`; returns its path."""
    return write_resolved(load_pipeline(PIPELINES / f"{name}.yaml", [*TWINS[name], *TRAINER, *extra]), Path(folder) / name)


def write_resolved(cfg: LoadedConfig, stem: Path) -> Path:
    """`cfg` resolved into `stem`.yaml, self-contained (no `_base_`); what a prepare step
    writes (labels) goes beside it. Also bench/gpu_check.py's full-size rows."""
    data = dict(cfg.data)
    data.pop("_base_", None)
    for step in data.get("prepare") or []:
        step["out"] = str(stem.parent / Path(step["out"]).name)
    path = stem.with_name(f"{stem.name}.yaml")
    path.write_text(dump(data), encoding="utf-8")
    return path


#: the baselines' synthetic pipelines, made smaller (`small_config`)
BASELINES: dict[str, list[str]] = {
    name: ["data.train.0.identities=8", "data.train.0.test_identities=4", "sampler.batch_size=16"]
    for name in ("agw_synthetic", "bot_synthetic", "sbs_synthetic", "transreid_synthetic")}
#: every first-party pipeline: the methods' twins, then the baselines
ALL = sorted(TWINS) + sorted(BASELINES)


def small_config(name: str, folder: Path, extra: list[str] | tuple[str, ...] = ()) -> LoadedConfig:
    """A method's tiny twin (`twin_config`, written into `folder`) or a smaller baseline
    pipeline, loaded."""
    if name in BASELINES:
        return load_pipeline(PIPELINES / f"{name}.yaml", [*BASELINES[name], *TRAINER, *extra])
    return load_pipeline(twin_config(name, folder, extra))


def config_file(name: str, folder: Path, extra: list[str] | tuple[str, ...] = ()) -> Path:
    """`small_config(name, folder, extra)` written into `folder` (self-contained): a file
    for `core run` / torchrun, for the methods' twins and the baselines alike."""
    if name not in BASELINES:
        return twin_config(name, folder, extra)
    return write_resolved(small_config(name, folder, extra), Path(folder) / name)


def one_epoch_a_stage(name: str, folder: Path, extra: list[str] | tuple[str, ...] = ()) -> Path:
    """`config_file(name, folder, extra)` with one epoch in each of the pipeline's stages."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    stages = len(small_config(name, folder).data["stages"])
    return config_file(name, folder, [*(f"stages.{i}.epochs=1" for i in range(stages)), *extra])


def first_batches(p: Any, count: int, make: Callable | None = None) -> list:
    """The first `count` batches of built pipeline `p`'s sampler (an episode's samples keep
    their roles), each sample with seed 0, collated by `make` (default: the trainer's
    collate, `p.collate()`: collate + the components' batch preparers)."""
    from core.data.loading import ImageSamples
    from core.interfaces import indices_and_roles

    make = make or p.collate()
    samples = ImageSamples(p.train, p.train_datasets, p.train_transform)
    out = []
    for plan, _ in zip(p.sampler, range(count)):
        indices, roles = indices_and_roles(plan)
        out.append(make([samples[(i, 0, r)] for i, r in zip(indices, roles)]))
    return out


def step_gradients(forward: Callable, net: Any, batches: list) -> list[tuple[dict, dict]]:
    """(logged parts, gradients by parameter name) of one training forward + backward per
    batch, each from the same state: the seed 100 + b before batch b (dropout), gradients
    cleared after. `forward` is `net` itself or a wrapper of it (compiled, DDP)."""
    import torch

    from core.training.trainer import detach_parts

    out = []
    for b, batch in enumerate(batches):
        torch.manual_seed(100 + b)
        total, parts, _ = forward(batch, train=True)
        parts = {k: v.clone() for k, v in detach_parts(parts).items()}
        total.backward()
        out.append((parts, {k: q.grad.clone() for k, q in net.named_parameters() if q.grad is not None}))
        net.zero_grad(set_to_none=True)
    return out

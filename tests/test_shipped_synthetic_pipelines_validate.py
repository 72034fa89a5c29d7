"""Every shipped pipeline that runs on the synthetic world passes `core validate`: it builds
and takes one forward/backward step on the CPU, as the README tells a user to check a
pipeline before training. Only some had a test of their own, so `irm_synthetic.yaml` could
fail validate (its momentum losses were never bound to the model, which the trainer does
before its first step) while its training tests passed. Each also passes the check a sweep
makes of its variants before the first run (core.parameter_check.check_build)."""

from pathlib import Path

import pytest

from core.config.loading import load_pipeline
from core.parameter_check import check_build
from core.runner import validate

ROOT = Path(__file__).resolve().parents[1] / "pipelines"
SYNTHETIC = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.yaml")
                   if "synthetic" in p.name or p.name == "quickstart.yaml" or p.parent.name.endswith("_ablation"))


def test_the_list_holds_every_family():
    names = " ".join(SYNTHETIC)
    for family in ("quickstart", "bot", "agw", "sbs", "transreid", "mgor", "muva", "irm_", "irm++"):
        assert family in names, (family, SYNTHETIC)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_every_synthetic_pipeline_validates_on_the_cpu(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # labelers write their files where core runs
    summary = validate(ROOT / name, ["trainer.device=cpu"])
    assert summary["device"] == "cpu" and summary["losses"], summary
    assert all(v == v for v in summary["losses"].values()), summary["losses"]  # no NaN


@pytest.mark.parametrize("name", SYNTHETIC)
def test_every_synthetic_pipeline_passes_the_check_a_sweep_makes_before_its_first_run(name, monkeypatch):
    """A sweep builds each variant the cheap way before its first run and refuses one that a
    component refuses (core.parameter_check.check_build): a pipeline that validates must not
    be refused there. Every shipped component builds on the meta device, so the check never
    falls back to a real build (hse's head, amsa's prompts, instruct-editor's head and
    t2i_contrastive read tensor values at build, and the MGOR, MUVA and IRM pipelines were
    built for real: a CLIP ViT-B/16 initialised per variant of a muva.yaml sweep)."""
    import core.pipeline

    build, real = core.pipeline.build_pipeline, []

    def meta_only(cfg, *args, meta=False, **kwargs):
        if not meta:
            real.append(kwargs)
            raise AssertionError("a real build")
        return build(cfg, *args, meta=meta, **kwargs)

    monkeypatch.setattr(core.pipeline, "build_pipeline", meta_only)
    check_build(load_pipeline(ROOT / name, ["trainer.device=cpu"]))
    assert real == [], f"{name} was built for real"


def test_validate_reports_missing_gradients_only_for_what_the_first_stage_trains(tmp_path, monkeypatch):
    """MUVA's stage 1 trains the prompts alone (Sec. 4.2; muva_synthetic.yaml's stage
    `prompts`: trainable [backbone.text.prompts]); the image encoder, local tokens and mask
    predictors get no gradient there by design. validate's step is stage 1's, so its note
    of parameters without a gradient must not list them (it listed 118, local_tokens first)."""
    monkeypatch.chdir(tmp_path)
    summary = validate(ROOT / "muva_synthetic.yaml", ["trainer.device=cpu"])
    assert summary["parameters_without_grad"] == []

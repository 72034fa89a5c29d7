"""The quickstart pipeline end to end: it builds as shipped, and a small setting of it must
learn (held-out identities, mAP well above the untrained model)."""

from pathlib import Path

from core.runner import run, validate

QUICKSTART = Path(__file__).resolve().parents[1] / "pipelines" / "quickstart.yaml"

#: A smaller world and fewer epochs than the shipped file: ~25 s on 2 CPU cores.
SMALL = ["data.train.0.categories=[person, vehicle]", "data.train.0.identities=24",
         "data.train.0.test_identities=10", "stages.0.epochs=12", "sampler.batch_size=32",
         "trainer.eval_every=0", "trainer.progress=false"]


def test_quickstart_as_shipped_builds_and_steps():
    summary = validate(QUICKSTART)
    assert summary["train"]["identities"] == 300  # 100 per category x 3 categories
    assert summary["test"]["synthetic"] == {"query": 300, "gallery": 900}
    assert summary["outputs"]["embedding"] == [64, 128]
    assert not summary["parameters_without_grad"]


def test_quickstart_learns_on_held_out_identities(tmp_path):
    result = run(QUICKSTART, SMALL, run_dir=tmp_path / "run")
    before, after = result.baseline["synthetic/mAP"], result.metrics["synthetic/mAP"]
    assert after > 2 * before and after > before + 10, (before, after)
    assert result.metrics["synthetic/rank-5"] > result.baseline["synthetic/rank-5"] + 20
    report = (result.run_dir / "report.md").read_text()
    assert "| baseline (untrained) |" in report and "| final |" in report

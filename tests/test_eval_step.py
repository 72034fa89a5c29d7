"""`core eval` says which training step the evaluated weights come from: the step the
checkpoint was written at (the run's own count in metrics.jsonl), never 0, which reads
as "the untrained model"; a weights file records no step, so none is claimed."""

import json
import logging

from core.cli import main
from core.restore import restore_run


def trained_run(tiny_pipeline_config, run_tiny_pipeline):
    config = tiny_pipeline_config
    config["trainer"]["eval_before"] = False
    result = run_tiny_pipeline(config)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["global_step"] for r in records if r.get("event") == "train"]
    return result.run_dir, max(steps)


def eval_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluation 'checkpoint'")]


def test_a_restored_run_stands_at_the_step_its_checkpoint_was_written(tiny_pipeline_config, run_tiny_pipeline):
    run_dir, last_step = trained_run(tiny_pipeline_config, run_tiny_pipeline)
    assert last_step > 0
    _, _, trainer = restore_run(run_dir)
    assert trainer.position.global_step == last_step


def test_core_eval_names_the_checkpoint_step_not_zero(tiny_pipeline_config, run_tiny_pipeline, caplog, capsys):
    run_dir, last_step = trained_run(tiny_pipeline_config, run_tiny_pipeline)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="core"):
        assert main(["eval", str(run_dir)]) == 0
    capsys.readouterr()
    lines = eval_lines(caplog)
    assert len(lines) == 1 and f"at step {last_step}:" in lines[0], lines


def test_core_eval_of_a_weights_file_claims_no_step(tiny_pipeline_config, run_tiny_pipeline, caplog, capsys):
    run_dir, _ = trained_run(tiny_pipeline_config, run_tiny_pipeline)
    weights = run_dir.parent / "exported"
    assert main(["export", str(run_dir), "--out", str(weights), "--format", "safetensors"]) == 0
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="core"):
        code = main(["eval", str(weights / "model.safetensors"), "--set",
                     "data.test=[{dataset: synthetic, identities: 8, test_identities: 4, images_per_identity: 4, "
                     "cameras: 2, render_size: [32, 16]}]"])
    capsys.readouterr()
    assert code == 0
    lines = eval_lines(caplog)
    assert len(lines) == 1 and "at step" not in lines[0], lines

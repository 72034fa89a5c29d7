"""`core run --resume` through the real trainer: a run stopped inside the text-to-image
stage and resumed ends with the momentum copies (t2i_contrastive's text model and
t2i_matching's text + fusion + MLM model) of an uninterrupted run, bit for bit. Before
the copies were checkpointed, a resume restarted them from the live weights."""

import json
import logging
from pathlib import Path

import pytest
import torch

from core.runner import evaluate_run, run
from core.training.checkpoint import load_checkpoint
from reid_instruct_editor.testing import TINY_TWIN

PIPELINE = Path(__file__).resolve().parents[3] / "pipelines" / "irm++_synthetic.yaml"
TINY = list(TINY_TWIN)  # the twin of tests/test_irm_pipeline.py: seconds on a CPU

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


def _last_eval(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r.get("event") == "eval"][-1]


def test_core_eval_of_a_run_reranks_as_its_last_evaluation(tmp_path, caplog):
    """`core eval` restores the losses' state from the checkpoint (the trained fusion
    encoder and ITM head): its re-ranked metrics are the trainer's last evaluation's. A
    checkpoint without the losses' state evaluates without re-ranking and says, in one
    line, that re-ranking needs it."""
    result = run(PIPELINE, [*TINY, "evaluator.itm_rerank=4"], run_dir=tmp_path / "rr")
    logged = _last_eval(result.run_dir)
    assert logged["instruct/itm_reranked"] == 1.0
    again = evaluate_run(result.run_dir)
    assert again["instruct/itm_reranked"] == 1.0
    for key in ("instruct/text-to-image/mAP", "instruct/text-to-image/rank-1", "instruct/free/text-to-image/mAP",
                "instruct/free/text-to-image/rank-1", "instruct/traditional/mAP"):
        assert again[key] == pytest.approx(logged[key], abs=1e-6), key

    state = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")
    del state["losses"]
    bare = result.run_dir / "checkpoints" / "model_only.pt"
    torch.save(state, bare)
    with caplog.at_level(logging.WARNING):
        caplog.clear()
        plain = evaluate_run(bare)
    assert plain["instruct/itm_reranked"] == 0.0
    said = [r.getMessage() for r in caplog.records if "itm_rerank needs" in r.getMessage()]
    assert len(said) == 1 and "\n" not in said[0] and "checkpoints/last.pt" in said[0]

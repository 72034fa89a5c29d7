"""Instruct-ReID end to end (plugin instruct-editor): the CPU twins pipelines/irm_synthetic.yaml
and irm++_synthetic.yaml train on all six tasks of the synthetic world and report both
evaluation settings with mAP-tau; the real-data pipelines resolve against the plugin."""

from pathlib import Path

import pytest

from core.config.loading import load_pipeline
from core.runner import run
from reid_instruct_editor.testing import TINY_TWIN

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
TINY = list(TINY_TWIN)  # 8 people, a 2-block ViT, a one-layer CLIP, one short epoch: seconds
TASKS = ("traditional", "clothes-changing", "clothes-template", "visible-infrared", "text-to-image",
         "language-instructed")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is fastest


def test_irm_plus_plus_synthetic_runs_end_to_end_on_all_six_tasks(tmp_path):
    result = run(PIPELINES / "irm++_synthetic.yaml", TINY, run_dir=tmp_path / "run")
    m = result.metrics
    for task in TASKS:
        for key in (f"instruct/{task}/mAP", f"instruct/{task}/rank-1", f"instruct/free/{task}/mAP"):
            assert key in m, key
    assert "instruct/mAP_tau" in m and "instruct/free/mAP_tau" in m
    logged = (result.run_dir / "metrics.jsonl").read_text()
    for term in ("instruct_id/bio", "adaptive_triplet/bio_bn/l11", "irm_memory/hard", "irm_memory/soft",
                 "t2i_contrastive/t2i", "t2i_matching/pitm", "t2i_matching/mlm", "t2i_matching/mrtd"):  # momentum bound
        assert f'"{term}"' in logged, term
    resolved = (result.run_dir / "pipeline.yaml").read_text()
    assert "instruct_editor" in resolved and "task_pk" in resolved


@pytest.mark.parametrize("name", ["irm.yaml", "irm++.yaml", "irm_synthetic.yaml"])
def test_pipelines_use_the_papers_losses_and_settings(name):
    cfg = load_pipeline(PIPELINES / name).data
    losses = {loss["name"]: loss for loss in cfg["losses"]}
    assert losses["adaptive_triplet"]["weight"] == 3.0  # alpha
    assert losses["adaptive_triplet"]["weights"] == [0.5, 0.5, 1.0]
    assert losses["instruct_id"]["weights"] == [0.5, 0.5, 1.0]
    assert ("irm_memory" in losses) == name.startswith("irm++")
    if name != "irm_synthetic.yaml":
        assert cfg["trainer"]["accumulate"] == 6  # one batch per task per step: 1 / 6 each
        assert cfg["stages"][0]["optimizer"] == {"name": "adamw", "lr": 4.0e-5, "weight_decay": 5.0e-4}
        assert cfg["backbone"]["clip_model"] == "ViT-B-16"
        # the authors' training images: reid/datasets/data_builder_*.py and RandomSizedEarserImage
        # (erases with probability 0.9: U(-1, 1) <= 0.8; 2-20% of the image; a random RGB colour)
        assert cfg["data"]["transform"] == {"size": [256, 128], "pad": 10, "flip": 0.5, "norm": "imagenet",
                                            "interpolation": "bilinear", "colour_jitter": [0.5, 0.5, 0.5, 0.4],
                                            "erasing": 0.9, "erasing_scale": [0.02, 0.2], "erasing_fill": "random"}
        # the authors' text-to-image total: 0.5 L_cl (momentum 0.995, distillation 0.4) + L_pitm ...
        assert losses["t2i_contrastive"]["weight"] == 0.5 and losses["t2i_contrastive"]["momentum"] == 0.995
        assert losses["t2i_contrastive"]["distill"] == 0.4
        assert losses["t2i_matching"]["weight"] == 1.0 and losses["t2i_matching"]["layers"] == 6
        # ... + L_mlm (momentum distillation 0.4) + 0.5 L_mrtd
        assert losses["t2i_matching"]["mlm_distill"] == 0.4 and losses["t2i_matching"]["mrtd_weight"] == 0.5


def _sets(entries):
    """(task, root name, which lists) of each `instruct` entry, or of each of its `sources`."""
    out = []
    for entry in entries:
        for part in entry.get("sources", [entry]):
            src = part["source"]
            out.append((part["task"], src["root"].rsplit("/", 1)[-1],
                        tuple(k for k in ("train", "query", "gallery") if k in src)))
    return out


def test_irm_trains_and_tests_on_the_papers_sets_per_task():
    """The authors' scripts/config_joint.yaml (train) and test.sh (test): COCAS+ Real2 is
    test-only, clothes-template tests on Real2, CUHK03, VC-Clothes and the text-image
    pre-training set (PLIP) train, 10 test sets."""
    cfg = load_pipeline(PIPELINES / "irm.yaml").data
    train, test = _sets(cfg["data"]["train"]), _sets(cfg["data"]["test"])
    assert sorted((t, r) for t, r, _ in train) == sorted([
        ("traditional", "market"), ("traditional", "msmt"), ("traditional", "cuhk"),
        ("clothes-changing", "ltcc"), ("clothes-changing", "prcc"), ("clothes-changing", "vc_clothes"),
        ("clothes-template", "real1"), ("visible-infrared", "llcm"), ("text-to-image", "CUHK-Pedes"),
        ("text-to-image", "PLIP"), ("language-instructed", "real1")])
    assert all(lists == ("train",) for _, _, lists in train)
    assert sorted((t, r) for t, r, _ in test) == sorted([
        ("traditional", "market"), ("traditional", "msmt"), ("traditional", "cuhk"),
        ("clothes-changing", "ltcc"), ("clothes-changing", "prcc"), ("clothes-changing", "vc_clothes"),
        ("clothes-template", "real2"), ("visible-infrared", "llcm"), ("text-to-image", "CUHK-Pedes"),
        ("language-instructed", "real2")])
    assert all(lists == ("query", "gallery") for _, _, lists in test)
    free = load_pipeline(PIPELINES / "irm++.yaml").data
    assert sorted(_sets(free["data"]["test"])) == sorted(test)  # one task-free gallery of the same 10 sets
    assert free["evaluator"]["setting"] == "both"
    for c in (cfg, free):
        losses = {loss["name"]: loss for loss in c["losses"]}
        assert losses["instruct_id"]["label_smoothing"] == 0.0 and "t2i_contrastive" in losses

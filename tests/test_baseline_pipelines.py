"""The BoT / AGW / SBS / TransReID pipelines: every shipped file resolves; the full-size
models (ResNet-50, IBN-a ResNet-50 with non-local blocks, ViT-B/16 with stride 12, SIE
and JPM) build from the Market-1501 files and take one optimisation step on the CPU (small
images, a tiny synthetic training set, no pretrained weights); each `_synthetic` twin
learns far above its untrained self."""

from pathlib import Path

import pytest
import torch

from core.config.loading import load_pipeline
from core.runner import run

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
METHODS = ("bot", "agw", "sbs", "transreid")
DATASETS = {"market1501": "market1501", "msmt17": "msmt17", "veri776": "veri776"}

#: A tiny synthetic training set in place of the real data set, small images, one step.
ONE_STEP = ["data.train=[{dataset: synthetic, seed: 0, categories: [person], identities: 8, test_identities: 4, "
            "render_size: [128, 64]}]", "data.transform.size=[128, 64]", "sampler.batch_size=8", "sampler.k=4",
            "backbone.pretrained=false", "trainer.eval_before=false", "trainer.stop_after_steps=1",
            "trainer.progress=false", "trainer.num_workers=0", "trainer.amp=none"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dataset", DATASETS)
def test_shipped_pipeline_resolves_to_its_data_set(method, dataset):
    cfg = load_pipeline(PIPELINES / f"{method}_{dataset}.yaml")
    assert cfg.data["data"]["train"][0]["dataset"] == DATASETS[dataset]
    assert cfg.data["name"] == f"{method}-{dataset}"


@pytest.mark.parametrize("method", METHODS)
def test_full_size_model_builds_and_takes_one_step(method, tmp_path):
    torch.manual_seed(0)
    result = run(PIPELINES / f"{method}_market1501.yaml", ONE_STEP, run_dir=tmp_path / "run")
    ckpt = torch.load(result.run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    model = ckpt["model"]
    if method == "transreid":
        assert model["backbone.model.pos_embed"].shape == (1, 1 + 10 * 5, 768)  # stride 12 at 128x64
        assert "backbone.sie_embed" in model and "backbone.jpm_block.attn.qkv.weight" in model
    else:
        assert model["backbone.model.layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)  # ResNet-50
        assert model["backbone.model.layer4.0.conv2.weight"].shape[0] == 512
    if method in ("agw", "sbs"):
        assert "backbone.non_local.layer3.2.theta.weight" in model
    if method == "sbs":
        assert "backbone.model.layer1.0.bn1.IN.weight" in model


def test_bot_trains_the_centres_in_their_own_group_without_weight_decay():
    from core.pipeline import build_pipeline
    from core.training.optim import param_groups, select_parameters
    from core.training.trainer import TrainingModule

    p = build_pipeline(load_pipeline(PIPELINES / "bot_synthetic.yaml", [
        "data.train.0.categories=[person]", "data.train.0.identities=8", "data.train.0.test_identities=4",
        "sampler.batch_size=16"]))
    net = TrainingModule(p.model, p.loss_modules())
    groups = param_groups(select_parameters(net, p.stages[0]), p.stages[0])
    centres = net.losses[2].centers
    (own,) = [g for g in groups if any(t is centres for t in g["params"])]
    assert own["params"] == [centres] and own["weight_decay"] == 0.0 and own["name"] == "group0"
    assert all(g["weight_decay"] == 5.0e-4 for g in groups if g is not own and g["name"] == "default")


#: The twins in a smaller world, for fewer epochs: about a minute each on 2 CPU cores.
SMALL = ["data.train.0.categories=[person, vehicle]", "data.train.0.identities=24",
         "data.train.0.test_identities=10", "sampler.batch_size=32", "trainer.eval_every=0",
         "trainer.progress=false"]
EPOCHS = {
    "bot": ["stages.0.epochs=8", "stages.0.schedule.milestones=[6]"],
    "agw": ["stages.0.epochs=8", "stages.0.schedule.milestones=[6]"],
    "sbs": ["stages.1.epochs=3", "stages.2.epochs=4"],
    "transreid": ["stages.0.epochs=8"],
}


@pytest.mark.parametrize("method", METHODS)
def test_synthetic_twin_learns_far_above_untrained(method, tmp_path):
    result = run(PIPELINES / f"{method}_synthetic.yaml", SMALL + EPOCHS[method], run_dir=tmp_path / "run")
    before, after = result.baseline["synthetic/mAP"], result.metrics["synthetic/mAP"]
    assert after > 2 * before and after > before + 10, (before, after)

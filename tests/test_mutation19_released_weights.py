"""Released weights (core.released_weights, core.restore.restore_released): what the first tests
let through when the code was mutated on purpose (review 19). Each test here failed on one
deliberate mutation that every other test passed: weights converted but never loaded, the
pipeline check never run, a reader recognising another code base's names, SIE's views ignored,
a ViT of another function accepted, a tensor of another shape but the same size placed, a model
tensor left unfilled. Expected values come from the other code bases' code (their names, their
SIE table), not from the readers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.test_released_weights_cli import PIPELINE, fastreid_bot_file, market_test_split

from core.released_weights import WeightsMismatch, pick_reader, strong_baseline, transreid
from core.restore import restore_released

FIXTURES19 = Path(__file__).resolve().parent / "fixtures" / "released_weights"
SMALL19 = ["data.transform.size=[64, 32]", "backbone.pretrained=false", "trainer.device=cpu",
           "trainer.num_workers=0"]


def fixture_state19(name: str) -> dict[str, torch.Tensor]:
    """A state dict with the fixture's names and shapes (generated from the authors' model), values random."""
    g = torch.Generator().manual_seed(19)
    tensors = json.loads((FIXTURES19 / f"{name}.json").read_text())["tensors"]
    return {k: torch.rand(s, generator=g) + 0.5 for k, s in tensors.items()}


def test_the_restored_model_carries_the_files_tensors(tmp_path):
    """Mutation: restore_released converted the file but never loaded it (the CLI tests still
    exited 0 with metrics of the randomly initialised model)."""
    weights = fastreid_bot_file(tmp_path / "bot.pth")
    root = market_test_split(tmp_path / "Market-1501")
    theirs = torch.load(weights, weights_only=True)["model"]
    _, _, trainer = restore_released(PIPELINE, weights, "auto",
                                     [f"data.train.0.root={root}", "backbone.stem_maxpool=ceil",
                                      "backbone.stem_relu=true", *SMALL19])
    ours = trainer.model.state_dict() if hasattr(trainer.model, "state_dict") else {}
    ours = {k.split("model.", 1)[1] if k.startswith("model.") else k: v for k, v in ours.items()}
    for their, our in (("backbone.conv1.weight", "backbone.model.conv1.weight"),
                       ("backbone.layer4.2.bn3.running_var", "backbone.model.layer4.2.bn3.running_var"),
                       ("heads.bottleneck.0.weight", "head.bn.weight")):
        torch.testing.assert_close(ours[our], theirs[their], rtol=0, atol=0, msg=our)


def test_the_file_is_checked_against_the_pipelines_normalisation_when_restored(tmp_path):
    """Mutation: restore_released skipped the reader's check_pipeline, so a model-zoo (v0) file
    whose pixel_mean is not the pipeline's norm was evaluated on other inputs."""
    state = torch.load(fastreid_bot_file(tmp_path / "v1.pth"), weights_only=True)["model"]
    v0 = {k.replace("heads.bottleneck.0.", "heads.bnneck.").replace("heads.weight", "heads.classifier.weight"): v
          for k, v in state.items()}
    v0["pixel_mean"] = torch.full((1, 3, 1, 1), 127.5)  # mean 0.5 x 255: another normalisation than imagenet
    v0["pixel_std"] = torch.full((1, 3, 1, 1), 127.5)
    torch.save({"model": v0}, tmp_path / "v0.pth")
    root = market_test_split(tmp_path / "Market-1501")
    with pytest.raises(WeightsMismatch, match=r"pixel_mean .*data\.transform\.norm 'imagenet'"):
        restore_released(PIPELINE, tmp_path / "v0.pth", "auto", [f"data.train.0.root={root}", *SMALL19])


def test_an_mmpretrain_resnet_is_recognised_by_no_reader():
    """Mutation: fastreid.recognise asked only for backbone.conv1.weight. mmpretrain's ImageNet
    ResNet (ImageClassifier: backbone.conv1 / bn1 / layer*, head.fc) has it too, and is no
    fast-reid Baseline (no heads.* BN neck)."""
    state = {"backbone.conv1.weight": torch.zeros(64, 3, 7, 7), "backbone.bn1.weight": torch.zeros(64),
             "backbone.layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1), "head.fc.weight": torch.zeros(1000, 2048),
             "head.fc.bias": torch.zeros(1000)}
    with pytest.raises(WeightsMismatch, match="no reader recognises"):
        pick_reader(state, "auto", "resnet50_8xb32_in1k.pth")


@pytest.mark.parametrize("sie, views, rows, cameras", [
    (["camera", "view"], 8, 20 * 8, 20),  # VeRi-776: camera * view rows (vit_pytorch.py, camera > 1 and view > 1)
    (["camera"], 8, 6, 6),  # Market: camera rows; num_views does not divide them
])
def test_the_sie_tables_cameras_come_from_their_camera_major_layout(sie, views, rows, cameras):
    """Mutation: num_cameras took the table's rows as cameras whatever the views. TransReID's
    TransReID.__init__: sie_embed has camera * view rows with both, camera rows with camera only."""
    state = {"base.sie_embed": torch.zeros(rows, 1, 768)}
    assert transreid.num_cameras(state, {"backbone": {"sie": sie, "num_views": views}}) == cameras


@pytest.fixture(scope="module")
def transreid_model19():
    from core.config.loading import load_pipeline
    from core.pipeline import build_pipeline

    data = ["data.train=[{dataset: synthetic, seed: 0, categories: [person], identities: 8, test_identities: 4, "
            "render_size: [32, 16]}]", "backbone.pretrained=false", "backbone.num_cameras=6", "sampler.batch_size=8",
            "trainer.num_workers=0"]
    return build_pipeline(load_pipeline(Path(PIPELINE).with_name("transreid_market1501.yaml"), data), meta=True).model


def test_a_vit_with_tanh_gelu_or_another_attention_scale_is_refused(transreid_model19):
    """Mutations: the GELU check accepted approximate='tanh'; the attention-scale check was
    skipped. Their ViT (vit_pytorch.py): nn.GELU() and scale head_dim ** -0.5."""
    state = fixture_state19("transreid_market_jpm")
    vit = transreid_model19.backbone.model
    act, attn = vit.blocks[0].mlp.act, vit.blocks[0].attn
    act.approximate = "tanh"
    try:
        with pytest.raises(WeightsMismatch, match="GELU"):
            transreid.convert(state, transreid_model19)
    finally:
        act.approximate = "none"
    scale = attn.scale
    attn.scale = 768 ** -0.5  # their old vit_small's qk_scale
    try:
        with pytest.raises(WeightsMismatch, match="attention scale"):
            transreid.convert(state, transreid_model19)
    finally:
        attn.scale = scale
    transreid.convert(state, transreid_model19)  # restored: converts


@pytest.fixture(scope="module")
def bot_model19():
    from tests.test_released_weights_strong_baseline import bot_model

    return bot_model("backbone.stem_relu=false")


def test_a_tensor_of_the_same_size_but_another_shape_is_refused(bot_model19):
    """Mutation: place_all compared sizes, not shapes; a transposed 1x1 conv has the size of the
    pipeline's and would be loaded as another function (or fail later as a bare RuntimeError)."""
    state = fixture_state19("strong_baseline_market_resnet50")
    conv = state["base.layer1.0.conv3.weight"]  # (256, 64, 1, 1)
    state["base.layer1.0.conv3.weight"] = conv.reshape(64, 256, 1, 1)
    with pytest.raises(WeightsMismatch, match=r"base\.layer1\.0\.conv3\.weight is \(64, 256, 1, 1\)"):
        strong_baseline.convert(state, bot_model19)


def test_a_model_tensor_the_file_does_not_fill_is_refused_by_the_reader(bot_model19):
    """Mutation: place_all skipped its 'every tensor of ours is filled' pass; a file without one
    of the ResNet's BN statistics converted, and the model kept its built value there."""
    state = fixture_state19("strong_baseline_market_resnet50")
    strong_baseline.convert(state, bot_model19)  # whole: converts
    del state["base.layer4.2.bn3.running_var"]
    with pytest.raises(WeightsMismatch, match=r"backbone\.model\.layer4\.2\.bn3\.running_var .*gets no tensor"):
        strong_baseline.convert(state, bot_model19)


def test_a_pipeline_with_an_ema_evaluates_the_files_tensors(tmp_path):
    """Mutation: restore_released kept the trainer's EMA copy, taken from the model as built
    before the file was loaded, as the model to evaluate (trainer.ema)."""
    weights = fastreid_bot_file(tmp_path / "bot.pth")
    root = market_test_split(tmp_path / "Market-1501")
    theirs = torch.load(weights, weights_only=True)["model"]["backbone.conv1.weight"]
    overrides = [f"data.train.0.root={root}", "trainer.ema=0.999", "backbone.stem_maxpool=ceil",
                 "backbone.stem_relu=true", *SMALL19]
    _, _, trainer = restore_released(PIPELINE, weights, "auto", overrides)
    evaluated = {k: v for k, v in trainer.model.state_dict().items() if k.endswith("backbone.model.conv1.weight")}
    assert evaluated and all(torch.equal(v, theirs) for v in evaluated.values()), list(evaluated)


def test_sie_and_part_count_misfits_name_the_key_to_set(transreid_model19):
    """Mutations: the SIE-presence and JPM part-count checks skipped; place_all (or an
    AttributeError) then refused with a line that names no pipeline key. Their JPM file has
    bottleneck_1..4 (make_model.py: four parts) and base.sie_embed when trained with SIE."""
    from tests.test_released_weights_transreid import model_of

    state = fixture_state19("transreid_market_jpm")
    with pytest.raises(WeightsMismatch, match=r"sie: \[\]"):
        transreid.convert(state, model_of("backbone.sie=[]"))
    without_sie = {k: v for k, v in state.items() if k != "base.sie_embed"}
    with pytest.raises(WeightsMismatch, match=r"no base\.sie_embed .*sie: \[\]"):
        transreid.convert(without_sie, transreid_model19)
    with pytest.raises(WeightsMismatch, match=r"part BNNecks \[1, 2, 3, 4\] .*num_parts 3"):
        transreid.convert(state, model_of("head.num_parts=3"))

"""core.released_weights.strong_baseline: reid-strong-baseline's state dicts (names and shapes from
tests/fixtures/released_weights/strong_baseline_*.json, generated from the authors' own Baseline) land in
bot_market1501's model: `base.*` on the ResNet (torchvision's names), `bottleneck` on the BNNeck. Their
plain ResNet has no stem ReLU (modeling/backbones/resnet.py), so it is refused into our ResNet, which has
one; their resnet50_ibn_a has it and converts."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from core.config.loading import load_pipeline
from core.pipeline import build_pipeline
from core.released_weights import strong_baseline
from core.released_weights.conversion import WeightsMismatch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "released_weights"
BOT_SMALL_DATA = ["data.train=[{dataset: synthetic, seed: 0, categories: [person], identities: 8, test_identities: 4, "
                  "render_size: [32, 16]}]", "backbone.pretrained=false", "sampler.batch_size=8",
                  "trainer.num_workers=0"]


def bot_shapes(name: str) -> dict[str, list[int]]:
    return json.loads((FIXTURES / f"{name}.json").read_text())["tensors"]


def bot_filled(tensors: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Their state dict with tensor i filled with i + 1."""
    return {k: torch.full(s, float(i + 1)) for i, (k, s) in enumerate(tensors.items())}


def bot_model(*overrides: str):
    return build_pipeline(load_pipeline(ROOT / "pipelines" / "bot_market1501.yaml", [*BOT_SMALL_DATA, *overrides]),
                          meta=True).model


def bot_destination(name: str) -> str | None:
    """Our name for theirs, from their Baseline.forward: base = the ResNet, bottleneck = the BNNeck."""
    if name.startswith(("classifier.", "base.fc.")):
        return None
    if name.startswith("base."):
        return "backbone.model." + name[len("base."):]
    assert name.startswith("bottleneck."), name
    return "head.bn." + name[len("bottleneck."):]


def assert_every_tensor_lands(tensors, model) -> None:
    out = strong_baseline.convert(bot_filled(tensors), model)
    for i, name in enumerate(tensors):
        ours = bot_destination(name)
        if ours is None:
            assert name in out.left_out, name
        else:
            assert torch.equal(out.state[ours], torch.full(tensors[name], float(i + 1))), (name, ours)
    assert set(out.state) | set(out.kept) == set(model.state_dict())
    assert set(out.kept) == {"head.classifier.weight"}
    assert out.notes == []  # bot_market1501: last stride 1, average pooling, post-BN embedding, as theirs


def test_plain_resnet_is_refused_for_our_stem_relu():
    with pytest.raises(WeightsMismatch) as exc:
        strong_baseline.convert(bot_filled(bot_shapes("strong_baseline_market_resnet50")),
                                bot_model("backbone.stem_relu=true"))
    assert "\n" not in str(exc.value) and "ReLU" in str(exc.value) and "backbone.stem_relu=false" in str(exc.value)


def test_plain_resnet_lands_in_a_resnet_without_stem_relu():
    model = bot_model("backbone.stem_relu=false")  # what their ResNet computes (no stem ReLU)
    assert_every_tensor_lands(bot_shapes("strong_baseline_market_resnet50"), model)


@pytest.mark.parametrize("stem_relu", [False, True])
def test_stem_relu_false_is_their_resnet_forward(stem_relu):
    """Their ResNet.forward (modeling/backbones/resnet.py): conv1 -> bn1 -> maxpool -> layer1..4, no
    ReLU between bn1 and maxpool; with the key true, torchvision's ReLU is there."""
    from core.context import BuildContext
    from core.models.resnet import ReIDResNet

    torch.manual_seed(0)
    net = ReIDResNet(BuildContext(), arch="resnet18", last_stride=1, stem_relu=stem_relu).eval()
    with torch.no_grad():  # trained-like BNs (timm zero-inits each block's last BN, which makes the first
        for bn in net.modules():  # block relu its input and hides the stem ReLU), half the stem channels shifted
            if isinstance(bn, nn.BatchNorm2d):  # negative: a ReLU there changes what layer1 sees
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.5, 0.5)
        net.model.bn1.bias[: net.model.bn1.bias.numel() // 2] -= 1.0
        images = torch.randn(2, 3, 64, 32)
        m = net.model
        x = m.maxpool(m.bn1(m.conv1(images)))
        if stem_relu:
            x = m.maxpool(torch.relu(m.bn1(m.conv1(images))))
        for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
            x = layer(x)
        torch.testing.assert_close(net.forward_map(images), x, rtol=0, atol=0)


def test_stem_relu_must_be_a_bool():
    from core.context import BuildContext
    from core.models.resnet import ReIDResNet

    with pytest.raises(ValueError, match="stem_relu must be true or false"):
        ReIDResNet(BuildContext(), arch="resnet18", stem_relu="no")


def test_ibn_a_resnet_lands_in_the_ibn_backbone():
    """Their resnet50_ibn_a keeps the stem ReLU (modeling/backbones/resnet_ibn_a.py): a stemless
    pipeline (bot_market1501's stem_relu: false) is refused, naming the --set."""
    with pytest.raises(WeightsMismatch, match=r"has a ReLU after the stem.*--set backbone.stem_relu=true"):
        strong_baseline.convert(bot_filled(bot_shapes("strong_baseline_market_resnet50_ibn_a")),
                                bot_model("backbone.ibn=true"))
    assert_every_tensor_lands(bot_shapes("strong_baseline_market_resnet50_ibn_a"),
                              bot_model("backbone.ibn=true", "backbone.stem_relu=true"))


def test_misfits_are_one_line():
    model = bot_model("backbone.ibn=true", "backbone.stem_relu=true")
    state = bot_filled(bot_shapes("strong_baseline_market_resnet50_ibn_a"))
    with pytest.raises(WeightsMismatch) as exc:
        strong_baseline.convert({**state, "base.layer3.6.conv1.weight": torch.zeros(256, 1024, 1, 1)}, model)
    assert "\n" not in str(exc.value) and "base.layer3.6.conv1.weight" in str(exc.value)
    state["bottleneck.weight"] = torch.zeros(512)  # a ResNet-18's width
    with pytest.raises(WeightsMismatch) as exc:
        strong_baseline.convert(state, model)
    assert "\n" not in str(exc.value) and "bottleneck.weight is (512,)" in str(exc.value)
    assert "head.bn.weight is (2048,)" in str(exc.value)
    ibn_file = bot_filled(bot_shapes("strong_baseline_market_resnet50_ibn_a"))
    with pytest.raises(WeightsMismatch) as exc:  # an IBN-a file into a plain ResNet: bn1.IN has no place
        strong_baseline.convert(ibn_file, bot_model("backbone.stem_relu=true"))
    assert "\n" not in str(exc.value) and "base.layer1.0.bn1.IN.weight" in str(exc.value)


def test_recognise_tells_the_formats_apart():
    from core.released_weights import transreid

    bot = bot_shapes("strong_baseline_market_resnet50")
    vit = json.loads((FIXTURES / "transreid_market_jpm.json").read_text())["tensors"]
    fastreid = {"backbone.conv1.weight": [64, 3, 7, 7], "heads.bottleneck.0.weight": [2048]}
    assert strong_baseline.recognise(bot) and not transreid.recognise(bot)
    assert strong_baseline.recognise(bot_shapes("strong_baseline_market_resnet50_ibn_a"))
    assert transreid.recognise(vit) and not strong_baseline.recognise(vit)
    assert not transreid.recognise(fastreid) and not strong_baseline.recognise(fastreid)


def test_notes_name_each_difference_from_their_protocol_and_only_those():
    """Their config/defaults.py and test transform: LAST_STRIDE 1, average pooling, NECK_FEAT 'after',
    T.Resize bilinear, ImageNet mean/std, FEAT_NORM 'yes' + Euclidean (= cosine ranking), no flip."""
    tensors = bot_shapes("strong_baseline_market_resnet50")
    out = strong_baseline.convert(bot_filled(tensors), bot_model("backbone.last_stride=2", "head.embedding=pre"))
    assert len(out.notes) == 2
    assert "--set backbone.last_stride=1" in out.notes[0] and "--set head.embedding=bn" in out.notes[1]
    config = load_pipeline(ROOT / "pipelines" / "bot_market1501.yaml", BOT_SMALL_DATA).data
    assert strong_baseline.check_pipeline({}, config) == []  # the pipeline follows their code
    config = load_pipeline(ROOT / "pipelines" / "bot_market1501.yaml",
                           [*BOT_SMALL_DATA, "data.transform.interpolation=bicubic", "trainer.eval_flip=true",
                            "evaluator.metric=euclidean"]).data
    notes = strong_baseline.check_pipeline({}, config)
    assert [n.split(" is ")[0] for n in notes] == ["their test resize", "their ranking metric",
                                                   "their flip averaging at test"], notes
    assert "--set data.transform.test_interpolation=bilinear" in notes[0] and "--set trainer.eval_flip=false" in notes[2]

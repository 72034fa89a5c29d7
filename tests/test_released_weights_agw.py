"""core.released_weights.agw: the AGW authors' state dicts (mangye16/ReID-Survey; names and shapes from
tests/fixtures/released_weights/agw_market_resnet50_nl.json, generated from their own Baseline) land in
agw_market1501's model: `base.*` on the ResNet, `base.NL_s.j` on our stage-s non-local block j, `global_pool.p`
on the GeM exponent, `bottleneck` on the BNNeck. Their ResNet has no stem ReLU (modeling/backbones/resnet_nl.py),
so the file is refused until the pipeline sets backbone.stem_relu=false."""

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from layout_fixtures import images

from core.cli import main
from core.config.loading import load_pipeline
from core.pipeline import build_pipeline
from core.released_weights import agw, fastreid, pick_reader, strong_baseline, transreid
from core.released_weights.conversion import WeightsMismatch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "released_weights"
AGW_PIPELINE = ROOT / "pipelines" / "agw_market1501.yaml"
AGW_SMALL_DATA = ["data.train=[{dataset: synthetic, seed: 0, categories: [person], identities: 8, test_identities: 4, "
                  "render_size: [32, 16]}]", "backbone.pretrained=false", "sampler.batch_size=8",
                  "trainer.num_workers=0"]


def agw_shapes() -> dict[str, list[int]]:
    return json.loads((FIXTURES / "agw_market_resnet50_nl.json").read_text())["tensors"]


def agw_filled(tensors: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Their state dict with tensor i filled with i + 1."""
    return {k: torch.full(s, float(i + 1)) for i, (k, s) in enumerate(tensors.items())}


def agw_model(*overrides: str):
    return build_pipeline(load_pipeline(AGW_PIPELINE, [*AGW_SMALL_DATA, *overrides]), meta=True).model


def agw_destination(name: str) -> str | None:
    """Our name for theirs, from their forward: Baseline.forward (base -> global_pool -> bottleneck) and
    ResNetNL.forward (NL_s[j] after unit NL_s_idx[j] of layer s; ours: non_local.layer{s}[j])."""
    if name.startswith("classifier."):
        return None
    nl = re.match(r"base\.NL_(\d)\.(\d+)\.(.*)", name)
    if nl:
        return f"backbone.non_local.layer{nl.group(1)}.{nl.group(2)}.{nl.group(3)}"
    if name.startswith("base."):
        return "backbone.model." + name[len("base."):]
    if name == "global_pool.p":
        return "backbone.pool.p"
    assert name.startswith("bottleneck."), name
    return "head.bn." + name[len("bottleneck."):]


def agw_file(path: Path) -> Path:
    """Their state dict (the fixture's names and shapes), random weights of a sane scale, saved as torch.save."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in agw_shapes().items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(10)
        elif name == "global_pool.p":
            state[name] = torch.tensor([3.2])
        elif name.endswith("running_var") or name.endswith(".weight") and len(shape) == 1:
            state[name] = 1 + 0.1 * torch.rand(shape, generator=g)
        else:
            state[name] = 0.02 * torch.randn(shape, generator=g)
    torch.save(state, path)
    return path


def agw_market_test_split(root: Path) -> Path:
    """4 identities in 2 cameras; the training folder empty (no training image is read)."""
    (root / "bounding_box_train").mkdir(parents=True)
    images(root / "query", *(f"{pid:04d}_c1s1_000{pid}01_00.jpg" for pid in (1, 2, 3, 4)))
    images(root / "bounding_box_test", *(f"{pid:04d}_c2s1_000{pid}0{k}_00.jpg" for pid in (1, 2, 3, 4) for k in (1, 2)))
    return root


def test_every_tensor_lands_where_their_forward_uses_it():
    tensors, model = agw_shapes(), agw_model("backbone.stem_relu=false")
    out = agw.convert(agw_filled(tensors), model)
    for i, name in enumerate(tensors):
        ours = agw_destination(name)
        if ours is None:
            assert name in out.left_out, name
        else:
            assert torch.equal(out.state[ours].reshape(-1), torch.full(tensors[name], float(i + 1)).reshape(-1)), name
    assert out.state["backbone.pool.p"].shape == model.state_dict()["backbone.pool.p"].shape
    assert set(out.state) | set(out.kept) == set(model.state_dict())
    assert set(out.kept) == {"head.classifier.weight"} and set(out.left_out) == {"classifier.weight"}
    assert out.notes == []  # last stride 1, post-BN embedding: as theirs


def test_their_stemless_resnet_is_refused_for_our_stem_relu():
    with pytest.raises(WeightsMismatch) as exc:
        agw.convert(agw_filled(agw_shapes()), agw_model("backbone.stem_relu=true"))
    assert "\n" not in str(exc.value) and "ReLU" in str(exc.value)
    assert "--set backbone.stem_relu=false" in str(exc.value)


@pytest.mark.parametrize("override, says", [
    ("backbone.non_local=[0,2,2,0]", "non-local blocks [0, 2, 3, 0] (per stage) but the pipeline's backbone has "
                                     "[0, 2, 2, 0]; add --set backbone.non_local=[0,2,3,0]"),
    ("backbone.non_local_width=null", "base.NL_2.0.g.weight (1, 512, 1, 1)) but the pipeline's in 256; add "
                                      "--set backbone.non_local_width=1"),
    ("backbone.pooling=avg", "global_pool.p (GeM pooling) but the pipeline pools with avg; add --set "
                             "backbone.pooling=gem"),
    ("backbone.pooling={name: gem, eps: 1.0e-3}", "--set backbone.pooling.eps=1e-06"),
    ("backbone.stem_maxpool=ceil", "--set backbone.stem_maxpool=padded"),
])
def test_a_model_that_computes_another_function_is_refused_in_one_line(override, says):
    with pytest.raises(WeightsMismatch) as exc:
        agw.convert(agw_filled(agw_shapes()), agw_model("backbone.stem_relu=false", override))
    assert "\n" not in str(exc.value) and says in str(exc.value)


def test_a_file_without_gem_needs_average_pooling():
    state = {k: v for k, v in agw_filled(agw_shapes()).items() if k != "global_pool.p"}
    with pytest.raises(WeightsMismatch, match="no global_pool.p, so they average-pool .* --set backbone.pooling=avg"):
        agw.convert(state, agw_model("backbone.stem_relu=false"))
    out = agw.convert(state, agw_model("backbone.stem_relu=false", "backbone.pooling=avg"))
    assert "backbone.pool.p" not in out.state


def test_misfits_name_both_sides_in_one_line():
    model = agw_model("backbone.stem_relu=false")
    state = agw_filled(agw_shapes())
    with pytest.raises(WeightsMismatch) as exc:
        agw.convert({**state, "base.layer3.6.conv1.weight": torch.zeros(256, 1024, 1, 1)}, model)
    assert "\n" not in str(exc.value)
    assert "base.layer3.6.conv1.weight (256, 1024, 1, 1) goes to backbone.model.layer3.6.conv1.weight, which the " \
           "pipeline's model does not have" in str(exc.value)
    with pytest.raises(WeightsMismatch) as exc:
        agw.convert({**state, "bottleneck.weight": torch.zeros(512)}, model)
    assert "\n" not in str(exc.value) and "bottleneck.weight is (512,)" in str(exc.value)
    assert "head.bn.weight is (2048,)" in str(exc.value)
    with pytest.raises(WeightsMismatch) as exc:
        agw.convert({**state, "global_pool.p": torch.ones(2)}, model)
    assert "\n" not in str(exc.value) and "global_pool.p is (2,)" in str(exc.value)


def test_non_local_blocks_run_after_their_units_in_their_order():
    """ResNetNL.forward, written out: NL_s_idx = sorted(units - (i + 1) for i < k); a counter walks it, block
    NL_s[counter] after unit NL_s_idx[counter]. Each block made distinct, so a swap or shift changes the map."""
    from core.context import BuildContext
    from core.models.resnet import ReIDResNet

    torch.manual_seed(0)
    net = ReIDResNet(BuildContext(), arch="resnet18", last_stride=1, non_local=[0, 2, 2, 0], non_local_width=1,
                     stem_relu=False).eval()
    with torch.no_grad():
        for block in net.modules():
            if isinstance(block, nn.BatchNorm2d):
                block.weight.uniform_(0.5, 1.5)
                block.bias.uniform_(-0.5, 0.5)
    images = torch.randn(2, 3, 64, 32)
    m = net.model
    x = m.maxpool(m.bn1(m.conv1(images)))
    for stage, layer in enumerate((m.layer1, m.layer2, m.layer3, m.layer4), 1):
        blocks = net.non_local[f"layer{stage}"] if f"layer{stage}" in net.non_local else []
        idx = sorted(len(layer) - (i + 1) for i in range(len(blocks))) or [-1]
        counter = 0
        for i in range(len(layer)):
            x = layer[i](x)
            if i == idx[counter]:
                x = blocks[counter](x)
                counter += 1
    with torch.no_grad():
        torch.testing.assert_close(net.forward_map(images), x, rtol=0, atol=0)


def test_gem_with_their_p_is_their_pooling():
    """GeneralizedMeanPoolingP.forward: adaptive_avg_pool2d(x.clamp(min=1e-6).pow(p), 1).pow(1 / p), p of shape (1,)."""
    from core.models.pooling import GeneralizedMeanPooling

    state = agw_filled(agw_shapes())
    state["global_pool.p"] = torch.tensor([3.7])
    pool = GeneralizedMeanPooling(p=3.0)  # the pipeline's pooling, then the file's p loaded into it
    pool.load_state_dict({"p": agw.convert(state, agw_model("backbone.stem_relu=false")).state["backbone.pool.p"]})
    x = torch.randn(2, 8, 16, 8) * 1e-5  # near eps, half below 0: where the clamp decides
    theirs = nn.functional.adaptive_avg_pool2d(x.clamp(min=1e-6).pow(state["global_pool.p"]), 1).pow(
        1.0 / state["global_pool.p"]).flatten(1)
    torch.testing.assert_close(pool(x), theirs, rtol=1e-4, atol=0)


def test_recognise_tells_the_four_formats_apart():
    files = {
        "agw": agw_shapes(),
        "strong_baseline": json.loads((FIXTURES / "strong_baseline_market_resnet50.json").read_text())["tensors"],
        "transreid": json.loads((FIXTURES / "transreid_market_jpm.json").read_text())["tensors"],
        "fastreid": json.loads((FIXTURES / "fastreid_keys.json").read_text())["agw"],
    }
    for name, state in files.items():
        assert pick_reader(state, "auto", f"{name}.pth").NAME == name
    assert agw.recognise({("module." + k): v for k, v in files["agw"].items()})
    gem_only = {k: v for k, v in files["agw"].items() if "NL_" not in k}  # their resnet50 with GeM on
    assert agw.recognise(gem_only) and not strong_baseline.recognise(gem_only)
    assert not any(reader.recognise(files["agw"]) for reader in (fastreid, transreid))


def test_strong_baseline_does_not_claim_agw_files():
    assert not strong_baseline.recognise(agw_shapes())


def test_their_test_protocol_against_agw_market1501():
    cfg = load_pipeline(AGW_PIPELINE, [])
    assert agw.check_pipeline({}, cfg.data) == []
    cfg = load_pipeline(AGW_PIPELINE, ["data.transform.interpolation=bicubic", "trainer.eval_flip=true",
                                       "evaluator.metric=euclidean"])
    notes = agw.check_pipeline({}, cfg.data)
    assert len(notes) == 3 and "--set data.transform.test_interpolation=bilinear" in notes[0]
    assert "--set evaluator.metric=cosine" in notes[1] and "flip" in notes[2]


def test_core_eval_reads_agw_weights(tmp_path, caplog, capsys):
    weights = agw_file(tmp_path / "market_AGW.pth")
    root = agw_market_test_split(tmp_path / "Market-1501")
    common = ["--set", f"data.train.0.root={root}", "--set", "data.transform.size=[64, 32]",
              "--set", "backbone.pretrained=false", "--set", "trainer.device=cpu", "--set", "trainer.num_workers=0"]
    assert main(["eval", str(AGW_PIPELINE), "--weights", str(weights), *common,  # no stem ReLU in theirs
                 "--set", "backbone.stem_relu=true"]) == 2
    assert "--set backbone.stem_relu=false" in capsys.readouterr().err
    with caplog.at_level(logging.INFO, logger="core"):  # the pipeline follows their code: no --set needed
        code = main(["eval", str(AGW_PIPELINE), "--weights", str(weights), "--json", *common])
    assert code == 0, caplog.text
    assert any(k.endswith("mAP") for k in json.loads(capsys.readouterr().out))
    assert "ReID-Survey's AGW" in caplog.text and "note: their test image size is 256x128" in caplog.text

"""fast-reid's released weights read into our BoT / AGW / SBS models (core.released_weights.fastreid).

Their names and shapes come from fast-reid's own models (fixtures/released_weights/fastreid_keys.json,
generated from their code: see its `_generated_by`); the v0 layout of the model zoo's files
(heads.bnneck, heads.classifier, saved pixel_mean / pixel_std: fast-reid issues #486, #617) is
that list renamed as fast-reid renamed it on 2020-09-10. The function check against their
code itself (embeddings equal to 2.4e-6, at their HEAD and at v0.1.1) is in the commit
message: their code is not a test dependency; here the non-local block and the IBN unit
are checked against plain re-statements of fast-reid's forward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.context import BuildContext
from core.models.bnneck import BNNeckHead
from core.models.resnet import ReIDResNet
from core.pipeline import ReIDModel
from core.released_weights import WeightsMismatch, pick_reader, read_weights
from core.released_weights import fastreid

KEYS = json.loads((Path(__file__).parent / "fixtures" / "released_weights" / "fastreid_keys.json").read_text())
PIXEL_MEAN = [123.675, 116.28, 103.53]
PIXEL_STD = [58.395, 57.12, 57.375]
#: our backbone keys per fast-reid config (as pipelines/{bot,agw,sbs}_market1501.yaml say)
ARCH = {
    "bot": dict(pooling="avg"),
    "agw": dict(non_local=[0, 2, 3, 0], non_local_width=1, pooling={"name": "gem", "p": 3.0}),
    "sbs": dict(ibn=True, non_local=[0, 2, 3, 0], non_local_width=1, pooling={"name": "gem", "p": 3.0}),
}


def our_model(kind: str, stem_maxpool: str = "ceil", classifier: bool = False, **keys) -> ReIDModel:
    ctx = BuildContext(num_identities=751)
    backbone = ReIDResNet(ctx, arch="resnet50", last_stride=1, stem_maxpool=stem_maxpool, **{**ARCH[kind], **keys})
    ctx.feature_dim = backbone.feature_dim
    return ReIDModel(backbone, BNNeckHead(ctx, classifier=classifier)).eval()


def v0(names: dict[str, list[int]]) -> dict[str, list[int]]:
    """fast-reid's layout before its 2020-09-10 head refactor: the model zoo's files."""
    out = {}
    for name, shape in names.items():
        name = name.replace("heads.bottleneck.0.", "heads.bnneck.")
        out["heads.classifier.weight" if name == "heads.weight" else name] = shape
    return {**out, "pixel_mean": [1, 3, 1, 1], "pixel_std": [1, 3, 1, 1]}


def numbered(names: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Their tensors, the i-th filled with i + 1 (so each lands visibly), pixel stats real."""
    state = {}
    for i, (name, shape) in enumerate(names.items()):
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(i + 1)
        else:
            state[name] = torch.full(shape, float(i + 1))
    if "pixel_mean" in state:
        state["pixel_mean"] = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
        state["pixel_std"] = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    return state


#: where each of their tensors must land: written from fast-reid's module tree (resnet.py,
#: layers/non_local.py, heads/embedding_head.py), not from the converter
def expected_place(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] == "backbone" and parts[1].startswith("NL_"):
        return ".".join(["backbone", "non_local", "layer" + parts[1][3:], *parts[2:]])
    if parts[0] == "backbone":
        return ".".join(["backbone", "model", *parts[1:]])
    if name.startswith("heads.bottleneck.0.") or name.startswith("heads.bnneck."):
        return "head.bn." + parts[-1]
    if name == "heads.pool_layer.p":
        return "backbone.pool.p"
    return None  # the classifier, the pixel statistics


@pytest.mark.parametrize("layout", ["v1", "v0"])
@pytest.mark.parametrize("kind", ["bot", "agw", "sbs"])
def test_every_fastreid_tensor_lands_in_its_place_and_every_one_of_ours_is_filled(kind, layout):
    names = KEYS[kind] if layout == "v1" else v0(KEYS[kind])
    state = numbered(names)
    model = our_model(kind, stem_maxpool="ceil" if layout == "v1" else "padded")
    converted = fastreid.convert(state, model)
    for name, tensor in state.items():
        place = expected_place(name)
        if place is None:
            assert name in converted.left_out, name
            continue
        assert torch.equal(converted.state[place].reshape(-1), tensor.reshape(-1).to(converted.state[place].dtype)), \
            (name, place)
    ours = set(model.state_dict())
    assert set(converted.state) | set(converted.kept) == ours
    assert not set(converted.state) & set(converted.kept)
    if kind == "agw":  # fast-reid's AGW GeM has a fixed p = 3, not in the file
        assert "backbone.pool.p" in converted.kept
    assert set(converted.left_out) == {n for n in names if expected_place(n) is None}


def test_the_model_zoo_layout_and_todays_are_both_recognised_and_others_are_not():
    assert fastreid.recognise(KEYS["bot"]) and fastreid.recognise(v0(KEYS["sbs"]))
    strong_baseline = {"base.conv1.weight": 0, "bottleneck.weight": 0, "classifier.weight": 0}
    assert not fastreid.recognise(strong_baseline)
    with pytest.raises(WeightsMismatch, match=r"no reader recognises .*fastreid \(fast-reid"):
        pick_reader(strong_baseline, "auto", "x.pth")
    assert pick_reader(numbered(KEYS["bot"]), "auto", "x.pth") is fastreid


def test_a_non_local_block_loaded_from_fastreid_computes_their_forward():
    """fast-reid's Non_local.forward restated with their tensors by their names: theta
    against phi, g's values, W = BN(conv), residual; a swap of theta and phi changes it."""
    g = torch.Generator().manual_seed(0)
    state = {n: (torch.randn(s, generator=g) if s else torch.tensor(1)) for n, s in v0(KEYS["agw"]).items()}
    state["backbone.NL_3.1.W.1.running_var"] = torch.rand(1024, generator=g) + 0.5
    state.update(pixel_mean=torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1),
                 pixel_std=torch.tensor(PIXEL_STD).view(1, 3, 1, 1))
    model = our_model("agw", stem_maxpool="padded")
    model.load_state_dict(fastreid.convert(state, model).state, strict=False)
    x = torch.randn(2, 1024, 4, 3, generator=g)

    def conv(prefix, inp):
        return torch.nn.functional.conv2d(inp, state[prefix + ".weight"], state[prefix + ".bias"])

    p = "backbone.NL_3.1."
    b = x.shape[0]
    g_x = conv(p + "g", x).view(b, 1, -1).permute(0, 2, 1)
    theta_x = conv(p + "theta", x).view(b, 1, -1).permute(0, 2, 1)
    phi_x = conv(p + "phi", x).view(b, 1, -1)
    f = torch.matmul(theta_x, phi_x) / phi_x.shape[-1]
    y = torch.matmul(f, g_x).permute(0, 2, 1).reshape(b, 1, *x.shape[2:])
    w_y = torch.nn.functional.batch_norm(conv(p + "W.0", y), state[p + "W.1.running_mean"],
                                         state[p + "W.1.running_var"], state[p + "W.1.weight"], state[p + "W.1.bias"])
    with torch.no_grad():
        ours = model.backbone.non_local["layer3"][1](x)
    torch.testing.assert_close(ours, w_y + x, rtol=1e-5, atol=1e-4)


def test_an_ibn_unit_loaded_from_fastreid_normalises_their_halves():
    """fast-reid's IBN: InstanceNorm (affine) on the first int(C/2) channels with bn1.IN.*,
    BatchNorm on the rest with bn1.BN.*."""
    g = torch.Generator().manual_seed(1)
    state = {n: (torch.randn(s, generator=g) if s else torch.tensor(1)) for n, s in KEYS["sbs"].items()}
    state["backbone.layer2.1.bn1.BN.running_var"] = torch.rand(64, generator=g) + 0.5
    model = our_model("sbs")
    model.load_state_dict(fastreid.convert(state, model).state, strict=False)
    x = torch.randn(2, 128, 5, 4, generator=g)
    p = "backbone.layer2.1.bn1."
    first = torch.nn.functional.instance_norm(x[:, :64], weight=state[p + "IN.weight"], bias=state[p + "IN.bias"])
    rest = torch.nn.functional.batch_norm(x[:, 64:], state[p + "BN.running_mean"], state[p + "BN.running_var"],
                                          state[p + "BN.weight"], state[p + "BN.bias"])
    with torch.no_grad():
        ours = model.backbone.model.layer2[1].bn1(x)
    torch.testing.assert_close(ours, torch.cat([first, rest], 1), rtol=1e-5, atol=1e-5)


def test_a_fastreid_tensor_without_a_place_is_one_line_naming_it():
    state = numbered(KEYS["bot"])
    state["backbone.layer1.0.se.fc.0.weight"] = torch.zeros(16, 256)
    with pytest.raises(WeightsMismatch) as err:
        fastreid.convert(state, our_model("bot"))
    assert "backbone.layer1.0.se.fc.0.weight" in str(err.value) and "SE units" in str(err.value)
    assert "\n" not in str(err.value)


def test_one_of_our_tensors_left_unfilled_is_one_line_naming_it():
    state = numbered(KEYS["agw"])
    with pytest.raises(WeightsMismatch, match=r"our backbone\.non_local\.layer2\.0\.g\.weight .* no tensor"):
        fastreid.convert(numbered(KEYS["bot"]), our_model("agw"))
    del state["backbone.layer3.5.bn2.running_var"]
    with pytest.raises(WeightsMismatch, match=r"our backbone\.model\.layer3\.5\.bn2\.running_var"):
        fastreid.convert(state, our_model("agw"))


def test_a_shape_mismatch_names_the_tensor_on_both_sides_and_the_key_to_set():
    with pytest.raises(WeightsMismatch) as err:
        fastreid.convert(numbered(KEYS["agw"]), our_model("agw", non_local_width=None))
    line = str(err.value)
    assert "fast-reid's backbone.NL_2.0.g.weight is (1, 512, 1, 1)" in line
    assert "our backbone.non_local.layer2.0.g.weight is (256, 512, 1, 1)" in line
    assert "backbone.non_local_width" in line and "\n" not in line


def test_gem_p_other_than_fastreids_fixed_three_is_refused_for_a_file_without_p():
    with pytest.raises(WeightsMismatch, match=r"pool\.p is 4 .*p = 3"):
        fastreid.convert(numbered(KEYS["agw"]), our_model("agw", pooling={"name": "gem", "p": 4.0}))


def test_todays_layout_needs_the_ceil_mode_stem_and_says_the_set():
    with pytest.raises(WeightsMismatch, match=r"--set backbone\.stem_maxpool=ceil"):
        fastreid.convert(numbered(KEYS["bot"]), our_model("bot", stem_maxpool="padded"))
    notes = fastreid.convert(numbered(v0(KEYS["bot"])), our_model("bot", stem_maxpool="ceil")).notes
    assert any("stem_maxpool=padded" in n for n in notes)


def test_pixel_statistics_other_than_the_pipelines_norm_are_refused():
    state = numbered(v0(KEYS["bot"]))
    assert fastreid.check_pipeline(state, {"data": {"transform": {"norm": "imagenet"}}}) == []
    with pytest.raises(WeightsMismatch, match=r"pixel_mean is \[123\.675.*'half' is \[127\.500"):
        fastreid.check_pipeline(state, {"data": {"transform": {"norm": "half"}}})
    state["pixel_std"] = torch.tensor([1.0, 1.0, 1.0]).view(1, 3, 1, 1)
    with pytest.raises(WeightsMismatch, match=r"pixel_std"):
        fastreid.check_pipeline(state, {"data": {"transform": {"norm": "imagenet"}}})


def test_protocol_differences_are_notes_with_the_set_that_matches_fastreid():
    data = {"data": {"transform": {"interpolation": "bilinear"}}, "evaluator": {"metric": "euclidean"},
            "trainer": {"eval_flip": True}}
    notes = " ".join(fastreid.check_pipeline(numbered(KEYS["bot"]), data))
    assert "--set data.transform.test_interpolation=bicubic" in notes
    assert "--set evaluator.metric=cosine" in notes and "flip" in notes
    head_notes = " ".join(fastreid.convert(numbered(KEYS["bot"]), our_model("bot")).notes)
    assert "head.embedding" not in head_notes
    model = our_model("bot")
    model.head.embedding = "pre"
    assert any("--set head.embedding=bn" in n for n in fastreid.convert(numbered(KEYS["bot"]), model).notes)


class NotATensor:
    """A pickled object: a file holding one needs pickle to load."""


def test_a_file_that_needs_pickle_is_refused_in_one_line(tmp_path):
    path = tmp_path / "market_bot_R50.pth"
    torch.save({"model": {"backbone.conv1.weight": torch.zeros(1)}, "cfg": NotATensor()}, path)
    with pytest.raises(WeightsMismatch) as err:
        read_weights(path)
    line = str(err.value)
    assert str(path) in line and "pickle" in line and "\n" not in line


def test_wrappers_and_module_prefixes_are_removed(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"model": {"module.backbone.conv1.weight": torch.ones(2)}, "iteration": 3}, path)
    assert list(read_weights(path)) == ["backbone.conv1.weight"]

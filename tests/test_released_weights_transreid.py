"""core.released_weights.transreid: TransReID's released state dicts (their names and shapes, from
tests/fixtures/released_weights/transreid_*.json, generated from the authors' own model) land where
their code runs them in our transreid_market1501 model. Where each tensor must go is spelled out here
from their model/make_model.py (b1 = the global branch's last layer and norm, b2 = the part branch's,
bottleneck_<i> = part i's BNNeck), not read from the reader. (Their function equals ours to ~1e-6 with
random weights: the commit's scratch check, which needs their code.)"""

import json
import re
from pathlib import Path

import pytest
import torch

from core.config.loading import load_pipeline
from core.pipeline import build_pipeline
from core.released_weights import transreid
from core.released_weights.conversion import WeightsMismatch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "released_weights"
SMALL_DATA = ["data.train=[{dataset: synthetic, seed: 0, categories: [person], identities: 8, test_identities: 4, "
              "render_size: [32, 16]}]", "backbone.pretrained=false", "backbone.num_cameras=6", "sampler.batch_size=8",
              "trainer.num_workers=0"]


def shapes(name: str) -> dict[str, list[int]]:
    return json.loads((FIXTURES / f"{name}.json").read_text())["tensors"]


def filled(tensors: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Their state dict with tensor i filled with the value i + 1 (which tensor landed where)."""
    return {k: torch.full(s, float(i + 1)) for i, (k, s) in enumerate(tensors.items())}


def model_of(*overrides: str):
    return build_pipeline(load_pipeline(ROOT / "pipelines" / "transreid_market1501.yaml",
                                        [*SMALL_DATA, *overrides]), meta=True).model


@pytest.fixture(scope="module")
def jpm_model():
    return model_of()


def where_theirs_go(name: str, jpm: bool) -> str | None:
    """Our name for their tensor, from their model's forward (None: not run at test)."""
    if re.match(r"^(base\.fc\.|classifier)", name):
        return None
    if jpm and re.match(r"^base\.(blocks\.11\.|norm\.)", name):
        return None  # their ViT with local_feature stops before blocks[-1] and its norm
    rules = [(r"^base\.sie_embed$", "backbone.sie_embed"), (r"^base\.", "backbone.model."),
             (r"^b1\.0\.", "backbone.model.blocks.11."), (r"^b1\.1\.", "backbone.model.norm."),
             (r"^b2\.0\.", "backbone.jpm_block."), (r"^b2\.1\.", "backbone.jpm_norm."),
             (r"^bottleneck\.", "head.bns.0." if jpm else "head.bn."), (r"^bottleneck_(\d)\.", r"head.bns.\1.")]
    for pattern, ours in rules:
        if re.match(pattern, name):
            return re.sub(pattern, ours, name)
    raise AssertionError(name)


def test_every_jpm_tensor_lands_where_their_forward_runs_it(jpm_model):
    tensors = shapes("transreid_market_jpm")
    state = filled(tensors)
    out = transreid.convert(state, jpm_model)
    own = jpm_model.state_dict()
    for i, name in enumerate(tensors):
        ours = where_theirs_go(name, jpm=True)
        if ours is None:
            assert name in out.left_out, name
        else:
            assert torch.equal(out.state[ours], torch.full(tensors[name], float(i + 1))), (name, ours)
    # every tensor of ours is filled, or a classifier kept
    assert set(out.state) | set(out.kept) == set(own)
    assert all(k.startswith("head.classifiers.") for k in out.kept)
    assert out.notes == []  # the pipeline's pre-BN embedding, SIE 3.0, shift 5 / shuffle 2: as their configs


def test_module_prefix_is_read():
    state = {"module." + k: v for k, v in filled(shapes("transreid_market_jpm")).items()}
    assert transreid.recognise(state)


def test_without_jpm_the_whole_vit_and_one_bnneck():
    model = model_of("backbone.jpm=false", "head={name: bnneck, embedding: pre}")
    tensors = shapes("transreid_market_nojpm")
    out = transreid.convert(filled(tensors), model)
    for i, name in enumerate(tensors):
        ours = where_theirs_go(name, jpm=False)
        if ours is None:
            assert name in out.left_out
        else:
            assert torch.equal(out.state[ours], torch.full(tensors[name], float(i + 1))), (name, ours)
    assert set(out.state) | set(out.kept) == set(model.state_dict())


def one_line_naming(exc: pytest.ExceptionInfo, *names: str) -> None:
    text = str(exc.value)
    assert "\n" not in text and all(n in text for n in names), text


def test_sie_table_of_another_camera_count_is_one_line(jpm_model):
    state = filled(shapes("transreid_market_jpm"))
    state["base.sie_embed"] = torch.zeros(15, 1, 768)  # MSMT17's 15 cameras
    with pytest.raises(WeightsMismatch) as exc:
        transreid.convert(state, jpm_model)
    one_line_naming(exc, "base.sie_embed", "backbone.sie_embed", "15", "6 cameras")


def test_pos_embed_of_another_image_size_is_one_line(jpm_model):
    state = filled(shapes("transreid_market_jpm"))
    state["base.pos_embed"] = torch.zeros(1, 1 + 31 * 10, 768)  # stride 12 at 384x128
    with pytest.raises(WeightsMismatch) as exc:
        transreid.convert(state, jpm_model)
    one_line_naming(exc, "base.pos_embed", "backbone.model.pos_embed", "(1, 311, 768)", "(1, 211, 768)",
                    "21 x 10", "backbone.stride")


def test_unknown_tensor_and_jpm_mismatch_are_refused(jpm_model):
    state = filled(shapes("transreid_market_jpm"))
    with pytest.raises(WeightsMismatch) as exc:
        transreid.convert({**state, "base.dist_token": torch.zeros(1, 1, 768)}, jpm_model)
    one_line_naming(exc, "base.dist_token")
    with pytest.raises(WeightsMismatch) as exc:
        transreid.convert(filled(shapes("transreid_market_nojpm")), jpm_model)
    one_line_naming(exc, "without JPM", "jpm: true")


def test_a_vit_computing_another_function_is_refused(jpm_model):
    state = filled(shapes("transreid_market_jpm"))
    norm, attn = jpm_model.backbone.model.blocks[3].norm1, jpm_model.backbone.model.blocks[0].attn
    norm.eps = 1e-5
    try:
        with pytest.raises(WeightsMismatch) as exc:
            transreid.convert(state, jpm_model)
        one_line_naming(exc, "backbone.model.blocks.3.norm1", "eps 1e-05", "1e-6")
    finally:
        norm.eps = 1e-6
    attn.num_heads = 8  # same tensors, other heads: their vit_base has 12
    try:
        with pytest.raises(WeightsMismatch) as exc:
            transreid.convert(state, jpm_model)
        one_line_naming(exc, "8 attention heads", "12")
    finally:
        attn.num_heads = 12


def test_recognise_tells_transreid_from_fastreid():
    fastreid = {"backbone.patch_embed.proj.weight": [768, 3, 16, 16], "heads.bottleneck.0.weight": [768]}
    assert transreid.recognise(shapes("transreid_market_jpm")) and not transreid.recognise(fastreid)


def test_their_test_protocol_against_transreid_market1501():
    """TransReID's val transform (datasets/make_dataloader.py: T.Resize bilinear, mean/std 0.5),
    utils/metrics.py (features normalised, Euclidean = cosine ranking), no flip: the pipeline
    follows it (no note); a setting changed is one note with its --set."""
    from core.config.loading import load_pipeline
    from core.released_weights import transreid

    config = load_pipeline(Path(__file__).resolve().parents[1] / "pipelines" / "transreid_market1501.yaml").data
    assert transreid.check_pipeline({}, config) == []
    config["data"]["transform"].update(test_interpolation="bicubic")
    notes = transreid.check_pipeline({}, config)
    assert len(notes) == 1 and "--set data.transform.test_interpolation=bilinear" in notes[0], notes
    config["data"]["transform"].update(test_interpolation="bilinear", norm="imagenet")
    notes = transreid.check_pipeline({}, config)
    assert len(notes) == 1 and "--set data.transform.norm=half" in notes[0], notes

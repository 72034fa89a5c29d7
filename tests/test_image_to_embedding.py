"""What happens to an image between the disk and the evaluator, each value from an
independent reference: PIL's own resize and numpy for the test transform, the published
normalisation constants, zero padding at a random offset, Zhong et al.'s random-erasing
bounds, the documented patch vote, and a plain loop over the model for evaluation
extraction, `core extract` and `core export`."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from core.data.transforms import build_transform

#: published statistics, written out here (not read from core.data.transforms.NORMS):
#: torchvision's ImageNet models; OpenAI CLIP's preprocess (clip/clip.py `_transform`); [-1, 1]
PUBLISHED = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def normalised(pixels: np.ndarray, norm: str) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float, (x / 255 - mean) / std, in numpy."""
    mean, std = (np.asarray(v, np.float64) for v in PUBLISHED[norm])
    return torch.from_numpy(((pixels / 255.0 - mean) / std).transpose(2, 0, 1).astype(np.float32))


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


# ----------------------------------------------------------------------- test transform

@pytest.mark.parametrize("norm", list(PUBLISHED))
def test_test_transform_is_a_bicubic_resize_and_the_published_normalisation(norm):
    """Test time: PIL's bicubic resize to (H, W) and (x/255 - mean)/std, nothing else —
    whatever flip, pad, erasing and AutoAugment the training side asks for."""
    image = random_image(53, 29)
    transform = build_transform(False, size=[32, 16], norm=norm, flip=1.0, pad=4, erasing=1.0, autoaugment=1.0)
    expected = normalised(np.asarray(image.resize((16, 32), Image.BICUBIC)), norm)
    torch.testing.assert_close(transform(image), expected, rtol=0, atol=1e-5)


# ------------------------------------------------------------ training: pad + crop, erasing

def test_pad_and_random_crop_is_a_zero_padded_crop_at_a_random_offset():
    """BoT / fast-reid: Pad(10) (constant 0) then RandomCrop to (H, W): every training
    image is the zero-padded image cut at some offset, and the offsets vary."""
    pad, (h, w) = 4, (32, 16)
    pixels = np.asarray(random_image(h, w, seed=1))
    padded = normalised(np.pad(pixels, ((pad, pad), (pad, pad), (0, 0))), "imagenet")
    transform = build_transform(True, size=[h, w], pad=pad, flip=0.0, erasing=0.0)
    offsets = set()
    for seed in range(40):
        torch.manual_seed(seed)
        out = transform(Image.fromarray(pixels))
        found = [(t, l) for t in range(2 * pad + 1) for l in range(2 * pad + 1)
                 if torch.allclose(out, padded[:, t:t + h, l:l + w], atol=1e-5)]
        assert found, f"seed {seed}: not a crop of the zero-padded image"
        offsets.add(found[0])
    assert len(offsets) >= 10, offsets


def erased_boxes(transform, image, seeds):
    """(share of the image, h / w) of the erased rectangle of each seed's output (None: not erased)."""
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        zero = (transform(image) == 0).all(0)  # mean-coloured: 0 after Normalize; the image never is
        if not zero.any():
            out.append(None)
            continue
        rows, cols = zero.any(1).nonzero()[:, 0], zero.any(0).nonzero()[:, 0]
        h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert int(zero.sum()) == h * w, "the erased region is a rectangle"
        out.append((h * w / zero.numel(), h / w))
    return out


def test_random_erasing_draws_area_and_aspect_within_zhong_et_al_bounds():
    """Zhong et al. 2020 (and BoT): area share in [s_l, s_h] = [0.02, 0.4] (the pipelines'
    erasing_scale), aspect ratio h / w in [r_1, 1 / r_1] = [0.3, 3.33], both ends reached;
    applied with probability p."""
    image = Image.new("RGB", (64, 128), (200, 30, 30))
    always = build_transform(True, size=[128, 64], pad=0, flip=0.0, erasing=1.0, erasing_scale=[0.02, 0.4])
    boxes = erased_boxes(always, image, range(300))
    assert all(b is not None for b in boxes)
    shares, ratios = np.array([b[0] for b in boxes]), np.array([b[1] for b in boxes])
    assert shares.min() >= 0.02 * 0.9 and shares.max() <= 0.4 * 1.05  # rounding of h and w
    assert shares.min() < 0.06 and shares.max() > 0.33
    assert ratios.min() >= 0.3 * 0.9 and ratios.max() <= (1 / 0.3) * 1.1
    assert ratios.min() < 0.45 and ratios.max() > 2.2
    half = build_transform(True, size=[128, 64], pad=0, flip=0.0, erasing=0.5, erasing_scale=[0.02, 0.4])
    erased = sum(b is not None for b in erased_boxes(half, image, range(300)))
    assert 0.4 * 300 < erased < 0.6 * 300


# ------------------------------------------------------------------------ part masks

def test_a_patch_covered_exactly_at_the_coverage_is_in_the_part():
    """core.data.spatial's rule: a patch is in the part when *at least* `coverage` (0.5)
    of its area is. A mask moved by half a patch (a crop) covers the next patch by
    exactly one half: that patch is in. Reference: block means in numpy."""
    from torchvision import tv_tensors

    from core.data.spatial import from_tv_tensors

    pixels = np.zeros((1, 8, 8), np.uint8)
    pixels[0, :, :6] = 1  # the left column of a 2 x 2 grid and half of the right one
    got = from_tv_tensors({"part_masks": (tv_tensors.Mask(torch.from_numpy(pixels)), (2, 2))})["part_masks"]
    share = pixels[0].reshape(2, 4, 2, 4).mean(axis=(1, 3))
    assert share.tolist() == [[1.0, 0.5], [1.0, 0.5]]
    assert got.tolist() == [(share >= 0.5).astype(np.float32).reshape(-1).tolist()]


# -------------------------------------------------------------------------- extraction

def tiny_trainer(tmp_path, **trainer):
    from core.config.loading import load_pipeline
    from core.pipeline import build_pipeline
    from core.testing import TINY_PIPELINE
    from core.training.run_folder import RunFolder
    from core.training.trainer import Trainer

    config = copy.deepcopy(TINY_PIPELINE)
    config["trainer"].update(**trainer)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    return Trainer(build_pipeline(load_pipeline(path), echo=lambda *_: None), RunFolder(tmp_path / "run"))


def plain_outputs(model, transform, table, datasets, keys, flip):
    """Each image alone: test transform, the model in eval mode, (f(x) + f(mirror x)) / 2."""
    from core.data.loading import ImageSamples, collate

    samples = ImageSamples(table, datasets, transform)
    model.eval()
    rows = {k: [] for k in keys}
    with torch.no_grad():
        for i in range(len(samples)):
            batch = collate([samples[i]])
            out = model(batch)
            if flip:
                batch.images = batch.images.flip(-1)
                mirrored = model(batch)
            for k in keys:
                rows[k].append(((out[k] + mirrored[k]) / 2 if flip else out[k]).float())
    return {k: torch.cat(v) for k, v in rows.items()}


def test_flip_averaging_covers_every_output_the_evaluator_keeps(tmp_path):
    trainer = tiny_trainer(tmp_path, eval_flip=True)
    test = trainer.p.test_sets[0]
    got = trainer.extract(test.query, test.datasets, outputs=("global",))
    expected = plain_outputs(trainer.model, trainer.p.test_transform, test.query, test.datasets,
                             ("embedding", "global"), flip=True)
    torch.testing.assert_close(got.embeddings, expected["embedding"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.extras["global"], expected["global"], rtol=1e-5, atol=1e-5)


def test_evaluation_embeddings_are_float32_whatever_precision_the_forward_gives(tmp_path):
    """A model run in bf16 at evaluation (`eval_precision: bf16` on a GPU: a ResNet's
    pooled BN output stays bf16 under CUDA autocast) gives bf16 outputs; the embeddings
    and outputs the evaluator gets are float32 (the bf16 values, widened)."""
    trainer = tiny_trainer(tmp_path)
    test = trainer.p.test_sets[0]

    def bf16(batch):
        return {k: v.bfloat16() for k, v in trainer.model(batch).items() if k in ("embedding", "global")}

    features = trainer.extract(test.query, test.datasets, outputs=("global",), forward=bf16)
    assert features.embeddings.dtype == torch.float32 and features.extras["global"].dtype == torch.float32
    expected = plain_outputs(trainer.model, trainer.p.test_transform, test.query, test.datasets,
                             ("embedding",), flip=False)["embedding"]
    torch.testing.assert_close(features.embeddings, expected.bfloat16().float(), rtol=0, atol=0)


@pytest.fixture(scope="module")
def flip_run(tmp_path_factory):
    """A tiny trained run with flip averaging at evaluation and [-1, 1] normalisation."""
    from core.runner import run
    from core.testing import TINY_PIPELINE

    folder = tmp_path_factory.mktemp("flip-run")
    config = copy.deepcopy(TINY_PIPELINE)
    config["data"]["transform"]["norm"] = "half"
    config["trainer"].update(eval_before=False, eval_flip=True)
    (folder / "p.yaml").write_text(yaml.safe_dump(config))
    return run(folder / "p.yaml", run_dir=folder / "run").run_dir


def test_core_extract_gives_each_image_its_evaluation_embedding_in_order(flip_run):
    """`core extract`: test transform, eval mode, the run's flip averaging, table order."""
    from core.tools.extract import embed
    from core.tools.images import open_images
    from core.tools.loading import load_run

    run = load_run(flip_run, device="cpu")
    assert run.flip
    images = open_images("run:gallery", run)
    got = embed(run, images, batch_size=5, progress=False)
    expected = plain_outputs(run.model, run.pipeline.test_transform, images.table, images.datasets,
                             ("embedding",), flip=True)["embedding"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_core_extract_runs_the_model_under_the_run_eval_precision(flip_run, monkeypatch):
    """`core extract` computes embeddings as evaluation does, under the run's
    `eval_precision` autocast (CUDA's stood in for by the CPU's, as tests/test_precision.py
    does): with bf16 the backbone's linear layers run in bf16; with fp32, in fp32."""
    import core.training.precision as P
    from core.tools.extract import embed
    from core.tools.images import open_images
    from core.tools.loading import load_run

    monkeypatch.setattr(P, "autocast", lambda device, precision: torch.autocast("cpu", dtype=torch.bfloat16)
                        if precision in P.DTYPES else P.contextlib.nullcontext())
    seen = {}
    for precision in ("fp32", "bf16"):
        run = load_run(flip_run, device="cpu", overrides=[f"trainer.eval_precision={precision}"])
        linear = next(m for m in run.model.backbone.modules() if isinstance(m, torch.nn.Linear))
        dtypes = []
        handle = linear.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
        got = embed(run, open_images("run:query", run), progress=False)
        handle.remove()
        seen[precision] = set(dtypes)
        assert got.dtype == np.float32
    assert seen == {"fp32": {torch.float32}, "bf16": {torch.bfloat16}}


def test_exported_model_on_images_prepared_from_export_json_gives_the_evaluation_embeddings(flip_run, tmp_path):
    """What a deployment does: resize to export.json's (height, width) with its `resize`, scale to [0, 1],
    normalise with its mean/std, run the TorchScript file — and gets the run's evaluation
    embedding (flip-averaged) of each image."""
    from core.tools.export import export
    from core.tools.images import open_images
    from core.tools.loading import load_run

    report = export(flip_run, tmp_path, formats=["torchscript"])
    spec = report["input"]
    assert (spec["height"], spec["width"]) == (32, 16)
    assert spec["mean"] == [0.5, 0.5, 0.5] and spec["std"] == [0.5, 0.5, 0.5]  # the run's norm: half
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}[spec["resize"]]
    run = load_run(flip_run, device="cpu")
    images = open_images("run:query", run)
    mean, std = np.asarray(spec["mean"]), np.asarray(spec["std"])
    prepared = torch.stack([
        torch.from_numpy(((np.asarray(images.image(i).convert("RGB").resize((spec["width"], spec["height"]),
                                                                             resample)) / 255.0 - mean) / std)
                         .transpose(2, 0, 1).astype(np.float32)) for i in range(len(images))])
    module = torch.jit.load(str(tmp_path / "model.torchscript.pt"))
    with torch.no_grad():
        got = module(prepared)
    expected = plain_outputs(run.model, run.pipeline.test_transform, images.table, images.datasets,
                             ("embedding",), flip=True)["embedding"]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_the_export_check_fails_when_one_value_is_off(flip_run, tmp_path, monkeypatch):
    """The check runs the exported file on the run's query images (test-transformed) and
    reports the *largest* difference: a file off in a single value by 1 fails at the
    default tolerance."""
    import core.tools.export as E
    from core.tools.images import open_images
    from core.tools.loading import load_run

    real, checked = E.run_torchscript, []

    def off_by_one(path, images):
        checked.append(images.clone())
        out = real(path, images)
        out[0, 0] += 1.0
        return out

    monkeypatch.setattr(E, "run_torchscript", off_by_one)
    info = E.export(flip_run, tmp_path, formats=["torchscript"])["formats"]["torchscript"]
    assert not info["ok"] and info["max_abs_diff"] == pytest.approx(1.0, abs=1e-3)
    run = load_run(flip_run, device="cpu")
    query = open_images("run:query", run)
    expected = torch.stack([run.pipeline.test_transform(query.image(i)) for i in range(min(8, len(query)))])
    assert len(checked) == 1 and torch.equal(checked[0], expected)

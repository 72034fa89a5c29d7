"""uint8 image transfer with normalisation and random erasing on the device (issue 19):
the loader's batches hold uint8 images, and once finished on the device they equal the
float path's batches (ToDtype + Normalize + RandomErasing in the worker) for the same
sample seeds; training losses are the same."""

import dataclasses

import pytest
import torch

from core.data.device_normalise import ERASE_BOX, finish_on_device
from core.data.loading import ImageSamples, collate
from core.data.transforms import NORMS, build_transform
from core.pipeline import build_pipeline
from core.config.loading import load_pipeline
from core.runner import run
from core.training.run_folder import read_metrics

from pipeline_twins import twin_config  # noqa: E402 - registered by conftest.py

PARAMS = {"size": [32, 16], "pad": 4, "flip": 0.5, "erasing": 0.5, "norm": "imagenet", "erasing_scale": [0.1, 0.4]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The quickstart twin's synthetic training table and datasets."""
    config = twin_config("quickstart", tmp_path_factory.mktemp("world"))
    p = build_pipeline(load_pipeline(config, []))
    return p.train, p.train_datasets


def batches(world, **extra):
    """The float path's batch and the uint8 path's batch of the same 24 seeded keys."""
    table, datasets = world
    keys = [(i % len(table), 1000 + i, 0) for i in range(24)]
    out = []
    for device_normalise in (False, True):
        samples = ImageSamples(table, datasets, build_transform(train=True, device_normalise=device_normalise,
                                                               **{**PARAMS, **extra}))
        out.append((collate([samples[k] for k in keys]), samples.transform))
    return out


def test_uint8_batches_finished_on_the_device_equal_the_float_path(world):
    (want, _), (got, transform) = batches(world)
    assert want.images.dtype == torch.float32 and got.images.dtype == torch.uint8
    boxes = got.extras[ERASE_BOX]
    assert boxes.shape == (24, 4) and 0 < int((boxes[:, 2] > 0).sum()) < 24  # some erased, some not
    finished = finish_on_device(got, transform)
    assert finished.images.dtype == torch.float32 and ERASE_BOX not in finished.extras
    torch.testing.assert_close(finished.images, want.images, rtol=0, atol=1e-6)
    # the erased boxes hold 0 in normalised space (the mean colour), as RandomErasing(value=0) after Normalize
    i, j, h, w = (int(v) for v in boxes[int((boxes[:, 2] > 0).nonzero()[0])])
    row = int((boxes[:, 2] > 0).nonzero()[0])
    assert torch.all(finished.images[row, :, i:i + h, j:j + w] == 0)
    # the rest of the batch is untouched by the finishing
    assert torch.equal(finished.pids, want.pids) and torch.equal(finished.indices, want.indices)


def test_random_colour_erasing_on_the_device_equals_the_float_path(world):
    """`erasing_fill: random`: the worker draws the box and then its colour, as the float
    path's ColourErasing does; the device fills the box with that colour's normalised value."""
    (want, _), (got, transform) = batches(world, erasing_fill="random")
    boxes = got.extras[ERASE_BOX]
    assert boxes.shape == (24, 7) and 0 < int((boxes[:, 2] > 0).sum()) < 24
    finished = finish_on_device(got, transform)
    torch.testing.assert_close(finished.images, want.images, rtol=0, atol=1e-6)
    row = int((boxes[:, 2] > 0).nonzero()[0])
    i, j, h, w, *colour = (int(v) for v in boxes[row])
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in NORMS[PARAMS["norm"]])
    pixels = finished.images[row, :, i:i + h, j:j + w] * std + mean  # back to [0, 1]
    torch.testing.assert_close(pixels, (torch.tensor(colour, dtype=torch.float32) / 255).view(3, 1, 1).expand_as(pixels))


def test_without_erasing_no_box_travels(world):
    (want, _), (got, transform) = batches(world, erasing=0.0)
    assert ERASE_BOX not in got.extras
    torch.testing.assert_close(finish_on_device(got, transform).images, want.images, rtol=0, atol=1e-6)


def test_float_batches_and_test_transforms_are_left_alone(world):
    (want, transform), (_, uint8_transform) = batches(world)
    assert finish_on_device(want, uint8_transform) is want  # float images: nothing to do
    assert getattr(build_transform(train=False, device_normalise=True, **PARAMS), "device_normalise", None) is None


def test_the_statistics_are_the_transform_norms(world):
    table, datasets = world
    transform = build_transform(train=True, device_normalise=True, **{**PARAMS, "norm": "clip", "erasing": 0.0})
    samples = ImageSamples(table, datasets, transform)
    batch = collate([samples[(0, 7, 0)]])
    mean, std = NORMS["clip"]
    expect = (batch.images.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(finish_on_device(dataclasses.replace(batch), transform).images, expect)


def test_training_losses_equal_the_float_path(tmp_path):
    logged = []
    for flag in ("false", "true"):
        (tmp_path / flag).mkdir()
        config = twin_config("quickstart", tmp_path / flag, ["trainer.stop_after_steps=2", "data.transform.erasing=0.5",
                                                              f"data.transform.device_normalise={flag}"])
        uses = getattr(build_pipeline(load_pipeline(config, [])).train_transform, "device_normalise", None)
        assert (uses is not None) == (flag == "true")  # the uint8 path is the one taken
        result = run(config, run_dir=tmp_path / flag / "run")
        logged.append([r for r in read_metrics(result.run_dir) if r["event"] == "train"])
    assert len(logged[0]) == len(logged[1]) == 2
    for a, b in zip(*logged):
        keys = [k for k in a if k not in ("images_per_s", "event", "stage", "epoch", "global_step", "lr")]
        assert {k: b[k] for k in keys} == pytest.approx({k: a[k] for k in keys}, rel=1e-6, abs=1e-7)

"""The labeler in a pipeline: the quickstart's tiny ViT with a `prepare:` step that labels
the training people (grounder `record_boxes`), the file attached to the records, the
batch carrying `part_masks` on the backbone's patch grid; `core label` alone; a backbone
without a patch grid is a configuration error naming the key."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from core.config.loading import ConfigError, load_pipeline
from core.data.annotations import Annotations

QUICKSTART = Path(__file__).resolve().parents[3] / "pipelines" / "quickstart.yaml"


def write_pipeline(tmp_path, **changes):
    """The quickstart pipeline (its tiny timm ViT: 8 x 8 patches, here on 64 x 32 images
    -> an 8 x 4 grid), on 8 people, with a vge prepare step."""
    config = {
        "_base_": str(QUICKSTART),
        "name": "vge-prepare",
        "data": {"train": [{"dataset": "synthetic", "categories": ["person"], "identities": 8,
                            "test_identities": 2, "images_per_identity": 4, "render_size": [64, 32]}],
                 "transform": {"size": [64, 32], "pad": 0, "flip": 0.0}},
        "prepare": [{"name": "vge", "out": str(tmp_path / "labels" / "parts.npz"),
                     "grounder": {"name": "record_boxes"}}],
        "sampler": {"name": "pk", "batch_size": 16, "k": 4},
        "trainer": {"device": "cpu", "num_workers": 0, "progress": False},
    }
    for key, value in changes.items():
        config[key] = value
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_pipeline_with_a_prepare_step_builds_and_its_batch_carries_part_masks(tmp_path):
    from core.data.loading import ImageSamples, collate
    from core.pipeline import build_pipeline

    p = build_pipeline(load_pipeline(write_pipeline(tmp_path)), echo=lambda *_: None)
    assert p.ctx.patch_grid == (8, 4)
    annotations = Annotations.load(tmp_path / "labels" / "parts.npz")
    assert annotations.grid == (8, 4) and len(annotations.keys) == len(p.train) == 32
    assert annotations.meta["part_names"] == ["head", "upper body", "legs"]

    samples = ImageSamples(p.train, p.train_datasets, p.train_transform)
    indices = next(iter(p.sampler))
    batch = collate([samples[(i, 0, 0)] for i in indices])
    masks = batch.require("part_masks", "test")
    assert masks.shape == (16, 3, 32) and masks.dtype.is_floating_point
    index = {k: i for i, k in enumerate(annotations.keys)}
    keys = [f"synthetic:{p.train_datasets[0].record_key(p.train.records[i])}" for i in indices]
    expected = np.stack([annotations.fields["part_masks"][index[k]] for k in keys]).reshape(16, 3, 32)
    np.testing.assert_array_equal(masks.numpy(), expected)  # no flip, no crop: exactly the file's masks
    assert masks.sum() > 0


def test_core_label_writes_the_file_once_and_then_finds_it_up_to_date(tmp_path, capsys):
    from core.cli import main

    path = write_pipeline(tmp_path)
    assert main(["label", str(path)]) == 0
    first = capsys.readouterr().err  # the labeler's messages are log records (#26)
    assert "wrote" in first and "head.replaced: 0" in first
    stamp = (tmp_path / "labels" / "parts.npz").stat().st_mtime_ns
    assert main(["label", str(path)]) == 0
    assert "up to date" in capsys.readouterr().err
    assert (tmp_path / "labels" / "parts.npz").stat().st_mtime_ns == stamp


def test_a_backbone_without_a_patch_grid_is_an_error_naming_the_prepare_step(tmp_path):
    from core.pipeline import build_pipeline

    path = write_pipeline(tmp_path, backbone={"name": "timm", "arch": "resnet18", "pretrained": False,
                                              "model_kwargs": None})
    with pytest.raises(ConfigError, match=r"prepare\.0: labeler 'vge' could not be built: .*`grid: \[rows, cols\]`"):
        build_pipeline(load_pipeline(path), echo=lambda *_: None)


def test_training_runs_with_the_masks_moving_through_flips_and_crops(tmp_path, tiny_pipeline_config,
                                                                     run_tiny_pipeline):
    config = tiny_pipeline_config  # 32 x 16 images, pad 2 + random crop, flips: a 4 x 2 grid
    config["data"]["train"][0]["categories"] = ["person"]
    config["prepare"] = [{"name": "vge", "out": str(tmp_path / "parts.npz"), "grounder": {"name": "record_boxes"},
                          "batch_size": 32}]
    config["trainer"]["eval_before"] = False
    result = run_tiny_pipeline(config)
    assert Annotations.load(tmp_path / "parts.npz").grid == (4, 2)
    assert "synthetic/mAP" in result.metrics
    assert "vge" in (result.run_dir / "pipeline.yaml").read_text()

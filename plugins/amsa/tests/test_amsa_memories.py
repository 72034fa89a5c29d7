"""What MUVA's memories are built from (Sec. 3.1.2, 3.3, Fig. 2): VPM-1 and VPM-2 are
centroids of features whose local tokens are gated by the pseudo-label masks G (not by
the AM-MSA's own predictions), and with `trainer.eval_flip` the mirrored image is gated
by the mirrored masks. Each expected memory is computed here directly from the backbone
(`gate_masks=`) and the centroid formula, not through the extraction code."""

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from amsa_stubs import Net, StubTrainer  # registered by conftest.py
from core.data.annotations import Annotations, qualified_key

GRID = (4, 2)  # tiny backbone at 32x16: 8 patches


def label_masks(n: int) -> torch.Tensor:
    """Left-right asymmetric pseudo-labels (n, 3, 8): head = patch (0, 0), upper = (1, 0)
    and (2, 0), legs = (3, 1); sample i also gets patch (1, 1) in part i % 3."""
    masks = torch.zeros(n, 3, 4, 2)
    masks[:, 0, 0, 0] = 1
    masks[:, 1, 1:3, 0] = 1
    masks[:, 2, 3, 1] = 1
    for i in range(n):
        masks[i, i % 3, 1, 1] = 1
    return masks.reshape(n, 3, 8)


def mirror_by_index(masks: torch.Tensor) -> torch.Tensor:
    """Mirror row-major (rows x cols) masks by moving patch r * cols + c to r * cols + (cols - 1 - c)."""
    rows, cols = GRID
    index = [r * cols + (cols - 1 - c) for r in range(rows) for c in range(cols)]
    return masks[..., index]


def centroids(features: torch.Tensor, pids: torch.Tensor, classes: int) -> torch.Tensor:
    """M[c] = normalise(mean of normalise(x_i) over y_i = c), row by row."""
    rows = []
    for c in range(classes):
        x = F.normalize(features[pids == c], dim=1)
        rows.append(F.normalize(x.mean(0), dim=0))
    return torch.stack(rows)


@pytest.fixture
def setup(tiny_backbone, build_ctx, make_batch):
    from reid_amsa.head import MUVAHead

    ctx = build_ctx(identities=3, images=2)
    backbone = tiny_backbone(ctx=ctx, seed=4)
    head = MUVAHead(ctx)
    pids = [0, 0, 1, 1, 2, 2]
    masks = label_masks(6)
    batch = make_batch(pids, seed=1, extras={"part_masks": masks})
    return SimpleNamespace(ctx=ctx, backbone=backbone, head=head, pids=torch.tensor(pids), masks=masks,
                           batch=batch)


def direct(setup, key, gate_masks, images=None):
    """The output `key` of backbone + head in eval mode, local tokens gated by `gate_masks`."""
    net = Net(setup.backbone, setup.head).eval()
    batch = copy.copy(setup.batch)
    if images is not None:
        batch.images = images
    with torch.no_grad():
        features = net.backbone(batch, gate_masks=gate_masks)
        return {**features, **net.head(features, batch)}[key].float()


def test_vpm1_holds_centroids_of_the_pseudo_label_gated_visual_tokens(setup):
    from reid_amsa.cmp_loss import MultiGrainedCMPLoss

    loss = MultiGrainedCMPLoss(setup.ctx)  # default gating
    trainer = StubTrainer(Net(setup.backbone, setup.head, [loss]), [setup.batch], setup.pids)
    loss.on_stage_start(trainer, stage=None)
    expected = centroids(direct(setup, "global", setup.masks), setup.pids, 3)
    predicted = centroids(direct(setup, "global", None), setup.pids, 3)
    assert not torch.allclose(expected, predicted, atol=1e-3)  # the two gatings differ here
    assert torch.allclose(loss.memory, expected, atol=1e-5)


def test_vpm2_holds_centroids_of_the_pseudo_label_gated_bn_features(setup):
    from reid_amsa.prototype_loss import PrototypeContrastLoss

    loss = PrototypeContrastLoss(setup.ctx)  # default gating
    trainer = StubTrainer(Net(setup.backbone, setup.head, [loss]), [setup.batch], setup.pids)
    loss.on_epoch_start(trainer, epoch=0)
    expected = centroids(direct(setup, "bn_features", setup.masks), setup.pids, 3)
    predicted = centroids(direct(setup, "bn_features", None), setup.pids, 3)
    assert not torch.allclose(expected, predicted, atol=1e-3)
    assert torch.allclose(loss.memory, expected, atol=1e-5)


@pytest.mark.parametrize("module", ["cmp", "prototype"])
def test_with_eval_flip_the_mirror_is_gated_by_the_mirrored_masks(setup, module):
    from reid_amsa.cmp_loss import MultiGrainedCMPLoss
    from reid_amsa.prototype_loss import PrototypeContrastLoss

    loss = MultiGrainedCMPLoss(setup.ctx) if module == "cmp" else PrototypeContrastLoss(setup.ctx)
    key = "global" if module == "cmp" else "bn_features"
    trainer = StubTrainer(Net(setup.backbone, setup.head, [loss]), [setup.batch], setup.pids, eval_flip=True)
    if module == "cmp":
        loss.on_stage_start(trainer, stage=None)
    else:
        loss.on_epoch_start(trainer, epoch=0)
    assert trainer.cfg.eval_flip is True  # restored after the memory is built
    mirror = setup.batch.images.flip(-1)
    mean = (direct(setup, key, setup.masks) + direct(setup, key, mirror_by_index(setup.masks), mirror)) / 2
    unflipped = (direct(setup, key, setup.masks) + direct(setup, key, setup.masks, mirror)) / 2
    expected = centroids(mean, setup.pids, 3)
    assert not torch.allclose(expected, centroids(unflipped, setup.pids, 3), atol=1e-3)
    assert torch.allclose(loss.memory, expected, atol=1e-5)


def test_mirrored_masks_move_each_patch_to_the_other_side_of_its_row():
    from reid_amsa.extraction import flip_part_masks

    masks = label_masks(2)
    assert torch.equal(flip_part_masks(masks, GRID), mirror_by_index(masks))
    assert torch.equal(flip_part_masks(flip_part_masks(masks, GRID), GRID), masks)
    with pytest.raises(ValueError, match="4 x 3 patch grid"):
        flip_part_masks(masks, (4, 3))


# ---------------------------------------------------------------- through the core's Trainer
WORLD = {"dataset": "synthetic", "seed": 0, "categories": ["person"], "identities": 6, "test_identities": 4,
         "images_per_identity": 4, "cameras": 2, "render_size": [64, 32]}


def test_the_core_trainers_eval_flip_builds_vpm1_with_mirrored_masks(tmp_path, tiny_clip):
    """The real Trainer.extract (which mirrors images only) with the memory's forward."""
    from core.config.loading import load_pipeline
    from core.data.loading import ImageSamples, collate
    from core.data.synthetic import SyntheticWorld
    from core.pipeline import build_pipeline
    from core.training.run_folder import RunFolder
    from core.training.trainer import Trainer
    from reid_amsa.extraction import training_features

    world = SyntheticWorld(**{k: v for k, v in WORLD.items() if k != "dataset"})
    records = list(world.records("train"))
    masks = label_masks(len(records)).reshape(len(records), 3, *GRID).numpy().astype(np.uint8)
    keys = [qualified_key("synthetic", world.record_key(r)) for r in records]
    labels = Annotations(keys=keys, fields={"part_masks": masks}, attach=["part_masks"]).save(tmp_path / "g.npz")
    config = {"name": "flip", "seed": 0,
              "data": {"train": [{**WORLD, "annotations": str(labels)}],
                       "transform": {"size": [32, 16], "pad": 0, "flip": 0.5, "norm": "half"}},
              "sampler": {"name": "pk", "batch_size": 8, "k": 4},
              "backbone": {"name": "amsa_clip", "model_cfg": tiny_clip},
              "head": {"name": "muva"}, "losses": [{"name": "ce"}], "evaluator": {"name": "reid"},
              "stages": [{"name": "s", "epochs": 1, "losses": [{"name": "muva_cmp"}],
                          "trainable": ["backbone.text.prompts"], "optimizer": {"name": "adam", "lr": 0.01}}],
              "trainer": {"device": "cpu", "num_workers": 0, "progress": False, "eval_flip": True,
                          "batch_size_eval": 5}}
    path = tmp_path / "flip.yaml"
    path.write_text(yaml.safe_dump(config))
    trainer = Trainer(build_pipeline(load_pipeline(path)), RunFolder(tmp_path / "run", enabled=False))
    features, pids = training_features(trainer, "global", "labels", "test")
    assert trainer.cfg.eval_flip is True

    net = trainer.net.eval()
    samples = ImageSamples(trainer.p.train, trainer.p.train_datasets, trainer.p.test_transform)
    batch = collate([samples[i] for i in range(len(samples))])
    g = batch.extras["part_masks"]
    with torch.no_grad():
        plain = net.backbone(batch, gate_masks=g)["global"]
        batch.images = batch.images.flip(-1)
        mirrored = net.backbone(batch, gate_masks=mirror_by_index(g))["global"]
        unflipped = net.backbone(batch, gate_masks=g)["global"]
    assert not torch.allclose((plain + unflipped) / 2, (plain + mirrored) / 2, atol=1e-4)
    assert torch.allclose(features, (plain + mirrored) / 2, atol=1e-5)
    assert pids.tolist() == trainer.p.train.pids.tolist()

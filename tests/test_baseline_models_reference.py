"""The baseline model zoo against the papers and the authors' code (the survivors of a
mutation audit): each value below is computed by hand or read from the cited reference,
never from the code under test."""

import math
from pathlib import Path

import pytest
import torch

from core.config.loading import load_pipeline
from core.context import BuildContext
from core.data.table import RecordTable
from core.models.jpm_head import JPMHead
from core.models.non_local import NonLocalBlock
from core.models.pooling import GeneralizedMeanPooling, build_pooling
from core.models.transreid import TransReIDViT
from core.records import Batch, Record

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
TINY_VIT = dict(arch="vit_tiny_patch16_224", model_kwargs=dict(embed_dim=32, depth=2, num_heads=2))


def make_batch(images, camids=None):
    n = images.shape[0]
    zeros = torch.zeros(n, dtype=torch.long)
    return Batch(images=images, pids=zeros, camids=zeros if camids is None else torch.as_tensor(camids),
                 categories=zeros, domains=zeros, roles=zeros, indices=torch.arange(n), extras={})


# --- JPM head: TransReID make_model.py, build_transformer_local.forward ---------------------

def test_jpm_head_follows_the_authors_per_branch_bnneck():
    """Triplet on the pre-BN global feature; each branch its own BN (bottleneck_i) and its
    own bias-free classifier (classifier_i) applied to that branch's BN output."""
    torch.manual_seed(0)
    k, dim, classes = 2, 4, 3
    head = JPMHead(BuildContext(feature_dim=dim, num_identities=classes), num_parts=k).train()
    with torch.no_grad():
        for i, bn in enumerate(head.bns):
            bn.weight.fill_(i + 1.0)  # tell the branches' BNs apart
    g, p = torch.randn(6, dim) * 2 + 1, torch.randn(6, k, dim) * 3 - 1
    out = head({"global": g, "parts": p}, make_batch(torch.zeros(6, 3, 2, 2)))

    def bn(x, weight):  # training-mode BatchNorm1d, biased variance, eps 1e-5, bias 0
        return (x - x.mean(0)) / (x.var(0, unbiased=False) + 1e-5).sqrt() * weight

    assert torch.equal(out["features"], g)  # the authors' triplet input: global_feat (pre-BN)
    assert len({id(b) for b in head.bns}) == 1 + k
    assert all(fc.bias is None for fc in head.classifiers)
    assert torch.allclose(out["logits"], bn(g, 1.0) @ head.classifiers[0].weight.t(), atol=1e-5)
    for i in range(k):
        expected = bn(p[:, i], i + 2.0) @ head.classifiers[1 + i].weight.t()
        assert torch.allclose(out[f"logits_part{i}"], expected, atol=1e-5), i


# --- non-local block ------------------------------------------------------------------------

def test_non_local_block_embeds_into_half_the_channels():
    """Wang et al. 2018 Sec. 3.3: theta, phi, g halve the channels (the default)."""
    block = NonLocalBlock(1024)
    assert block.theta.out_channels == block.phi.out_channels == block.g.out_channels == 512
    assert block.W[0].in_channels == 512 and block.W[0].out_channels == 1024


def test_agw_non_local_width_is_the_authors_one_channel():
    """ReID-Survey's and fast-reid's non_local.py: inter_channels = reduc_ratio // reduc_ratio
    = 1, so theta / phi / g project to one channel: 28,687 parameters in AGW's five blocks of a
    ResNet-50 (their count), where half the channels give 7.36M."""
    from core.models.resnet import ReIDResNet

    model = ReIDResNet(BuildContext(), arch="resnet50", non_local=[0, 2, 3, 0], non_local_width=1)
    assert {b.theta.out_channels for blocks in model.non_local.values() for b in blocks} == {1}
    assert sum(p.numel() for p in model.non_local.parameters()) == 28_687
    with pytest.raises(ValueError, match="non_local_width must be a positive int"):
        ReIDResNet(BuildContext(), arch="resnet18", non_local=[0, 1, 1, 0], non_local_width=0)


# --- GeM: Radenovic et al. 2019 / the AGW and fast-reid GeneralizedMeanPoolingP ------------

def test_gem_defaults_to_p_3():
    assert GeneralizedMeanPooling().p.item() == 3.0 and GeneralizedMeanPooling().p.requires_grad
    assert build_pooling("gem", 8, "test").p.item() == 3.0


def test_gem_clamps_a_dead_channel_to_eps_with_finite_gradients():
    """A post-ReLU channel that is zero everywhere: x.clamp(min=eps) makes GeM return eps
    with finite gradients (without the clamp, d/dx (0)^(1/p) is inf and p's gradient NaN)."""
    x = torch.zeros(1, 2, 3, 3)
    x[0, 1] = 1.0
    x.requires_grad_(True)
    pool = GeneralizedMeanPooling(p=3.0, eps=1e-6)
    y = pool(x)
    assert y[0, 0].item() == pytest.approx(1e-6, rel=1e-4) and y[0, 1].item() == pytest.approx(1.0)
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(pool.p.grad).all()


def test_gem_gradient_in_p_is_the_derivative_of_the_generalised_mean():
    values = [0.5, 1.0, 2.0, 4.0]
    x = torch.tensor(values, dtype=torch.float64).view(1, 1, 2, 2)
    pool = GeneralizedMeanPooling(p=3.0).double()
    pool(x).sum().backward()

    def gm(p):
        return (sum(v ** p for v in values) / len(values)) ** (1 / p)

    h = 1e-6
    assert pool.p.grad.item() == pytest.approx((gm(3 + h) - gm(3 - h)) / (2 * h), rel=1e-5)


# --- TransReID backbone ------------------------------------------------------------------

def test_transreid_defaults_are_the_authors_transreid_star_settings():
    """configs/*/vit_transreid_stride.yml + config/defaults.py: STRIDE_SIZE [12, 12],
    SIE_CAMERA, SIE_COE 3.0, SHIFT_NUM 5, SHUFFLE_GROUP 2, DEVIDE_LENGTH 4."""
    model = TransReIDViT(BuildContext(image_size=(64, 32), num_cameras=2), **TINY_VIT)
    assert model.stride == 12 and model.sie_kinds == ["camera"] and model.sie_coefficient == 3.0
    assert (model.shift, model.shuffle_groups, model.jpm_groups) == (5, 2, 4)


def test_transreid_camera_table_covers_every_training_camera():
    records = [Record(path=None, pid=pid, camid=cam) for pid in range(2) for cam in range(6)]
    table = RecordTable.build([("src", records)], relabel=True)
    ctx = BuildContext.from_table(table, image_size=(32, 32))
    model = TransReIDViT(ctx, **TINY_VIT, stride=16, jpm=False)
    assert model.num_cameras == 6 and model.sie_embed.shape[0] == 6
    model(make_batch(torch.randn(1, 3, 32, 32), camids=[5]))  # the largest camera id is inside the table


def test_transreid_global_branch_and_tokens_are_timms_vit_on_the_unshuffled_sequence():
    """Without SIE, at stride = patch size, the global branch is timm's own ViT: tokens in
    patch order, global = its pre-logits class token (JPM only adds the part branch)."""
    torch.manual_seed(0)
    model = TransReIDViT(BuildContext(image_size=(64, 32), num_cameras=1), **TINY_VIT, stride=16, sie=[],
                         drop_path_rate=0.0).eval()
    images = torch.randn(2, 3, 64, 32)
    out = model(make_batch(images))
    reference = model.model.forward_features(images)
    assert torch.allclose(out["tokens"], reference, atol=1e-5)
    assert torch.allclose(out["global"], model.model.forward_head(reference, pre_logits=True), atol=1e-5)


def test_every_jpm_part_is_its_own_quarter_of_the_shifted_shuffled_patches():
    """TransReID forward: k = 4 groups of length N // 4 over shuffle_unit(features, 5, 2)
    (2 shuffle groups), each run with the class token through the copied block + norm."""
    torch.manual_seed(0)
    model = TransReIDViT(BuildContext(image_size=(64, 32), num_cameras=2), **TINY_VIT, stride=16,
                         jpm_groups=4, shift=5, shuffle_groups=2, drop_path_rate=0.0).eval()
    batch = make_batch(torch.randn(1, 3, 64, 32))
    x = model.forward_tokens(batch)  # 4 x 2 = 8 patches, indices 1..8
    shifted = list(range(5, 9)) + list(range(1, 5))           # p5..p8, p1..p4
    order = [v for pair in zip(shifted[:4], shifted[4:]) for v in pair]  # 2 runs of 4, interleaved
    parts = model(batch)["parts"]
    for i in range(4):
        group = order[2 * i: 2 * i + 2]
        expected = model.jpm_norm(model.jpm_block(torch.cat([x[:, :1], x[:, group]], dim=1)))[:, 0]
        assert torch.allclose(parts[:, i], expected, atol=1e-5), i


def test_jpm_branch_has_its_own_copy_of_the_last_norm():
    """make_model.py: b2 = Sequential(deepcopy(block), deepcopy(layer_norm))."""
    model = TransReIDViT(BuildContext(image_size=(64, 32), num_cameras=2), **TINY_VIT, stride=16)
    assert model.jpm_norm is not model.model.norm
    parts = model(make_batch(torch.randn(2, 3, 64, 32)))["parts"]
    (parts * torch.randn_like(parts)).sum().backward()  # a plain .sum() of a LayerNorm output is 0
    assert model.model.norm.weight.grad is None and model.jpm_norm.weight.grad.abs().sum() > 0


# --- the shipped pipelines against their references ----------------------------------------

def _get(data, dotted):
    for part in dotted.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


#: pipeline -> {dotted key: value}, each from the recipe the file names as its source:
#: BoT = reid-strong-baseline configs/softmax_triplet_with_center.yml and Luo et al. Sec. 4;
#: AGW = mangye16/ReID-Survey configs/AGW_baseline.yml (the published numbers); SBS = fast-reid Base-SBS.yml +
#: Market1501/sbs_R50-ibn.yml; TransReID = damo-cv/TransReID configs/*/vit_transreid_stride.yml.
REFERENCE = {
    "bot_market1501": {
        "data.transform.size": [256, 128], "data.transform.pad": 10, "data.transform.flip": 0.5,
        "data.transform.erasing": 0.5, "sampler.batch_size": 64, "sampler.k": 4,
        "backbone.last_stride": 1, "backbone.pooling": "avg", "head.embedding": "bn",
        "losses": [{"name": "ce", "label_smoothing": 0.1}, {"name": "triplet", "margin": 0.3},
                   {"name": "center_loss", "weight": 0.0005}],
        "stages.0.epochs": 120, "stages.0.optimizer.name": "adam", "stages.0.optimizer.lr": 3.5e-4,
        "stages.0.optimizer.weight_decay": 5e-4, "stages.0.schedule.warmup_epochs": 10,
        "stages.0.schedule.milestones": [40, 70], "stages.0.schedule.gamma": 0.1,
    },
    "agw_market1501": {
        "data.transform.size": [256, 128], "sampler.batch_size": 64, "sampler.k": 4,
        "backbone.last_stride": 1, "backbone.non_local": [0, 2, 3, 0], "backbone.non_local_width": 1,
        "backbone.pooling.name": "gem",
        "backbone.pooling.p": 3.0, "head.embedding": "bn", "losses.0": {"name": "ce", "label_smoothing": 0.1},
        "losses.1.name": "wrt", "losses.2": {"name": "center_loss", "weight": 0.0005},
        "stages.0.epochs": 120, "stages.0.optimizer.lr": 3.5e-4,
        "stages.0.optimizer.weight_decay": 5e-4, "stages.0.schedule.milestones": [40, 70],
        "stages.0.schedule.warmup_epochs": 10, "stages.0.schedule.warmup_factor": 0.01,
    },
    "sbs_market1501": {
        "data.transform.size": [384, 128], "data.transform.autoaugment": 0.1, "sampler.batch_size": 64,
        "sampler.k": 16, "backbone.ibn": True, "backbone.last_stride": 1, "backbone.non_local": [0, 2, 3, 0],
        "backbone.non_local_width": 1,
        "backbone.pooling": {"name": "gem", "p": 3.0, "learn_p": True}, "head.embedding": "bn",
        "losses": [{"name": "circle", "scale": 64.0, "margin": 0.35, "label_smoothing": 0.1},
                   {"name": "triplet", "margin": None}],
        "stages.2.schedule": {"name": "cosine", "min_lr": 7.0e-7},
    },
    "transreid_market1501": {
        "data.transform.size": [256, 128], "data.transform.norm": "half", "data.transform.pad": 10,
        "sampler.batch_size": 64, "sampler.k": 4, "backbone.stride": 12, "backbone.sie": ["camera"],
        "backbone.sie_coefficient": 3.0, "backbone.jpm": True, "backbone.jpm_groups": 4, "backbone.shift": 5,
        "backbone.shuffle_groups": 2, "backbone.drop_path_rate": 0.1, "head.embedding": "pre",
        "stages.0.epochs": 120, "stages.0.optimizer": {"name": "sgd", "lr": 0.008, "momentum": 0.9,
                                                       "weight_decay": 1.0e-4},
        "stages.0.schedule": {"name": "cosine", "warmup_epochs": 5, "warmup_factor": 0.01,
                              "min_lr": 0.002 * 0.008},
        "stages.0.param_groups": [{"params": ["*.bias"], "lr_mult": 2.0}],
    },
    "transreid_veri776": {
        "data.transform.size": [256, 256], "backbone.shift": 8, "stages.0.optimizer.lr": 0.01,
        "stages.0.schedule.min_lr": 0.002 * 0.01,
    },
    # the twins keep their recipe's structure (their docstrings): only size, depth, lr, epochs differ
    "bot_synthetic": {"backbone.last_stride": 1, "backbone.pooling": "avg", "head.embedding": "bn",
                      "losses": [{"name": "ce", "label_smoothing": 0.1}, {"name": "triplet", "margin": 0.3},
                                 {"name": "center_loss", "weight": 0.0005}]},
    "agw_synthetic": {"backbone.last_stride": 1, "backbone.pooling.name": "gem", "backbone.pooling.p": 3.0,
                      "head.embedding": "bn", "losses.1.name": "wrt"},
    "sbs_synthetic": {"backbone.ibn": True, "backbone.last_stride": 1, "head.embedding": "bn",
                      "losses": [{"name": "circle", "scale": 64.0, "margin": 0.35, "label_smoothing": 0.1},
                                 {"name": "triplet", "margin": None}]},
    "transreid_synthetic": {"backbone.sie": ["camera"], "backbone.sie_coefficient": 3.0, "backbone.jpm_groups": 4,
                            "backbone.shift": 5, "backbone.shuffle_groups": 2, "head.embedding": "pre"},
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_pipeline_hyper_parameters_match_their_reference(name):
    data = load_pipeline(PIPELINES / f"{name}.yaml").data
    wrong = {key: (_get(data, key), want) for key, want in REFERENCE[name].items() if _get(data, key) != want}
    assert not wrong, wrong


@pytest.mark.parametrize("name", ["transreid_market1501", "transreid_synthetic"])
def test_transreid_losses_weigh_global_and_the_mean_of_parts_equally(name):
    """make_loss.py: 0.5 * loss(global) + 0.5 * mean over the k parts, for CE and triplet;
    no label smoothing (IF_LABELSMOOTH off), soft margin (NO_MARGIN)."""
    losses = load_pipeline(PIPELINES / f"{name}.yaml").data["losses"]
    for kind, key, extra in (("ce", "logits", {"label_smoothing": 0.0}), ("triplet", "features", {"margin": None})):
        got = {l[key]: l for l in losses if l["name"] == kind}
        assert got[key]["weight"] == 0.5 and all(got[key][k] == v for k, v in extra.items())
        for i in range(4):
            assert got[f"{key}_part{i}"]["weight"] == 0.5 / 4 and all(got[f"{key}_part{i}"][k] == v
                                                                         for k, v in extra.items())
        assert len(got) == 5


def test_sbs_schedule_holds_to_epoch_30_of_60_with_adam_3p5e_4():
    """Base-SBS: MAX_EPOCH 60, DELAY_EPOCHS 30, Adam BASE_LR 3.5e-4, weight decay 5e-4."""
    stages = load_pipeline(PIPELINES / "sbs_market1501.yaml").data["stages"]
    assert sum(s["epochs"] for s in stages) == 60 and sum(s["epochs"] for s in stages[:-1]) == 30
    assert all(s["optimizer"] == {"name": "adam", "lr": 3.5e-4, "weight_decay": 5.0e-4} for s in stages)

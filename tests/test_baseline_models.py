"""The backbones and blocks of the BoT / AGW / SBS / TransReID baselines against their
papers: GeM and attention pooling, the non-local block, IBN-a, the last-stride-1 / IBN-a
ResNet (and the IBN-Net authors' weight-file format), TransReID's overlapping patches, SIE
and JPM, and the multi-branch BNNeck."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from core.context import BuildContext
from core.models.ibn import IBN
from core.models.jpm_head import JPMHead
from core.models.non_local import NonLocalBlock
from core.models.pooling import AttentionPooling, GeneralizedMeanPooling, build_pooling
from core.models.resnet import ReIDResNet
from core.models.transreid import TransReIDViT, jigsaw
from core.records import Batch


def make_batch(images, camids=None, pids=None, extras=None):
    n = images.shape[0]
    zeros = torch.zeros(n, dtype=torch.long)
    return Batch(images=images, pids=zeros if pids is None else torch.as_tensor(pids),
                 camids=zeros if camids is None else torch.as_tensor(camids), categories=zeros,
                 domains=zeros, roles=zeros, indices=torch.arange(n), extras=extras or {})


# --- poolings ---------------------------------------------------------------------------------

def test_gem_is_the_generalised_mean_of_each_channel():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert GeneralizedMeanPooling(p=2.0)(x).item() == pytest.approx(math.sqrt((1 + 4 + 9 + 16) / 4), rel=1e-6)
    assert GeneralizedMeanPooling(p=1.0)(x).item() == pytest.approx(2.5, rel=1e-6)
    assert GeneralizedMeanPooling(p=3.0)(x).item() == pytest.approx(((1 + 8 + 27 + 64) / 4) ** (1 / 3), rel=1e-6)


def test_gem_learns_p_unless_told_not_to():
    x = torch.rand(2, 3, 4, 4) + 0.1
    pool = GeneralizedMeanPooling(p=3.0)
    pool(x).sum().backward()
    assert pool.p.grad is not None and pool.p.grad.abs() > 0
    assert not GeneralizedMeanPooling(p=3.0, learn_p=False).p.requires_grad


def test_attention_pooling_is_the_softmax_weighted_sum_of_positions():
    pool = AttentionPooling(channels=2, hidden=1)
    with torch.no_grad():
        pool.V.weight.copy_(torch.tensor([[1.0, 0.0]]))
        pool.V.bias.zero_()
        pool.w.weight.fill_(2.0)
    # three positions h = (0, 5), (1, 7), (-1, 3): scores 2 tanh(h_0)
    x = torch.tensor([[[0.0, 1.0, -1.0], [5.0, 7.0, 3.0]]]).view(1, 2, 1, 3)
    scores = [2 * math.tanh(v) for v in (0.0, 1.0, -1.0)]
    a = [math.exp(s) / sum(math.exp(t) for t in scores) for s in scores]
    expected = [sum(ai * v for ai, v in zip(a, row)) for row in ((0.0, 1.0, -1.0), (5.0, 7.0, 3.0))]
    assert pool(x)[0].tolist() == pytest.approx(expected, rel=1e-6)


def test_unknown_pooling_lists_the_valid_ones():
    with pytest.raises(ValueError, match="avg, max, gem, attention"):
        build_pooling("mean", 8, "backbone 'resnet'")
    with pytest.raises(ValueError, match="valid keys: p, learn_p, eps"):
        build_pooling({"name": "gem", "q": 3}, 8, "backbone 'resnet'")


# --- non-local block --------------------------------------------------------------------------

def test_non_local_block_starts_as_the_identity():
    block = NonLocalBlock(8)
    x = torch.randn(2, 8, 3, 4)
    assert torch.equal(block(x), x)


def test_non_local_block_matches_the_dot_product_formula():
    torch.manual_seed(0)
    block = NonLocalBlock(4, reduction=2).eval()
    with torch.no_grad():
        block.W[1].weight.fill_(1.0)  # BN in eval with running stats (0, 1): the identity map
    x = torch.randn(1, 4, 2, 3)
    pos = x[0].flatten(1).t()  # (N, C)

    def conv(layer, v):
        return layer.weight[:, :, 0, 0] @ v + layer.bias

    n = pos.shape[0]
    out = []
    for i in range(n):
        y = sum((conv(block.theta, pos[i]) @ conv(block.phi, pos[j])) / n * conv(block.g, pos[j]) for j in range(n))
        out.append(conv(block.W[0], y) / math.sqrt(1 + block.W[1].eps) + pos[i])
    expected = torch.stack(out).t().reshape(1, 4, 2, 3)
    assert torch.allclose(block(x), expected, atol=1e-5)


# --- IBN-a ------------------------------------------------------------------------------------

def test_ibn_instance_normalises_the_first_half_and_batch_normalises_the_rest():
    layer = IBN(6).train()
    x = torch.randn(4, 6, 5, 5) * 3 + 1
    out = layer(x)
    first = x[:, :3]
    inst = (first - first.mean(dim=(2, 3), keepdim=True)) / (first.var(dim=(2, 3), unbiased=False, keepdim=True)
                                                            + 1e-5).sqrt()
    rest = x[:, 3:]
    batch = (rest - rest.mean(dim=(0, 2, 3), keepdim=True)) / (rest.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
                                                              + 1e-5).sqrt()
    assert torch.allclose(out[:, :3], inst, atol=1e-4) and torch.allclose(out[:, 3:], batch, atol=1e-4)


# --- ResNet -----------------------------------------------------------------------------------

def test_last_stride_1_keeps_the_stride_16_map():
    images = torch.randn(2, 3, 64, 32)
    one = ReIDResNet(BuildContext(), arch="resnet18", last_stride=1)
    two = ReIDResNet(BuildContext(), arch="resnet18", last_stride=2)
    assert one(make_batch(images))["map"].shape == (2, 512, 4, 2)
    assert two(make_batch(images))["map"].shape == (2, 512, 2, 1)
    assert one(make_batch(images))["global"].shape == (2, 512) and one.feature_dim == 512


#: Parameter names of the IBN-Net authors' resnet50_ibn_a (XingangPan/IBN-Net, resnet_ibn_a.py).
AUTHORS_IBN_A_KEYS = [
    "conv1.weight", "bn1.weight", "bn1.running_var",
    "layer1.0.conv1.weight", "layer1.0.bn1.IN.weight", "layer1.0.bn1.IN.bias",
    "layer1.0.bn1.BN.weight", "layer1.0.bn1.BN.running_mean", "layer1.0.bn2.weight",
    "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_var",
    "layer3.5.bn1.IN.weight", "layer3.5.bn1.BN.bias",
    "layer4.0.bn1.weight", "layer4.0.bn1.running_mean", "layer4.2.conv3.weight",
]


def test_ibn_a_resnet50_has_the_authors_parameter_names_and_split():
    model = ReIDResNet(BuildContext(), arch="resnet50", ibn=True)
    keys = set(model.model.state_dict())
    assert set(AUTHORS_IBN_A_KEYS) <= keys
    assert not any(k.startswith("layer4") and ".IN." in k for k in keys)  # layer4 keeps BN (IBN-a)
    assert model.model.layer1[0].bn1.IN.weight.shape == (32,)  # half of 64 planes
    assert model.model.layer3[0].bn1.BN.weight.shape == (128,)  # 256 - 128


def test_ibn_a_weights_load_from_an_authors_style_file(tmp_path):
    # the authors' release wraps the weights as {"state_dict": {"module.<name>": ...}} with the classifier
    torch.manual_seed(0)
    source = ReIDResNet(BuildContext(), arch="resnet18", ibn=True)
    state = {f"module.{k}": v.clone() for k, v in source.model.state_dict().items()}
    state["module.fc.weight"], state["module.fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    path = tmp_path / "resnet18_ibn_a.pth.tar"
    torch.save({"state_dict": state, "epoch": 100}, path)
    loaded = ReIDResNet(BuildContext(), arch="resnet18", ibn=True, pretrained=str(path))
    for name, tensor in source.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    images = torch.randn(2, 3, 64, 32)
    source.eval(), loaded.eval()
    assert torch.allclose(source(make_batch(images))["global"], loaded(make_batch(images))["global"])


def test_a_plain_resnet_file_into_an_ibn_model_names_the_keys(tmp_path):
    path = tmp_path / "plain.pth"
    torch.save(ReIDResNet(BuildContext(), arch="resnet18").model.state_dict(), path)
    with pytest.raises(ValueError, match=r"missing keys \(e\.g\. layer1\.0\.bn1\.BN"):
        ReIDResNet(BuildContext(), arch="resnet18", ibn=True, pretrained=str(path))


def test_a_resnet_file_without_batchnorm_counters_loads_as_torch_loads_it(tmp_path):
    """torchvision's ResNet files from before 0.4.1 (and other exporters') have no
    num_batches_tracked; torch's strict load_state_dict accepts them (BatchNorm supplies the
    counter to a state dict without version metadata), so the name check must not refuse
    them as 'missing keys'."""
    source = ReIDResNet(BuildContext(), arch="resnet18").model
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    reference = ReIDResNet(BuildContext(), arch="resnet18").model
    reference.load_state_dict(state, strict=True)  # the reference: torch accepts the file
    path = tmp_path / "resnet18-5c106cde.pth"
    torch.save(state, path)
    loaded = ReIDResNet(BuildContext(), arch="resnet18", pretrained=str(path)).model
    assert torch.equal(loaded.state_dict()["layer3.1.bn2.running_var"], state["layer3.1.bn2.running_var"])


def test_a_resnet_file_of_another_width_is_one_line_naming_a_tensor_and_both_shapes(tmp_path):
    """Same names, other shapes (a wide ResNet's file, or one saved with other model_kwargs)
    passed the name check and came out as torch's 'Error(s) in loading state_dict ... size
    mismatch for ...' RuntimeError (exit 1, no pipeline key): now one ValueError line."""
    state = ReIDResNet(BuildContext(), arch="resnet18").model.state_dict()
    state["layer4.1.conv2.weight"] = torch.zeros(512, 512, 1, 1)
    path = tmp_path / "other_width.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as caught:
        ReIDResNet(BuildContext(), arch="resnet18", pretrained=str(path))
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "does not fit this ResNet" in message, message
    assert "layer4.1.conv2.weight is [512, 512, 1, 1] in the file, [512, 512, 3, 3] in the model" in message, message


@pytest.mark.parametrize("wrapping", ["ema_and_raw", "model_ema_only", "state_dict", "model", "module_prefix"])
def test_a_resnet_training_checkpoint_is_unwrapped_as_timm_unwraps_it(tmp_path, wrapping):
    """The reference is timm's own load_state_dict (use_ema=True, what the timm backbone's
    pretrained path uses): a training checkpoint's EMA copy first, then state_dict / model,
    `module.` stripped. The resnet backbone read only state_dict / model, so a file holding
    its EMA copy alone was refused, and one holding both loaded the raw weights."""
    from timm.models import load_state_dict as timm_load_state_dict

    torch.manual_seed(0)
    raw = ReIDResNet(BuildContext(), arch="resnet18").model.state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in raw.items()}
    files = {"ema_and_raw": {"state_dict": raw, "state_dict_ema": ema, "epoch": 3},
             "model_ema_only": {"model_ema": ema}, "state_dict": {"state_dict": raw}, "model": {"model": raw},
             "module_prefix": {"state_dict": {f"module.{k}": v for k, v in raw.items()}}}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(files[wrapping], path)
    expected = timm_load_state_dict(str(path))
    loaded = ReIDResNet(BuildContext(), arch="resnet18", pretrained=str(path)).model.state_dict()
    for key in ("conv1.weight", "layer4.1.bn2.running_mean"):
        assert torch.equal(loaded[key], expected[key]), (wrapping, key)


def test_non_local_blocks_follow_the_last_units_of_each_stage():
    model = ReIDResNet(BuildContext(), arch="resnet50", non_local=[0, 2, 3, 0])
    assert len(model.non_local["layer2"]) == 2 and len(model.non_local["layer3"]) == 3
    assert model._after == {"layer2": [2, 3], "layer3": [3, 4, 5]}
    with pytest.raises(ValueError, match="4 non-negative"):
        ReIDResNet(BuildContext(), arch="resnet18", non_local=[0, 1])


def test_non_local_blocks_are_in_the_forward_and_get_gradients():
    model = ReIDResNet(BuildContext(), arch="resnet18", non_local=[0, 1, 1, 0], pooling="gem")
    for block in model.non_local.values():
        torch.nn.init.ones_(block[0].W[1].weight)  # let them act
    out = model(make_batch(torch.randn(2, 3, 64, 32)))["global"]
    out.sum().backward()
    assert all(b[0].theta.weight.grad.abs().sum() > 0 for b in model.non_local.values())
    assert model.pool.p.grad is not None


# --- TransReID ----------------------------------------------------------------------------------

TINY_VIT = dict(arch="vit_tiny_patch16_224", model_kwargs=dict(embed_dim=32, depth=2, num_heads=2))


def test_overlapping_patches_give_the_papers_grid():
    # 256x128 with P = 16, S = 12: floor((256 - 16)/12 + 1) x floor((128 - 16)/12 + 1) = 21 x 10
    model = TransReIDViT(BuildContext(image_size=(256, 128), num_cameras=2), **TINY_VIT, stride=12)
    assert model.patch_grid == (21, 10) and model.model.pos_embed.shape == (1, 1 + 210, 32)
    out = model(make_batch(torch.randn(2, 3, 256, 128)))
    assert out["tokens"].shape == (2, 211, 32) and out["global"].shape == (2, 32)
    assert out["parts"].shape == (2, 4, 32)


def test_sie_adds_lambda_times_the_camera_view_embedding_to_every_token():
    ctx = BuildContext(image_size=(32, 32), num_cameras=3)
    model = TransReIDViT(ctx, arch="vit_tiny_patch16_224", model_kwargs=dict(embed_dim=8, depth=1, num_heads=2),
                         stride=16, sie=["camera", "view"], num_views=2, sie_coefficient=3.0, jpm=False,
                         drop_path_rate=0.0).eval()
    images = torch.randn(2, 3, 32, 32)
    batch = make_batch(images, camids=[1, 2], extras={"view": torch.tensor([1, 0])})
    vit = model.model
    plain = torch.cat([vit.cls_token.expand(2, -1, -1), vit.patch_embed(images)], dim=1) + vit.pos_embed
    side = model.sie_embed[torch.tensor([1 * 2 + 1, 2 * 2 + 0])]  # camera * N_V + view
    assert torch.allclose(model.forward_tokens(batch), plain + 3.0 * side, atol=1e-6)


def test_sie_camera_outside_the_table_names_num_cameras():
    model = TransReIDViT(BuildContext(image_size=(32, 32), num_cameras=2), **TINY_VIT, stride=16, jpm=False)
    with pytest.raises(ValueError, match="num_cameras"):
        model(make_batch(torch.randn(1, 3, 32, 32), camids=[5]))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"arch": "vit_nonesuch_patch16"}, ValueError, "unknown arch 'vit_nonesuch_patch16'"),
    ({"pretrained": "/nowhere/vit.pth"}, FileNotFoundError, "pretrained checkpoint not found"),
    ({"model_kwargs": {"num_classes": 5}}, ValueError, "model_kwargs.num_classes is not allowed"),
])
def test_errors_of_the_timm_build_name_transreid(kwargs, error, message):
    """The user wrote `transreid`: the core timm backbone's checks speak of it."""
    with pytest.raises(error, match=r"^backbone 'transreid': " + re.escape(message)):
        TransReIDViT(BuildContext(image_size=(32, 32), num_cameras=2), **{**TINY_VIT, **kwargs})


def test_jigsaw_shifts_then_interleaves_the_patches():
    # [cls, 1..8], shift 3 -> 3 4 5 6 7 8 1 2 -> groups of 4 interleaved -> 3 7 4 8 5 1 6 2
    tokens = torch.arange(9, dtype=torch.float32).view(1, 9, 1)
    assert jigsaw(tokens, shift=3, groups=2).flatten().tolist() == [3, 7, 4, 8, 5, 1, 6, 2]
    # 7 patches, shift 2 -> 2..7 1, padded with the second-to-last (7) -> 2 6 3 7 4 1 5 7
    tokens = torch.arange(8, dtype=torch.float32).view(1, 8, 1)
    assert jigsaw(tokens, shift=2, groups=2).flatten().tolist() == [2, 6, 3, 7, 4, 1, 5, 7]


def test_jpm_parts_run_through_their_own_copy_of_the_last_layer():
    torch.manual_seed(0)
    model = TransReIDViT(BuildContext(image_size=(64, 32), num_cameras=2), **TINY_VIT, stride=12)
    out = model(make_batch(torch.randn(2, 3, 64, 32)))
    # a random projection: the parts are LayerNorm outputs (weight 1, bias 0), whose plain sum
    # over features is 0 whatever the input, so its gradients would be rounding noise
    (out["parts"] * torch.randn_like(out["parts"])).sum().backward()
    assert model.jpm_block.attn.qkv.weight.grad.abs().sum() > 1e-3
    assert model.model.blocks[-1].attn.qkv.weight.grad is None  # the global branch's last layer
    assert model.model.blocks[0].attn.qkv.weight.grad.abs().sum() > 1e-3  # shared layers
    model.zero_grad(set_to_none=True)
    model(make_batch(torch.randn(2, 3, 64, 32)))["global"].sum().backward()
    assert model.jpm_block.attn.qkv.weight.grad is None


def test_jpm_part_is_the_class_token_of_the_copied_layer_on_its_group():
    torch.manual_seed(0)
    model = TransReIDViT(BuildContext(image_size=(64, 32), num_cameras=2), **TINY_VIT, stride=16,
                         jpm_groups=2, shift=2, drop_path_rate=0.0).eval()
    batch = make_batch(torch.randn(1, 3, 64, 32))
    x = model.forward_tokens(batch)  # 4 x 2 = 8 patches
    order = [2, 6, 3, 7, 4, 8, 5, 1]  # shift 2 then 2 interleaved groups, as above
    second = torch.cat([x[:, :1], x[:, order[4:]]], dim=1)
    expected = model.jpm_norm(model.jpm_block(second))[:, 0]
    assert torch.allclose(model(batch)["parts"][:, 1], expected, atol=1e-6)


def test_jpm_head_concatenates_global_and_parts_over_k():
    ctx = BuildContext(feature_dim=4, num_identities=3)
    head = JPMHead(ctx, num_parts=2, embedding="pre").train()
    g, p = torch.randn(5, 4), torch.randn(5, 2, 4)
    out = head({"global": g, "parts": p}, make_batch(torch.zeros(5, 3, 2, 2)))
    assert torch.allclose(out["embedding"], torch.cat([g, p[:, 0] / 2, p[:, 1] / 2], dim=1))
    assert out["logits"].shape == (5, 3) and out["logits_part1"].shape == (5, 3)
    assert torch.equal(out["features_part1"], p[:, 1])
    assert not any(bn.bias.requires_grad for bn in head.bns)

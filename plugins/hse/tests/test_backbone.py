"""The dual-token ViT (MGOR Sec. 3.3): two class tokens c_G and c_L on timm's ViT."""

import pytest
import torch

from core.models.timm_backbone import TimmBackbone
from reid_hse.backbone import DualTokenViT


@pytest.fixture
def build(tiny_vit):
    def _build(ctx, **kwargs):
        torch.manual_seed(0)
        return DualTokenViT(ctx, **{**tiny_vit, **kwargs}).train()

    return _build


def test_token_shapes(ctx, build, make_batch):
    backbone = build(ctx)
    out = backbone(make_batch(ctx))
    n = len(ctx.train)
    assert backbone.patch_grid == (4, 2) and backbone.feature_dim == 32
    assert out["global"].shape == (n, 32) and out["local"].shape == (n, 32)
    assert out["tokens"].shape == (n, 1 + 8, 32)  # [c_G, patches]: c_L is not among the tokens
    assert torch.equal(out["tokens"][:, 0], out["global"])
    assert backbone.forward_tokens(make_batch(ctx).images).shape == (n, 2 + 8, 32)


@pytest.mark.parametrize("attention", ["isolated", "full"])
def test_both_tokens_see_every_patch(ctx, attention, build, make_batch):
    backbone = build(ctx, attention=attention)
    images = make_batch(ctx).images[:1].requires_grad_(True)
    x = backbone.forward_tokens(images)
    rows, cols = backbone.patch_grid
    for name, token in (("c_G", x[0, 0]), ("c_L", x[0, 1])):
        (grad,) = torch.autograd.grad(token.pow(2).sum(), images, retain_graph=True)
        per_patch = grad.abs().sum(1)[0].reshape(rows, 8, cols, 8).sum((1, 3))  # (rows, cols)
        assert (per_patch > 0).all(), f"{name} does not depend on every patch: {per_patch}"


def test_local_token_shares_the_class_position_and_starts_as_the_class_token(ctx, build, make_batch):
    backbone = build(ctx)
    assert torch.equal(backbone.local_token, backbone.model.cls_token)
    torch.testing.assert_close(backbone._local_position(), backbone.model.pos_embed[:, :1])
    # same token, same position, same view of the patches: the same output at init
    out = backbone(make_batch(ctx))
    torch.testing.assert_close(out["local"], out["global"])


def test_isolated_global_path_is_the_plain_vit_and_ignores_the_local_token(ctx, build, make_batch):
    backbone = build(ctx)
    batch = make_batch(ctx)
    plain = TimmBackbone.forward(backbone, batch)["global"]  # timm's own forward, no c_L
    before = backbone(batch)
    with torch.no_grad():
        backbone.local_token.add_(torch.randn_like(backbone.local_token))
    after = backbone(batch)
    torch.testing.assert_close(before["global"], plain)
    torch.testing.assert_close(after["global"], before["global"])
    assert not torch.allclose(after["local"], before["local"])


def test_full_attention_lets_the_global_token_read_the_local_one(ctx, build, make_batch):
    backbone = build(ctx, attention="full")
    batch = make_batch(ctx)
    before = backbone(batch)["global"]
    with torch.no_grad():
        backbone.local_token.add_(torch.randn_like(backbone.local_token))
    assert not torch.allclose(backbone(batch)["global"], before)


def test_inference_returns_the_same_global_feature_without_the_local_token(ctx, build, make_batch):
    backbone = build(ctx)
    batch = make_batch(ctx)
    trained = backbone(batch)["global"]
    out = backbone.eval()(batch)
    assert "local" not in out
    torch.testing.assert_close(out["global"], trained)


def test_pretrained_file_loads_the_shared_parts_and_seeds_the_local_token(tmp_path, build_ctx, tiny_vit):
    # a square "ImageNet-style" source (32 x 32 -> 4 x 4 patches) loaded at 32 x 16 (4 x 2)
    square = build_ctx({"person": 2})
    square.image_size = (32, 32)
    source = TimmBackbone(square, **tiny_vit).model
    with torch.no_grad():
        source.cls_token.normal_()
    path = tmp_path / "vit.pth"
    torch.save(source.state_dict(), path)
    backbone = DualTokenViT(build_ctx({"person": 2}), pretrained=str(path), **tiny_vit)
    src, dst = source.state_dict(), backbone.model.state_dict()
    for key in src:
        if key != "pos_embed":
            assert torch.equal(src[key], dst[key]), key
    assert dst["pos_embed"].shape == (1, 1 + 4 * 2, 32)  # resampled by timm to the 4 x 2 grid
    assert torch.equal(backbone.local_token, source.cls_token)
    assert set(backbone.state_dict()) - {f"model.{k}" for k in dst} == {"local_token"}


def test_a_model_without_vit_tokens_is_an_error_naming_the_key(ctx, tiny_vit):
    with pytest.raises(ValueError, match="backbone 'hse_vit': arch 'resnet18' builds a ResNet"):
        DualTokenViT(ctx, arch="resnet18")
    with pytest.raises(ValueError, match="global_pool='avg'"):
        DualTokenViT(ctx, arch=tiny_vit["arch"], model_kwargs={**tiny_vit["model_kwargs"], "global_pool": "avg"})


@pytest.mark.parametrize("key, value", [("attention", "masked"), ("local_init", "zeros")])
def test_invalid_choices_name_the_key_and_the_valid_values(ctx, key, value, tiny_vit):
    with pytest.raises(ValueError, match=f"backbone 'hse_vit': {key} must be one of"):
        DualTokenViT(ctx, **{**tiny_vit, key: value})


def test_core_errors_name_this_backbone(ctx):
    with pytest.raises(ValueError, match="backbone 'hse_vit': unknown arch"):
        DualTokenViT(ctx, arch="vit_tinyy_patch16")


def test_full_attention_inference_keeps_the_local_token(ctx, tiny_vit, make_batch):
    """With `attention: full` z_G reads c_L, so inference must run the dual-token sequence:
    the evaluated z_G equals the training-mode z_G (no dropout in the tiny ViT)."""
    torch.manual_seed(0)
    backbone = DualTokenViT(ctx, **tiny_vit, attention="full").train()
    with torch.no_grad():
        backbone.local_token.add_(torch.randn_like(backbone.local_token))  # c_L != c_G
        batch = make_batch(ctx)
        trained = backbone(batch)["global"]
        evaluated = backbone.eval()(batch)["global"]
    torch.testing.assert_close(evaluated, trained)

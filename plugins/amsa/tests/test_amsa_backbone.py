"""The `amsa_clip` backbone: outputs, the local tokens' position embedding, Residual Mask
Prediction accumulated layer to layer (eq. 5), the gate each block uses (eq. 6),
the stripes variant, frozen parts, and loading open_clip weights."""

import math

import pytest
import torch

from reid_amsa.masking import attention_mask, gate, per_head, stripe_masks


def test_outputs_concatenate_cls_and_part_features_and_carry_masks_per_layer(tiny_backbone, make_batch):
    backbone = tiny_backbone()
    out = backbone(make_batch([0, 1, 2]))
    assert backbone.patch_grid == (4, 2) and backbone.feature_dim == 4 * 16
    assert out["global"].shape == (3, 64)
    assert torch.equal(out["global"], torch.cat([out["cls_feature"], out["part_features"].flatten(1)], dim=1))
    assert out["part_mask_logits"].shape == (3, 2, 3, 8)  # (B, layers, parts, patches)
    assert torch.equal(out["part_masks"], torch.sigmoid(out["part_mask_logits"][:, -1]))


def test_local_tokens_share_the_class_tokens_position_embedding(tiny_backbone, make_batch):
    backbone = tiny_backbone()
    x = backbone.embed(make_batch([0]).images)
    visual = backbone.visual
    expected = visual.ln_pre(backbone.local_tokens + visual.positional_embedding[0])
    assert torch.allclose(x[0, 1:4], expected, atol=1e-6)
    assert torch.allclose(x[0, 0], visual.ln_pre(visual.class_embedding + visual.positional_embedding[0]), atol=1e-6)


def _block_inputs(backbone, batch, gate_masks=None):
    """The backbone's outputs, and per block the sequence entering it and the attention
    mask it was called with."""
    seen = []

    def hook(module, args, kwargs):
        seen.append((args[0].detach().clone(), kwargs["attn_mask"].detach().clone()))

    handles = [b.register_forward_pre_hook(hook, with_kwargs=True) for b in backbone.visual.transformer.resblocks]
    try:
        out = backbone(batch, gate_masks=gate_masks)
    finally:
        for h in handles:
            h.remove()
    return out, seen


def eq5_reference(predictor, r, patches, previous=None):
    """Eq. 5 of MUVA written out from the predictor's weights, loop by loop:
    r' = CrossAttn(LN(r), LN(F)) + r;  M_l = MLP(LN(r')) + M_{l-1}; the cross-attention
    as softmax(q k^T / sqrt(d)) v per head with bias-free q/k/v and a biased output
    projection; the MLP Linear -> QuickGELU -> Linear."""

    def layer_norm(x, norm):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias

    attn = predictor.cross_attn
    queries = layer_norm(r, predictor.norm_local) @ attn.q.weight.t()
    context = layer_norm(patches, predictor.norm_patches)
    keys, values = context @ attn.k.weight.t(), context @ attn.v.weight.t()
    width, heads = r.shape[-1], attn.heads
    d = width // heads
    out = torch.zeros_like(queries)
    for b in range(r.shape[0]):
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            weights = torch.softmax(queries[b, :, cols] @ keys[b, :, cols].t() / math.sqrt(d), dim=-1)
            out[b, :, cols] = weights @ values[b, :, cols]
    r_prime = out @ attn.out.weight.t() + attn.out.bias + r  # the residual inside the RMP
    first, second = predictor.mlp[0], predictor.mlp[2]
    hidden = layer_norm(r_prime, predictor.norm_mlp) @ first.weight.t() + first.bias
    hidden = hidden * torch.sigmoid(1.702 * hidden)  # QuickGELU
    scores = hidden @ second.weight.t() + second.bias
    return scores if previous is None else scores + previous


def test_the_mask_predictor_is_eq5_written_out(tiny_backbone):
    from reid_amsa.mask_predictor import ResidualMaskPredictor

    torch.manual_seed(2)
    predictor = ResidualMaskPredictor(width=32, num_patches=8, heads=4)
    with torch.no_grad():  # non-trivial LayerNorm affine and output bias, so that each term shows
        for norm in (predictor.norm_local, predictor.norm_patches, predictor.norm_mlp):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0, 0.1)
        predictor.mlp[0].bias.normal_(0, 0.1)
        predictor.cross_attn.q.weight.mul_(30)  # peaked attention: the queries' side shows too
        predictor.cross_attn.k.weight.mul_(30)
    r, patches, previous = torch.randn(2, 3, 32), torch.randn(2, 8, 32), torch.randn(2, 3, 8)
    with torch.no_grad():
        assert torch.allclose(predictor(r, patches, previous), eq5_reference(predictor, r, patches, previous),
                              atol=1e-5)
        assert torch.allclose(predictor(r, patches), eq5_reference(predictor, r, patches), atol=1e-5)


def test_mask_predictor_layers_and_init_follow_the_authors(tiny_backbone):
    from reid_amsa.mask_predictor import ResidualMaskPredictor

    torch.manual_seed(0)
    predictor = ResidualMaskPredictor(width=64, num_patches=128, heads=8)
    attn = predictor.cross_attn
    assert attn.q.bias is None and attn.k.bias is None and attn.v.bias is None
    assert attn.out.bias is not None and attn.out.bias.shape == (64,)
    for weight in (attn.q.weight, attn.k.weight, attn.v.weight, attn.out.weight, predictor.mlp[0].weight,
                   predictor.mlp[2].weight):  # trunc-normal std 0.02 (PyTorch's default here: std 0.072)
        assert abs(float(weight.std()) - 0.02) < 0.003 and abs(float(weight.mean())) < 0.003
    assert predictor.mlp[0].out_features == 128  # hidden width = the number of patches
    assert (predictor.mlp[0].bias == 0).all() and (predictor.mlp[2].bias == 0).all()


def test_mask_scores_accumulate_residually_from_the_tokens_entering_each_block(tiny_backbone, make_batch):
    backbone = tiny_backbone().eval()
    with torch.no_grad():
        out, seen = _block_inputs(backbone, make_batch([0, 1]))
        logits = out["part_mask_logits"]
        for layer, (x, _) in enumerate(seen):
            own = eq5_reference(backbone.mask_predictors[layer], x[:, 1:4], x[:, 4:])  # MLP(LN(r')) alone
            previous = logits[:, layer - 1] if layer else torch.zeros_like(own)
            assert torch.allclose(logits[:, layer], own + previous, atol=1e-5)  # M_l = MLP(...) + M_{l-1}
            assert not torch.allclose(own, torch.zeros_like(own))


def test_each_block_is_gated_by_its_own_layers_thresholded_probabilities(tiny_backbone, make_batch):
    backbone = tiny_backbone(threshold=0.5).eval()
    with torch.no_grad():
        out, seen = _block_inputs(backbone, make_batch([0, 1]))
    for layer, (_, mask) in enumerate(seen):
        gates = gate(torch.sigmoid(out["part_mask_logits"][:, layer]), 0.5)
        assert torch.equal(mask, per_head(attention_mask(gates, mask.dtype), backbone.heads[layer]))


def test_the_gate_is_detached_so_only_the_mask_loss_trains_the_predictors(tiny_backbone, make_batch):
    backbone = tiny_backbone()
    out = backbone(make_batch([0, 1]))
    out["global"].sum().backward()
    assert all(p.grad is None for p in backbone.mask_predictors.parameters())
    assert backbone.local_tokens.grad is not None
    backbone.zero_grad(set_to_none=True)
    backbone(make_batch([0, 1]))["part_mask_logits"].sum().backward()
    assert all(p.grad is not None for p in backbone.mask_predictors.parameters())


def test_stripes_variant_gates_with_fixed_thirds_and_has_no_predictors(tiny_backbone, make_batch):
    backbone = tiny_backbone(variant="stripes")
    assert backbone.mask_predictors is None
    out, seen = _block_inputs(backbone, make_batch([0, 1]))
    stripes = stripe_masks((4, 2), 3)
    assert "part_mask_logits" not in out
    assert torch.equal(out["part_masks"], stripes.float().expand(2, -1, -1))
    expected = per_head(attention_mask(stripes.expand(2, -1, -1)), backbone.heads[0])
    assert all(torch.equal(mask, expected) for _, mask in seen)


def test_given_gate_masks_replace_the_predicted_ones(tiny_backbone, make_batch):
    backbone = tiny_backbone().eval()
    masks = torch.zeros(1, 3, 8)
    masks[0, 0, :2], masks[0, 1, 2:6], masks[0, 2, 6:] = 1, 1, 1
    out, seen = _block_inputs(backbone, make_batch([0]), masks)
    assert all(torch.equal(m, per_head(attention_mask(masks > 0.5), backbone.heads[0])) for _, m in seen)
    assert torch.equal(out["part_masks"], masks)


def test_patch_projection_and_text_encoder_are_frozen_prompts_are_not(tiny_backbone):
    backbone = tiny_backbone()
    assert not backbone.visual.conv1.weight.requires_grad
    frozen_text = [n for n, p in backbone.text.named_parameters() if not p.requires_grad]
    trainable_text = [n for n, p in backbone.text.named_parameters() if p.requires_grad]
    assert trainable_text == ["prompts"] and frozen_text
    assert tiny_backbone(freeze_patch_embed=False).visual.conv1.weight.requires_grad


def test_pretrained_weights_load_from_a_file_with_position_embeddings_resized(tiny_backbone, tiny_clip, tmp_path):
    import open_clip

    torch.manual_seed(3)
    source = open_clip.CLIP(**{**tiny_clip, "vision_cfg": {**tiny_clip["vision_cfg"], "image_size": 32}})
    path = tmp_path / "clip.pt"
    torch.save(source.state_dict(), path)  # a 4x4 grid of 8x8 patches (32x32 images)
    backbone = tiny_backbone(pretrained=str(path), seed=9)  # 32x16 images: a 4x2 grid
    block = backbone.visual.transformer.resblocks[1].attn.in_proj_weight
    assert torch.equal(block, source.visual.transformer.resblocks[1].attn.in_proj_weight)
    assert torch.equal(backbone.text.token_embedding.weight, source.token_embedding.weight)
    assert torch.equal(backbone.visual.positional_embedding[0], source.visual.positional_embedding[0])
    assert backbone.visual.positional_embedding.shape == (1 + 8, 32)  # interpolated 4x4 -> 4x2


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No open_clip weights anywhere: an empty Hugging Face cache and home folder."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "hub"


def test_an_open_clip_tag_resolves_to_the_cached_file_without_network(empty_caches):
    from reid_amsa.clip_model import resolve_checkpoint

    repo = empty_caches / "models--timm--vit_base_patch16_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    weights = repo / "snapshots" / "abc123" / "open_clip_model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    path, tag = resolve_checkpoint("ViT-B-16", True)  # true = the `openai` tag
    assert path == weights and tag["quick_gelu"] is True  # OpenAI's weights use QuickGELU


def test_missing_weights_are_clear_errors(tiny_backbone, build_ctx, empty_caches):
    from reid_amsa.backbone import AMSAClip

    with pytest.raises(FileNotFoundError, match="not found"):
        tiny_backbone(pretrained="/nowhere/clip.pt")
    with pytest.raises(FileNotFoundError, match="not in the local cache"):
        AMSAClip(build_ctx(image_size=(256, 128)), model="ViT-B-16", pretrained=True)
    with pytest.raises(ValueError, match="tags:"):
        AMSAClip(build_ctx(image_size=(256, 128)), model="ViT-B-16", pretrained="no-such-tag")
    with pytest.raises(ValueError, match="unknown open_clip model"):
        AMSAClip(build_ctx(image_size=(256, 128)), model="ViT-Q-99")


def test_bad_keys_are_clear_errors(tiny_backbone, build_ctx):
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tiny_backbone(ctx=build_ctx(image_size=(30, 16)))
    with pytest.raises(ValueError, match="variant must be one of"):
        tiny_backbone(variant="boxes")
    with pytest.raises(ValueError, match="templates"):
        tiny_backbone(parts=2)
    with pytest.raises(ValueError, match="must divide"):
        tiny_backbone(mask_heads=3)

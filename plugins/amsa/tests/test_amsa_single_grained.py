"""The single-grained model, `amsa_clip` with `parts: 0` (MUVA Table 5, "MUVA (w/ G)"): the
global token alone with its global text token. Pinned against open_clip's own
`encode_image` (an independent forward of the same weights), the full model's global
text slice, and every MUVA loss written out by hand on the global token."""

import copy
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml

from amsa_stubs import Net, StubTrainer  # registered by conftest.py

D = 16  # TINY_CLIP's embed_dim
REPO = Path(__file__).resolve().parents[3]


def reference_clip(backbone, tiny_clip):
    """A fresh open_clip CLIP at the test image size with the backbone's visual weights."""
    import open_clip

    cfg = copy.deepcopy(tiny_clip)
    cfg["vision_cfg"]["image_size"] = [32, 16]
    cfg["quick_gelu"] = False  # what build_clip picks for a config without weights
    clip = open_clip.CLIP(**cfg)
    clip.visual.load_state_dict(backbone.visual.state_dict())
    return clip.eval()


@pytest.fixture
def single(tiny_backbone, build_ctx, make_batch, tiny_clip):
    from reid_amsa.head import MUVAHead

    ctx = build_ctx(identities=3, images=2)
    backbone = tiny_backbone(ctx=ctx, seed=3, parts=0)
    head = MUVAHead(ctx)
    pids = [0, 0, 1, 1, 2, 2]
    batch = make_batch(pids, seed=2)  # no part_masks: the single-grained model needs none
    with torch.no_grad():
        reference = reference_clip(backbone, tiny_clip).encode_image(batch.images)
    return SimpleNamespace(ctx=ctx, backbone=backbone, head=head, batch=batch, pids=torch.tensor(pids),
                           reference=reference)


# ------------------------------------------------------------------------- the backbone

def test_the_output_is_open_clips_encode_image_of_the_same_weights(single, tiny_backbone, make_batch):
    out = single.backbone(single.batch)
    assert single.backbone.feature_dim == D and set(out) == {"global", "cls_feature"}
    assert out["global"].shape == (6, D)
    assert torch.allclose(out["global"], single.reference, atol=1e-5)
    # the full model's CLS is not this: its CLS attends to the local tokens
    full = tiny_backbone(seed=3)
    full.visual.load_state_dict(single.backbone.visual.state_dict())
    with torch.no_grad():
        full_cls = full(single.batch)["cls_feature"]
    assert not torch.allclose(full_cls, single.reference, atol=1e-3)


def test_no_local_token_no_mask_predictor_and_no_attention_mask(single):
    backbone = single.backbone
    names = [n for n, _ in backbone.named_parameters()]
    assert backbone.local_tokens is None and backbone.mask_predictors is None
    assert not [n for n in names if not n.startswith(("visual.", "text."))]
    seen = []

    def hook(module, args, kwargs):
        seen.append((args[0].shape[1], kwargs.get("attn_mask")))

    handles = [b.register_forward_pre_hook(hook, with_kwargs=True) for b in backbone.visual.transformer.resblocks]
    try:
        backbone(single.batch)
    finally:
        for h in handles:
            h.remove()
    assert len(seen) == 2
    assert all(length == 1 + 8 and mask is None for length, mask in seen)  # [CLS, 8 patches], plain attention


def test_gating_means_nothing_and_given_masks_are_refused(single):
    backbone = single.backbone
    for source in ("labels", "stripes", "predicted"):  # no part_masks in the batch, yet no error
        assert backbone.gate_masks_from(source, single.batch, "test") is None
    with pytest.raises(ValueError, match=r"no local tokens to gate \(parts: 0\)"):
        backbone(single.batch, gate_masks=torch.ones(6, 3, 8))


def test_bad_parts_and_stripes_without_parts_are_clear_errors(tiny_backbone):
    with pytest.raises(ValueError, match=r"parts must be >= 0 \(0: the single-grained model"):
        tiny_backbone(parts=-1)
    with pytest.raises(ValueError, match="variant 'stripes' gates local tokens, and parts 0 has none"):
        tiny_backbone(parts=0, variant="stripes")


def test_the_text_token_is_the_global_template_alone_equal_to_the_full_models_global_slice(tiny_backbone):
    from reid_amsa.prompts import PAPER_TEMPLATES

    single = tiny_backbone(seed=5, parts=0)
    full = tiny_backbone(seed=6)
    full.text.load_state_dict({**single.text.state_dict(), "prompts": full.text.prompts.detach().clone()})
    assert single.text.num_templates == 1 and single.text.output_dim == D
    with torch.no_grad():
        full.text.prompts[:, 0] = single.text.prompts[:, 0]
        ids = torch.tensor([2, 0, 1])
        got, whole = single.text(ids), full.text(ids)
    assert torch.equal(single.text.template_ids[0], full.text.template_ids[0])  # "A photo of a X X X X person"
    assert torch.allclose(got, whole[:, :D], atol=1e-6)
    assert not torch.allclose(got, whole[:, D:2 * D], atol=1e-3)
    with pytest.raises(ValueError, match="4 templates for 0 parts"):
        tiny_backbone(parts=0, templates=list(PAPER_TEMPLATES))


# ------------------------------------------------------------------------- the losses

def by_hand_centroids(features, pids, classes):
    rows = []
    for c in range(classes):
        x = [v / v.norm() for v, p in zip(features, pids) if int(p) == c]
        m = sum(x) / len(x)
        rows.append(m / m.norm())
    return torch.stack(rows)


def test_cmp_with_vpm1_of_clips_image_features(single):
    """Eq. 1 on the global token: VPM-1 = centroids of encode_image; t_c the global text token."""
    from reid_amsa.cmp_loss import MultiGrainedCMPLoss

    loss = MultiGrainedCMPLoss(single.ctx)  # default gating labels: nothing to gate
    loss.on_stage_start(StubTrainer(Net(single.backbone, single.head, [loss]), [single.batch], single.pids), None)
    memory = by_hand_centroids(single.reference, single.pids, 3)
    assert torch.allclose(loss.memory, memory, atol=1e-5)
    value, _ = loss({}, single.batch)
    with torch.no_grad():
        text = single.backbone.text(torch.arange(3))
    expected = 0.0
    for c in range(3):
        sims = [float(text[c] @ memory[j] / text[c].norm()) for j in range(3)]
        expected -= sims[c] - math.log(sum(math.exp(s) for s in sims))
    assert value.item() == pytest.approx(expected / 3, rel=1e-5)


def test_imp_i2tce_and_id_on_the_global_token(single):
    """Eq. 2 (L_imp, tau 0.01, VPM-2 of BN(encode_image)), eq. 4 (cosine, eps 0.1) and the ID
    classifier, each on the D-dimensional global token."""
    from reid_amsa.i2t_loss import ImageToTextCELoss
    from reid_amsa.prototype_loss import PrototypeContrastLoss

    backbone, head = single.backbone, single.head.eval()
    bn = head.bn
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(D) * 0.1)
        bn.running_var.copy_(torch.rand(D) + 0.5)
        bn.weight.copy_(torch.rand(D) + 0.5)
    x = single.reference
    with torch.no_grad():
        bn_x = (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias

    proto = PrototypeContrastLoss(single.ctx)
    net = Net(backbone, head, [proto]).eval()
    proto.on_epoch_start(StubTrainer(net, [single.batch], single.pids), 0)
    memory = by_hand_centroids(bn_x, single.pids, 3)
    assert torch.allclose(proto.memory, memory, atol=1e-5)
    with torch.no_grad():
        outputs = {**backbone(single.batch), **head(backbone(single.batch), single.batch)}
    assert outputs["features"].shape == (6, D)
    assert torch.allclose(outputs["bn_features"], bn_x, atol=1e-5)
    value, _ = proto(outputs, single.batch)
    expected = 0.0
    for v, y in zip(bn_x, single.pids.tolist()):
        s = [float(v @ memory[j] / v.norm()) / 0.01 for j in range(3)]
        expected -= s[y] - math.log(sum(math.exp(t) for t in s))
    assert value.item() == pytest.approx(expected / 6, rel=1e-5)

    i2t = ImageToTextCELoss(single.ctx)
    i2t.build_memory()
    with torch.no_grad():
        text = backbone.text(torch.arange(3))
    value, _ = i2t(outputs, single.batch)
    expected = 0.0
    for f, y in zip(x, single.pids.tolist()):
        s = [float(f @ text[j] / (f.norm() * text[j].norm())) for j in range(3)]
        log_p = [t - math.log(sum(math.exp(u) for u in s)) for t in s]
        q = [0.9 * (j == y) + 0.1 / 3 for j in range(3)]
        expected -= sum(qj * lp for qj, lp in zip(q, log_p))
    assert value.item() == pytest.approx(expected / 6, rel=1e-5)

    weight = head.classifier.weight  # L_id's logits: the classifier on BN(global), in training
    assert weight.shape == (3, D)
    features = backbone(single.batch)
    train_out = head.train()(features, single.batch)
    assert torch.allclose(train_out["logits"], train_out["bn_features"] @ weight.t(), atol=1e-5)


def test_the_mask_loss_refuses_the_single_grained_model(single):
    from reid_amsa.mask_loss import PartMaskLoss

    with pytest.raises(ValueError, match=r"loss 'muva_mask': the backbone has no local tokens \(amsa_clip "
                                         r"`parts: 0`.*leave muva_mask out or set parts >= 1"):
        PartMaskLoss(single.ctx)


# ------------------------------------------------------------------------- the ablation row

def resolved(name):
    from core.config.loading import load_pipeline

    return copy.deepcopy(load_pipeline(REPO / "pipelines" / "muva_ablation" / name).data)


def test_the_single_grained_row_differs_from_full_only_in_what_w_g_removes():
    full, single = resolved("full.yaml"), resolved("single_grained.yaml")
    assert single["backbone"]["parts"] == 0 and full["backbone"]["parts"] == 3
    assert [l["name"] for l in full["losses"]] == ["ce", "muva_prototype", "muva_i2t", "muva_mask"]
    assert single["losses"] == full["losses"][:3]  # L_mask goes with the local tokens
    (p_full, r_full), (p_single, r_single) = full["stages"], single["stages"]
    assert p_single == p_full  # stage 1 as in the full row
    assert r_full["trainable"] == ["backbone.visual.*", "backbone.local_tokens", "backbone.mask_predictors.*",
                                   "head.*"]
    assert r_single["trainable"] == ["backbone.visual.*", "head.*"]
    assert r_full["param_groups"][0]["params"] == ["backbone.mask_predictors.*"] and not r_single.get("param_groups")
    rest = ("trainable", "param_groups")
    assert {k: v for k, v in r_single.items() if k not in rest} == {k: v for k, v in r_full.items() if k not in rest}
    for key in set(full) | set(single):
        if key not in ("name", "backbone", "losses", "stages"):
            assert single.get(key) == full.get(key), key
    assert {k: v for k, v in single["backbone"].items() if k != "parts"} == \
        {k: v for k, v in full["backbone"].items() if k != "parts"}

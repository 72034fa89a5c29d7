"""`core explain` for models without part masks: Grad-CAM of a similarity (CNNs) and
attention rollout (ViTs), against independent references (a plain loop over layers, the
analytic gradient of a tiny CNN, pytorch-grad-cam when installed), on constructed models
whose answer is known, and end to end on tiny runs of the synthetic world."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch import nn

from core.cli import main
from core.context import BuildContext
from core.interfaces import Batch
from core.separate_device import emulation_for
from core.testing import TINY_PIPELINE
from core.tools.gradcam import grad_cam, upsample
from core.tools.rollout import AttentionRecorder, attention_modules, rollout, rollout_maps


def batch_of(images: torch.Tensor) -> Batch:
    zeros = torch.zeros(len(images), dtype=torch.long)
    return Batch(images=images, pids=zeros, camids=zeros, categories=zeros, domains=zeros, roles=zeros,
                 indices=torch.arange(len(images)))


# --- attention rollout -----------------------------------------------------------------------

def random_attention(layers=3, batch=2, heads=3, tokens=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, tokens, tokens, generator=g).mul(2).softmax(-1) for _ in range(layers)]


def rollout_by_loop(attentions, discard_ratio=0.0, fusion="mean"):
    """Abnar & Zuidema (2020), Sec. 3, written out per image with numpy: fuse heads, (optionally
    zero the weakest entries, never [0, 0]), add I, renormalise rows, multiply in layer order."""
    b, _, n, _ = attentions[0].shape
    out = []
    for i in range(b):
        flow = np.eye(n)
        for attn in attentions:
            heads = attn[i].double().numpy()
            a = {"mean": heads.mean(0), "max": heads.max(0)}[fusion].copy()
            drop = int(n * n * discard_ratio)
            if drop:
                for flat_index in np.argsort(a.reshape(-1), kind="stable")[:drop]:
                    if flat_index != 0:
                        a.reshape(-1)[flat_index] = 0.0
            a = a + np.eye(n)
            for row in range(n):
                a[row] = a[row] / a[row].sum()
            flow = a @ flow
        out.append(flow[0, 1:])
    return np.stack(out)


@pytest.mark.parametrize("fusion", ["mean", "max"])
def test_rollout_matches_a_plain_loop_over_layers(fusion):
    attentions = random_attention()
    got = rollout(attentions, head_fusion=fusion, prefix_tokens=1)
    np.testing.assert_allclose(got.numpy(), rollout_by_loop(attentions, fusion=fusion), rtol=1e-5, atol=1e-7)


def test_rollout_with_a_discard_ratio_matches_the_loop():
    attentions = random_attention(seed=1)
    got = rollout(attentions, discard_ratio=0.5)
    np.testing.assert_allclose(got.numpy(), rollout_by_loop(attentions, discard_ratio=0.5), rtol=1e-5, atol=1e-7)


def test_rollout_of_one_layer_is_half_attention_half_identity():
    """One layer: (A + I) / 2 (rows of A sum to 1), the class token's row over the patches."""
    (attn,) = random_attention(layers=1, heads=1)
    np.testing.assert_allclose(rollout([attn]).numpy(), (attn[:, 0, 0, 1:] / 2).numpy(), rtol=1e-6)


class ConcentratedViT(nn.Module):
    """A TransReID ViT (overlapping patches, a non-square grid) whose only block makes the
    class token attend to one patch: q reads channel 0 (1 on the class token only), k reads
    channel 1 (5 on the chosen patch only), so softmax(q k^T) puts ~all of the class
    token's attention there."""

    def __init__(self, target: int, size=(32, 16), stride=4) -> None:
        super().__init__()
        from core.models.transreid import TransReIDViT

        self.backbone = TransReIDViT(BuildContext(image_size=size, num_cameras=1), arch="vit_tiny_patch16_224",
                                     model_kwargs=dict(patch_size=8, embed_dim=8, depth=1, num_heads=1),
                                     stride=stride, sie=[], jpm=False, drop_path_rate=0.0)
        vit = self.backbone.model
        block = vit.blocks[0]
        block.norm1 = nn.Identity()
        with torch.no_grad():
            vit.patch_embed.proj.weight.zero_()
            vit.patch_embed.proj.bias.zero_()
            vit.cls_token.zero_()
            vit.pos_embed.zero_()
            vit.pos_embed[0, 0, 0] = 1.0                 # the class token: channel 0
            vit.pos_embed[0, 1 + target, 1] = 5.0        # the chosen patch: channel 1
            w = torch.zeros_like(block.attn.qkv.weight)  # (3 * 8, 8)
            w[0, 0] = 10.0                               # q_0 = 10 x_0
            w[8, 1] = 10.0                               # k_0 = 10 x_1
            w[16:] = torch.eye(8)                        # v = x
            block.attn.qkv.weight.copy_(w)
            block.attn.qkv.bias.zero_()
        self.eval()


@pytest.mark.parametrize("row, col", [(1, 2), (5, 0)])
def test_rollout_map_lands_on_the_attended_patch_of_a_non_square_overlapping_grid(row, col):
    grid = (7, 3)  # (32 - 8) / 4 + 1 rows, (16 - 8) / 4 + 1 columns
    model = ConcentratedViT(target=row * grid[1] + col)
    assert model.backbone.patch_grid == grid
    batch = batch_of(torch.randn(2, 3, 32, 16))
    maps = rollout_maps(lambda: model.backbone(batch), model.backbone, model.backbone.patch_grid)
    assert maps.shape == (2, *grid)
    flat = maps[0].flatten()
    assert divmod(int(flat.argmax()), grid[1]) == (row, col)
    assert float(flat.max()) > 0.45 and float(flat.sort().values[-2]) < 0.01  # ~ (1 + 0) / 2 on the patch


def test_recorded_attention_equals_timms_unfused_softmax():
    """The hook recomputes softmax(q k^T * scale) from qkv; timm's own unfused path passes the
    same weights through attn_drop, read here as the reference."""
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", img_size=(32, 16), patch_size=8, embed_dim=16, depth=2,
                            num_heads=2, num_classes=0, qk_norm=True).eval()
    images = torch.randn(2, 3, 32, 16)
    with AttentionRecorder(attention_modules(vit)) as recorder, torch.no_grad():
        vit(images)
    reference = []
    hooks = []
    for block in vit.blocks:
        block.attn.fused_attn = False
        hooks.append(block.attn.attn_drop.register_forward_hook(lambda m, i, o: reference.append(o.detach())))
    with torch.no_grad():
        vit(images)
    for h in hooks:
        h.remove()
    assert len(recorder.maps) == len(reference) == 2
    for got, want in zip(recorder.maps, reference):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_the_hooks_leave_the_model_outputs_unchanged():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", img_size=(32, 16), patch_size=8, embed_dim=16, depth=2,
                            num_heads=2, num_classes=0).eval()
    cnn = TinyCNN().eval()
    images = torch.randn(3, 3, 32, 16)
    with torch.no_grad():
        plain_vit, plain_cnn = vit(images), cnn(images)
    with AttentionRecorder(attention_modules(vit)), torch.no_grad():
        hooked_vit = vit(images)
    seen = []
    grad_cam(lambda: seen.append(cnn(images)) or seen[-1], cnn.conv2, torch.randn(3, 6))
    assert torch.equal(plain_vit, hooked_vit) and torch.equal(plain_cnn, seen[0].detach())
    assert all(p.grad is None for p in cnn.parameters())  # autograd.grad: no gradients left behind


# --- Grad-CAM of a similarity ----------------------------------------------------------------

class TinyCNN(nn.Module):
    """conv1 -> ReLU -> conv2 (the explained layer) -> ReLU -> mean over positions -> linear."""

    def __init__(self, seed=0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 5, 3, padding=1, stride=2)
        self.conv2 = nn.Conv2d(5, 4, 3, padding=1, stride=2)
        self.fc = nn.Linear(4, 6)

    def features(self, images):
        return self.conv2(F.relu(self.conv1(images)))

    def forward(self, images):
        return self.fc(F.relu(self.features(images)).mean(dim=(2, 3)))


def analytic_cam(model: TinyCNN, images, references):
    """Selvaraju et al. Eq. 1-2 with the gradient written out: s = cos(e, r), e = W mean(ReLU(A)) + b,
    ds/de = r^/|e| - (e.r^) e/|e|^3, ds/dA_kij = (W^T ds/de)_k [A_kij > 0] / (h w)."""
    with torch.no_grad():
        a = model.features(images).double()
        e = model.fc.weight.double() @ F.relu(a).mean(dim=(2, 3)).T + model.fc.bias.double()[:, None]
        e = e.T                                                        # (B, D)
        r = F.normalize(references.double(), dim=1)
        norm = e.norm(dim=1, keepdim=True)
        ds_de = r / norm - (e * r).sum(1, keepdim=True) * e / norm ** 3
        back = ds_de @ model.fc.weight.double()                        # (B, K)
        h, w = a.shape[2:]
        grads = back[:, :, None, None] * (a > 0).double() / (h * w)
        alpha = grads.mean(dim=(2, 3), keepdim=True)
        weighted = (alpha * a).sum(1)
    return F.relu(weighted), weighted


def test_grad_cam_of_the_cosine_similarity_matches_the_analytic_gradient():
    model = TinyCNN().eval()
    images, references = torch.randn(4, 3, 32, 16), torch.randn(4, 6)
    got = grad_cam(lambda: model(images), model.conv2, references)
    want, before_relu = analytic_cam(model, images, references)
    assert float(before_relu.min()) < 0 < float(before_relu.max())  # the ReLU matters here
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-7)


def test_grad_cam_of_each_sample_is_its_own_in_a_batch():
    model = TinyCNN().eval()
    images, references = torch.randn(3, 3, 32, 16), torch.randn(3, 6)
    together = grad_cam(lambda: model(images), model.conv2, references)
    alone = grad_cam(lambda: model(images[1:2]), model.conv2, references[1:2])
    torch.testing.assert_close(together[1:2], alone, rtol=1e-5, atol=1e-7)


def test_grad_cam_matches_pytorch_grad_cam_with_a_similarity_target():
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM

    model = TinyCNN(seed=3).eval()
    images, references = torch.randn(3, 3, 32, 16), torch.randn(3, 6)
    targets = [lambda out, r=r: F.cosine_similarity(out[None], r[None])[0] for r in references]
    with GradCAM(model=model, target_layers=[model.conv2]) as cam:
        theirs = torch.from_numpy(cam(input_tensor=images, targets=targets))
    ours = upsample(grad_cam(lambda: model(images), model.conv2, references), (32, 16))
    # pytorch-grad-cam stretches to [0, 1] before resizing; stretching once more makes the two comparable
    low = theirs.amin(dim=(1, 2), keepdim=True)
    theirs = (theirs - low) / (theirs.amax(dim=(1, 2), keepdim=True) - low)
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-3, atol=1e-3)


def test_maps_are_upsampled_bilinearly_and_stretched_from_their_minimum_to_their_maximum():
    # (2, 4) on a 1 x 2 map -> half-pixel bilinear [2, 2.5, 3.5, 4] -> stretched [0, .25, .75, 1]
    got = upsample(torch.tensor([[[2.0, 4.0]]]), (1, 4))
    torch.testing.assert_close(got, torch.tensor([[[0.0, 0.25, 0.75, 1.0]]]))
    assert torch.equal(upsample(torch.full((1, 2, 2), 3.0), (4, 4)), torch.zeros(1, 4, 4))


class RegionCNN(nn.Module):
    """The similarity depends on the top-left quarter only: the explained layer's map is
    zero elsewhere (a bias-free conv of an image that is blank outside the region)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 1, bias=False)
        self.fc = nn.Linear(8, 4)

    def forward(self, images):
        return self.fc(F.relu(self.conv(images)).mean(dim=(2, 3)))


def test_grad_cam_concentrates_on_the_region_the_similarity_depends_on():
    model = RegionCNN().eval()
    images = torch.zeros(2, 3, 16, 8)
    images[:, :, :8, :4] = torch.rand(2, 3, 8, 4) + 0.5
    with torch.no_grad():
        references = model(images)  # similar to itself: the target is high
    maps = upsample(grad_cam(lambda: model(images), model.conv, references), (32, 16))
    inside = maps[:, :15, :7]
    outside = torch.cat([maps[:, 17:].flatten(1), maps[:, :, 9:].flatten(1)], dim=1)
    assert float(inside.mean()) > 0.2 and float(outside.max()) == 0.0


# --- core explain, end to end --------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A tiny ViT run (the quick-start's tiny pipeline) and a tiny ResNet run on the synthetic world."""
    from core.runner import run

    folder = tmp_path_factory.mktemp("explain-runs")
    runs = {}
    for name, backbone in (("vit", TINY_PIPELINE["backbone"]),
                           ("cnn", {"name": "resnet", "arch": "resnet18", "model_kwargs": {"layers": [1, 2, 1, 1]}})):
        config = copy.deepcopy(TINY_PIPELINE)
        config["backbone"] = backbone
        config["trainer"]["eval_before"] = False
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(config))
        runs[name] = run(folder / f"{name}.yaml", run_dir=folder / name).run_dir
    return runs


@pytest.mark.parametrize("name, method", [("vit", "rollout"), ("cnn", "gradcam")])
def test_explain_draws_maps_on_each_query_and_its_top_matches(tiny_runs, tmp_path, caplog, name, method):
    import logging

    out = tmp_path / name
    with caplog.at_level(logging.INFO):
        assert main(["explain", str(tiny_runs[name]), "--images", "run:query", "--out", str(out),
                     "--limit", "3", "--top", "3"]) == 0
    assert f"method {method}" in caplog.text
    pictures = sorted(out.glob("*.png"))
    assert len(pictures) == 3
    html = (out / "index.html").read_text()
    assert all(p.name in html for p in pictures) and method in html
    with Image.open(pictures[0]) as picture:
        pixels = np.asarray(picture.convert("RGB")).astype(int)
    rows = 3 if method == "gradcam" else 2
    assert pixels.shape[0] > rows * 128 and pixels.shape[1] > 4 * 64  # query + 3 matches, 128 px tiles
    # layout of explain_picture: title 20 + heading 15 px, 4 px borders, 6 px gaps, a 120 px label column
    x, y, step = 120 + 6 + 4, 20 + 15 + 4, 128 + 8 + 6
    image_row, map_row = pixels[y:y + 128, x:x + 64], pixels[y + step:y + step + 128, x:x + 64]
    assert np.abs(image_row - map_row).mean() > 5  # a heat map was drawn over the query
    match_maps = pixels[y + step:y + step + 128, x + 64 + 8 + 18:]
    assert match_maps.std() > 0  # and over its matches


def test_explain_methods_can_be_forced_and_wrong_ones_are_clear_errors(tiny_runs, tmp_path, capsys):
    assert main(["explain", str(tiny_runs["vit"]), "--images", "run:query", "--out", str(tmp_path / "p"),
                 "--method", "parts"]) == 2
    assert "does not output part masks" in capsys.readouterr().err
    assert main(["explain", str(tiny_runs["vit"]), "--images", "run:query", "--out", str(tmp_path / "g"),
                 "--method", "gradcam"]) == 2
    assert "use --method rollout" in capsys.readouterr().err
    assert main(["explain", str(tiny_runs["cnn"]), "--images", "run:query", "--out", str(tmp_path / "r"),
                 "--method", "rollout"]) == 2
    assert "rollout needs a ViT" in capsys.readouterr().err
    assert main(["explain", str(tiny_runs["cnn"]), "--images", "run:query", "--out", str(tmp_path / "l"),
                 "--method", "gradcam", "--layer", "backbone.model.layer3", "--limit", "1", "--top", "2"]) == 0
    assert len(list((tmp_path / "l").glob("*.png"))) == 1


def test_pytorch_grad_cam_methods_explain_the_same_similarity(tiny_runs, tmp_path, capsys):
    pytest.importorskip("pytorch_grad_cam")
    out = tmp_path / "pp"
    assert main(["explain", str(tiny_runs["cnn"]), "--images", "run:query", "--out", str(out), "--method", "gradcam",
                 "--cam", "gradcam++", "--limit", "2", "--top", "2"]) == 0
    assert len(list(out.glob("*.png"))) == 2 and "gradcam++ of the cosine similarity" in (out / "index.html").read_text()
    assert main(["explain", str(tiny_runs["cnn"]), "--images", "run:query", "--out", str(tmp_path / "x"),
                 "--cam", "nocam"]) == 2
    assert "--cam nocam: unknown" in capsys.readouterr().err


def reference_cam(model, layer, batch, reference):
    """Grad-CAM written out for one image: d cos(e, r) / dA averaged over positions, ReLU of the
    weighted sum, bilinear to the input, stretched to [0, 1]."""
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    with torch.enable_grad():
        e = model(batch)["embedding"]
        score = F.cosine_similarity(e, reference[None].to(e.device))[0]
        (g,) = torch.autograd.grad(score, store["a"])
    handle.remove()
    cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * store["a"]).sum(1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=batch.images.shape[2:], mode="bilinear", align_corners=False)[0, 0]
    return (cam - cam.min()) / (cam.max() - cam.min()) if cam.max() > cam.min() else torch.zeros_like(cam)


def test_each_gradcam_map_explains_the_right_pair(tiny_runs, tmp_path, monkeypatch):
    """Row 2 on match i: the match's similarity to the query; row 3 under match i: the query's
    similarity to match i; the query's own map: its similarity to all matches together."""
    from core.data.loading import ImageSamples, collate
    from core.tools import explain_maps
    from core.tools.images import open_images
    from core.tools.loading import load_run

    drawn = []
    real = explain_maps.explain_picture
    monkeypatch.setattr(explain_maps, "explain_picture", lambda columns, *a, **k: drawn.append(columns) or real(columns, *a, **k))
    assert main(["explain", str(tiny_runs["cnn"]), "--images", "run:query", "--out", str(tmp_path / "o"),
                 "--limit", "1", "--top", "3", "--device", "cpu", "--layer", "backbone.model.layer2"]) == 0
    run = load_run(tiny_runs["cnn"], device="cpu")
    query, gallery = open_images("run:query", run), open_images("run:gallery", run)
    transform = run.pipeline.test_transform
    q = collate([ImageSamples(query.table, query.datasets, transform)[0]])
    from core.tools.extract import embed
    from core.tools.search import _subset, rank

    first = _subset(query, np.arange(1))
    result = rank(embed(run, first, progress=False), embed(run, gallery, progress=False), run.metric, 3,
                  first, gallery)[0]
    g = collate([ImageSamples(gallery.table, gallery.datasets, transform)[int(j)] for j in result.gallery])
    layer = run.model.backbone.model.layer2[-1]  # a 4 x 2 map at the 32 x 16 input
    with torch.no_grad():
        e_q, e_g = run.model(q)["embedding"][0], run.model(g)["embedding"]
    (columns,) = drawn
    nonzero = [float(m.max()) == 1.0 for c in columns for m in (c.own_map, c.pair_map) if m is not None]
    assert len(nonzero) == 7 and sum(nonzero) >= 5, nonzero  # maps with something in them
    for i in range(3):
        one = collate([ImageSamples(gallery.table, gallery.datasets, transform)[int(result.gallery[i])]])
        torch.testing.assert_close(columns[1 + i].own_map, reference_cam(run.model, layer, one, e_q), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(columns[1 + i].pair_map, reference_cam(run.model, layer, q, e_g[i]), atol=1e-4, rtol=1e-4)
    together = F.normalize(e_g, dim=1).sum(0)
    torch.testing.assert_close(columns[0].own_map, reference_cam(run.model, layer, q, together), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name, arch, expected", [
    ("resnet", "resnet18", "model.layer4.0"),  # core's ResNet calls each unit itself: the last unit
    ("timm", "resnet18", "model.layer4"),      # timm's forward_features calls the stage
])
def test_gradcam_explains_the_last_conv_stage_by_default(name, arch, expected):
    from core.models.resnet import ReIDResNet
    from core.models.timm_backbone import TimmBackbone
    from core.tools.gradcam import last_feature_map_layer

    ctx = BuildContext(image_size=(64, 32), num_cameras=1)
    kwargs = {"layers": [1, 1, 1, 1]}
    backbone = (ReIDResNet(ctx, arch=arch, model_kwargs=kwargs) if name == "resnet"
                else TimmBackbone(ctx, arch=arch, model_kwargs=kwargs)).eval()
    batch = batch_of(torch.randn(1, 3, 64, 32))
    found, module = last_feature_map_layer(lambda: backbone(batch), backbone)
    assert found == expected and module is backbone.get_submodule(expected)


def test_gradcam_never_takes_an_attention_modules_queries_or_keys_for_a_feature_map():
    """Grad-CAM weighs K channels over a spatial h x w map (Selvaraju et al. 2017, Eq. 1); a
    timm Attention's q_norm / k_norm output (B, heads, tokens, head_dim) is 4-D but not one.
    A ViT's only spatial map is its patch embedding, which an Instruct-ReID backbone (its ViT
    under `image_encoder.model`, not refused as a ViT) must get instead of the last k_norm."""
    from core.models.timm_backbone import TimmBackbone
    from core.tools.gradcam import last_feature_map_layer

    ctx = BuildContext(image_size=(64, 32), num_cameras=1)
    vit = TimmBackbone(ctx, arch="vit_tiny_patch16_224",
                       model_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}).eval()
    wrapper = nn.Module()
    wrapper.image_encoder = vit
    found, module = last_feature_map_layer(lambda: vit(batch_of(torch.randn(1, 3, 64, 32))), wrapper)
    assert found == "image_encoder.model.patch_embed.proj" and module is vit.model.patch_embed.proj


@pytest.mark.parametrize("name, extra", [("cnn", ["--method", "gradcam"]), ("cnn", ["--cam", "gradcam++"]),
                                         ("cnn", ["--cam", "scorecam"]), ("vit", ["--method", "rollout"])])
def test_explain_on_a_separate_device_draws_the_cpu_pictures(tiny_runs, tmp_path, name, extra):
    """The maps computed with the model on the emulated separate device (core.separate_device:
    a host tensor meeting the model's fails there as on a GPU): the CPU's pictures."""
    if "--cam" in extra:
        pytest.importorskip("pytorch_grad_cam")
    pictures = {}
    for device in ("cpu", "meta"):
        with emulation_for(device):
            assert main(["explain", str(tiny_runs[name]), "--images", "run:query", "--out", str(tmp_path / device),
                         "--limit", "2", "--top", "2", "--device", device, *extra]) == 0
        pictures[device] = sorted((tmp_path / device).glob("*.png"))
    assert len(pictures["cpu"]) == len(pictures["meta"]) == 2
    for a, b in zip(pictures["cpu"], pictures["meta"]):
        with Image.open(a) as on_cpu, Image.open(b) as on_device:
            assert np.abs(np.asarray(on_cpu, dtype=int) - np.asarray(on_device, dtype=int)).max() <= 1


def test_the_heat_maps_of_an_instructed_query_carry_its_instruction(tiny_runs, tmp_path, monkeypatch):
    """A query record with extras "instruction" (Instruct-ReID's text) gets it written under
    its heat-map picture, as `core search` writes it under the ranked list; a query without
    one gets no line."""
    from core.records import Record
    from core.tools import explain_maps
    from core.tools.images import ImageFiles, ImageSet, _table, open_images
    from core.tools.loading import load_run

    notes = []
    real = explain_maps.explain_picture
    monkeypatch.setattr(explain_maps, "explain_picture",
                        lambda *a, **k: notes.append(k.get("note", "")) or real(*a, **k))
    for name in ("a.png", "b.png"):
        Image.new("RGB", (16, 32), (200, 60, 60)).save(tmp_path / name)
    records = [Record(path=str(tmp_path / "a.png"), pid=0, camid=0, category="person",
                      extras={"instruction": "a woman with a black bag"}),
               Record(path=str(tmp_path / "b.png"), pid=1, camid=0, category="person")]
    queries = ImageSet(_table(records, "q"), [ImageFiles(records)], "q")
    run = load_run(tiny_runs["cnn"], device="cpu")
    explain_maps.explain_matches(run, queries, open_images("run:gallery", run), tmp_path / "out",
                                 explain_maps.Settings("gradcam", top=2), limit=2)
    assert notes == ["instruction: a woman with a black bag", ""]

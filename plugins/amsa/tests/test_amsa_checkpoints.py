"""Loading real CLIP checkpoint formats into `amsa_clip` at the ReID input size: OpenAI's
released TorchScript archive (fp16 weights, e.g. ViT-B-16.pt) and open_clip's state dicts
(.bin / .safetensors), from the 224x224 pretraining grid (14 x 14 patches of 16) to
256x128 (16 x 8), on the CPU and, where there is one, the GPU.

The checkpoints are written here, tiny (width 32) but with ViT-B/16's patch size,
grid and text context, in the files' real formats."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

#: ViT-B/16's geometry (16-pixel patches, 224x224 pretraining, 77 text tokens), tiny widths.
B16_TINY = {"embed_dim": 16, "quick_gelu": True,
            "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "patch_size": 16, "head_width": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}


def source_clip(seed: int = 5):
    import open_clip

    torch.manual_seed(seed)
    return open_clip.CLIP(**copy.deepcopy(B16_TINY))


class _Archive(nn.Module):
    """A module whose state dict is the CLIP's, as OpenAI's TorchScript archives hold it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def write_openai_archive(state: dict[str, torch.Tensor], path) -> dict[str, torch.Tensor]:
    """A TorchScript archive like OpenAI's ViT-B-16.pt: every floating tensor in fp16, plus
    the integer entries input_resolution / context_length / vocab_size. Returns the
    weights it holds, widened to fp32 (what a loader must reproduce)."""
    root = _Archive()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, nn.Module())
            module = getattr(module, name)
        module.register_parameter(leaf, nn.Parameter(value.detach().half(), requires_grad=False))
    for key, value in (("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408)):
        root.register_buffer(key, torch.tensor(value))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        torch.jit.script(root).save(str(path))
    return {k: v.detach().half().float() for k, v in state.items()}


def load(build_ctx, path, **kwargs):
    from reid_amsa.backbone import AMSAClip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)  # torch.load dispatching to torch.jit.load
        return AMSAClip(build_ctx(image_size=(256, 128)), model_cfg=copy.deepcopy(B16_TINY), pretrained=str(path),
                        **kwargs)


def expected_grid_embedding(source_pos: torch.Tensor, grid=(16, 8)) -> torch.Tensor:
    """Bicubic resize of the 14 x 14 grid embeddings to `grid`, row-major (rows = image height)."""
    width = source_pos.shape[1]
    image = source_pos[1:].reshape(1, 14, 14, width).permute(0, 3, 1, 2)
    resized = F.interpolate(image, size=grid, mode="bicubic", antialias=True, align_corners=False)
    return resized.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], width)


def assert_loaded(backbone, expected):
    visual = backbone.visual
    assert backbone.patch_grid == (16, 8)
    assert all(p.dtype == torch.float32 for p in backbone.parameters())
    assert torch.equal(visual.transformer.resblocks[1].attn.in_proj_weight,
                       expected["visual.transformer.resblocks.1.attn.in_proj_weight"])
    assert torch.equal(visual.class_embedding, expected["visual.class_embedding"])
    assert torch.equal(backbone.text.token_embedding.weight, expected["token_embedding.weight"])
    assert torch.equal(backbone.text.text_projection, expected["text_projection"])
    pos = visual.positional_embedding
    assert pos.shape == (1 + 16 * 8, 32)
    assert torch.equal(pos[0], expected["visual.positional_embedding"][0])  # CLS's position kept
    assert torch.allclose(pos[1:], expected_grid_embedding(expected["visual.positional_embedding"]), atol=1e-6)


def test_openai_fp16_torchscript_archive_loads_on_the_cpu_at_16x8(build_ctx, make_batch, tmp_path):
    path = tmp_path / "ViT-B-16.pt"
    expected = write_openai_archive(source_clip().state_dict(), path)
    assert torch.jit.load(str(path)).state_dict()["visual.positional_embedding"].dtype == torch.float16
    backbone = load(build_ctx, path)
    assert_loaded(backbone, expected)
    out = backbone.eval()(make_batch([0, 1], image_size=(256, 128)))
    assert out["global"].shape == (2, 4 * 16) and torch.isfinite(out["global"]).all()


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_open_clip_state_dicts_load_at_16x8(build_ctx, make_batch, tmp_path, suffix):
    state = {k: v.clone() for k, v in source_clip(seed=6).state_dict().items()}
    path = tmp_path / f"open_clip_pytorch_model{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    backbone = load(build_ctx, path)
    assert_loaded(backbone, state)
    assert torch.isfinite(backbone.eval()(make_batch([0], image_size=(256, 128)))["global"]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_openai_archive_runs_on_the_gpu_under_bf16_autocast(build_ctx, make_batch, tmp_path):
    path = tmp_path / "ViT-B-16.pt"
    expected = write_openai_archive(source_clip().state_dict(), path)
    backbone = load(build_ctx, path).cuda().eval()
    assert torch.equal(backbone.visual.class_embedding.cpu(), expected["visual.class_embedding"])
    batch = make_batch([0, 1], image_size=(256, 128)).to(torch.device("cuda"))
    with torch.no_grad():
        reference = backbone(batch)["global"]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            mixed = backbone(batch)["global"].float()
    assert torch.isfinite(mixed).all()
    assert torch.allclose(mixed, reference, atol=0.1 * float(reference.abs().max()))


def test_openai_archive_runs_on_a_separate_device_under_cuda_bf16_autocast_rules(build_ctx, make_batch, tmp_path):
    """The test above without a GPU: the model on the emulated separate device
    (core.separate_device) and CUDA's autocast rules emulated (core.cuda_autocast): the
    archive's weights reach the device, and a bf16 forward computes a finite embedding
    in the fp32 one's direction."""
    from core.cuda_autocast import emulate_cuda_autocast
    from core.separate_device import DeviceTensor, emulate_separate_device

    path = tmp_path / "ViT-B-16.pt"
    expected = write_openai_archive(source_clip().state_dict(), path)
    with emulate_separate_device() as device:
        backbone = load(build_ctx, path).to(device).eval()
        assert isinstance(backbone.visual.class_embedding, DeviceTensor)
        assert torch.equal(backbone.visual.class_embedding.cpu(), expected["visual.class_embedding"])
        batch = make_batch([0, 1], image_size=(256, 128)).to(device)
        with torch.no_grad():
            reference = backbone(batch)["global"].cpu()
            with emulate_cuda_autocast(torch.bfloat16) as mode:
                mixed = backbone(batch)["global"].float().cpu()
    assert {"linear", "conv2d"} & mode.cast_ops
    assert torch.isfinite(mixed).all() and not torch.equal(mixed, reference)
    # the emulation runs attention wholly in bf16 (softmax included, which CUDA keeps in
    # fp32): a direction check, looser than the GPU test's element-wise one (here 0.995+)
    assert (torch.nn.functional.cosine_similarity(mixed, reference) > 0.99).all()

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
    """The backbone built on the checkpoint `path`, as `core run --trust-checkpoint` builds it
    (a TorchScript archive loads only when trusted; state dicts need no trust)."""
    from reid_amsa.backbone import AMSAClip

    from core import trust

    with warnings.catch_warnings(), trust.trusting(checkpoint=True):
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


def test_a_state_dict_with_a_tensor_the_model_lacks_loads(build_ctx, tmp_path):
    """The CLIP loads its file non-strictly for names (load_state_dict(strict=False): the
    file's extra tensors are ignored, only missing ones refused): a file saved from the same
    architecture built with open_clip's init_logit_bias holds a 'logit_bias' this model has
    not; it loads, and the shape check before it judges shapes only."""
    import open_clip

    torch.manual_seed(7)
    state = {k: v.clone() for k, v in open_clip.CLIP(**copy.deepcopy(B16_TINY), init_logit_bias=-10.0)
             .state_dict().items()}
    assert "logit_bias" in state and "logit_bias" not in source_clip().state_dict()
    path = tmp_path / "with_logit_bias.bin"
    torch.save(state, path)
    assert_loaded(load(build_ctx, path), state)


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


def test_a_torchscript_archive_is_refused_unless_trusted_and_nothing_of_it_runs(build_ctx, tmp_path, monkeypatch):
    """Loading a TorchScript archive runs the code it holds (torch refuses it under
    weights_only for that reason): without --trust-checkpoint it is refused before
    torch.jit.load is called, naming the file, why, the safe format and the flag."""
    from reid_amsa.backbone import AMSAClip

    path = tmp_path / "ViT-B-16.pt"
    write_openai_archive(source_clip().state_dict(), path)
    calls = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: calls.append(a) or pytest.fail("jit.load called"))
    with pytest.raises(ValueError) as caught:
        AMSAClip(build_ctx(image_size=(256, 128)), model_cfg=copy.deepcopy(B16_TINY), pretrained=str(path))
    text = str(caught.value)
    assert str(path) in text and "TorchScript archive" in text and "--trust-checkpoint" in text
    assert ".safetensors" in text and not calls


def test_a_pickled_or_damaged_checkpoint_is_one_line_naming_it_and_runs_nothing(build_ctx, tmp_path):
    """A .bin that needs pickle is refused naming the global it would call (the marker its
    unpickling would write is never written); a cut one says so; neither is mistaken for
    a TorchScript archive nor advises weights_only=False."""
    import os
    import pickle

    from reid_amsa.backbone import AMSAClip

    marker = tmp_path / "RAN"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    evil = tmp_path / "evil.bin"
    torch.save({"visual.class_embedding": Payload()}, evil)
    good = tmp_path / "good.bin"
    torch.save(source_clip().state_dict(), good)
    cut = tmp_path / "cut.bin"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for path, words in ((evil, ("refused", "needs pickle", "system")), (cut, ("not a readable", "copy it again"))):
        with pytest.raises(ValueError) as caught:
            AMSAClip(build_ctx(image_size=(256, 128)), model_cfg=copy.deepcopy(B16_TINY), pretrained=str(path))
        text = str(caught.value)
        assert str(path) in text and all(w in text for w in words), text
        assert "weights_only=False" not in text and "\n" not in text
    assert not marker.exists()
    assert pickle.UnpicklingError  # the refusal above is weights_only's, reworded


def test_a_checkpoint_of_another_width_is_one_line_naming_a_tensor_and_both_shapes(build_ctx, tmp_path):
    """Same names, other shapes (embed_dim 24 saved, 16 built): torch's 'Error(s) in loading
    state_dict ... size mismatch for ...' came through raw (multi-line, exit 1, no pipeline
    key); now one ValueError line."""
    import open_clip
    from reid_amsa.backbone import AMSAClip

    path = tmp_path / "wider.bin"
    torch.save(open_clip.CLIP(**dict(copy.deepcopy(B16_TINY), embed_dim=24)).state_dict(), path)
    with pytest.raises(ValueError) as caught:
        AMSAClip(build_ctx(image_size=(256, 128)), model_cfg=copy.deepcopy(B16_TINY), pretrained=str(path))
    text = str(caught.value)
    assert "\n" not in text and str(path) in text and "does not fit this CLIP" in text, text
    assert "text_projection is [16, 24] in the file, [16, 16] in the model" in text, text


def test_validate_refuses_a_torchscript_archive_with_exit_2_and_loads_it_with_trust_checkpoint(tmp_path, capsys,
                                                                                                monkeypatch):
    """Through the CLI on the shipped synthetic MUVA pipeline: exit 2 and one line naming the
    pipeline key without the flag; with `--trust-checkpoint` the archive loads and validate
    passes."""
    from pathlib import Path

    import open_clip
    import yaml

    from core.cli import main

    pipeline = Path(__file__).resolve().parents[3] / "pipelines" / "muva_synthetic.yaml"
    model_cfg = copy.deepcopy(yaml.safe_load(pipeline.read_text())["backbone"]["model_cfg"])
    torch.manual_seed(0)
    path = tmp_path / "clip.pt"
    write_openai_archive(open_clip.CLIP(**model_cfg).state_dict(), path)
    overrides = ["--set", f"backbone.pretrained={path}", "--set", "trainer.device=cpu"]
    monkeypatch.chdir(tmp_path)  # its labeler writes labels/ where core runs
    assert main(["validate", str(pipeline), *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "backbone" in err[0] and "TorchScript archive" in err[0], err
    assert main(["validate", str(pipeline), *overrides, "--trust-checkpoint"]) == 0, capsys.readouterr().err

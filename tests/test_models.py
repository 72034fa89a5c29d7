"""Specification of the built-in backbone `timm` and head `bnneck`. Tiny models, random
init or weights saved by the test itself: nothing is downloaded."""

import contextlib

import pytest
import torch

from core.context import BuildContext
from core.data.table import RecordTable
from core.losses.cross_entropy import CrossEntropyLoss
from core.losses.triplet import TripletLoss
from core.models.bnneck import BNNeckHead
from core.models.timm_backbone import TimmBackbone
from core.records import Batch, Record

TINY_VIT = dict(arch="vit_tiny_patch16_224",
                model_kwargs={"patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 2})


def make_ctx(image_size=(64, 32), num_ids=4, per_id=2, feature_dim=None):
    records = [Record(path=None, pid=pid, camid=i) for pid in range(num_ids) for i in range(per_id)]
    table = RecordTable.build([("src", records)], relabel=True)
    return BuildContext.from_table(table, image_size=image_size, feature_dim=feature_dim)


def make_batch(pids, image_size=(64, 32)):
    pids = torch.as_tensor(pids)
    zeros = torch.zeros_like(pids)
    return Batch(images=torch.randn(len(pids), 3, *image_size), pids=pids, camids=zeros,
                 categories=zeros, domains=zeros, roles=zeros, indices=torch.arange(len(pids)))


# --- timm backbone -----------------------------------------------------------------------

def test_vit_backbone_runs_at_non_square_size_with_global_and_tokens():
    backbone = TimmBackbone(make_ctx(), **TINY_VIT)
    out = backbone(make_batch([0, 1]))
    assert backbone.feature_dim == 48 and backbone.patch_grid == (8, 4)
    assert out["global"].shape == (2, 48)
    assert out["tokens"].shape == (2, 1 + 8 * 4, 48)  # class token + 8 x 4 patches


def test_cnn_backbone_builds_without_img_size_and_has_no_patch_grid():
    backbone = TimmBackbone(make_ctx(), arch="resnet18")
    out = backbone(make_batch([0, 1]))
    assert backbone.feature_dim == 512 and backbone.patch_grid is None
    assert out["global"].shape == (2, 512) and "tokens" not in out


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_file_loads_weights_and_resamples_pos_embed(tmp_path, suffix):
    # A square "ImageNet-style" source (32 x 32 -> 4 x 4 patches) loaded at 64 x 32 (8 x 4).
    source = TimmBackbone(make_ctx(image_size=(32, 32)), **TINY_VIT).model
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(source.state_dict(), str(path))
    else:
        torch.save(source.state_dict(), path)
    loaded = TimmBackbone(make_ctx(image_size=(64, 32)), pretrained=str(path), **TINY_VIT).model
    src, dst = source.state_dict(), loaded.state_dict()
    assert src.keys() == dst.keys()
    for key in src:
        if key != "pos_embed":
            assert torch.equal(src[key], dst[key]), key
    assert dst["pos_embed"].shape == (1, 1 + 8 * 4, 48)
    assert torch.equal(dst["pos_embed"][:, :1], src["pos_embed"][:, :1])  # class token kept


def test_pretrained_file_missing_names_the_path(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        TimmBackbone(make_ctx(), pretrained=str(path), **TINY_VIT)


def test_pretrained_file_with_unknown_suffix_names_the_accepted_ones(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"\.pth, \.pt, \.bin, \.safetensors"):
        TimmBackbone(make_ctx(), pretrained=str(path), **TINY_VIT)


def test_pretrained_file_with_wrapped_keys_is_refused_with_the_prefix_hint(tmp_path):
    """Nothing of it would load (every name carries 'model.'): refused, as the resnet
    backbone refuses a file that does not fit, instead of a warning and a random start."""
    source = TimmBackbone(make_ctx(image_size=(32, 32)), **TINY_VIT).model
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"model." + k: v for k, v in source.state_dict().items()}}, path)
    with pytest.raises(ValueError, match=r"wrapped.pth does not fit.*model\.blocks\.0\..*strip it"):
        TimmBackbone(make_ctx(), pretrained=str(path), **TINY_VIT)


def test_a_pretrained_file_of_another_arch_is_refused_naming_both_sides(tmp_path):
    """Review 15, C9: a resnet18 state dict given to a ViT loaded nothing, yet only warned
    (validate said OK and training would start from random weights). The line names the
    file, the arch, some of the file's tensors and some of the model's, and the prefix hint."""
    from safetensors.torch import save_file

    path = tmp_path / "resnet18.safetensors"
    save_file(TimmBackbone(make_ctx(), arch="resnet18").model.state_dict(), str(path))
    with pytest.raises(ValueError) as caught:
        TimmBackbone(make_ctx(image_size=(32, 32)), pretrained=str(path), **TINY_VIT)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 600, message
    for part in ("backbone 'timm'", str(path), "'vit_tiny_patch16_224'", "bn1.bias", "patch_embed.proj.weight",
                 "wrapper prefix"):
        assert part in message, (part, message)


def refusal_of_a_wider_file(path, rename=dict):
    """The error of a ViT built at embed_dim 48 given `path` (.pth or .safetensors): the state
    dict of one at 64, its names through `rename`; one line, short."""
    from safetensors.torch import save_file

    wide = dict(TINY_VIT, model_kwargs={**TINY_VIT["model_kwargs"], "embed_dim": 64})
    state = rename(TimmBackbone(make_ctx(image_size=(32, 32)), **wide).model.state_dict())
    save_file(state, str(path)) if path.suffix == ".safetensors" else torch.save(state, path)
    with pytest.raises(ValueError) as caught:
        TimmBackbone(make_ctx(image_size=(32, 32)), pretrained=str(path), **TINY_VIT)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 600, message
    return message


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_pretrained_file_of_another_size_is_one_line_naming_a_tensor_and_both_shapes(tmp_path, suffix):
    """A ViT saved at embed_dim 64 given to one built at 48: same names, other shapes. torch's
    'size mismatch for ...' list came through raw (RuntimeError, exit 1 at the CLI); now one
    ValueError line with the count and one tensor's two shapes."""
    path = tmp_path / f"wide{suffix}"
    message = refusal_of_a_wider_file(path)
    for part in ("backbone 'timm'", str(path), "does not fit 'vit_tiny_patch16_224'", "of another shape", "64]",
                 "48]", "embed_dim"):
        assert part in message, (part, message)


def test_a_pretrained_file_of_another_size_is_still_one_line_if_timms_builder_moves(tmp_path, monkeypatch):
    """The OpenCLIP-naming check replaces timm's private `_builder.load_pretrained` for a moment;
    a timm without it must not cost files in timm's own naming their one-line refusal."""
    from core.models import timm_backbone

    def moved(*args, **kwargs):
        raise AttributeError("module 'timm.models._builder' has no attribute 'load_pretrained'")

    monkeypatch.setattr(timm_backbone, "_filtered", moved)
    message = refusal_of_a_wider_file(tmp_path / "wide.pth")
    assert "does not fit 'vit_tiny_patch16_224'" in message and "in the file, [48] in the model" in message, message


#: timm ViT names -> OpenCLIP's (`visual.*`), the reverse of the renames in timm's ViT checkpoint filter
_OPENCLIP_NAMES = [("patch_embed.proj", "conv1"), ("blocks.", "transformer.resblocks."), ("norm1", "ln_1"),
                   ("norm2", "ln_2"), ("attn.qkv.", "attn.in_proj_"), ("attn.proj", "attn.out_proj"),
                   ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]


def openclip_named(state):
    """A timm ViT's state dict as an `open_clip` checkpoint names it (what timm's filter renames back)."""
    named = {}
    for key, value in state.items():
        if key == "cls_token":
            key, value = "class_embedding", value.reshape(-1)
        elif key == "pos_embed":
            key, value = "positional_embedding", value[0]
        elif key.startswith("norm."):
            key = "ln_post." + key[len("norm."):]
        for timm_name, clip_name in _OPENCLIP_NAMES:
            key = key.replace(timm_name, clip_name)
        named["visual." + key] = value
    return named


def test_an_openclip_named_pretrained_file_of_the_models_width_loads(tmp_path):
    """The reference for the next test: timm's filter takes these names back."""
    source = TimmBackbone(make_ctx(image_size=(32, 32)), **TINY_VIT).model.state_dict()
    path = tmp_path / "open_clip.pth"
    torch.save(openclip_named(source), path)
    loaded = TimmBackbone(make_ctx(image_size=(32, 32)), pretrained=str(path), **TINY_VIT).model.state_dict()
    assert all(torch.equal(source[key], loaded[key]) for key in source)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_an_openclip_named_pretrained_file_of_another_width_is_one_line(tmp_path, suffix):
    """A ViT at embed_dim 64 saved in OpenCLIP's naming (`visual.conv1.weight`, ...) given to one
    at 48: the shape check compared the file's names before timm's filter renamed them, found
    none in common, and torch's raw 'size mismatch for ...' list came through (RuntimeError)."""
    path = tmp_path / f"open_clip_wide{suffix}"
    message = refusal_of_a_wider_file(path, openclip_named)
    for part in (str(path), "does not fit 'vit_tiny_patch16_224'", "of another shape", "in the file, [48] in the model",
                 "embed_dim"):
        assert part in message, (part, message)


def test_a_timm_training_checkpoint_of_another_size_is_said_not_to_fit_not_to_be_unreadable(tmp_path):
    """timm's train.py saves its argparse.Namespace as 'args' beside 'state_dict', and timm's
    reader allows that global (timm.models.load_state_dict reads the file). Read again with
    torch's plain weights_only it is refused, which made the size mismatch 'not a readable
    checkpoint'; it is a file that reads and does not fit."""
    import argparse

    from timm.models import load_state_dict

    wide = dict(TINY_VIT, model_kwargs={**TINY_VIT["model_kwargs"], "embed_dim": 64})
    state = TimmBackbone(make_ctx(image_size=(32, 32)), **wide).model.state_dict()
    path = tmp_path / "model_best.pth"
    torch.save({"epoch": 3, "arch": "vit_tiny_patch16_224", "state_dict": state, "args": argparse.Namespace(lr=0.1)},
               path)
    assert load_state_dict(str(path)).keys() == state.keys()  # the reference: timm reads it
    with pytest.raises(ValueError) as caught:
        TimmBackbone(make_ctx(image_size=(32, 32)), pretrained=str(path), **TINY_VIT)
    message = str(caught.value)
    assert "not a readable" not in message and "does not fit 'vit_tiny_patch16_224'" in message, message
    assert "in the file, [48] in the model" in message, message


def test_a_pretrained_file_in_torchs_legacy_format_of_another_size_is_one_line(tmp_path):
    """torch.save(..., _use_new_zipfile_serialization=False) writes torch's pre-1.6 format (a
    pickle, no zip), which torch.load reads but cannot memory-map ('mmap can only be used
    with files saved with ... _use_new_zipfile_serialization=True'): the shape account read
    nothing and torch's raw 'size mismatch' list came through."""
    wide = dict(TINY_VIT, model_kwargs={**TINY_VIT["model_kwargs"], "embed_dim": 64})
    path = tmp_path / "legacy_wide.pth"
    torch.save(TimmBackbone(make_ctx(image_size=(32, 32)), **wide).model.state_dict(), path,
               _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError) as caught:
        TimmBackbone(make_ctx(image_size=(32, 32)), pretrained=str(path), **TINY_VIT)
    message = str(caught.value)
    assert "\n" not in message and "does not fit 'vit_tiny_patch16_224'" in message, message
    assert "in the file, [48] in the model" in message, message


def test_a_torchscript_archive_as_pretrained_file_is_named_as_one_and_runs_nothing(tmp_path, monkeypatch):
    """OpenAI's released CLIP .pt files are TorchScript archives; torch refuses them under
    weights_only with advice to pass weights_only=False (which would run the code they hold).
    The line names the file as a TorchScript archive, without that advice."""
    path = tmp_path / "ViT-B-16.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))

    def never(*args, **kwargs):
        raise AssertionError("torch.jit.load was called")

    monkeypatch.setattr(torch.jit, "load", never)
    with pytest.raises(ValueError) as caught:
        TimmBackbone(make_ctx(image_size=(32, 32)), pretrained=str(path), **TINY_VIT)
    message = str(caught.value)
    assert "\n" not in message and f"{path}: not a readable checkpoint (a TorchScript archive" in message, message
    assert "weights_only" not in message, message


def test_a_pretrained_file_of_another_arch_fails_validate_naming_the_pipeline_and_key(tmp_path, capsys):
    import yaml

    from core.cli import main
    from core.testing import TINY_PIPELINE
    from safetensors.torch import save_file

    weights = tmp_path / "resnet18.safetensors"
    save_file(TimmBackbone(make_ctx(), arch="resnet18").model.state_dict(), str(weights))
    config = {**TINY_PIPELINE, "backbone": {**TINY_PIPELINE["backbone"], "pretrained": str(weights)}}
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump(config))
    assert main(["validate", str(pipeline)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(pipeline) in err and "backbone" in err and str(weights) in err
    assert err.count("backbone 'timm'") == 1, err  # the pipeline's wrapper and the backbone name it once


def test_validate_shows_a_partly_fitting_pretrained_files_warning_once_and_no_torch_meta_noise(tmp_path, capsys):
    """Review 15, C9: validate printed the pretrained file's warnings twice (its check of the
    stages' parameter patterns builds the model on the meta device first), and torch warned
    once per tensor that copying the file into meta parameters does nothing. Now the real
    build's warning alone: once, and nothing from the meta build."""
    import yaml

    from core.cli import main
    from core.testing import TINY_PIPELINE

    kwargs = TINY_PIPELINE["backbone"]["model_kwargs"]
    state = TimmBackbone(make_ctx(image_size=(32, 16)), arch="vit_tiny_patch16_224", model_kwargs=kwargs).model
    weights = tmp_path / "extra.pth"
    torch.save({**state.state_dict(), "decoder.weight": torch.zeros(2)}, weights)
    config = {**TINY_PIPELINE, "backbone": {**TINY_PIPELINE["backbone"], "pretrained": str(weights)}}
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump(config))
    assert main(["validate", str(pipeline)]) == 0
    err = capsys.readouterr().err
    assert err.count("match no tensor of 'vit_tiny_patch16_224'") == 1, err
    assert "meta" not in err, err


@contextlib.contextmanager
def root_info_records():
    """The records a handler on the root logger at INFO receives in the block (what
    `--verbose` or a user's own logging setup installs)."""
    import logging

    class Seen(logging.Handler):
        def __init__(self):
            super().__init__(logging.INFO)
            self.records = []

        def emit(self, record):
            self.records.append(record)

    seen, root = Seen(), logging.getLogger()
    root.addHandler(seen)
    try:
        yield seen.records
    finally:
        root.removeHandler(seen)


def test_timms_unexpected_key_list_becomes_one_short_warning(tmp_path):
    """timm's own warning listed every unexpected key (~4 KB for a ResNet file, shown twice);
    now it reaches no handler, and our warning gives their count and the first few."""
    source = TimmBackbone(make_ctx(image_size=(32, 32)), **TINY_VIT).model
    extra = {f"decoder.layer{i}.weight": torch.zeros(2) for i in range(30)}
    path = tmp_path / "extra.pth"
    torch.save({**source.state_dict(), **extra}, path)

    with root_info_records() as seen, pytest.warns(UserWarning) as caught:
        loaded = TimmBackbone(make_ctx(image_size=(32, 32)), pretrained=str(path), **TINY_VIT).model
    assert [r.getMessage()[:60] for r in seen if r.name.startswith("timm")] == []
    (message,) = [str(w.message) for w in caught if "extra.pth" in str(w.message)]
    assert "30 tensors of" in message and "decoder.layer0.weight" in message and len(message) < 600, message
    assert torch.equal(loaded.state_dict()["blocks.1.attn.qkv.weight"], source.state_dict()["blocks.1.attn.qkv.weight"])


def test_pretrained_file_with_some_keys_renamed_warns_naming_the_weights_left_random(tmp_path):
    """A file whose second block is saved under another name loads in part: the first block
    and the rest take the file's values, the second keeps its random start. Reference: the
    file's own key set against the model's (no checkpoint filter renames a ViT's keys)."""
    source = TimmBackbone(make_ctx(image_size=(32, 32)), **TINY_VIT).model
    renamed = {k.replace("blocks.1.", "stage.1."): v for k, v in source.state_dict().items()}
    path = tmp_path / "renamed.pth"
    torch.save(renamed, path)
    with pytest.warns(UserWarning) as caught:
        loaded = TimmBackbone(make_ctx(image_size=(32, 32)), pretrained=str(path), **TINY_VIT).model
    left = sorted(set(loaded.state_dict()) - set(renamed))
    assert left and all(k.startswith("blocks.1.") for k in left)
    (message,) = [str(w.message) for w in caught if "keep their random initialisation" in str(w.message)]
    assert f"{len(left)} of the {len(loaded.state_dict())} tensors" in message and "renamed.pth" in message
    named = [k for k in loaded.state_dict() if f"{k}," in message or f"{k} and" in message or f"{k})" in message]
    assert len(named) == 4 and set(named) <= set(left)  # the first four, then "and 8 more"
    assert torch.equal(loaded.state_dict()["blocks.0.attn.qkv.weight"], source.state_dict()["blocks.0.attn.qkv.weight"])


def test_a_root_info_handler_sees_no_timm_record_while_a_pretrained_file_loads(tmp_path):
    """Reading timm's missing-key report (logged at info) must not show the user timm's info
    lines: a handler on the root logger at INFO (what `--verbose` or a user's logging setup
    installs) receives nothing from timm during the load, while our own warning about the
    weights left random still appears; the timm logger is left as it was."""
    import logging

    source = TimmBackbone(make_ctx(image_size=(32, 32)), **TINY_VIT).model
    path = tmp_path / "partial.pth"
    torch.save({k: v for k, v in source.state_dict().items() if not k.startswith("blocks.1.")}, path)

    timm_logger = logging.getLogger("timm.models._builder")
    before = (timm_logger.level, timm_logger.propagate, list(timm_logger.handlers))
    with root_info_records() as seen, pytest.warns(UserWarning, match="keep their random initialisation"):
        TimmBackbone(make_ctx(image_size=(32, 32)), pretrained=str(path), **TINY_VIT)
    assert [r.getMessage() for r in seen if r.name.startswith("timm")] == []
    assert (timm_logger.level, timm_logger.propagate, list(timm_logger.handlers)) == before


def test_the_timm_logger_is_left_as_it_was_set_before_a_pretrained_file_loads(tmp_path):
    """Whatever the user set on timm's logger (propagation off, a level, a handler of their
    own) is what it has after the load; set here explicitly, so the check does not depend on
    an earlier test having left the logger at logging's defaults."""
    import logging

    source = TimmBackbone(make_ctx(image_size=(32, 32)), **TINY_VIT).model
    path = tmp_path / "whole.pth"
    torch.save(source.state_dict(), path)
    logger, own = logging.getLogger("timm.models._builder"), logging.NullHandler()
    saved = (logger.level, logger.propagate, list(logger.handlers))
    try:
        for propagate in (False, True):
            logger.setLevel(logging.ERROR)
            logger.propagate = propagate
            logger.handlers[:] = [own]
            TimmBackbone(make_ctx(image_size=(32, 32)), pretrained=str(path), **TINY_VIT)
            assert (logger.level, logger.propagate, logger.handlers) == (logging.ERROR, propagate, [own])
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers[:] = saved[2]


def test_timms_other_warnings_during_a_load_still_reach_the_users_handlers(tmp_path):
    """Only timm's two key reports are taken over; its other warnings reach a root handler
    at WARNING as Python's logging would deliver them without us (a logger propagates to
    the root): here timm's note that a 1-channel file matches a 1-channel model although its
    pretrained config declares 3 input channels."""
    one_channel = dict(TINY_VIT, model_kwargs={**TINY_VIT["model_kwargs"], "in_chans": 1})
    path = tmp_path / "gray.pth"
    torch.save(TimmBackbone(make_ctx(image_size=(32, 32)), **one_channel).model.state_dict(), path)
    with root_info_records() as seen:
        TimmBackbone(make_ctx(image_size=(32, 32)), pretrained=str(path), **one_channel)
    timm_warnings = [r.getMessage() for r in seen if r.name.startswith("timm") and r.levelname == "WARNING"]
    assert any("input_size declares 3 source channels" in m for m in timm_warnings), timm_warnings


def test_a_load_that_fails_otherwise_keeps_its_error_though_the_file_has_an_extra_tensor(tmp_path, monkeypatch):
    """'does not fit' is said for tensors of another shape only: names are timm's to judge
    (its checkpoint filters rename older formats), so a file with an extra tensor whose load
    fails for another reason keeps that error."""
    import timm.models._builder as builder

    source = TimmBackbone(make_ctx(image_size=(32, 32)), **TINY_VIT).model
    path = tmp_path / "extra.pth"
    torch.save({**source.state_dict(), "decoder.weight": torch.zeros(2)}, path)

    def broken(*args, **kwargs):
        raise RuntimeError("something else went wrong")

    monkeypatch.setattr(builder, "load_pretrained", broken)
    with pytest.raises(RuntimeError, match="something else went wrong"):
        TimmBackbone(make_ctx(image_size=(32, 32)), pretrained=str(path), **TINY_VIT)


def test_a_checkpoint_holding_only_its_ema_copy_of_another_size_is_one_line(tmp_path):
    """timm's reader takes 'state_dict_ema' (or 'model_ema') when a checkpoint has one
    (timm.models.load_state_dict, use_ema=True); the shape account reads the same tensors."""
    from timm.models import load_state_dict

    wide = dict(TINY_VIT, model_kwargs={**TINY_VIT["model_kwargs"], "embed_dim": 64})
    state = TimmBackbone(make_ctx(image_size=(32, 32)), **wide).model.state_dict()
    path = tmp_path / "ema_only.pth"
    torch.save({"epoch": 9, "state_dict_ema": state}, path)
    assert load_state_dict(str(path)).keys() == state.keys()  # the reference: timm reads the EMA copy
    with pytest.raises(ValueError) as caught:
        TimmBackbone(make_ctx(image_size=(32, 32)), pretrained=str(path), **TINY_VIT)
    message = str(caught.value)
    assert "\n" not in message and "in the file, [48] in the model" in message, message


def test_a_complete_pretrained_file_loads_without_a_warning(tmp_path):
    import warnings

    source = TimmBackbone(make_ctx(image_size=(32, 32)), **TINY_VIT).model
    path = tmp_path / "whole.pth"
    torch.save(source.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TimmBackbone(make_ctx(image_size=(32, 32)), pretrained=str(path), **TINY_VIT)


def test_pretrained_true_offline_explains_the_cache_and_local_file(monkeypatch):
    import timm.models._builder as builder

    def offline(*args, **kwargs):
        raise FileNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(builder, "load_pretrained", offline)  # never touch the network
    with pytest.raises(RuntimeError, match="weights for 'resnet18' are not in the local.*pretrained: /path"):
        TimmBackbone(make_ctx(), arch="resnet18", pretrained=True)


def test_freeze_patch_embed_stops_its_gradients():
    backbone = TimmBackbone(make_ctx(), freeze_patch_embed=True, **TINY_VIT)
    assert not any(p.requires_grad for p in backbone.model.patch_embed.parameters())
    assert all(p.requires_grad for p in backbone.model.blocks.parameters())


def test_freeze_patch_embed_on_a_cnn_is_an_error():
    with pytest.raises(ValueError, match="freeze_patch_embed"):
        TimmBackbone(make_ctx(), arch="resnet18", freeze_patch_embed=True)


def test_drop_path_rate_reaches_the_model():
    backbone = TimmBackbone(make_ctx(), drop_path_rate=0.1, **TINY_VIT)
    assert backbone.model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)


def test_model_kwargs_cannot_set_what_the_pipeline_sets():
    with pytest.raises(ValueError, match="model_kwargs.img_size"):
        TimmBackbone(make_ctx(), arch="resnet18", model_kwargs={"img_size": 224})


def test_unknown_arch_is_an_error_naming_it():
    with pytest.raises(ValueError, match="unknown arch 'vit_tiyn_patch16_224'"):
        TimmBackbone(make_ctx(), arch="vit_tiyn_patch16_224")


# --- BNNeck head -------------------------------------------------------------------------

def test_bnneck_training_outputs_pre_and_post_bn_features_and_logits():
    head = BNNeckHead(make_ctx(feature_dim=6)).train()
    feats = torch.randn(4, 6) * 3 + 2
    out = head({"global": feats}, make_batch([0, 1, 2, 3]))
    assert torch.equal(out["features"], feats)
    # Training-mode BN with weight 1, bias 0: zero mean, unit (biased) variance per channel.
    assert torch.allclose(out["bn_features"].mean(0), torch.zeros(6), atol=1e-5)
    assert torch.allclose(out["bn_features"].var(0, unbiased=False), torch.ones(6), atol=1e-3)
    assert out["embedding"] is out["bn_features"]
    assert out["logits"].shape == (4, 4)


def test_bnneck_has_no_logits_in_eval_mode():
    head = BNNeckHead(make_ctx(feature_dim=6)).eval()
    assert "logits" not in head({"global": torch.randn(2, 6)}, make_batch([0, 1]))


def test_bnneck_embedding_pre_uses_the_pre_bn_feature():
    head = BNNeckHead(make_ctx(feature_dim=6), embedding="pre").eval()
    feats = torch.randn(2, 6)
    assert torch.equal(head({"global": feats}, make_batch([0, 1]))["embedding"], feats)


def test_bnneck_initialisation_follows_bag_of_tricks():
    head = BNNeckHead(make_ctx(feature_dim=256, num_ids=50))
    assert torch.equal(head.bn.weight, torch.ones(256)) and torch.equal(head.bn.bias, torch.zeros(256))
    assert not head.bn.bias.requires_grad and head.bn.weight.requires_grad
    assert head.classifier.bias is None
    assert head.classifier.weight.std().item() == pytest.approx(0.001, rel=0.05)


def test_bnneck_bias_can_be_trained_when_not_bias_free():
    assert BNNeckHead(make_ctx(feature_dim=6), bias_free_bn=False).bn.bias.requires_grad


def test_bnneck_without_classifier_builds_with_no_identities():
    head = BNNeckHead(BuildContext(feature_dim=6), classifier=False).train()
    assert head.classifier is None
    assert "logits" not in head({"global": torch.randn(2, 6)}, make_batch([0, 1]))


def test_bnneck_classifier_without_identities_is_an_error():
    with pytest.raises(ValueError, match="num_identities is 0"):
        BNNeckHead(BuildContext(feature_dim=6))


def test_bnneck_missing_feature_names_the_key_and_features_present():
    head = BNNeckHead(make_ctx(feature_dim=6), feature="parts")
    with pytest.raises(KeyError, match="'parts'.*global, tokens"):
        head({"global": torch.randn(2, 6), "tokens": torch.randn(2, 3, 6)}, make_batch([0, 1]))


def test_bnneck_unknown_embedding_names_valid_values():
    with pytest.raises(ValueError, match="bn, pre"):
        BNNeckHead(make_ctx(feature_dim=6), embedding="post")


@pytest.mark.parametrize("backbone", ["timm", "resnet"])
def test_a_truncated_pretrained_file_is_named_whatever_words_the_reader_uses(tmp_path, monkeypatch, backbone):
    """The file's own structure says it is cut short (no zip directory at its end), not the
    wording of torch's reader error, which may change from one release to the next."""
    from core.models.resnet import ReIDResNet

    whole = tmp_path / "whole.pt"
    torch.save({"w": torch.zeros(64)}, whole)
    path = tmp_path / "cut.pt"
    path.write_bytes(whole.read_bytes()[:-40])

    def reworded(*args, **kwargs):
        raise RuntimeError("archive could not be opened")

    monkeypatch.setattr(torch, "load", reworded)
    with pytest.raises(ValueError, match=r"cut.pt: not a readable checkpoint \(truncated.*copy it again") as caught:
        if backbone == "timm":
            TimmBackbone(make_ctx(image_size=(32, 32)), pretrained=str(path), **TINY_VIT)
        else:
            ReIDResNet(make_ctx(), arch="resnet18", pretrained=str(path))
    assert f"backbone '{backbone}'" in str(caught.value)


def test_a_pretrained_file_that_reads_but_does_not_build_keeps_its_own_error(tmp_path, monkeypatch):
    """Only a failure to read the file becomes 'not a readable checkpoint': the file is whole
    and reads, so an error raised while building the model passes through unchanged."""
    import timm

    source = TimmBackbone(make_ctx(image_size=(32, 32)), **TINY_VIT).model
    path = tmp_path / "whole.pth"
    torch.save(source.state_dict(), path)

    def broken(*args, **kwargs):
        raise RuntimeError("something else went wrong")

    monkeypatch.setattr(timm, "create_model", broken)
    with pytest.raises(RuntimeError, match="something else went wrong"):
        TimmBackbone(make_ctx(image_size=(32, 32)), pretrained=str(path), **TINY_VIT)


# --- the baseline end to end ---------------------------------------------------------------

def test_gradients_flow_from_both_losses_into_the_backbone():
    ctx = make_ctx()
    backbone = TimmBackbone(ctx, **TINY_VIT)
    ctx.feature_dim = backbone.feature_dim
    head = BNNeckHead(ctx).train()
    batch = make_batch([0, 0, 1, 1, 2, 2])
    outputs = head(backbone(batch), batch)
    ce, _ = CrossEntropyLoss()(outputs, batch)
    tri, _ = TripletLoss()(outputs, batch)
    (ce + tri).backward()
    for name, param in list(backbone.named_parameters()) + list(head.named_parameters()):
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert backbone.model.patch_embed.proj.weight.grad.abs().sum() > 0
    assert head.classifier.weight.grad.abs().sum() > 0


class _WritesAFile:
    """Unpickling this calls open(marker, 'w'): code a received file would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("backbone", ["timm", "resnet"])
@pytest.mark.parametrize("case", ["pickle", "truncated.pt", "truncated.safetensors", "empty.pt", "text.pt"])
def test_an_unreadable_pretrained_file_is_one_line_naming_it_and_runs_nothing(tmp_path, backbone, case):
    """A file that needs pickle is refused without unpickling it (nothing in it runs), and a
    truncated one names itself, instead of torch's advice to pass weights_only=False (which
    no YAML key sets) or a raw reader error."""
    from core.models.resnet import ReIDResNet

    marker = tmp_path / "RAN"
    whole = tmp_path / "whole.pt"
    torch.save({"w": torch.zeros(2), "x": _WritesAFile(marker)}, whole)
    if case == "pickle":  # the global it would call is named, as the checkpoint loader names it
        path, match = whole, r"refused: this file needs pickle to load.*GLOBAL io.open"
    elif case == "truncated.pt":
        path, match = tmp_path / "cut.pt", "not a readable checkpoint.*truncated"
        path.write_bytes(whole.read_bytes()[:60])
    elif case == "truncated.safetensors":
        path, match = tmp_path / "cut.safetensors", "not a readable safetensors file.*truncated"
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"w\":")
    elif case == "empty.pt":  # torch raises a bare EOFError
        path, match = tmp_path / "empty.pt", "not a readable checkpoint.*empty"
        path.write_bytes(b"")
    else:  # torch raises KeyError('101')
        path, match = tmp_path / "notes.pt", "not a readable checkpoint.*not a PyTorch file"
        path.write_text("some notes, not weights")
    build = (lambda: TimmBackbone(make_ctx(image_size=(32, 32)), pretrained=str(path), **TINY_VIT)) if backbone == "timm" \
        else (lambda: ReIDResNet(make_ctx(), arch="resnet18", pretrained=str(path)))
    with pytest.raises(ValueError, match=match) as caught:
        build()
    assert str(path) in str(caught.value) and f"backbone '{backbone}'" in str(caught.value)
    assert not marker.exists()

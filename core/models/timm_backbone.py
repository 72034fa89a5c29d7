"""Any timm model as a ReID backbone (YAML name `timm`).

TransReID (He et al. 2021) and the BoT baseline (Luo et al. 2019) start from an
ImageNet-pretrained ViT or ResNet with the classifier removed; timm provides both. ViTs
are built at the pipeline's image size (ReID crops are non-square, e.g. 256x128), and
pretrained weights go through timm's own checkpoint filter, which resamples the
position embeddings to the new patch grid (TransReID Sec. 3.1).

Nothing is ever downloaded on our machines: `pretrained: true` reads the user's local
timm / Hugging Face cache, and `pretrained: path/to/file.pth` reads a local file.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import timm
import torch

from core.context import BuildContext
from core.interfaces import Backbone
from core.records import Batch

#: Checkpoint file types `pretrained: <path>` accepts.
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
#: model_kwargs keys the backbone sets itself, and where they come from instead.
_RESERVED = {
    "num_classes": "the head (e.g. `bnneck`) owns the classifier; the backbone is built with num_classes=0",
    "img_size": "the image size comes from data.transform.size",
    "pretrained": "use the backbone key `pretrained`",
    "drop_path_rate": "use the backbone key `drop_path_rate`",
}


#: How the messages of TimmBackbone name it.
TIMM_NAME = "backbone 'timm'"


@contextlib.contextmanager
def errors_named(name: str) -> Iterator[None]:
    """Re-raise the errors of a TimmBackbone built inside (bad `arch`, `pretrained`,
    `model_kwargs`...) naming `name` (e.g. "backbone 'transreid'"), for a backbone under
    another YAML name that builds on it (a subclass or a member), so the user reads the
    name they wrote."""
    try:
        yield
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise type(exc)(str(exc).replace(TIMM_NAME, name)) from exc


#: timm's reports of the model's keys a pretrained file did not hold (info level) and of the
#: file's keys the model does not have (a warning listing every one of them) (timm.models.
#: _builder, load_pretrained: "Missing keys (a, b) discovered while loading pretrained weights...")
_REPORTS = {"missing": re.compile(r"^Missing keys \((.*)\) discovered while loading pretrained weights"),
            "unexpected": re.compile(r"^Unexpected keys \((.*)\) found while loading pretrained weights")}


@contextlib.contextmanager
def _keys_reported() -> Iterator[dict[str, list[str]]]:
    """Collect the keys timm reports while loading pretrained weights inside: {"missing": the
    model's keys the file did not fill, "unexpected": the file's keys the model lacks}; the
    caller says what matters in one line of its own (timm's unexpected-key warning lists
    every key). During the load only our handler sees timm's records (the logger's own
    handlers are set aside and propagation is off, so a root handler showing INFO prints
    nothing of what the raised level lets through); afterwards its handlers, level and
    propagation are restored, and the records other than these two reports are passed on as
    they would have been without us (those at a level the logger has enabled)."""
    reported: dict[str, list[str]] = {kind: [] for kind in _REPORTS}
    held: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            for kind, pattern in _REPORTS.items():
                found = pattern.match(record.getMessage())
                if found:
                    reported[kind].extend(k.strip() for k in found.group(1).split(",") if k.strip())
                    return
            held.append(record)

    logger = logging.getLogger("timm.models._builder")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    for other in handlers:  # only ours sees the load's records
        logger.removeHandler(other)
    handler = Collect(logging.NOTSET)
    logger.addHandler(handler)
    logger.propagate = False
    if not logger.isEnabledFor(logging.INFO):
        logger.setLevel(logging.INFO)
    try:
        yield reported
    finally:
        logger.removeHandler(handler)
        for other in handlers:
            logger.addHandler(other)
        logger.setLevel(level)
        logger.propagate = propagate
        for record in held:
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)


def weights_read_errors(path: Path, owner: str) -> contextlib.AbstractContextManager[None]:
    """A pretrained file that cannot be read as weights fails with one ValueError line naming
    it and why (core.training.checkpoint.reading_weights): one that needs pickle is refused
    (torch's own message suggests weights_only=False, which no YAML key sets), a truncated
    or corrupt one says so."""
    from core.training.checkpoint import reading_weights

    return reading_weights(path, lambda line: ValueError(f"{owner}: pretrained file {line}"),
                           "Save its state dict (torch.save(model.state_dict(), ...)) or convert it to .safetensors")


def _create(arch: str, image_size: tuple[int, int], **kwargs: Any) -> torch.nn.Module:
    """timm.create_model with img_size for models that take it (ViT, Swin, ...); models
    that do not (ResNet, ...) are built without it."""
    try:
        return timm.create_model(arch, img_size=tuple(image_size), **kwargs)
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise
    return timm.create_model(arch, **kwargs)


def _file_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint file's tensors, read cheaply: memory-mapped (.pt/.pth/.bin), or empty
    tensors on the meta device with the file's shapes (.safetensors); unwrapped as timm
    unwraps them (state_dict_ema, model_ema, state_dict, model; `module.` prefixes)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    with torch.serialization.safe_globals([argparse.Namespace]):  # as timm's reader (its training checkpoints' args)
        try:
            ckpt = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError:  # torch's legacy (pre-1.6, non-zip) format cannot be memory-mapped: read it whole
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    state = unwrap_checkpoint(ckpt)
    return state if isinstance(state, dict) else {}


def unwrap_checkpoint(ckpt: Any) -> Any:
    """The state dict inside a checkpoint, found as timm's load_state_dict(use_ema=True) finds
    it: `state_dict_ema`, `model_ema`, `state_dict`, `model`, the first present (a training
    checkpoint's EMA copy first); `module.` prefixes (DataParallel/DDP) stripped. Anything
    but a mapping is returned as it is, for the caller to refuse."""
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    return {k[7:] if k.startswith("module.") else k: v for k, v in ckpt.items()} if isinstance(ckpt, dict) else ckpt


def _shapes_misfit(path: Path, arch: str, image_size: tuple[int, int], model_kwargs: dict[str, Any]) -> str:
    """core.training.checkpoint.misfit of the file's tensors, as timm's checkpoint filter hands
    them to the model (OpenCLIP's `visual.*` names become a ViT's own, ...), against the
    model's (built on the meta device, so nothing is allocated), tensors of another shape
    only; '' when none differ or the file cannot be read cheaply."""
    from core.training.checkpoint import misfit

    try:
        theirs = _file_tensors(path)
        try:
            with torch.device("meta"):
                model, filtered = _filtered(path, theirs, arch, image_size, model_kwargs)
        except Exception:  # noqa: BLE001 - timm's builder moved on: compare the file's own names
            with torch.device("meta"):
                model, filtered = _create(arch, image_size, pretrained=False, **model_kwargs), theirs
    except Exception:  # noqa: BLE001 - no better account than timm's own error, which then stands
        return ""
    return misfit(model.state_dict(), filtered, names=False)


def _filtered(path: Path, theirs: dict[str, torch.Tensor], arch: str, image_size: tuple[int, int],
              model_kwargs: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The model built as for the pretrained file `path`, and the file's tensors `theirs`
    passed through the arch's checkpoint filter (what timm would load); `theirs` unchanged
    when the filter fails on them. timm keeps each arch's filter inside its builder, so
    timm's load_pretrained is replaced during the build by one that applies the filter and
    loads nothing."""
    from timm.models import _builder

    seen: dict[str, dict[str, torch.Tensor]] = {}

    def filter_only(model: torch.nn.Module, *args: Any, filter_fn: Any = None, **kwargs: Any) -> None:
        seen["state"] = dict(theirs)
        if filter_fn is not None:
            with contextlib.suppress(Exception):  # a filter failing on these tensors: compare the file's own names
                try:
                    seen["state"] = filter_fn(dict(theirs), model)
                except TypeError:  # a filter of one argument, as timm allows
                    seen["state"] = filter_fn(dict(theirs))

    load_pretrained = _builder.load_pretrained
    _builder.load_pretrained = filter_only
    try:
        model = _create(arch, image_size, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **model_kwargs)
    finally:
        _builder.load_pretrained = load_pretrained
    return model, seen.get("state", theirs)


def _some(names: list[str], n: int) -> str:
    """The first `n` names, then how many more."""
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


class TimmBackbone(Backbone):
    """A timm model without its classifier: "global" = pooled pre-logits features
    (B, D), plus "tokens" (B, N, D) for token models (ViT: class token first).

    `pretrained`: false -> random init; true -> timm's pretrained weights from the
    local cache; a path -> a local checkpoint (.pth/.pt/.bin/.safetensors), position
    embeddings resampled to the image size. `freeze_patch_embed` keeps the patch
    projection fixed (Chen et al. 2021, MoCo v3, Sec. 5: stabilises ViT training).
    """

    def __init__(self, ctx: BuildContext, arch: str = "vit_base_patch16_224",
                 pretrained: bool | str = False, model_kwargs: dict[str, Any] | None = None,
                 drop_path_rate: float = 0.0, freeze_patch_embed: bool = False) -> None:
        super().__init__()
        model_kwargs = dict(model_kwargs or {})
        for key, why in _RESERVED.items():
            if key in model_kwargs:
                raise ValueError(f"backbone 'timm': model_kwargs.{key} is not allowed: {why}")
        if not arch.startswith(("hf-hub:", "hf_hub:", "local-dir:")) and not timm.is_model(arch):
            close = timm.list_models(f"*{arch.split('.')[0][:8]}*")[:5]
            raise ValueError(f"backbone 'timm': unknown arch '{arch}'"
                             + (f"; similar timm models: {', '.join(close)}" if close else ""))
        if drop_path_rate:
            model_kwargs["drop_path_rate"] = drop_path_rate
        model_kwargs["num_classes"] = 0
        self.arch = arch
        image_size = tuple(ctx.image_size)

        if pretrained is False:
            self.model = _create(arch, image_size, pretrained=False, **model_kwargs)
        elif pretrained is True:
            try:
                self.model = _create(arch, image_size, pretrained=True, **model_kwargs)
            except OSError as exc:  # hub cache miss, offline mode, no network: all OSErrors
                raise RuntimeError(
                    f"backbone 'timm': the pretrained weights for '{arch}' are not in the local "
                    f"timm / Hugging Face cache and cannot be downloaded here ({type(exc).__name__}: "
                    f"{exc}). Put a checkpoint file on disk and pass its path instead: "
                    f"`backbone: {{name: timm, arch: {arch}, pretrained: /path/to/weights.safetensors}}` "
                    f"(accepted: {', '.join(CHECKPOINT_SUFFIXES)}), or use `pretrained: false`. "
                    "Offline, set HF_HUB_OFFLINE=1 to skip the hub's network retries."
                ) from exc
        elif isinstance(pretrained, (str, Path)):
            path = Path(pretrained).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"backbone 'timm': pretrained checkpoint not found: {path}")
            if path.suffix not in CHECKPOINT_SUFFIXES:
                raise ValueError(f"backbone 'timm': pretrained file {path} has suffix '{path.suffix}'; "
                                 f"accepted: {', '.join(CHECKPOINT_SUFFIXES)}")
            try:
                with _keys_reported() as reported, weights_read_errors(path, TIMM_NAME):
                    self.model = _create(arch, image_size, pretrained=True,
                                         pretrained_cfg_overlay=dict(file=str(path)), **model_kwargs)
            except RuntimeError:  # the file reads (weights_read_errors passed this on): its tensors may not fit
                shapes = _shapes_misfit(path, arch, image_size, model_kwargs)
                if not shapes:
                    raise
                raise ValueError(f"{TIMM_NAME}: pretrained file {path} does not fit '{arch}': {shapes}. Is it for "
                                 "another arch, or another size (model_kwargs such as embed_dim, depth, "
                                 "patch_size)?") from None
            self._check_loaded(path, reported["missing"], reported["unexpected"])
        else:
            raise ValueError(f"backbone 'timm': pretrained must be true, false or a checkpoint path, "
                             f"got {pretrained!r}")

        # Width of forward_head(pre_logits=True); equals num_features unless the model
        # has a pre-logits projection.
        self.feature_dim = int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)
        patch_embed = getattr(self.model, "patch_embed", None)
        grid = getattr(patch_embed, "grid_size", None)
        self.patch_grid = (int(grid[0]), int(grid[1])) if grid is not None else None
        if freeze_patch_embed:
            if patch_embed is None:
                raise ValueError(f"backbone 'timm': freeze_patch_embed is true but '{arch}' has no "
                                 "patch_embed (only token models such as ViT have one)")
            patch_embed.requires_grad_(False)

    def _check_loaded(self, path: Path, missing: list[str], unexpected: list[str]) -> None:
        """timm loads non-strictly once the classifier is dropped, so a file of another
        architecture, or whose keys carry a wrapper prefix, would load nothing, and one with
        some keys renamed would load in part, silently (timm only logs the missing keys at
        info level). Loading nothing is refused (as the `resnet` backbone refuses a file that
        does not fit), naming the file's keys and the model's; loading in part is a warning
        naming the weights left at their random start and the file's tensors not used.
        `missing` / `unexpected`: what timm reported after its own checkpoint filter (which
        renames older formats: comparing raw key sets would cry wolf)."""
        own = list(self.model.state_dict())
        if own and set(missing) >= set(own):
            try:
                keys = sorted(_file_tensors(path))
            except Exception:  # noqa: BLE001 - unreadable cheaply: name what timm reported instead
                keys = sorted(unexpected)
            raise ValueError(f"{TIMM_NAME}: pretrained file {path} does not fit '{self.arch}': none of its "
                             f"{len(keys)} tensors ({_some(keys, 3)}) matches a tensor of the model "
                             f"({_some(own, 3)}). Is it for another arch? If its names carry a wrapper prefix "
                             "(e.g. 'model.', 'backbone.'), strip it before loading.")
        notes = []
        if missing:
            notes.append(f"{len(missing)} of the {len(own)} tensors of '{self.arch}' are not in {path} and keep "
                         f"their random initialisation ({_some(missing, 4)})")
        if unexpected:
            notes.append(f"{len(unexpected)} tensors of {path} match no tensor of '{self.arch}' and were not loaded "
                         f"({_some(unexpected, 4)})")
        if notes:
            warnings.warn(f"{TIMM_NAME}: {'; '.join(notes)}. Rename the file's keys to timm's names for this "
                          "architecture, or pick the architecture the file was saved from.", stacklevel=3)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        feats = self.model.forward_features(batch.images)
        out = {"global": self.model.forward_head(feats, pre_logits=True)}
        if feats.ndim == 3:
            out["tokens"] = feats
        return out

"""The ReID ResNet backbone (YAML name `resnet`): the CNN of BoT, AGW and SBS.

- last stride 1 (Luo et al. 2019, "Bag of Tricks", Sec. 4.4): conv5_x keeps the stride-16
  map (16x8 at 256x128 instead of 8x4), a larger feature map at no parameter cost;
- IBN-a units (`ibn: true`, core.models.ibn; Pan et al. 2018), as in fast-reid's SBS;
- non-local blocks after the last units of each stage (`non_local: [0, 2, 3, 0]` is AGW's
  setting, Ye et al. 2021 Sec. 4.1; core.models.non_local);
- the pooling of the final map (core.models.pooling: avg, max, gem, attention);
- the stem's 3x3 stride-2 max-pool (`stem_maxpool`): `padded` (padding 1, torchvision's and
  timm's, and fast-reid's until Aug 2020) or `ceil` (no padding, ceil mode: fast-reid's
  ResNet since its commit 9c667d1, 2020-08-14). At 256x128 both give a 64x32 map, but the
  windows are shifted by one pixel, so a network trained with one computes another
  function with the other (released fast-reid weights: core.released_weights.fastreid).

The ResNet itself is timm's (resnet50, resnet101, ...: torchvision's parameter names).
Nothing is downloaded: `pretrained: true` reads timm's local cache; a path reads a local
state dict in timm/torchvision or IBN-Net key format (the IBN-Net authors' files, with or
without a `state_dict` wrapper or `module.` prefixes); the classifier (`fc.*`) is dropped,
and any other missing or unexpected key is an error naming a few of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from core.context import BuildContext
from core.interfaces import Backbone
from core.models.ibn import add_ibn_a
from core.models.non_local import NonLocalBlock
from core.models.pooling import build_pooling
from core.models.timm_backbone import unwrap_checkpoint, weights_read_errors
from core.records import Batch
from core.training.checkpoint import misfit

NAME = "backbone 'resnet'"
LAYERS = ("layer1", "layer2", "layer3", "layer4")
STEM_MAXPOOLS = ("padded", "ceil")


def read_state_dict(path: Path, owner: str) -> dict[str, torch.Tensor]:
    """A checkpoint file's tensors, unwrapped as the timm backbone's are (unwrap_checkpoint:
    a training checkpoint's EMA copy first, then `state_dict` / `model`; `module.` stripped)."""
    if not path.is_file():
        raise FileNotFoundError(f"{owner}: pretrained checkpoint not found: {path}")
    with weights_read_errors(path, owner):
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    state = unwrap_checkpoint(state)
    if not isinstance(state, dict):
        raise ValueError(f"{owner}: {path} holds a {type(state).__name__}, not a state dict")
    return state


class ReIDResNet(Backbone):
    """Outputs "global" (B, C) (the pooled conv5_x map) and "map" (B, C, H, W).

    Keys: `arch` (a timm ResNet: resnet18/34/50/101/152, ...), `pretrained` (false, true,
    or a local file), `last_stride` (1 or 2), `ibn` (IBN-a in layer1-3), `non_local`
    (blocks per stage, after its last units), `stem_maxpool` (`padded` or `ceil`, above),
    `non_local_width` (their embedding width; null: half the stage's channels, Wang et al.;
    1: the AGW / fast-reid code's), `pooling` (name or mapping),
    `model_kwargs` (passed to timm.create_model, e.g. a tiny width for tests), `stem_relu`
    (false: no ReLU after the stem's BN, as in reid-strong-baseline's and TransReID's ResNet,
    whose code has it commented out since its first release: their released weights compute
    their function only so; ImageNet weights were trained with it, so keep it for training).
    """

    def __init__(self, ctx: BuildContext, arch: str = "resnet50", pretrained: bool | str = False,
                 last_stride: int = 1, ibn: bool = False, non_local: list[int] | None = None,
                 pooling: str | dict[str, Any] = "avg", model_kwargs: dict[str, Any] | None = None,
                 non_local_width: int | None = None, stem_maxpool: str = "padded", stem_relu: bool = True) -> None:
        super().__init__()
        if stem_maxpool not in STEM_MAXPOOLS:
            raise ValueError(f"{NAME}: stem_maxpool must be one of {', '.join(STEM_MAXPOOLS)} (padded: torchvision's "
                             f"3x3 stride-2 padding-1 max-pool; ceil: fast-reid's, no padding, ceil mode), "
                             f"got {stem_maxpool!r}")
        if not isinstance(stem_relu, bool):
            raise ValueError(f"{NAME}: stem_relu must be true or false (false: reid-strong-baseline's / "
                             f"TransReID's ResNet, which has no ReLU after the stem), got {stem_relu!r}")
        if non_local_width is not None and (isinstance(non_local_width, bool) or not isinstance(non_local_width, int)
                                            or non_local_width < 1):
            raise ValueError(f"{NAME}: non_local_width must be a positive int (1: the AGW / fast-reid code's "
                             f"non-local blocks) or null (half the channels), got {non_local_width!r}")
        if not arch.startswith("resnet") or not timm.is_model(arch):
            raise ValueError(f"{NAME}: arch must be a timm ResNet (resnet18, resnet34, resnet50, resnet101, "
                             f"resnet152, ...), got {arch!r}")
        if last_stride not in (1, 2):
            raise ValueError(f"{NAME}: last_stride must be 1 or 2, got {last_stride}")
        non_local = list(non_local or [0, 0, 0, 0])
        if len(non_local) != 4 or any(int(n) < 0 for n in non_local):
            raise ValueError(f"{NAME}: non_local must list 4 non-negative block counts (one per stage, "
                             f"e.g. AGW's [0, 2, 3, 0]), got {non_local}")
        if pretrained is True and ibn:
            raise ValueError(f"{NAME}: IBN-a weights are not in timm; pass the IBN-Net authors' file as "
                             "`pretrained: /path/to/resnet50_ibn_a-d9d0bb7b.pth`, or `pretrained: false`")
        kwargs = dict(model_kwargs or {})
        kwargs["num_classes"] = 0
        try:
            self.model = timm.create_model(arch, pretrained=pretrained is True, **kwargs)
        except OSError as exc:
            raise RuntimeError(f"{NAME}: the pretrained weights of '{arch}' are not in the local timm cache "
                               f"and cannot be downloaded here ({exc}); pass a local file as "
                               "`pretrained: /path/to/weights.pth` or use `pretrained: false`") from exc
        if ibn:
            add_ibn_a(self.model)
        if not stem_relu:
            self.model.act1 = nn.Identity()
        if stem_maxpool == "ceil":
            self.model.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
        if last_stride == 1:
            self._set_last_stride_1()
        if isinstance(pretrained, (str, Path)) and not isinstance(pretrained, bool):
            self.load_file(Path(pretrained).expanduser())
        elif pretrained is not True and pretrained is not False:
            raise ValueError(f"{NAME}: pretrained must be true, false or a checkpoint path, got {pretrained!r}")

        channels = [getattr(self.model, n)[-1].conv3.out_channels if hasattr(getattr(self.model, n)[-1], "conv3")
                    else getattr(self.model, n)[-1].conv2.out_channels for n in LAYERS]
        #: stage name -> {unit index after which a block runs: block}
        self.non_local = nn.ModuleDict()
        self._after: dict[str, list[int]] = {}
        for name, count, width in zip(LAYERS, non_local, channels):
            units = len(getattr(self.model, name))
            if count > units:
                raise ValueError(f"{NAME}: non_local asks for {count} blocks in {name}, which has {units} units")
            if count:
                self._after[name] = list(range(units - count, units))
                self.non_local[name] = nn.ModuleList(NonLocalBlock(width, inter=non_local_width) for _ in range(count))
        self.feature_dim = int(channels[-1])
        self.pool = build_pooling(pooling, self.feature_dim, NAME)

    def _set_last_stride_1(self) -> None:
        unit = self.model.layer4[0]
        strided = unit.conv2 if hasattr(unit, "conv3") else unit.conv1
        strided.stride = (1, 1)
        if unit.downsample is not None:
            first = unit.downsample[0]
            if not isinstance(first, nn.Conv2d):
                raise ValueError(f"{NAME}: last_stride 1 needs a strided 1x1 conv shortcut; this arch's "
                                 f"shortcut starts with {type(first).__name__}")
            first.stride = (1, 1)

    def load_file(self, path: Path) -> None:
        state = {k: v for k, v in read_state_dict(path, NAME).items() if not k.startswith("fc.")}
        own = self.model.state_dict()
        # BatchNorm supplies its num_batches_tracked to a file saved without it (torchvision's
        # files before 0.4.1, other exporters): torch's own load_state_dict accepts such a file
        missing = sorted(k for k in set(own) - set(state) if not k.endswith(".num_batches_tracked"))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"{NAME}: {path} does not fit this ResNet: {len(missing)} missing keys "
                             f"(e.g. {', '.join(missing[:3]) or '-'}), {len(unexpected)} unexpected keys "
                             f"(e.g. {', '.join(unexpected[:3]) or '-'}); IBN-a files need `ibn: true`, "
                             "plain ResNet files `ibn: false`")
        shapes = misfit(own, state, names=False)
        if shapes:  # same names, other widths (e.g. a wide ResNet's file): torch would list each tensor
            raise ValueError(f"{NAME}: {path} does not fit this ResNet: {shapes}; is it a file of another width "
                             "(a wide ResNet's, or one saved with other model_kwargs)?")
        self.model.load_state_dict(state, strict=True)

    def forward_map(self, images: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.maxpool(m.act1(m.bn1(m.conv1(images))))
        for name in LAYERS:
            layer = getattr(m, name)
            blocks = self.non_local[name] if name in self.non_local else None
            after = self._after.get(name, [])
            for i, unit in enumerate(layer):
                x = unit(x)
                if blocks is not None and i in after:
                    x = blocks[after.index(i)](x)
        return x

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        fmap = self.forward_map(batch.images)
        return {"global": self.pool(fmap), "map": fmap}

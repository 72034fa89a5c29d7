"""Margin-based softmax losses over learnable class proxies (YAML names `arcface`,
`cosface`, `circle`): each loss owns a (num_identities, D) proxy matrix W (parameters
`losses.<i>.proxies`), turns the cosines s_j = cos(x, W_j) of a feature into logits with a
margin on the target class, and applies (label-smoothed) cross-entropy to them. The head
then needs no classifier (`bnneck` with `classifier: false`); the loss reads the post-BN
feature by default, where fast-reid applies these layers.

- CosFace (Wang et al. 2018, "CosFace: Large Margin Cosine Loss", Eq. 4):
  logit_y = s (cos t_y - m), logit_j = s cos t_j.
- ArcFace (Deng et al. 2019, "ArcFace: Additive Angular Margin Loss", Eq. 3):
  logit_y = s cos(t_y + m); where t_y + m > pi the logit would grow again with t_y, so it
  becomes s (cos t_y - m sin m) (the authors' code), monotone in t_y.
- Circle loss, class-level (Sun et al. 2020, "Circle Loss", Sec. 3.2, with one positive, the
  target proxy; the CircleSoftmax of fast-reid's SBS): logit_y = s a_p (s_y - D_p),
  logit_j = s a_n (s_j - D_n), a_p = [1 + m - s_y]_+, a_n = [s_j + m]_+, D_p = 1 - m,
  D_n = m; the weights a are constants for the gradient, as in the authors' and fast-reid's
  code. Cross-entropy of these logits is the circle loss log[1 + sum_j exp(logit_j - logit_y)].
"""

from __future__ import annotations

import math
import types

import torch
import torch.nn.functional as F
from torch import nn

from core.context import BuildContext
from core.interfaces import Loss, read_output
from core.records import Batch


class _ProxySoftmax(Loss):
    """The part the three losses share: proxies, cosines, (label-smoothed) cross-entropy.
    A subclass gives `margin_logits` and, in its class line, its defaults, e.g.
    `class ArcFaceLoss(_ProxySoftmax, margin=0.5)` (see __init_subclass__)."""

    yaml_name = ""

    def __init_subclass__(cls, **defaults) -> None:
        """Give the subclass this constructor with its own `defaults`, as a real function
        (not a wrapper): its signature and type hints are the loss's YAML schema
        (core.config.validation), so the defaults and the type checks stay exact."""
        super().__init_subclass__()
        if not defaults:  # a further subclass keeps its parent's defaults (or its own __init__)
            return
        if "__init__" in cls.__dict__:
            raise TypeError(f"{cls.__name__}: give defaults in the class line or an __init__, not both")
        base = cls.__init__  # the parent's: a subclass of ArcFaceLoss starts from margin 0.5
        names = base.__code__.co_varnames[base.__code__.co_argcount - len(base.__defaults__):base.__code__.co_argcount]
        unknown = sorted(set(defaults) - set(names))
        if unknown:
            raise TypeError(f"{cls.__name__}: no parameter {unknown} to default; valid: {list(names)}")
        init = types.FunctionType(base.__code__, base.__globals__, "__init__",
                                  tuple(defaults.get(n, d) for n, d in zip(names, base.__defaults__)), base.__closure__)
        init.__annotations__, init.__doc__ = dict(base.__annotations__), base.__doc__
        init.__qualname__, init.__module__ = f"{cls.__qualname__}.__init__", cls.__module__
        cls.__init__ = init

    def __init__(self, ctx: BuildContext, scale: float = 64.0, margin: float = 0.35, features: str = "bn_features",
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        name = f"loss '{self.yaml_name}'"
        if ctx.num_identities <= 0 or not ctx.feature_dim:
            raise ValueError(f"{name} needs the number of training identities and the feature dimension "
                             "(from the training table and the backbone)")
        if scale <= 0:
            raise ValueError(f"{name}: scale must be > 0, got {scale}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"{name}: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.scale, self.margin, self.features = float(scale), float(margin), features
        self.label_smoothing = float(label_smoothing)
        self.proxies = nn.Parameter(torch.empty(ctx.num_identities, int(ctx.feature_dim)))
        nn.init.kaiming_uniform_(self.proxies, a=math.sqrt(5))

    def cosines(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.proxies.float(), dim=1).t()

    def margin_logits(self, cos: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, outputs: dict[str, torch.Tensor], batch: Batch):
        x = read_output(outputs, self.features, f"loss '{self.yaml_name}'",
                        "set the loss key `features`; `bnneck` produces 'bn_features'").float()
        targets = batch.pids.to(x.device, torch.long)
        cos = self.cosines(x)
        logits = self.margin_logits(cos, targets)
        loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            acc = (cos.argmax(dim=1) == targets).float().mean()
        return loss, {"acc": acc}


class CosFaceLoss(_ProxySoftmax, scale=64.0, margin=0.35, label_smoothing=0.0):
    yaml_name = "cosface"

    def margin_logits(self, cos: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        one_hot = _one_hot(targets, cos.shape[1]).to(cos.dtype)
        return self.scale * (cos - self.margin * one_hot)


class ArcFaceLoss(_ProxySoftmax, scale=64.0, margin=0.5, label_smoothing=0.0):
    yaml_name = "arcface"

    def margin_logits(self, cos: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        m = self.margin
        c = cos.gather(1, targets[:, None]).clamp(-1.0, 1.0)
        sin = (1.0 - c * c).clamp(min=0.0).sqrt()
        shifted = c * math.cos(m) - sin * math.sin(m)  # cos(t + m)
        shifted = torch.where(c > math.cos(math.pi - m), shifted, c - m * math.sin(m))
        return self.scale * cos.scatter(1, targets[:, None], shifted)


class CircleSoftmaxLoss(_ProxySoftmax, scale=64.0, margin=0.35, label_smoothing=0.1):
    yaml_name = "circle"

    def margin_logits(self, cos: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        m = self.margin
        alpha_p = (1.0 + m - cos.detach()).clamp(min=0.0)
        alpha_n = (cos.detach() + m).clamp(min=0.0)
        positive = self.scale * alpha_p * (cos - (1.0 - m))
        negative = self.scale * alpha_n * (cos - m)
        one_hot = _one_hot(targets, cos.shape[1])
        return torch.where(one_hot, positive, negative)


def _one_hot(targets: torch.Tensor, classes: int) -> torch.Tensor:
    """(n, classes) bool, True at each row's target: F.one_hot's values without its range
    check, which reads the targets' min and max (two host syncs per call on a GPU)."""
    return torch.arange(classes, device=targets.device)[None, :] == targets[:, None]


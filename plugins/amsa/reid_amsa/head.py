"""The MUVA head (YAML name `muva`): MUVA Sec. 3.1.2 / 4.2 — the BN neck of the
strong baseline (Luo et al. 2019) on the multi-grained visual token v^mg.

v^mg (B, (1+P) D) -> BatchNorm1d (bias frozen) -> bias-free classifier (std 0.001) over
the training identities. L_id (eq. 2) reads the logits (the core's `ce` loss, label
smoothing 0.1), L_imp reads the BN features, L_i2tce the pre-BN ones. At test time the
embedding is BN(v^mg), L2-normalised (METHODS.md).

This is the core's `bnneck` head with a normalised embedding; its outputs keep the core's
names: "features" (pre-BN), "bn_features", "embedding", and in training "logits".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.context import BuildContext
from core.models.bnneck import BNNeckHead
from core.records import Batch

NAME = "head 'muva'"


class MUVAHead(BNNeckHead):
    """Keys: `feature` (the backbone output read; `amsa_clip`'s "global" = v^mg),
    `bias_free_bn` (freeze the BN bias, true), `normalize` (L2-normalise the evaluated
    embedding, true)."""

    def __init__(self, ctx: BuildContext, feature: str = "global", bias_free_bn: bool = True,
                 normalize: bool = True) -> None:
        try:
            super().__init__(ctx, feature=feature, bias_free_bn=bias_free_bn, classifier=True, embedding="bn")
        except ValueError as exc:  # the core names 'bnneck': rename
            raise ValueError(str(exc).replace("head 'bnneck'", NAME)) from None
        self.normalize = bool(normalize)

    def forward(self, features: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        try:
            out = super().forward(features, batch)
        except KeyError as exc:
            raise KeyError(str(exc.args[0]).replace("head 'bnneck'", NAME)) from None
        if self.normalize:
            out["embedding"] = F.normalize(out["bn_features"], dim=1)
        return out

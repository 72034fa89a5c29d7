"""The BNNeck head of the Bag of Tricks baseline (YAML name `bnneck`).

Luo et al. 2019, "Bag of Tricks and a Strong Baseline for Deep Person Re-identification",
Sec. 4.5 / Fig. 5: the triplet loss is applied to the feature before a BatchNorm layer
and the identity (cross-entropy) loss to the feature after it, so the two losses do not
pull one embedding space in conflicting directions. The BN bias is frozen ("bias-free
BN") and the classifier has no bias, so the normalised features lie around the origin
where the classifier's hyperplanes pass.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from core.context import BuildContext
from core.interfaces import Head
from core.records import Batch

EMBEDDINGS = ("bn", "pre")


class BNNeckHead(Head):
    """Backbone feature `feature` -> BatchNorm1d -> bias-free classifier.

    Outputs: "features" (pre-BN, for the triplet loss), "bn_features" (post-BN),
    "embedding" (post-BN with `embedding: bn`, as in the paper's evaluation; pre-BN with
    `embedding: pre`), and in training with `classifier: true`, "logits" (B, num_identities).
    """

    def __init__(self, ctx: BuildContext, feature: str = "global", bias_free_bn: bool = True,
                 classifier: bool = True, embedding: Literal["bn", "pre"] = "bn") -> None:
        super().__init__()
        if embedding not in EMBEDDINGS:
            raise ValueError(f"head 'bnneck': embedding must be one of {', '.join(EMBEDDINGS)}, "
                             f"got {embedding!r}")
        if not ctx.feature_dim:
            raise ValueError("head 'bnneck' needs the backbone's feature dimension "
                             "(ctx.feature_dim), which is set once the backbone is built")
        if classifier and ctx.num_identities <= 0:
            raise ValueError("head 'bnneck': classifier is true but the training table has no "
                             "identities (ctx.num_identities is 0); set classifier: false to "
                             "build the head for evaluation only")
        self.feature, self.embedding = feature, embedding
        dim = int(ctx.feature_dim)
        self.bn = nn.BatchNorm1d(dim)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        if bias_free_bn:
            self.bn.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, ctx.num_identities, bias=False) if classifier else None
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, features: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        if self.feature not in features:
            raise KeyError(f"head 'bnneck' reads the backbone feature '{self.feature}' (key `feature`), "
                           f"which the backbone does not output; features present: "
                           f"{', '.join(sorted(features)) or 'none'}")
        pre = features[self.feature]
        bn = self.bn(pre)
        out = {"features": pre, "bn_features": bn, "embedding": bn if self.embedding == "bn" else pre}
        if self.training and self.classifier is not None:
            out["logits"] = self.classifier(bn)
        return out

"""A BNNeck per branch for multi-branch backbones (YAML name `jpm`): TransReID's head
(He et al. 2021, Sec. 3.3 and Fig. 2), the global feature and each JPM part feature get
their own bias-free BatchNorm and bias-free classifier (the BNNeck of Luo et al. 2019).

Outputs, for losses: "features" / "logits" (global branch, pre-BN / classifier scores),
"features_part<i>" / "logits_part<i>" per part, "bn_features". TransReID weighs the global
and the mean over parts equally (0.5 / 0.5 / k), which the pipeline's loss list spells out.
"embedding" (evaluation): [g, p_1/k, ..., p_k/k] (the authors' test feature), of the pre-BN
features (`embedding: pre`, TransReID's NECK_FEAT 'before') or the post-BN ones (`bn`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from core.context import BuildContext
from core.interfaces import Head, read_output
from core.records import Batch


def _neck(dim: int, classes: int) -> tuple[nn.BatchNorm1d, nn.Linear | None]:
    bn = nn.BatchNorm1d(dim)
    bn.bias.requires_grad_(False)
    fc = None
    if classes > 0:
        fc = nn.Linear(dim, classes, bias=False)
        nn.init.normal_(fc.weight, std=0.001)
    return bn, fc


class JPMHead(Head):
    def __init__(self, ctx: BuildContext, feature: str = "global", parts: str = "parts", num_parts: int = 4,
                 classifier: bool = True, embedding: Literal["bn", "pre"] = "pre") -> None:
        super().__init__()
        if embedding not in ("bn", "pre"):
            raise ValueError(f"head 'jpm': embedding must be bn or pre, got {embedding!r}")
        if not ctx.feature_dim:
            raise ValueError("head 'jpm' needs the backbone's feature dimension (ctx.feature_dim)")
        if classifier and ctx.num_identities <= 0:
            raise ValueError("head 'jpm': classifier is true but the training table has no identities")
        dim, classes = int(ctx.feature_dim), ctx.num_identities if classifier else 0
        self.feature, self.parts, self.num_parts, self.embedding = feature, parts, int(num_parts), embedding
        necks = [_neck(dim, classes) for _ in range(1 + self.num_parts)]
        self.bns = nn.ModuleList(bn for bn, _ in necks)
        self.classifiers = nn.ModuleList(fc for _, fc in necks) if classifier else None

    def forward(self, features: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        g = read_output(features, self.feature, "head 'jpm'")
        p = read_output(features, self.parts, "head 'jpm'", "the `transreid` backbone with jpm: true outputs 'parts'")
        if p.shape[1] != self.num_parts:
            raise ValueError(f"head 'jpm': num_parts is {self.num_parts} but the backbone gives {p.shape[1]} parts "
                             "(set num_parts to the backbone's jpm_groups)")
        pre = [g] + [p[:, i] for i in range(self.num_parts)]
        bn = [norm(x) for norm, x in zip(self.bns, pre)]
        out: dict[str, torch.Tensor] = {"features": g, "bn_features": bn[0]}
        for i in range(self.num_parts):
            out[f"features_part{i}"] = pre[1 + i]
        chosen = bn if self.embedding == "bn" else pre
        out["embedding"] = torch.cat([chosen[0]] + [x / self.num_parts for x in chosen[1:]], dim=1)
        if self.training and self.classifiers is not None:
            out["logits"] = self.classifiers[0](bn[0])
            for i in range(self.num_parts):
                out[f"logits_part{i}"] = self.classifiers[1 + i](bn[1 + i])
        return out

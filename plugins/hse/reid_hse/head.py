"""The HSE head (YAML name `hse`): MGOR Sec. 3.3 — a global classifier g over all training
identities Y on z_G, and one classifier g^(s) per category s over that category's
identities Y_s on z_L (targets: the local index y~, `reid_hse.labels`).

The global path is the baseline's BNNeck (the core's `bnneck` head, reused as is): z_G ->
BatchNorm (bias frozen) -> bias-free g; its outputs keep the core's names ("features",
"bn_features", "embedding", "logits"), so the core's `ce` / `triplet` losses and the
`moil` loss read the global path unchanged. "embedding" (what evaluation uses) comes
from z_G alone.

The local path (our choice): z_L -> BatchNorm -> g^(s), bias-free, std 0.001 as g. The
BatchNorm takes its statistics from the meta-train samples only (`batch.roles == 0`; the
whole batch without episodes): the intra-category term is a meta-train term, and
statistics over the whole batch would let meta-test samples into it, which the asymmetric
supervision forbids. (Without any normalisation the class token's large sample-common
component drowns the identity signal and l_spec stays at chance; the global path has the
same need, met by the BNNeck.)
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import nn

from core.context import BuildContext
from core.interfaces import Head, read_output
from core.models.bnneck import BNNeckHead
from core.records import ROLE_TRAIN, Batch
from core.training import distributed as D
from reid_hse.labels import category_sizes

NAME = "head 'hse'"


class HSEHead(Head):
    """Outputs: the global BNNeck's "features" (z_G), "bn_features", "embedding" and, in
    training, "logits" (B, N) = g(BN(z_G)); in training also "local_features" (z_L),
    "local_bn_features" (BN_L(z_L), meta-train statistics) and "local_logits"
    (B, max_s |Y_s|): row b holds g^(s_b)(BN_L(z_L)[b]) in columns 0..|Y_{s_b}|-1
    (indexed by the local index y~) and -inf beyond, with s_b = `batch.categories[b]`.

    The per-category classifiers are `local_classifiers[s]` (nn.Linear(D, |Y_s|), one per
    training category in the training table's order). They are applied as one stacked
    matrix product, so every classifier takes part in every step (DDP needs no
    find_unused_parameters).

    Keys: `feature` / `local_feature` (the backbone outputs read; `hse_vit` gives "global"
    and "local"), `bias_free_bn` and `embedding` ("bn" or "pre") as for `bnneck`.
    """

    def __init__(self, ctx: BuildContext, feature: str = "global", local_feature: str = "local",
                 bias_free_bn: bool = True, embedding: Literal["bn", "pre"] = "bn") -> None:
        super().__init__()
        try:
            self.neck = BNNeckHead(ctx, feature=feature, bias_free_bn=bias_free_bn, classifier=True,
                                   embedding=embedding)
        except ValueError as exc:  # the core names 'bnneck': rename
            raise ValueError(str(exc).replace("head 'bnneck'", NAME)) from None
        names, sizes = category_sizes(ctx, NAME)
        if int(sizes.sum()) != ctx.num_identities:
            raise ValueError(f"{NAME}: the training data has {int(sizes.sum())} identity labels but "
                             f"ctx.num_identities is {ctx.num_identities}")
        self.local_feature = local_feature
        self.category_names = names
        dim = int(ctx.feature_dim)
        self.local_bn = nn.BatchNorm1d(dim, track_running_stats=False)
        if bias_free_bn:
            self.local_bn.bias.requires_grad_(False)
        self.local_classifiers = nn.ModuleList(nn.Linear(dim, int(n), bias=False) for n in sizes)
        for classifier in self.local_classifiers:
            nn.init.normal_(classifier.weight, std=0.001)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)  # CategoryLabels.offsets
        # the width from the table's numpy sizes, not the buffer: a buffer built on the meta
        # device (a sweep's check) has no values to read
        self.width = int(sizes.max()) if sizes.size else 0
        self.register_buffer("sizes", torch.as_tensor(sizes, dtype=torch.long), persistent=False)
        self.register_buffer("offsets", torch.as_tensor(offsets, dtype=torch.long), persistent=False)

    def local_logits(self, z_local: torch.Tensor, categories: torch.Tensor,
                     host_categories: np.ndarray | None = None) -> torch.Tensor:
        """(B, max |Y_s|): g^(s_b)(z_L[b]) per row, -inf past |Y_{s_b}| columns.
        `host_categories`: the categories' host copy (`Batch.host`), which the input check
        reads without a host sync; without it the check reads `categories`."""
        categories = categories.to(z_local.device, torch.long)
        # the input check reads the data (compiled, a graph break): eager only
        if not torch.compiler.is_compiling():
            check = host_categories if host_categories is not None else categories
            outside = (check < 0) | (check >= len(self.local_classifiers))
            if bool(outside.any()):
                self._outside_categories(int(check[outside][0]))
        weight = torch.cat([c.weight for c in self.local_classifiers], dim=0)  # (N, D), category blocks
        every = z_local @ weight.t().to(z_local.dtype)  # (B, N)
        columns = torch.arange(self.width, device=z_local.device)
        valid = columns[None, :] < self.sizes[categories][:, None]
        index = (self.offsets[categories][:, None] + columns[None, :]).clamp(max=weight.shape[0] - 1)
        return every.gather(1, index).masked_fill(~valid, float("-inf"))

    def _outside_categories(self, bad: int) -> None:
        raise ValueError(f"{NAME}: batch.categories holds category id {bad}, but the per-category "
                         f"classifiers cover the training categories 0..{len(self.local_classifiers) - 1} "
                         f"({', '.join(self.category_names)})")

    def local_norm(self, z_local: torch.Tensor, roles: torch.Tensor) -> torch.Tensor:
        """BatchNorm of z_L with the statistics of the meta-train rows (all rows when there
        are none), applied to every row: meta-train rows never depend on meta-test ones."""
        # under DDP the statistics are those of every process's meta-train rows (gathered
        # with their gradient, and their roles with them), as on one process
        every, roles = D.gather_with_labels(z_local, roles.to(z_local.device), D.batch_row_counts())
        train = roles == ROLE_TRAIN
        # the reference rows as weights, not a selection (whose size only the data knows:
        # a host sync on a GPU): meta-train rows, every row when there are none
        use = torch.where(train.any(), train, torch.ones_like(train))[:, None]
        count = use.sum().clamp(min=1).to(every.dtype)
        mean = torch.where(use, every, torch.zeros_like(every)).sum(0) / count
        var = torch.where(use, (every - mean) ** 2, torch.zeros_like(every)).sum(0) / count
        var = torch.where(count > 1, var, torch.ones_like(var))  # one reference row: no statistics
        normed = (z_local - mean) * torch.rsqrt(var + self.local_bn.eps)
        return normed * self.local_bn.weight + self.local_bn.bias

    def forward(self, features: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        out = self.neck(features, batch)
        if self.training:
            z_local = read_output(features, self.local_feature, NAME,
                                  "the `hse_vit` backbone outputs the local token's 'local' in training")
            out["local_features"] = z_local
            out["local_bn_features"] = self.local_norm(z_local, batch.roles)
            host = None if torch.compiler.is_compiling() else batch.host("categories")  # (checks: eager only)
            out["local_logits"] = self.local_logits(out["local_bn_features"], batch.categories, host)
        return out

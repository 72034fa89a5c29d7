"""IRM's heads (YAML head name `instruct_editor`): METHODS.md "Instruct-ReID", paper Fig. 5.

    bio_bn, clo_bn = BN_fusion(bio), BN_fusion(clo)     one BatchNorm shared by the two
                                                        streams (one call on both: one
                                                        batch statistic, as at test time)
    global_bn      = BN_global(global)
    logits         = W_bio bio_bn, W_clo clo_bn, W_global global_bn   (bias-free classifiers)
    embedding      = [bio_bn ; clo_bn]                  (the retrieval feature, 2D)

Text-only samples (text-to-image queries) have no image: their embedding is a projection
of the instruction into the retrieval space (ours; the authors' code retrieves with a
separate 256-d image-text space and an ITM re-ranking):

    [bio_bn ; clo_bn] = BN_text(P t),   t = the instruction's class token (D), P: D -> 2D

so the text rows pass through the same classifiers (W_bio on the first half, W_clo on
the second) and the same metric losses as the image rows of their identity, and one
cosine ranking compares text queries with gallery images. Their "global" rows are
zeros and are skipped by the losses (`has_image`).

BatchNorm biases are frozen (bias-free BN, the BNNeck of Luo et al. 2019); a BatchNorm
that sees a single row in training normalises it with its running statistics.

Under DDP the image and text branches run when the whole batch (every process's rows)
holds rows of their kind — on every process, with no row on a process that holds none,
so a synchronised BatchNorm is called by all processes or none; with `trainer.sync_bn`
each one normalises every process's rows together (gathered with gradient): the
one-process statistics, the single-row rule on the whole batch's count.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.context import BuildContext
from core.interfaces import Head, read_output
from core.records import Batch, device_index
from core.training import distributed as D
from reid_instruct_editor.rows import host_image_rows, whole_batch_rows
from reid_instruct_editor.task_classifier import TaskClassifiers

NAME = "head 'instruct_editor'"


class InstructHead(Head):
    """Outputs "bio_bn", "clo_bn", "global_bn" (B, D), "embedding" (B, 2D) and, in
    training with `classifier: true`, "bio_logits", "clo_logits", "global_logits"
    and "id_targets" (the targets of those logits). Sets ctx.extras["embedding_dim"] = 2D
    for losses built after it (the memory bank). Keys: `bias_free_bn`, `classifier`,
    `classifier_per_task` (true: one classifier per task over its training identities, as
    the authors' code; false: one over every identity, `task_classifier.py`)."""


    def __init__(self, ctx: BuildContext, bias_free_bn: bool = True, classifier: bool = True,
                 classifier_per_task: bool = True) -> None:
        super().__init__()
        if not ctx.feature_dim:
            raise ValueError(f"{NAME} needs the backbone's feature dimension (ctx.feature_dim), set once the "
                             "backbone (`instruct_editor`) is built")
        if classifier and ctx.num_identities <= 0:
            raise ValueError(f"{NAME}: classifier is true but the training table has no identities; set "
                             "classifier: false to build the head for evaluation only")
        dim = int(ctx.feature_dim)
        self.dim = dim
        self.fusion_bn, self.global_bn, self.text_bn = nn.BatchNorm1d(dim), nn.BatchNorm1d(dim), nn.BatchNorm1d(2 * dim)
        for bn in (self.fusion_bn, self.global_bn, self.text_bn):
            if bias_free_bn:
                bn.bias.requires_grad_(False)
        self.text_projection = nn.Linear(dim, 2 * dim)
        self.classifiers = TaskClassifiers(ctx, dim, ("bio", "clo", "global"), classifier_per_task) \
            if classifier else None
        ctx.extras["embedding_dim"] = 2 * dim

    def forward(self, features: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        hint = "the `instruct_editor` backbone produces it"
        bio, clo = read_output(features, "bio", NAME, hint), read_output(features, "clo", NAME, hint)
        glob = read_output(features, "global", NAME, hint)
        n, dim = bio.shape
        # the image and text rows, chosen on the host (the host copy of `has_image` the
        # backbone recorded): no host sync
        host_image = host_image_rows(features, batch, n)
        images, texts = (device_index(np.flatnonzero(rows), bio.device) for rows in (host_image, ~host_image))
        bio_bn, clo_bn, global_bn = (bio.new_zeros(n, dim) for _ in range(3))
        # whole-batch counts: every process takes the same branches (module docstring); in
        # a DDP training step they are read from the records, elsewhere exchanged
        n_images, n_texts, per_image, per_text = len(images), len(texts), None, None
        if self.training:
            n_images, n_texts, per_image, per_text = _branch_rows(batch, host_image, n_images, n_texts, bio.device)
        if n_images:
            bio_i, clo_i = _batch_norm(self.fusion_bn, bio.index_select(0, images), clo.index_select(0, images),
                                       counts=None if per_image is None else [2 * c for c in per_image])
            bio_bn = bio_bn.index_copy(0, images, bio_i.to(bio_bn.dtype))
            clo_bn = clo_bn.index_copy(0, images, clo_i.to(clo_bn.dtype))
            (glob_i,) = _batch_norm(self.global_bn, glob.index_select(0, images), counts=per_image)
            global_bn = global_bn.index_copy(0, images, glob_i.to(global_bn.dtype))
        if n_texts:
            cls = read_output(features, "instruction_cls", NAME, hint).index_select(0, texts)
            (projected,) = _batch_norm(self.text_bn, self.text_projection(cls), counts=per_text)
            bio_bn = bio_bn.index_copy(0, texts, projected[:, :dim].to(bio_bn.dtype))
            clo_bn = clo_bn.index_copy(0, texts, projected[:, dim:].to(clo_bn.dtype))
        out = {"bio_bn": bio_bn, "clo_bn": clo_bn, "global_bn": global_bn,
               "embedding": torch.cat([bio_bn, clo_bn], dim=1)}
        if self.training and self.classifiers is not None:
            out.update(self.classifiers({"bio": bio_bn, "clo": clo_bn, "global": global_bn}, batch))
        return out


@D.eager_under_ddp
def _branch_rows(batch: Batch, host_image: np.ndarray, n_images: int, n_texts: int,
                 device: torch.device) -> tuple[int, int, list[int] | None, list[int] | None]:
    """(image rows, text rows) of the whole batch from this process's `n_images` and
    `n_texts`, and every process's (a synchronised BatchNorm gathers them: None when
    unknown, and the gather exchanges them). In a DDP training step they are read from the
    records, elsewhere the totals are exchanged."""
    every = whole_batch_rows(batch, host_image)
    if every is None:
        n_images, n_texts = D.all_reduce_sum([n_images, n_texts], device)
        return n_images, n_texts, None, None
    return (int(every["images"].sum()), int(every["texts"].sum()),
            D.rows_per_process(every["images"]), D.rows_per_process(every["texts"]))


def _batch_norm(bn: nn.BatchNorm1d, *parts: torch.Tensor, counts: list[int] | None = None) -> tuple[torch.Tensor, ...]:
    """`bn` on the rows of `parts` together (one batch statistic; the fusion BN normalises
    the bio and clo rows as one batch), returned split as given. Under DDP with a
    synchronised `bn` (`trainer.sync_bn` converted it), every process's rows are gathered
    with gradient and normalised as one process would, then each process keeps its own:
    the statistics, the running statistics (equal on every process) and the single-row
    rule below are those of the whole batch, whatever rows a process holds. `counts`:
    every process's number of rows of `parts` together, when known (else exchanged)."""
    x = torch.cat(parts) if len(parts) > 1 else parts[0]
    if bn.training and D.active() and isinstance(bn, (nn.SyncBatchNorm, D.GatheredBatchNorm)):
        rows, mine = D.gather_with_grad_and_slice(x, counts)
        x = _rows_batch_norm(bn, rows, plain=True)[mine]
    else:
        x = _rows_batch_norm(bn, x)
    return tuple(x.split([p.shape[0] for p in parts]))


def _rows_batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor, plain: bool = False) -> torch.Tensor:
    """`bn(x)`, with the running statistics when a training batch has fewer than two rows
    (batch statistics of one row are undefined; none: nothing to normalise). `plain`: as
    a one-process BatchNorm, whatever subclass `bn` is (its synchronised forward skipped)."""
    if bn.training and x.shape[0] < 2:
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return nn.modules.batchnorm._BatchNorm.forward(bn, x) if plain else bn(x)

"""L_imp, MUVA's intra-modal multi-grained prototypical contrast (YAML name
`muva_prototype`), eq. 2 (second line) with VPM-2 and its update, eq. 3.

    L_imp = -log  exp(sim(v_i, M2[y_i]) / tau) / sum_j exp(sim(v_i, M2[j]) / tau),  tau = 0.01

v_i: the BN'd multi-grained visual token ("bn_features" of the `muva` head). VPM-2 M2
(C, 2048) holds one normalised centroid per identity, rebuilt at the start of every epoch
of a stage that uses this loss from all training images (evaluation mode, local tokens
gated by the pseudo-label masks: `gating: labels`; Algorithm 1 line 16), and updated
after every optimisation step with the hardest sample of each identity in the batch
(momentum gamma = 0.2, `reid_amsa.memory`). Under DDP the batch is gathered from every
process first, so every process keeps the same memory.

Contrasting against all C prototypes replaces the triplet loss (Sec. 3.1.2): the number
of negatives no longer depends on the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.context import BuildContext
from core.interfaces import Loss, read_output
from core.records import Batch
from core.training.distributed import batch_row_counts, gather_with_labels
from reid_amsa.extraction import active_in_stage, check_gating, training_features
from reid_amsa.memory import fill_with_centroids, momentum_update

NAME = "loss 'muva_prototype'"


class PrototypeContrastLoss(Loss):
    """Keys: `temperature` tau (0.01), `momentum` gamma (0.2), `features` (the output
    contrasted and stored: "bn_features"), `gating` (labels | stripes | predicted, while
    the memory is rebuilt). Logs "acc" (top-1 against the memory)."""

    #: built and updated from every process's gathered features: equal on all ranks
    shared_buffers = ("memory",)

    def __init__(self, ctx: BuildContext, temperature: float = 0.01, momentum: float = 0.2,
                 features: str = "bn_features", gating: str = "labels") -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"{NAME}: temperature must be > 0, got {temperature}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"{NAME}: momentum must be in [0, 1), got {momentum}")
        if ctx.num_identities < 1 or not ctx.feature_dim:
            raise ValueError(f"{NAME} needs the training identities and the backbone's feature dimension "
                             f"(ctx.num_identities={ctx.num_identities}, ctx.feature_dim={ctx.feature_dim})")
        self.temperature, self.momentum = float(temperature), float(momentum)
        self.features, self.gating = features, check_gating(gating, NAME)
        self.register_buffer("memory", torch.zeros(ctx.num_identities, int(ctx.feature_dim)))  # VPM-2

    def on_epoch_start(self, trainer, epoch) -> None:
        if active_in_stage(self, trainer):
            features, pids = training_features(trainer, self.features, self.gating, NAME)
            self.build_memory(features, pids)

    def build_memory(self, features: torch.Tensor, pids: torch.Tensor) -> None:
        fill_with_centroids(self.memory, features, pids, f"{NAME}: model output '{self.features}' has "
                            f"{features.shape[1]} dimensions, the memory {self.memory.shape[1]}")

    def on_step_end(self, trainer, step, batch, outputs, losses) -> None:
        """Eq. 3 after the optimisation step, with every micro-batch of the step (gradient
        accumulation: the step's batch is all of them, not the last one's `outputs`)."""
        pending, self._pending = getattr(self, "_pending", []), []
        if active_in_stage(self, trainer):
            if pending:  # each micro-batch gathered in its forward (every process's rows)
                features, pids = torch.cat([f for f, _ in pending]), torch.cat([p for _, p in pending])
            else:
                features = read_output(outputs, self.features, NAME).detach().float()
                features, pids = gather_with_labels(features, batch.pids.to(features.device), batch_row_counts())
            self.update(features, pids)

    @torch.no_grad()
    def update(self, features: torch.Tensor, pids: torch.Tensor) -> None:
        """Eq. 3 with the hardest sample of each identity of the batch."""
        momentum_update(self.memory, features, pids, self.momentum)

    def forward(self, outputs: dict[str, torch.Tensor], batch: Batch):
        x = read_output(outputs, self.features, NAME, "the `muva` head outputs 'bn_features'").float()
        logits = F.normalize(x, dim=1) @ self.memory.t() / self.temperature
        targets = batch.pids.to(logits.device, torch.long)
        if self.training and torch.is_grad_enabled():  # for the update at the step's end
            self._pending = [*getattr(self, "_pending", []), gather_with_labels(x.detach(), targets, batch_row_counts())]
        loss = F.cross_entropy(logits, targets)
        with torch.no_grad():
            acc = (logits.argmax(dim=1) == targets).float().mean()
        return loss, {"acc": acc}

"""IRM++'s memory-bank assisted learning (YAML loss name `irm_memory`). The paper gives
its purpose — a memory of identity features that supplies many negatives, with soft and
hard supervision — but not its equations; the exact form below is ours (METHODS.md
"IRM++ memory bank"):

    M (N x d): one slot per training identity, unit norm; f_i = f_i / |f_i| the sample's
    retrieval embedding; z_i = M f_i / T (T = 0.05), over the identities seen so far.

    hard:  L_hard = mean_i  -log softmax(z_i)[y_i]              (own identity's slot is
                                                                 the positive, all others
                                                                 negatives)
    soft:  P_i = {j in batch : y_j = y_i and s(i, j) >= tau}     (instruction-consistent
                                                                 positives, i included)
           q_i = mean_{j in P_i} softmax(M f_j / T)  (detached)
           L_soft = mean_i -sum_k q_ik log softmax(z_i)_k
    L = (1 - lambda) L_hard + lambda L_soft,     lambda = 0.4, tau = 0.5

    update (after the optimisation step, every training step, all processes' samples):
    for each identity y in the batch, with f_y the normalised mean of its samples' embeddings,
        M_y <- normalise(mu M_y + (1 - mu) f_y),   mu = 0.2
    (a slot not seen before is set to f_y, before the loss reads it).

With gradient accumulation the step's batch is all its micro-batches: every micro-batch's
loss reads the memory as it was at the step's start (slots first seen in this step: the
mean over the step's micro-batches so far), and the update runs once, at `on_step_end`,
with all of them — one step of an accumulated batch of n x b equals one batch of n x b
except that an identity first seen in a later micro-batch is not yet a slot for the
earlier ones. The update works on all N slots with masks (no host synchronisation).

The soft term is the memory-side counterpart of the authors' momentum distillation
(soft targets mixed 0.4 : 0.6 with the hard ones): the distribution over identities of
the anchor is pulled towards that of its instruction-consistent positives; with no
other consistent positive, q_i = softmax(z_i) and the term has zero gradient.
s(i, j) is the cosine similarity of instruction embeddings, as in the adaptive triplet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.context import BuildContext
from core.interfaces import Loss, read_output
from core.records import Batch
from core.training import distributed as D

NAME = "loss 'irm_memory'"


def memory_loss(f: torch.Tensor, pids: torch.Tensor, s: torch.Tensor, memory: torch.Tensor,
                filled: torch.Tensor, temperature: float, tau: float,
                soft_weight: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L of normalised features f (n, d), identities `pids`, instruction similarities s
    (n, n), slots `memory` (N, d) of which `filled` (N,) are in use."""
    logits = (f @ memory.t()) / temperature
    logits = logits.masked_fill(~filled[None, :], float("-inf"))
    log_p = F.log_softmax(logits, dim=1)
    hard = F.nll_loss(log_p, pids)
    with torch.no_grad():
        consistent = ((pids[:, None] == pids[None, :]) & (s >= tau)).float()
        consistent.fill_diagonal_(1.0)
        q = (consistent @ F.softmax(logits, dim=1)) / consistent.sum(1, keepdim=True)
    soft = -(q * log_p.masked_fill(~filled[None, :], 0.0)).sum(1).mean()
    return (1.0 - soft_weight) * hard + soft_weight * soft, {"hard": hard.detach(), "soft": soft.detach()}


class IRMMemoryLoss(Loss):
    """Module docstring. Keys: `features` (the output read, default the retrieval
    "embedding"), `temperature` (T), `momentum` (mu), `soft_weight` (lambda), `tau`,
    `instruction` (output of instruction embeddings), `dim` (slot width; null: the
    head's embedding width, ctx.extras["embedding_dim"], else ctx.feature_dim).
    Logs "hard", "soft" and "filled" (share of slots in use)."""

    #: updated from every process's gathered batch: equal on all ranks (no DDP broadcast)
    shared_buffers = ("memory", "filled")

    def __init__(self, ctx: BuildContext, features: str = "embedding", temperature: float = 0.05,
                 momentum: float = 0.2, soft_weight: float = 0.4, tau: float = 0.5,
                 instruction: str = "instruction_embedding", dim: int | None = None) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"{NAME}: temperature must be > 0, got {temperature}")
        for key, value in (("momentum", momentum), ("soft_weight", soft_weight)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{NAME}: {key} must be in [0, 1], got {value}")
        if ctx.num_identities <= 0:
            raise ValueError(f"{NAME} needs the training identities (ctx.num_identities is 0)")
        dim = dim or ctx.extras.get("embedding_dim") or ctx.feature_dim
        if not dim:
            raise ValueError(f"{NAME}: the slot width is unknown; set `dim` (the width of '{features}')")
        self.features, self.instruction = features, instruction
        self.temperature, self.momentum, self.soft_weight, self.tau = (float(temperature), float(momentum),
                                                                        float(soft_weight), float(tau))
        self.register_buffer("memory", torch.zeros(ctx.num_identities, int(dim)))
        self.register_buffer("filled", torch.zeros(ctx.num_identities, dtype=torch.bool))

    def forward(self, outputs: dict[str, torch.Tensor], batch: Batch):
        x = read_output(outputs, self.features, NAME, "the `instruct_editor` head produces 'embedding'")
        if x.shape[1] != self.memory.shape[1]:
            raise ValueError(f"{NAME}: '{self.features}' has width {x.shape[1]} but the memory slots have "
                             f"{self.memory.shape[1]} (set `dim`)")
        f = F.normalize(x.float(), dim=1)
        pids = batch.pids.to(f.device, torch.long)
        emb = F.normalize(read_output(outputs, self.instruction, NAME).detach().float(), dim=1)
        s = emb @ emb.t()
        if self.training and torch.is_grad_enabled():  # the step's update runs at on_step_end
            # every process's rows (the memories stay equal), their counts known in a step
            gathered = D.gather_with_labels(f.detach(), pids, D.batch_row_counts())
            self._pending = [*getattr(self, "_pending", []), gathered]
            self._fill_new()
        # a copy: the next micro-batch's fill and the step's update change the slots in place
        loss, parts = memory_loss(f, pids, s, self.memory.clone(), self.filled.clone(), self.temperature,
                                  self.tau, self.soft_weight)
        parts["filled"] = self.filled.float().mean()
        return loss, parts

    def on_step_end(self, trainer=None, **_) -> None:
        """The step's update, with every micro-batch since the last one (accumulation)."""
        pending, self._pending, self._fresh = getattr(self, "_pending", []), [], None
        if pending:
            self.update(torch.cat([f for f, _ in pending]), torch.cat([p for _, p in pending]), gathered=True)

    @torch.no_grad()
    def _fill_new(self) -> None:
        """Slots not seen before the step are set to the mean of the step's samples so far."""
        f, pids = torch.cat([f for f, _ in self._pending]), torch.cat([p for _, p in self._pending])
        present, means = _slot_means(f, pids, self.memory.shape[0])
        fresh = getattr(self, "_fresh", None)
        fresh = present & ~self.filled if fresh is None else fresh | (present & ~self.filled)
        self._fresh = fresh
        self.memory.copy_(torch.where(fresh[:, None], means, self.memory))
        self.filled.logical_or_(fresh)

    @torch.no_grad()
    def update(self, f: torch.Tensor, pids: torch.Tensor, gathered: bool = False) -> None:
        """M_y <- normalise(mu M_y + (1 - mu) f_y) for the batch's identities (all ranks');
        a slot not yet filled is set to f_y."""
        if not gathered:
            f, pids = D.gather_with_labels(f, pids)
        present, means = _slot_means(f, pids, self.memory.shape[0])
        new = present & ~self.filled
        moved = F.normalize(self.momentum * self.memory + (1.0 - self.momentum) * means, dim=1)
        self.memory.copy_(torch.where(new[:, None], means, torch.where(present[:, None], moved, self.memory)))
        self.filled.logical_or_(present)


def _slot_means(f: torch.Tensor, pids: torch.Tensor, slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(which of the `slots` identities occur, the normalised mean of each one's features;
    zero for those absent) — fixed shapes, no host synchronisation."""
    sums = torch.zeros(slots, f.shape[1], device=f.device, dtype=f.dtype).index_add_(0, pids, f)
    ones = torch.ones_like(pids, dtype=f.dtype)
    counts = torch.zeros(slots, device=f.device, dtype=f.dtype).index_add_(0, pids, ones)
    return counts > 0, F.normalize(sums, dim=1)

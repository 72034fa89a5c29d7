"""The HSE loss (YAML name `hse`): MGOR Sec. 3.3, dual-level supervision applied
asymmetrically over an episode.

    l_glob = CE(g(z_G), y)                 global view: all identities mutually exclusive
    l_spec = CE(g^(s)(z_L), y~)            intra-category view: y~ = local index of y in Y_s

    meta-train (batch.roles == 0):  l_glob + l_spec
    meta-test  (batch.roles == 1):  l_glob only (the global path's stability check)

    L = global_weight (l_glob(B_train) + l_glob(B_test)) + local_weight l_spec(B_train)

each term a mean over its half (as `moil`'s L_id^train and L_id^test). Without episodes
(every role 0, e.g. the `pk` sampler) both terms cover the whole batch. The meta-test
samples' local logits are never read, so no gradient from them reaches the local
classifiers or c_L (with `hse_vit`'s default isolated attention, not through z_G either).

With `moil` in the same pipeline, moil's L_id^train + L_id^test on "logits" already are
l_glob on both halves: set `global_weight: 0` there so l_glob is not counted twice
(pipelines/mgor.yaml does).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from core.context import BuildContext
from core.interfaces import Loss, read_output
from core.records import ROLE_META_TEST, ROLE_TRAIN, Batch
from core.training import distributed as D
from reid_hse.labels import labels_from_context

NAME = "loss 'hse'"


def smoothed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, eps: float,
                           rows: torch.Tensor | None = None) -> torch.Tensor:
    """Label-smoothed CE (Szegedy et al. 2016, Sec. 7) over each row's finite logits only:
    q = (1 - eps) 1[i = y] + eps / n_row, n_row the row's number of classes (a category's
    |Y_s| for the padded local logits, where the other columns are -inf). `rows` (bool):
    the mean over these rows only, 0 when none — masks, not a selected sub-batch, whose
    size only the data knows (a host sync on a GPU, issue 19)."""
    log_p = F.log_softmax(logits.float(), dim=1)
    valid = torch.isfinite(logits)
    nll = -log_p.gather(1, targets[:, None]).squeeze(1)
    uniform = -torch.where(valid, log_p, torch.zeros_like(log_p)).sum(1) / valid.sum(1).clamp(min=1)
    per_row = (1.0 - eps) * nll + eps * uniform
    return per_row.mean() if rows is None else masked_mean(per_row, rows)


def masked_mean(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """mean of values[rows], 0 when no row is set, with no host sync (torch.where: an
    excluded row's inf or nan never reaches the sum)."""
    return torch.where(rows, values, torch.zeros_like(values)).sum() / rows.sum().clamp(min=1)


class HSELoss(Loss):
    """Returns (total, parts): parts log every term unweighted — "glob_train",
    "glob_test", "spec_train" — and the top-1 accuracies "acc_glob" (all samples) and
    "acc_spec" (meta-train samples, within their category).

    Keys: `global_weight`, `local_weight` (weights of l_glob and l_spec), `label_smoothing`
    (of both, 0.1 as the core's `ce`), `logits` / `local_logits` (the head outputs read;
    the `hse` head produces both).
    """

    def __init__(self, ctx: BuildContext, global_weight: float = 1.0, local_weight: float = 1.0,
                 label_smoothing: float = 0.1, logits: str = "logits", local_logits: str = "local_logits") -> None:
        super().__init__()
        for key, value in (("global_weight", global_weight), ("local_weight", local_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{NAME}: {key} must be a number >= 0, got {value!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"{NAME}: label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.global_weight, self.local_weight = float(global_weight), float(local_weight)
        self.eps = float(label_smoothing)
        self.logits, self.local_logits_key = logits, local_logits
        labels = labels_from_context(ctx, NAME)
        self.category_names = labels.names
        self.register_buffer("id_category", torch.as_tensor(labels.category), persistent=False)
        self.id_category_host = np.asarray(labels.category, dtype=np.int64)  # the input checks' copy
        self.register_buffer("id_local", torch.as_tensor(labels.local), persistent=False)

    def targets(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, y~) of the batch; checks that every sample's category is pi(y) and that its
        role is 0 or 1, on the batch's host copy (`Batch.host`: no host sync)."""
        # the checks read the data (compiled, a graph break): eager only
        if not torch.compiler.is_compiling():
            self.check(batch)
        pids = batch.pids.to(self.id_local.device, torch.long)
        return pids, self.id_local[pids]

    def check(self, batch: Batch) -> None:
        """The input checks of `targets`, on the host copies of pids, categories, roles."""
        pids, categories, roles = (batch.host(name) for name in ("pids", "categories", "roles"))
        id_category = self.id_category_host
        n_ids = len(id_category)
        if ((pids < 0) | (pids >= n_ids)).any():
            raise ValueError(f"{NAME}: batch.pids holds labels outside 0..{n_ids - 1}, the "
                             "training identities the classifiers were built for")
        wrong = id_category[pids] != categories
        if wrong.any():
            i = int(np.flatnonzero(wrong)[0])
            y, s = int(pids[i]), int(categories[i])
            raise ValueError(f"{NAME}: sample {i} has identity {y} of category "
                             f"'{self.category_names[int(id_category[y])]}' but batch.categories says {s}; "
                             "the batch must carry the training table's category ids")
        unknown = (roles != ROLE_TRAIN) & (roles != ROLE_META_TEST)
        if unknown.any():
            found = sorted(set(roles[unknown].tolist()))
            raise ValueError(f"{NAME}: batch.roles holds {found}; episode roles are 0 (meta-train) and "
                             "1 (meta-test)")

    def forward(self, outputs: dict[str, torch.Tensor], batch: Batch):
        # under DDP: each term is a mean over a half of the whole episode (gathered)
        keys = [k for k in (self.logits, self.local_logits_key) if k in outputs]
        outputs, batch = D.gather_for_loss(outputs, batch, keys)
        logits = read_output(outputs, self.logits, NAME, "the `hse` head produces 'logits' in training")
        local = read_output(outputs, self.local_logits_key, NAME,
                            "the `hse` head produces 'local_logits' in training, from the `hse_vit` backbone")
        y, y_local = self.targets(batch)
        y, y_local = y.to(logits.device), y_local.to(logits.device)
        roles = batch.roles.to(logits.device)
        train, test = roles == ROLE_TRAIN, roles == ROLE_META_TEST
        # each half's mean as a mask over the whole batch (0 for an empty half): no host sync
        glob_train = smoothed_cross_entropy(logits, y, self.eps, train)
        glob_test = smoothed_cross_entropy(logits, y, self.eps, test)
        spec_train = smoothed_cross_entropy(local, y_local, self.eps, train)
        total = self.global_weight * (glob_train + glob_test) + self.local_weight * spec_train
        with torch.no_grad():
            acc_glob = (logits.argmax(1) == y).float().mean()
            acc_spec = masked_mean((local.argmax(1) == y_local).float(), train)
        parts = {"glob_train": glob_train, "glob_test": glob_test, "spec_train": spec_train,
                 "acc_glob": acc_glob, "acc_spec": acc_spec}
        return total, {k: v.detach() for k, v in parts.items()}

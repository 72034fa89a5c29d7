"""The MOIL loss (YAML name `moil`): MGOR Sec. 3.2, "Meta-Object Invariance Learning"
(Object-Generalized Re-Identification, CVPR 2026).

Every batch is an episode whose samples carry a role (core `Batch.roles`: 0 meta-train,
1 meta-test; the `edps` sampler provides them). With one set of parameters theta:

    L = w_id_train  L_id(B_train)           identity cross-entropy on meta-train
      + w_metric    L_met(B_train)          batch-hard triplet on meta-train
      + w_id_test   L_id(B_test)            identity cross-entropy on meta-test, same theta
      + w_pair      L_pair(B_train, B_test) conditional pairwise alignment (alignment.py)

Unlike adaptation-based meta-learning there is no inner update step: the meta-test term
checks that the very parameters trained on meta-train stay discriminative under the
perturbed category mix, and the whole episode is one backward pass (the trainer's).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from core.interfaces import Loss, read_output
from core.losses.cross_entropy import CrossEntropyLoss
from core.losses.triplet import TripletLoss, batch_hard_pairs
from core.records import ROLE_META_TEST, ROLE_TRAIN, Batch
from core.training import distributed as D
from reid_moil.alignment import masked_pairwise_alignment

NAME = "loss 'moil'"
NO_EPISODES = ("error", "train_only")

NO_EPISODES_HELP = (
    "use the episodic sampler `edps` (sampler: {name: edps, batch_size: 64, k: 4, disjoint_p: 0.5}; "
    "plugin reid-edps: pip install -e plugins/edps), which splits every batch into a meta-train half "
    "(role 0) and a meta-test half (role 1), or any sampler that yields core Episodes with both roles; "
    "or set the loss key `no_episodes: train_only` to treat such batches as meta-train only")


class MOILLoss(Loss):
    """Returns (total, parts): `total` is the weighted sum above; `parts` logs every term
    unweighted ("id_train", "met_train", "id_test", "pair" = "pair_pos" + "pair_neg"), the
    accuracies on each half and the triplet's mean hardest distances. The weight of the
    whole loss is the usual `weight` of its `losses:` entry.

    `features` feeds the triplet and the alignment (BNNeck's pre-BN "features", as the
    triplet is in the baseline); `logits` feeds both cross-entropies. `no_episodes` says
    what a batch without both roles does: "error" (default: a message naming `edps`) or
    "train_only" (the whole batch is meta-train: L_id + L_met, the other terms zero).
    """

    def __init__(self, id_train_weight: float = 1.0, metric_weight: float = 1.0, id_test_weight: float = 1.0,
                 pair_weight: float = 1.0, margin: float | None = 0.3, label_smoothing: float = 0.1,
                 features: str = "features", logits: str = "logits",
                 metric: Literal["euclidean", "cosine"] = "euclidean",
                 no_episodes: Literal["error", "train_only"] = "error") -> None:
        super().__init__()
        weights = {"id_train_weight": id_train_weight, "metric_weight": metric_weight,
                   "id_test_weight": id_test_weight, "pair_weight": pair_weight}
        for key, value in weights.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{NAME}: {key} must be a number >= 0, got {value!r}")
        if no_episodes not in NO_EPISODES:
            raise ValueError(f"{NAME}: no_episodes must be one of {', '.join(NO_EPISODES)}, got {no_episodes!r}")
        self.weights = {k.removesuffix("_weight"): float(v) for k, v in weights.items()}
        self.features, self.no_episodes = features, no_episodes
        try:
            self.ce = CrossEntropyLoss(label_smoothing=label_smoothing, logits=logits)
            # gather=False: the whole episode is gathered once, in forward
            self.triplet = TripletLoss(margin=margin, features=features, metric=metric, gather=False)
        except ValueError as exc:  # the core's messages name 'ce' / 'triplet': rename
            raise ValueError(str(exc).replace("loss 'ce'", NAME).replace("loss 'triplet'", NAME)) from None

    def _masks(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(meta-train, meta-test) row masks; checks the roles on the batch's host copy
        (`Batch.host`: no host sync; every term below is computed on masks). Under
        torch.compile the check is skipped (it would break the graph): a batch without
        meta-test rows is then treated as `train_only`."""
        roles = batch.roles
        train, test = roles == ROLE_TRAIN, roles == ROLE_META_TEST
        if torch.compiler.is_compiling():
            return train, test
        host = batch.host("roles")
        found = sorted(set(host.tolist()) - {ROLE_TRAIN, ROLE_META_TEST})
        if found:
            raise ValueError(f"{NAME}: batch.roles holds {found}; episode roles are 0 (meta-train) "
                             "and 1 (meta-test)")
        has_train, has_test = bool((host == ROLE_TRAIN).any()), bool((host == ROLE_META_TEST).any())
        if has_train and has_test:
            return train, test
        if self.no_episodes == "train_only":  # the whole batch is meta-train
            return torch.ones_like(train), torch.zeros_like(test)
        missing = "meta-test (role 1)" if not has_test else "meta-train (role 0)"
        raise ValueError(f"{NAME} needs episodes, but this batch of {len(batch)} samples has no {missing} "
                         f"sample (batch.roles; all 0 outside episodic sampling): {NO_EPISODES_HELP}")

    def forward(self, outputs: dict[str, torch.Tensor], batch: Batch):
        # under DDP every term is defined on the whole episode (triplet mining, prototypes,
        # both halves' distributions, per-half means): gather it from every process first
        keys = [k for k in (self.features, self.ce.logits) if k in outputs]
        outputs, batch = D.gather_for_loss(outputs, batch, keys)
        z = read_output(outputs, self.features, NAME,
                        "set the loss key `features`; `bnneck` produces 'features'").float()
        logits = read_output(outputs, self.ce.logits, NAME,
                             "a head with a classifier, e.g. `bnneck`, produces 'logits'").float()
        train, test = self._masks(batch)
        # each term on its half as masks over the whole episode, not selected sub-batches
        # (whose sizes only the data knows: a host sync each on a GPU, issue 19)
        pids = batch.pids.to(z.device)
        id_train, acc_train = half_cross_entropy(logits, pids, train, self.ce.label_smoothing)
        id_test, acc_test = half_cross_entropy(logits, pids, test, self.ce.label_smoothing)
        met, d_ap, d_an = half_triplet(z, pids, train, self.triplet)
        pos, neg = masked_pairwise_alignment(z, pids, train, test)
        pair = pos + neg
        w = self.weights
        total = w["id_train"] * id_train + w["metric"] * met + w["id_test"] * id_test + w["pair"] * pair
        parts = {"id_train": id_train, "met_train": met, "id_test": id_test, "pair": pair, "pair_pos": pos,
                 "pair_neg": neg, "acc_train": acc_train, "acc_test": acc_test, "d_ap": d_ap, "d_an": d_an}
        return total, {k: v.detach() for k, v in parts.items()}


def _masked_mean(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """mean of values[rows] (0 if none), without selecting: torch.where keeps an excluded
    row's inf out of the sum."""
    return torch.where(rows, values, torch.zeros_like(values)).sum() / rows.sum().clamp(min=1)


def half_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(the core `ce` loss of the rows `rows`, their top-1 accuracy): label-smoothed CE
    (1 - eps) nll + eps mean_i(-log p_i), averaged over the rows (0 if none)."""
    log_p = F.log_softmax(logits, dim=1)
    per_row = -(1.0 - eps) * log_p.gather(1, targets[:, None]).squeeze(1) - eps * log_p.mean(dim=1)
    with torch.no_grad():
        acc = _masked_mean((logits.argmax(dim=1) == targets).float(), rows)
    return _masked_mean(per_row, rows), acc


def half_triplet(x: torch.Tensor, pids: torch.Tensor, rows: torch.Tensor,
                 triplet: TripletLoss) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, mean d_ap, mean d_an) of the core batch-hard `triplet` on the rows `rows`:
    anchors, positives and negatives are taken among them only (masks, no selection)."""
    if triplet.normalize:
        x = F.normalize(x, dim=1)
    d_ap, d_an, valid = batch_hard_pairs(x, pids, triplet.metric, rows)
    gap = d_ap - d_an
    losses = F.softplus(gap) if triplet.soft_margin else F.relu(gap + triplet.margin)
    return _masked_mean(losses, valid), _masked_mean(d_ap.detach(), valid), _masked_mean(d_an.detach(), valid)

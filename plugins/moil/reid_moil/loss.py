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

from core.interfaces import Loss, read_output
from core.losses.cross_entropy import CrossEntropyLoss
from core.losses.triplet import TripletLoss
from core.records import ROLE_META_TEST, ROLE_TRAIN, Batch
from core.training import distributed as D
from reid_moil.alignment import pairwise_alignment

NAME = "loss 'moil'"
NO_EPISODES = ("error", "train_only")

NO_EPISODES_HELP = (
    "use the episodic sampler `edps` (sampler: {name: edps, batch_size: 64, k: 4, disjoint_p: 0.5}; "
    "plugin reid-edps: pip install -e plugins/edps), which splits every batch into a meta-train half "
    "(role 0) and a meta-test half (role 1), or any sampler that yields core Episodes with both roles; "
    "or set the loss key `no_episodes: train_only` to treat such batches as meta-train only")


def select_outputs(outputs: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The per-sample model outputs (first dimension = batch size) of the masked samples."""
    n = mask.shape[0]
    return {k: v[mask] for k, v in outputs.items() if hasattr(v, "shape") and v.dim() > 0 and v.shape[0] == n}


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

    def _masks(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor] | None:
        roles = batch.roles
        unknown = sorted(set(roles.unique().tolist()) - {ROLE_TRAIN, ROLE_META_TEST})
        if unknown:
            raise ValueError(f"{NAME}: batch.roles holds {unknown}; episode roles are 0 (meta-train) "
                             "and 1 (meta-test)")
        train, test = roles == ROLE_TRAIN, roles == ROLE_META_TEST
        if bool(train.any()) and bool(test.any()):
            return train, test
        if self.no_episodes == "train_only":
            return None
        missing = "meta-test (role 1)" if not bool(test.any()) else "meta-train (role 0)"
        raise ValueError(f"{NAME} needs episodes, but this batch of {len(batch)} samples has no {missing} "
                         f"sample (batch.roles; all 0 outside episodic sampling): {NO_EPISODES_HELP}")

    def forward(self, outputs: dict[str, torch.Tensor], batch: Batch):
        # under DDP every term is defined on the whole episode (triplet mining, prototypes,
        # both halves' distributions, per-half means): gather it from every process first
        keys = [k for k in (self.features, self.ce.logits) if k in outputs]
        outputs, batch = D.gather_for_loss(outputs, batch, keys)
        z = read_output(outputs, self.features, NAME,
                        "set the loss key `features`; `bnneck` produces 'features'").float()
        masks = self._masks(batch)
        if masks is None:
            id_train, ce_log = self.ce(outputs, batch)
            met, tri_log = self.triplet(outputs, batch)
            zero = z.sum() * 0.0
            id_test, ce_test_log, pos, neg = zero, {"acc": zero.detach()}, zero, zero
        else:
            train, test = masks
            out_train, out_test = select_outputs(outputs, train), select_outputs(outputs, test)
            b_train, b_test = batch.select(train), batch.select(test)
            id_train, ce_log = self.ce(out_train, b_train)
            met, tri_log = self.triplet(out_train, b_train)
            id_test, ce_test_log = self.ce(out_test, b_test)
            pids = batch.pids.to(z.device)
            pos, neg = pairwise_alignment(z[train], pids[train], z[test], pids[test])
        pair = pos + neg
        w = self.weights
        total = w["id_train"] * id_train + w["metric"] * met + w["id_test"] * id_test + w["pair"] * pair
        parts = {"id_train": id_train, "met_train": met, "id_test": id_test, "pair": pair, "pair_pos": pos,
                 "pair_neg": neg, "acc_train": ce_log["acc"], "acc_test": ce_test_log["acc"],
                 "d_ap": tri_log["d_ap"], "d_an": tri_log["d_an"]}
        return total, {k: v.detach() for k, v in parts.items()}

"""Identity (softmax cross-entropy) loss with label smoothing (YAML name `ce`).

Label smoothing regularisation: Szegedy et al. 2016, "Rethinking the Inception
Architecture", Sec. 7, as used for ReID by Luo et al. 2019 ("Bag of Tricks", Eq. 3):
the target distribution is q_i = (1 - eps) 1[i = y] + eps / N over the N identities,
which keeps the classifier from over-fitting the training identities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.interfaces import Loss, read_output
from core.records import Batch


class CrossEntropyLoss(Loss):
    """-sum_i q_i log p_i, averaged over the batch, with `batch.pids` as targets; logs
    the top-1 training accuracy as "acc"."""

    def __init__(self, label_smoothing: float = 0.1, logits: str = "logits") -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"loss 'ce': label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing, self.logits = float(label_smoothing), logits

    @property
    def features(self) -> str:
        """The model output this loss reads (`Loss.features`): the logits."""
        return self.logits

    def forward(self, outputs: dict[str, torch.Tensor], batch: Batch):
        logits = read_output(outputs, self.logits, "loss 'ce'",
                             "a head with a classifier, e.g. `bnneck`, produces 'logits'").float()
        targets = batch.pids.to(logits.device, torch.long)
        eps = self.label_smoothing
        log_p = F.log_softmax(logits, dim=1)
        # q = (1 - eps) one_hot(y) + eps / N  =>  -sum q log p = (1 - eps) nll + eps mean_i(-log p_i)
        loss = (1.0 - eps) * F.nll_loss(log_p, targets) - eps * log_p.mean(dim=1).mean()
        with torch.no_grad():
            acc = (logits.argmax(dim=1) == targets).float().mean()
        return loss, {"acc": acc}

"""Loss 'contrastive': the contrastive loss of Hadsell et al. 2006 ("Dimensionality Reduction
by Learning an Invariant Mapping", Eq. 4) on the batch's cosine distances instead of the
paper's Euclidean ones, and without its factors 1/2 (twice the paper's value; the YAML
`weight` can take the 1/2):

    L = mean over pairs i != j of  y_ij d_ij^2 + (1 - y_ij) max(0, m - d_ij)^2

with y_ij = 1 for two images of one identity.
"""

import torch
import torch.nn.functional as F

from core.interfaces import Loss, read_output


class ContrastiveLoss(Loss):
    """Args (YAML keys): margin m in (0, 2]; features: the model output to read
    (`bnneck` outputs "features" before its BatchNorm). The loss weight is the YAML
    `weight` key, handled by reid-core."""

    def __init__(self, margin: float = 0.5, features: str = "features") -> None:
        super().__init__()
        if not 0.0 < margin <= 2.0:
            raise ValueError(f"loss 'contrastive': margin must be in (0, 2] for cosine distances, got {margin}")
        self.margin, self.features = float(margin), features

    def forward(self, outputs, batch):
        x = read_output(outputs, self.features, "loss 'contrastive'", "`bnneck` produces 'features'").float()
        x = F.normalize(x, dim=1)
        d = (1.0 - x @ x.T).clamp(min=0.0)
        same = batch.pids[:, None] == batch.pids[None, :]
        off_diagonal = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
        positive = same & off_diagonal
        negative = ~same
        per_pair = torch.where(positive, d.pow(2), (self.margin - d).clamp(min=0).pow(2))
        mask = (positive | negative).float()
        loss = (per_pair * mask).sum() / mask.sum().clamp(min=1.0)
        # the second value: parts logged to metrics.jsonl next to the loss
        return loss, {"d_pos": (d * positive).sum() / positive.sum().clamp(min=1),
                      "d_neg": (d * negative).sum() / negative.sum().clamp(min=1)}

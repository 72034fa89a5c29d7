"""Center loss (YAML name `center_loss`; `center` is the name the plugin authors' example
plugin uses): Wen et al. 2016, "A Discriminative Feature Learning Approach for Deep Face
Recognition", Eq. 2, as added to ReID by the Bag of Tricks (Luo et al. 2019, Sec. 4.6,
weight beta = 0.0005).

L_C = mean_i ||f_i - c_(y_i)||^2 over the batch: the form of the BoT authors' code, which
produced the published numbers (the papers write 1/2 sum_i; the code averages over the batch
without the 1/2, and beta = 0.0005 is tuned for it).

The centres are parameters of the loss (`losses.<i>.centers`), trained by gradient descent
as in the BoT code. They belong in their own optimizer group: in the stage,
`param_groups: [{params: ["losses.<i>.*"], lr_mult: ..., weight_decay: 0.0}]` (BoT used a
separate SGD with lr 0.5 and no weight decay for them).
"""

from __future__ import annotations

import torch

from core.context import BuildContext
from core.interfaces import Loss, read_output
from core.records import Batch


class CenterLoss(Loss):
    """Mean squared distance of each feature (key `features`, BNNeck's pre-BN feature by
    default) to its identity's centre; logs the mean distance "dist"."""

    def __init__(self, ctx: BuildContext, features: str = "features") -> None:
        super().__init__()
        if ctx.num_identities <= 0 or not ctx.feature_dim:
            raise ValueError("loss 'center' needs the number of training identities and the feature dimension")
        self.features = features
        self.centers = torch.nn.Parameter(torch.randn(ctx.num_identities, int(ctx.feature_dim)))

    def forward(self, outputs: dict[str, torch.Tensor], batch: Batch):
        x = read_output(outputs, self.features, "loss 'center'",
                        "set the loss key `features`; `bnneck` produces 'features'").float()
        targets = batch.pids.to(x.device, torch.long)
        d2 = (x - self.centers.float()[targets]).pow(2).sum(dim=1)
        return d2.mean(), {"dist": d2.detach().sqrt().mean()}

"""L_cmp, MUVA's stage-1 loss (YAML name `muva_cmp`), eq. 1: cross-modal multi-grained
prototypical contrast between each identity's textual token and the visual prototypes.

    L_cmp = -log  exp(sim(t_c, M1[c]) / T) / sum_j exp(sim(t_c, M1[j]) / T)

t_c = E_T(prompts of identity c), the 2048-d multi-grained textual token, normalised;
M1 = VPM-1, one normalised centroid per identity of the normalised multi-grained visual
tokens v^mg of its training images, computed once when the stage that uses this loss
starts (the image encoder is frozen then), with the local tokens gated by the
pseudo-label part masks (`gating: labels`; "stripes" or "predicted" otherwise).
Temperature T = 1 (eq. 1 has none; a key for experiments).

Only the prompts receive gradients (through the frozen text encoder). The identities of
a step are the batch's identities (our choice: the core's P x K sampler gives P of them
per step and every identity once per epoch; the authors' batches are 16 identities x 4
images, METHODS.md).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from core.context import BuildContext
from core.interfaces import Loss
from core.records import Batch, device_index
from reid_amsa.backbone import text_side
from reid_amsa.extraction import active_in_stage, check_gating, training_features
from reid_amsa.memory import fill_with_centroids

NAME = "loss 'muva_cmp'"


class MultiGrainedCMPLoss(Loss):
    """Keys: `temperature` (1.0), `gating` (labels | stripes | predicted: the masks that
    gate the local tokens while VPM-1 is built), `features` (the output VPM-1 is built
    from: "global", the multi-grained visual token). Logs "acc" (top-1 text -> prototype)."""

    #: built from every process's gathered features: equal on all ranks
    shared_buffers = ("memory",)

    def __init__(self, ctx: BuildContext, temperature: float = 1.0, gating: str = "labels",
                 features: str = "global") -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"{NAME}: temperature must be > 0, got {temperature}")
        self.temperature, self.gating, self.features = float(temperature), check_gating(gating, NAME), features
        text = text_side(ctx, NAME)
        if ctx.feature_dim is not None and ctx.feature_dim != text.output_dim:
            raise ValueError(f"{NAME}: the visual token has {ctx.feature_dim} dimensions but the textual token "
                             f"{text.output_dim}; use as many templates as visual tokens")
        self._text = (text,)  # owned by the backbone; a tuple keeps it out of this module's parameters
        self.register_buffer("memory", torch.zeros(text.num_identities, text.output_dim))  # VPM-1

    @property
    def text(self):
        return self._text[0]

    def on_stage_start(self, trainer, stage) -> None:
        if active_in_stage(self, trainer):
            self.build_memory(*training_features(trainer, self.features, self.gating, NAME))

    def build_memory(self, features: torch.Tensor, pids: torch.Tensor) -> None:
        fill_with_centroids(self.memory, features, pids, f"{NAME}: model output '{self.features}' has "
                            f"{features.shape[1]} dimensions, the textual token {self.memory.shape[1]}")

    def forward(self, outputs: dict[str, torch.Tensor], batch: Batch):
        # the batch's identities (sorted), read from its host copy: no host sync
        identities = device_index(np.unique(batch.host("pids")), self.memory.device)
        text = F.normalize(self.text(identities).float(), dim=1)
        logits = text @ self.memory.t() / self.temperature
        loss = F.cross_entropy(logits, identities)
        with torch.no_grad():
            acc = (logits.argmax(dim=1) == identities).float().mean()
        return loss, {"acc": acc}

"""L_i2tce, MUVA's image-to-text cross-entropy (YAML name `muva_i2t`), eq. 4: each image's
visual token classified against the textual prototypes of every identity, with
smoothed labels — the language knowledge squeezed into the prompts in stage 1 flows
into the image encoder in stage 2.

    L_i2tce = -sum_c q_c log softmax_c(f . TPM^T / T),  q = (1 - eps) 1[c = y] + eps / C

TPM (C, 2048): the normalised textual tokens of the learned prompts, computed once when
the stage that uses this loss starts. f: the pre-BN multi-grained visual token
("features" of the `muva` head). Eq. 4 writes a cosine similarity; METHODS.md (after
CLIP-ReID's code) multiplies the unnormalised f with the normalised TPM, which keeps the
logits' scale learnable by the encoder: that is the default (`normalize_features: false`);
`normalize_features: true` gives eq. 4's cosine as written.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.context import BuildContext
from core.interfaces import Loss, read_output
from core.records import Batch
from reid_amsa.backbone import text_side
from reid_amsa.extraction import active_in_stage

NAME = "loss 'muva_i2t'"


def smoothed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, eps: float) -> torch.Tensor:
    """-sum_c q_c log p_c averaged over the batch, q = (1 - eps) one_hot + eps / C."""
    log_p = F.log_softmax(logits.float(), dim=1)
    nll = -log_p.gather(1, targets[:, None]).squeeze(1)
    return ((1.0 - eps) * nll - eps * log_p.mean(dim=1)).mean()


class ImageToTextCELoss(Loss):
    """Keys: `label_smoothing` eps (0.1), `features` (the head output read, "features" =
    pre-BN v^mg), `normalize_features` (false, see the module docstring), `temperature`
    (1.0). Logs "acc" (top-1 image -> text)."""

    def __init__(self, ctx: BuildContext, label_smoothing: float = 0.1, features: str = "features",
                 normalize_features: bool = False, temperature: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"{NAME}: label_smoothing must be in [0, 1), got {label_smoothing}")
        if temperature <= 0:
            raise ValueError(f"{NAME}: temperature must be > 0, got {temperature}")
        self.eps, self.features = float(label_smoothing), features
        self.normalize_features, self.temperature = bool(normalize_features), float(temperature)
        text = text_side(ctx, NAME)
        self._text = (text,)
        self.register_buffer("memory", torch.zeros(text.num_identities, text.output_dim))  # TPM

    def on_stage_start(self, trainer, stage) -> None:
        if active_in_stage(self, trainer):
            self.build_memory()

    @torch.no_grad()
    def build_memory(self) -> None:
        self.memory.copy_(F.normalize(self._text[0].all_identities(), dim=1))

    def forward(self, outputs: dict[str, torch.Tensor], batch: Batch):
        f = read_output(outputs, self.features, NAME, "the `muva` head outputs the pre-BN 'features'").float()
        if f.shape[1] != self.memory.shape[1]:
            raise ValueError(f"{NAME}: '{self.features}' has {f.shape[1]} dimensions, the textual prototypes "
                             f"{self.memory.shape[1]}")
        if self.normalize_features:
            f = F.normalize(f, dim=1)
        logits = f @ self.memory.t() / self.temperature
        targets = batch.pids.to(logits.device, torch.long)
        loss = smoothed_cross_entropy(logits, targets, self.eps)
        with torch.no_grad():
            acc = (logits.argmax(dim=1) == targets).float().mean()
        return loss, {"acc": acc}

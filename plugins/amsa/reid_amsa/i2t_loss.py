"""L_i2tce, MUVA's image-to-text cross-entropy (YAML name `muva_i2t`), eq. 4: each image's
visual token classified against the textual prototypes of every identity, with
smoothed labels — the language knowledge squeezed into the prompts in stage 1 flows
into the image encoder in stage 2.

    L_i2tce = -sum_c q_c log softmax_c(s(f, TPM[c]) / T),  q = (1 - eps) 1[c = y] + eps / C

f: the pre-BN multi-grained visual token ("features" of the `muva` head); TPM (C, 2048):
the textual tokens of the learned prompts, computed once when the stage that uses this
loss starts; T = 1. The similarity s, key `form`:
  - "cosine" (default): eq. 4 as the paper writes it, sim = cosine similarity, TPM
    "initialized with normalized textual token" (Sec. 3.1.2): s = f.t / (|f| |t|);
  - "raw": what the authors' released code computes (RikoLi/MUVA,
    engine/coop_trainers.py, with its default `MODEL.NORM_I2TCE: False`): the raw
    feature times the raw, unnormalised textual token, s = f . t.
The two differ in scale: the cosine logits lie in [-1, 1] (a soft target at T = 1), the
raw ones grow with the feature norms.
"""

from __future__ import annotations

from typing import Literal

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


FORMS = ("cosine", "raw")


class ImageToTextCELoss(Loss):
    """Keys: `label_smoothing` eps (0.1), `features` (the head output read, "features" =
    pre-BN v^mg), `form` (cosine: eq. 4 | raw: the authors' code; see the module
    docstring), `temperature` T (1.0). Logs "acc" (top-1 image -> text)."""

    #: text features computed alike on every rank: no DDP broadcast
    shared_buffers = ("memory",)

    def __init__(self, ctx: BuildContext, label_smoothing: float = 0.1, features: str = "features",
                 form: Literal["cosine", "raw"] = "cosine", temperature: float = 1.0) -> None:
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"{NAME}: form must be one of {', '.join(FORMS)} (cosine: eq. 4; raw: the authors' "
                             f"code), got {form!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"{NAME}: label_smoothing must be in [0, 1), got {label_smoothing}")
        if temperature <= 0:
            raise ValueError(f"{NAME}: temperature must be > 0, got {temperature}")
        self.eps, self.features = float(label_smoothing), features
        self.form, self.temperature = form, float(temperature)
        text = text_side(ctx, NAME)
        self._text = (text,)
        self.register_buffer("memory", torch.zeros(text.num_identities, text.output_dim))  # TPM

    def on_stage_start(self, trainer, stage) -> None:
        if active_in_stage(self, trainer):
            self.build_memory()

    @torch.no_grad()
    def build_memory(self) -> None:
        """TPM: the textual tokens of every identity, normalised for the cosine form."""
        tokens = self._text[0].all_identities().float()
        self.memory.copy_(F.normalize(tokens, dim=1) if self.form == "cosine" else tokens)

    def forward(self, outputs: dict[str, torch.Tensor], batch: Batch):
        f = read_output(outputs, self.features, NAME, "the `muva` head outputs the pre-BN 'features'").float()
        if f.shape[1] != self.memory.shape[1]:
            raise ValueError(f"{NAME}: '{self.features}' has {f.shape[1]} dimensions, the textual prototypes "
                             f"{self.memory.shape[1]}")
        if self.form == "cosine":
            f = F.normalize(f, dim=1)
        logits = f @ self.memory.t() / self.temperature
        targets = batch.pids.to(logits.device, torch.long)
        loss = smoothed_cross_entropy(logits, targets, self.eps)
        with torch.no_grad():
            acc = (logits.argmax(dim=1) == targets).float().mean()
        return loss, {"acc": acc}

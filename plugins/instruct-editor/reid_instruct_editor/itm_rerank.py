"""ITM re-ranking of text-to-image queries at test time, as the authors' evaluation
(`reid/evaluation/evaluators_t.py`: k = 128) and ALBEF / RaSa / APTM-style T2I ReID: each
caption query retrieves its top-k gallery items by the contrastive similarity (our
retrieval embedding), the matching head (`t2i_matching.py`: fusion encoder + ITM head)
re-scores those k pairs, and the k are ranked by that score ahead of the rest, which
keep their order:

    top_k(q)   = the k gallery items nearest to q
    rank(q)    = top_k(q) by ITM score, descending ; then the others by distance

The score is the ITM head's match logit (`logit`, the authors': `itm_head(...)[:, 1]`)
or its match probability softmax(logits)[1] (`probability`). Evaluator keys
`itm_rerank` (k; 0 = off, the default), `itm_score`, `itm_batch` (README "Evaluation").
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

NAME = "evaluator 'instruct_reid'"
SCORES = ("logit", "probability")


def rerank_top_k(distances: torch.Tensor, k: int,
                 score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Distances (n, m) -> distances whose ascending order is: each row's k nearest
    items by descending `score(rows (n,), top (n, k))` (n, k), then the others as before.
    The top-k entries become min(row) - 1 - (s - min(s)): below every other entry."""
    k = min(int(k), distances.shape[1])
    if k <= 0 or distances.shape[0] == 0:
        return distances
    top = distances.topk(k, dim=1, largest=False).indices
    s = score(torch.arange(distances.shape[0], device=distances.device), top).to(distances.dtype)
    if s.shape != top.shape:
        raise ValueError(f"{NAME}: the ITM score has shape {tuple(s.shape)}, expected {tuple(top.shape)}")
    floor = distances.min(dim=1, keepdim=True).values - 1.0
    out = distances.clone()
    out.scatter_(1, top, floor - (s - s.min(dim=1, keepdim=True).values))
    return out


class ITMScorer:
    """ITM scores of (caption, gallery image) pairs with a model's text encoder and a
    `t2i_matching` loss's fusion encoder and head. `captions`: the query texts;
    `image_tokens` (m, T, D): the gallery's ViT token states (the backbone's evaluation
    output "image_tokens")."""

    def __init__(self, model: nn.Module, matching: nn.Module, score: Literal["logit", "probability"] = "logit",
                 batch: int = 256) -> None:
        if score not in SCORES:
            raise ValueError(f"{NAME}: itm_score must be one of {', '.join(SCORES)}, got {score!r}")
        self.model, self.matching, self.score, self.batch = model, matching, score, max(int(batch), 1)

    @torch.no_grad()
    def text_tokens(self, captions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, L, D) caption token states projected to the image width, (n, L) valid: the
        matching branch's text input (backbone.encode_instructions' text path)."""
        backbone = self.model.backbone
        _, states, valid = backbone.instruction.encode_text(backbone.instruction.tokenize(captions, device))
        return backbone.text_tokens(states).float(), valid

    @torch.no_grad()
    def __call__(self, text: torch.Tensor, valid: torch.Tensor, image_tokens: torch.Tensor,
                 top: torch.Tensor) -> torch.Tensor:
        """(n, k) scores of caption i with gallery items top[i]."""
        was_training = self.matching.training
        self.matching.eval()  # no dropout
        try:
            n, k = top.shape
            rows = torch.arange(n, device=top.device).repeat_interleave(k)
            items = top.reshape(-1)
            out = []
            for start in range(0, len(rows), self.batch):
                r, g = rows[start:start + self.batch], items[start:start + self.batch]
                dev = image_tokens.device
                logits = self.matching.match_logits(text[r.to(text.device)], valid[r.to(valid.device)],
                                                    image_tokens[g.to(dev)].to(text.device)).float()
                out.append(logits[:, 1] if self.score == "logit" else F.softmax(logits, dim=1)[:, 1])
            return torch.cat(out).reshape(n, k) if out else top.new_zeros(n, k, dtype=torch.float)
        finally:
            self.matching.train(was_training)

"""Multi-grained prompts (MUVA Sec. 3.1.1) and CLIP's frozen text encoder.

Per identity c, N learnable vectors in each of four templates

    "A photo of a [X]_1..[X]_N person"               (global)
    "A photo of a [H]_1..[H]_N head of a person"
    "A photo of a [U]_1..[U]_N upper body of a person"
    "A photo of [L]_1..[L]_N legs of a person"

as Sec. 3.1.1 prints them: no closing full stop (the authors' code has none either; it
writes "A photo of a ... legs" for the last one, the paper "A photo of ... legs")

(N = 4, 512-d, init N(0, 0.002); Sec. 4.2) replace the word embeddings of N placeholder
words. Each sequence goes through CLIP's text transformer (causal mask), is read at its
EOT token and projected by `text_projection`; the four features concatenated are the
multi-grained textual token t^mg_c (4 x 512 = 2048-d for ViT-B/16), the counterpart of
the image encoder's multi-grained visual token.

The encoder is frozen (its parameters never train: MUVA trains only the prompts in stage
1), gradients still flow through it into the prompts. Template embeddings are looked up
at every call from the (frozen) token embedding, so nothing goes stale when weights are
loaded after building.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

#: The paper's four templates; `{prompt}` stands for the N learnable vectors.
PAPER_TEMPLATES = (
    "A photo of a {prompt} person",
    "A photo of a {prompt} head of a person",
    "A photo of a {prompt} upper body of a person",
    "A photo of {prompt} legs of a person",
)
PLACEHOLDER = "{prompt}"


class MultiGrainedText(nn.Module):
    """`forward(identities)` -> (n, T * D): the multi-grained textual tokens of the given
    identity labels (not normalised). `prompts` (C, T, N, W) are the only trainable
    parameters; `output_dim` = T * D."""

    def __init__(self, clip: nn.Module, tokenizer: Any, num_identities: int, prompt_tokens: int = 4,
                 templates: Sequence[str] = PAPER_TEMPLATES, std: float = 0.002, component: str = "amsa") -> None:
        super().__init__()
        if num_identities < 1:
            raise ValueError(f"{component}: the prompts need the training identities (ctx.num_identities is "
                             f"{num_identities})")
        if prompt_tokens < 1:
            raise ValueError(f"{component}: prompt_tokens must be >= 1, got {prompt_tokens}")
        bad = [t for t in templates if t.count(PLACEHOLDER) != 1]
        if not templates or bad:
            raise ValueError(f"{component}: every template must contain '{PLACEHOLDER}' exactly once (where the "
                             f"learnable vectors go); got {bad or list(templates)}")
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("causal_mask", clip.attn_mask, persistent=False)
        for module in (self.token_embedding, self.transformer, self.ln_final):
            module.requires_grad_(False)
        self.positional_embedding.requires_grad_(False)
        self.text_projection.requires_grad_(False)  # a Parameter (CLIP) or a Linear

        # the token ids are data, read here (the placeholder slots, the vocabulary check): made
        # on the host even when the model is built on the meta device (a sweep's check), then
        # registered on the device the model is built on (the default one, or a torch.device
        # context's), as before
        with torch.device("cpu"):
            ids, slots = tokenize_templates(tokenizer, templates, prompt_tokens, component)
        vocab = self.token_embedding.num_embeddings
        if int(ids.max()) >= vocab:
            raise ValueError(f"{component}: the tokenizer yields token id {int(ids.max())} but the text tower's "
                             f"vocabulary has {vocab} entries (text_cfg.vocab_size); use CLIP's 49408")
        device = torch.empty(0).device
        self.register_buffer("template_ids", ids.to(device), persistent=False)  # (T, L)
        self.register_buffer("slots", slots.to(device), persistent=False)  # (T, N)
        # CLIP reads the EOT (highest id)
        self.register_buffer("eot", ids.argmax(dim=-1).to(device), persistent=False)
        width = self.token_embedding.embedding_dim
        self.prompts = nn.Parameter(torch.randn(num_identities, len(templates), prompt_tokens, width) * std)
        projection = self.text_projection
        embed = projection.shape[1] if isinstance(projection, nn.Parameter) else projection.out_features
        self.embed_dim = int(embed)
        self.num_templates = len(templates)
        self.output_dim = self.num_templates * self.embed_dim

    @property
    def num_identities(self) -> int:
        return int(self.prompts.shape[0])

    def forward(self, identities: torch.Tensor) -> torch.Tensor:
        identities = identities.to(self.prompts.device, torch.long)
        n = identities.shape[0]
        templates, length = self.template_ids.shape
        width = self.prompts.shape[-1]
        words = self.token_embedding(self.template_ids)  # (T, L, W), frozen
        x = words.unsqueeze(0).expand(n, templates, length, width)
        index = self.slots[None, :, :, None].expand(n, templates, self.slots.shape[1], width)
        x = x.scatter(2, index, self.prompts[identities].to(x.dtype))  # the learnable words
        x = x.reshape(n * templates, length, width) + self.positional_embedding[:length].to(x.dtype)
        x = self.transformer(x, attn_mask=self.causal_mask[:length, :length])
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), self.eot.repeat(n)]
        projection = self.text_projection
        x = x @ projection if isinstance(projection, nn.Parameter) else projection(x)
        return x.reshape(n, templates * self.embed_dim)

    @torch.no_grad()
    def all_identities(self, chunk: int = 256) -> torch.Tensor:
        """(C, T * D) textual tokens of every identity, in chunks (the TPM, Sec. 3.1.2)."""
        out = []
        for start in range(0, self.num_identities, chunk):
            ids = torch.arange(start, min(start + chunk, self.num_identities), device=self.prompts.device)
            out.append(self(ids).float())
        return torch.cat(out)


def tokenize_templates(tokenizer: Any, templates: Sequence[str], count: int,
                       component: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (T, L) of the templates with `count` placeholder words "X", and the
    positions (T, count) of those words."""
    word = tokenizer(["X"])[0]
    marker = int(word[1])  # [SOT, x, EOT, 0 ...]
    filled = [t.replace(PLACEHOLDER, " ".join(["X"] * count)) for t in templates]
    ids = tokenizer(filled).long()
    slots = []
    for text, row in zip(templates, ids):
        where = (row == marker).nonzero().flatten()
        if where.numel() != count or (where.numel() and int(where[-1] - where[0]) != count - 1):
            raise ValueError(f"{component}: cannot place {count} prompt vectors in template {text!r}: the word "
                             "'x' must not appear in it besides the placeholder")
        if hasattr(tokenizer, "encode") and len(tokenizer.encode(filled[len(slots)])) + 2 > ids.shape[1]:
            raise ValueError(f"{component}: template {text!r} does not fit the text context length "
                             f"{ids.shape[1]} (text_cfg.context_length)")
        slots.append(where)
    return ids, torch.stack(slots)

"""The text of a batch's instructions: each row's phrasings, and their tokens prepared in
the data loader (issue 19).

A row's `instruction` extra is a text, or a tuple of phrasings (training records of the
fixed-text tasks: the backbone draws one per sample); a row with an `instruction_image`
has an image instruction instead. `InstructionTokens` is the `instruct_editor`
backbone's batch preparer (core `Backbone.batch_preparer`): it tokenizes every phrasing
of every text row in the loader's worker and adds

    instruction_token_ids  (B, K, L) int64  phrasing k of row b, tokenized (K: the most
                           phrasings of a row in the batch; missing phrasings and image
                           rows are zeros)
    instruction_phrasings  (B,) int64       how many phrasings row b has (0: an image row)

with host copies (`Batch.host`). The backbone and the text-to-image losses then pick
tokens by index (`prepared_tokens`) instead of running the tokenizer (open_clip's ftfy
cleaning and BPE, host string work: ~9 ms for 192 captions, and graph breaks under
torch.compile) inside the training step. The tokens are exactly what the tokenizer gives
for each text, so a prepared batch and one collated by hand give the same result.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from core.records import Batch, device_index

NAME = "backbone 'instruct_editor'"
TOKENS, COUNTS = "instruction_token_ids", "instruction_phrasings"


def first_phrasing(value: Any, row: int) -> str:
    """The canonical (first) phrasing of a row's text instruction."""
    if isinstance(value, (tuple, list)):
        value = value[0] if value else None
    if value is None:
        raise ValueError(f"{NAME}: sample {row} has neither a text instruction nor an instruction_image")
    return str(value)


def phrasings(value: Any, row: int) -> list[str]:
    """The phrasings of a row's text instruction (a text, or a tuple of phrasings)."""
    if isinstance(value, (tuple, list)):
        if not value:
            raise ValueError(f"{NAME}: sample {row} has an empty list of instruction phrasings")
        return [str(v) for v in value]
    if value is None:
        raise ValueError(f"{NAME}: sample {row} has neither a text instruction nor an instruction_image; "
                         "an instruction dataset (`instruct`) gives every record one")
    return [str(value)]


def row_image(images: Any, row: int) -> torch.Tensor | None:
    """The instruction image of batch row `row` (a stacked tensor, or a list with None
    where a row has a text instruction), or None."""
    return None if images is None else images[row]


class InstructionTokens:
    """The batch preparer: every phrasing of each text row tokenized (module docstring).
    `tokenizer` is the backbone's (open_clip's: a list of texts -> (n, L) int64)."""

    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor]) -> None:
        self.tokenizer = tokenizer

    def __call__(self, batch: Batch) -> None:
        texts = batch.require("instruction", NAME)
        images = batch.extras.get("instruction_image")
        options = [[] if row_image(images, r) is not None else phrasings(texts[r], r) for r in range(len(batch))]
        flat = [text for row in options for text in row]
        tokens = torch.as_tensor(self.tokenizer(flat if flat else [""]), dtype=torch.long)
        counts = [len(row) for row in options]
        out = torch.zeros(len(batch), max(1, *counts), tokens.shape[1], dtype=torch.long)
        start = 0
        for r, count in enumerate(counts):
            out[r, :count] = tokens[start:start + count]
            start += count
        batch.extras[TOKENS] = out
        batch.extras[COUNTS] = torch.tensor(counts, dtype=torch.long)
        batch.keep_host_copy(TOKENS).keep_host_copy(COUNTS)


def is_prepared(batch: Batch) -> bool:
    """Whether `InstructionTokens` prepared the batch (the trainer's loader does)."""
    return TOKENS in batch.extras and COUNTS in batch.extras


def first_tokens(batch: Batch, rows: np.ndarray | list[int], encoder: Any, host: bool = False,
                 component: str = NAME) -> torch.Tensor:
    """(n, L) tokens of the first phrasing of each of the text rows `rows`: the prepared ones
    (`prepared_tokens`) when the loader tokenized the batch, else tokenized here by `encoder`
    (the backbone's `InstructionEncoder`); on the batch's device, or on the host with `host`."""
    if is_prepared(batch):
        return prepared_tokens(batch, rows, host=host)
    texts = batch.require("instruction", component)
    device = torch.device("cpu") if host else batch.pids.device
    return encoder.tokenize([first_phrasing(texts[int(r)], int(r)) for r in rows], device)


def prepared_tokens(batch: Batch, rows: np.ndarray | list[int], choice: np.ndarray | torch.Tensor | None = None,
                    host: bool = False) -> torch.Tensor:
    """(n, L) tokens of phrasing `choice % count` (default: the first) of each of the text
    rows `rows` of a prepared batch, taken by index on the batch's device (a device
    `choice` stays there: no host sync), or from the host copy with `host` (a host
    `choice`)."""
    at = np.asarray(rows, dtype=np.int64).reshape(-1)
    counts = batch.host(COUNTS)[at]
    if not torch.compiler.is_compiling() and len(at) and counts.min() < 1:  # (the check: eager only)
        raise ValueError(f"{NAME}: row {int(at[np.argmin(counts)])} has an image instruction, not text tokens")
    tokens = batch.extras[TOKENS]
    width = tokens.shape[1]
    if isinstance(choice, torch.Tensor):  # drawn on the device: the positions computed there
        pick = device_index(at * width, tokens.device) + choice.to(tokens.device) % device_index(counts, tokens.device)
        return tokens.flatten(0, 1).index_select(0, pick)
    pick = np.zeros(len(at), dtype=np.int64) if choice is None else np.asarray(choice, dtype=np.int64) % counts
    if host:
        return torch.from_numpy(batch.host(TOKENS)[at, pick].copy())
    return tokens.flatten(0, 1).index_select(0, device_index(at * width + pick, tokens.device))

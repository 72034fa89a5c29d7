"""IRM's image encoder, instruction encoder and editing transformer (YAML backbone name
`instruct_editor`): Instruct-ReID++ Sec. "Method", Fig. 5; METHODS.md "Instruct-ReID".

    image x        -> ViT (timm)                 -> [x_cls ; x_patches]          (D wide)
    instruction i  -> CLIP text / image encoder  -> [i_cls ; i_tokens] -> linear (D wide)
    seq_bio = [x_cls ; i_tokens]     seq_clo = [i_cls ; x_patches]
    both through the same two editing blocks (plain self-attention over each sequence;
    the instruction's padding is masked out as keys) and a LayerNorm:
    "bio" = seq_bio's first token, "clo" = seq_clo's first token.

The editing blocks are copies of the ViT's last blocks, taken after its weights are
loaded (`editing_init: last`, ours); `random` re-initialises them. The authors' code
deep-copies `blocks[-i]` for i = 0, 1 (the first and the last block) in the model's
constructor, before the pretrained ViT weights are loaded into the encoder (and its ALBEF
checkpoint has no editing-block keys): their blocks are copies of a randomly initialised
ViT, i.e. effectively random — `editing_init: random` is the closer reproduction.
i_cls is CLIP's joint-space embedding of the instruction
through a linear map (the same map for text and image instructions), the tokens are the
encoder's token states through one linear map per modality.

Text-only samples (batch extra `text_query`: text-to-image queries and their training
twins) have no image: the backbone encodes their instruction only; the head maps it into
the retrieval space. Their "global", "bio" and "clo" rows are zeros and `has_image` is
False; losses on image features skip them.

Outputs: "global" (B, D) the ViT's class token (as the core's `timm` backbone), "bio",
"clo" (B, D), "instruction_cls" (B, D), "instruction_embedding" (B, E) CLIP's normalised
embedding (the s of the adaptive triplet), "has_image" (B,) bool; in evaluation also
"reference_instruction_embedding" (B, E): the same instructions through the frozen
reference encoder (mAP-tau's positives, never the trainable towers: see `reference_encoder`).
"image_tokens" (B, P + N, D) the ViT's token states (zeros for text-only rows) and, in
training, "instruction_tokens" (B, L, D) and "instruction_valid" (B, L): the inputs of the
text-to-image matching branch (`t2i_matching.py`; in evaluation its ITM re-ranking).

Instructions come from the batch: extras "instruction" (a text, or a tuple of phrasings:
one drawn per sample in training, by a hash of the run seed, the count of training forwards
and the sample's table index, so DDP draws what one process draws; the first in evaluation)
and "instruction_image" (a (3, h, w) tensor in [0, 1]; a row with one uses it instead of the
text).
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from core.context import BuildContext
from core.data.loading import mix_seed
from core.host_syncs import host_array
from core.interfaces import Backbone
from core.models.timm_backbone import TimmBackbone
from core.records import Batch, device_index, host_to_device
from reid_instruct_editor.instruction_encoder import InstructionEncoder
from reid_instruct_editor.instruction_text import (InstructionTokens, first_tokens, is_prepared, phrasings,
                                                   prepared_tokens, row_image)
from reid_instruct_editor.rows import host_has_image

NAME = "backbone 'instruct_editor'"
EDITING_INIT = ("last", "random")


class InstructEditor(Backbone):
    """Keys: the image ViT as the core's `timm` backbone (`arch`, `pretrained`,
    `model_kwargs`, `drop_path_rate`); the instruction encoder (`clip_model`, an open_clip
    model name; `clip_pretrained`, an open_clip tag read from the local cache or a
    checkpoint file, null for random weights; `clip_config`, an open_clip model config
    that builds a random model instead, e.g. a tiny one; `clip_cache_dir`;
    `freeze_text_encoder`, `freeze_image_encoder`); the editing transformer
    (`editing_blocks`: 2, `editing_init`: last | random, `mask_padding`: true);
    `reference_encoder` (true): keep a frozen copy of the instruction encoder as built (the
    pretrained CLIP towers of `clip_pretrained`) whose embeddings, output in evaluation as
    "reference_instruction_embedding", decide mAP-tau's positives; frozen towers are their
    own reference (no copy).
    """

    #: by batch content a step may skip the text or the image instruction tower, and the
    #: image path for text-only rows (DDP: unused parameters, no SyncBN there)
    conditional_modules = ("instruction", "text_tokens", "image_tokens", "image_encoder", "editing", "editing_norm")

    def __init__(self, ctx: BuildContext, arch: str = "vit_base_patch16_224", pretrained: bool | str = False,
                 model_kwargs: dict[str, Any] | None = None, drop_path_rate: float = 0.0,
                 clip_model: str = "ViT-B-16", clip_pretrained: str | None = None,
                 clip_config: dict[str, Any] | None = None, clip_cache_dir: str | None = None,
                 freeze_text_encoder: bool = True, freeze_image_encoder: bool = True,
                 editing_blocks: int = 2, editing_init: Literal["last", "random"] = "last",
                 mask_padding: bool = True, reference_encoder: bool = True) -> None:
        super().__init__()
        if editing_init not in EDITING_INIT:
            raise ValueError(f"{NAME}: editing_init must be one of {', '.join(EDITING_INIT)}, got {editing_init!r}")
        try:
            self.image_encoder = TimmBackbone(ctx, arch=arch, pretrained=pretrained, model_kwargs=model_kwargs,
                                              drop_path_rate=drop_path_rate)
        except (ValueError, FileNotFoundError, RuntimeError) as exc:  # the core names 'timm': rename
            raise type(exc)(str(exc).replace("backbone 'timm'", NAME)) from exc
        vit = self.image_encoder.model
        blocks = getattr(vit, "blocks", None)
        if blocks is None or getattr(vit, "cls_token", None) is None:
            raise ValueError(f"{NAME}: arch '{arch}' is not a ViT with a class token (timm VisionTransformer); "
                             "the editing transformer reuses its blocks and class token")
        if not 1 <= editing_blocks <= len(blocks):
            raise ValueError(f"{NAME}: editing_blocks must be in 1..{len(blocks)} (the ViT's depth), "
                             f"got {editing_blocks}")
        self.feature_dim = int(vit.embed_dim)
        self.patch_grid = self.image_encoder.patch_grid
        self.num_prefix_tokens = int(getattr(vit, "num_prefix_tokens", 1))
        dim = self.feature_dim
        # the paper's editing blocks: copies of the backbone's last blocks (and its final norm)
        self.editing = nn.ModuleList(copy.deepcopy(blocks[-editing_blocks:]))
        self.editing_norm = copy.deepcopy(vit.norm)
        if editing_init == "random":
            for block in self.editing:
                block.apply(_reset)
        self.instruction = InstructionEncoder(clip_model, clip_pretrained, clip_config, freeze_text_encoder,
                                              freeze_image_encoder, clip_cache_dir)
        enc = self.instruction
        self.text_tokens = nn.Linear(enc.text_width, dim)
        self.image_tokens = nn.Linear(enc.image_width, dim)
        self.instruction_cls = nn.Linear(enc.embed_dim, dim)
        self.mask_padding = bool(mask_padding)
        self.embedding_dim = enc.embed_dim
        self.reference: InstructionEncoder | None = None
        if reference_encoder and not (enc.freeze_text and enc.freeze_image):
            self.reference = copy.deepcopy(enc).requires_grad_(False)  # taken before any training step
            self.reference.freeze_text = self.reference.freeze_image = True
        # the phrasing draw (`_draw_phrasings`): keyed by the run's seed (torch's seed when the
        # model is built: the pipeline's `seed` under `core run`, on every rank) and this
        # count of training forwards (a buffer: checkpointed, so a resumed run draws on)
        self.phrase_seed = torch.initial_seed()
        self.register_buffer("phrase_draws", torch.zeros((), dtype=torch.int64))
        # its host mirror, read by `drawn_texts` without a host sync: a CPU tensor, not a buffer (it stays
        # on the host) and not an int (torch.compile would treat an int attribute as a constant and
        # recompile the forward every step, until its recompile limit, then run it eagerly)
        self._host_draws = torch.zeros((), dtype=torch.int64)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # checkpoints written before the draw counter existed load with the counter at 0
        state_dict.setdefault(prefix + "phrase_draws", torch.zeros((), dtype=torch.int64))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._host_draws.fill_(int(state_dict[prefix + "phrase_draws"]))  # at load time, not in a step

    # ---------------------------------------------------------------- instructions
    def encode_instructions(self, batch: Batch, rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Encode the batch's instructions (rows `rows`, default all): {"embedding" (n, E),
        "cls" (n, D), "tokens" (n, L, D), "valid" (n, L)}; text and image instructions
        are padded to one length L (padding invalid)."""
        device = batch.pids.device
        # the default (every row) reads no device tensor: no host sync
        picked = list(range(len(batch))) if rows is None else rows.tolist()
        batch.require("instruction", NAME)  # every sample has one (text rows read it)
        images = batch.extras.get("instruction_image")
        image_rows = [i for i, r in enumerate(picked) if row_image(images, r) is not None]
        text_rows = [i for i, r in enumerate(picked) if row_image(images, r) is None]
        parts: list[tuple[list[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor], nn.Linear]] = []
        if text_rows:
            if self.training:
                tokens = self._draw_phrasings(batch, [picked[i] for i in text_rows])
            else:  # the first phrasing: tokenized in the loader (`batch_preparer`) or here
                tokens = first_tokens(batch, [picked[i] for i in text_rows], self.instruction)
            parts.append((text_rows, self.instruction.encode_text(tokens), self.text_tokens))
        if self.training:
            with torch.no_grad():
                self.phrase_draws += 1
            self._host_draws += 1
        if image_rows:
            stack = torch.stack([row_image(images, picked[i]) for i in image_rows]).to(device)
            parts.append((image_rows, self.instruction.encode_image(stack), self.image_tokens))
        n = len(picked)
        length = max(p[1][1].shape[1] for p in parts) if parts else 1
        embedding = torch.zeros(n, self.embedding_dim, device=device)
        tokens = torch.zeros(n, length, self.feature_dim, device=device)
        valid = torch.zeros(n, length, dtype=torch.bool, device=device)
        for index, (emb, states, ok), project in parts:
            at = device_index(index, device)  # from pinned memory, no wait (core.records)
            # under autocast the encoders and projections return bf16/fp16: CUDA's index_copy
            # does not promote a source of another dtype (CPU autocast does), so cast it
            embedding = embedding.index_copy(0, at, emb.to(embedding.dtype))
            projected = project(states).to(tokens.dtype)
            tokens = tokens.index_copy(0, at, nn.functional.pad(projected, (0, 0, 0, length - projected.shape[1])))
            valid = valid.index_copy(0, at, nn.functional.pad(ok, (0, length - ok.shape[1])))
        return {"embedding": embedding, "cls": self.instruction_cls(embedding), "tokens": tokens, "valid": valid}

    @torch.no_grad()
    def reference_embeddings(self, batch: Batch) -> torch.Tensor:
        """(B, E) normalised embeddings of the batch's instructions (first phrasing) by the
        frozen reference encoder (the towers themselves when both are frozen)."""
        encoder = self.reference if self.reference is not None else self.instruction
        encoder.eval()
        device = batch.pids.device
        batch.require("instruction", NAME)
        images = batch.extras.get("instruction_image")
        out = torch.zeros(len(batch), self.embedding_dim, device=device)
        image_rows = [r for r in range(len(batch)) if row_image(images, r) is not None]
        text_rows = [r for r in range(len(batch)) if row_image(images, r) is None]
        if text_rows:
            out[text_rows] = encoder.encode_text(first_tokens(batch, text_rows, encoder))[0]
        if image_rows:
            out[image_rows] = encoder.encode_image(torch.stack([row_image(images, r) for r in image_rows])
                                                   .to(device))[0]
        return out

    def batch_preparer(self) -> InstructionTokens:
        """Every phrasing of the batch's text instructions tokenized in the loader's
        workers, not in the training step (instruction_text.py; issue 19)."""
        return InstructionTokens(self.instruction.tokenizer)

    def drawn_texts(self, batch: Batch, rows: list[int]) -> list[str]:
        """The phrasing each of `rows` read in this step's training forward (the draw of
        `_draw_phrasings`, made again with the counter before that forward's increment):
        what a momentum text model must read to give targets for the same caption. Computed
        on the host (the indices' host copy, the counter's host mirror): no host sync."""
        texts = batch.require("instruction", NAME)
        options = [phrasings(texts[r], r) for r in rows]
        if not rows or max(len(o) for o in options) == 1:
            return [o[0] for o in options]
        return [o[int(c) % len(o)] for o, c in zip(options, self._host_choice(batch, rows))]

    def drawn_tokens(self, batch: Batch, rows: list[int] | np.ndarray) -> torch.Tensor:
        """(len(rows), L) tokens, on the batch's device, of the phrasings `drawn_texts`
        names: taken from a prepared batch's tokens (no tokenizer in the step; the draw
        made again on the host), else tokenized. `rows` may be a host array (under
        torch.compile a list's length is a constant: a recompile per count of rows)."""
        if not is_prepared(batch):
            return self.instruction.tokenize(self.drawn_texts(batch, [int(r) for r in rows]), batch.pids.device)
        return prepared_tokens(batch, rows, self._host_choice(batch, rows))  # choice % 1 == 0: one phrasing

    def _host_choice(self, batch: Batch, rows: list[int] | np.ndarray) -> np.ndarray:
        """`_phrasing_choice` of the last training forward for `rows`, on the host."""
        index = torch.as_tensor(batch.host("indices")[np.asarray(rows, dtype=np.int64)])
        return host_array(_phrasing_choice(index, self._host_draws - 1, self.phrase_seed))

    def _draw_phrasings(self, batch: Batch, rows: list[int]) -> torch.Tensor:
        """(len(rows), L) tokens of one phrasing per row (training): a row whose instruction
        is a tuple of phrasings gets phrasing `_phrasing_choice(index, draws, seed) % k` of
        its k, index the sample's position in the record table. The draw is a function of
        the sample, not of the process's RNG or of the row: under DDP a sample gets the
        phrasing it gets in one process whichever rank holds it (a sample repeated within
        a step gets one phrasing). The chosen phrasings are picked on the device from the
        tokens of all of them (prepared in the loader, or tokenized here), so the choice
        needs no host sync."""
        device = batch.pids.device
        if is_prepared(batch):  # drawn for every row (choice % 1 == 0): no branch on the data
            return prepared_tokens(batch, rows, self._device_choice(batch, rows))
        texts = batch.require("instruction", NAME)
        flat: list[str] = []
        starts: list[int] = []
        counts: list[int] = []
        for r in rows:
            options = phrasings(texts[r], r)
            starts.append(len(flat))
            counts.append(len(options))
            flat.extend(options)
        tokens = self.instruction.tokenize(flat, device)
        if max(counts) == 1:
            return tokens
        pick = device_index(starts, device) + self._device_choice(batch, rows) % device_index(counts, device)
        return tokens.index_select(0, pick)

    def _device_choice(self, batch: Batch, rows: list[int]) -> torch.Tensor:
        """`_phrasing_choice` of this training forward for `rows`, on the batch's device
        (the counter buffer: no host sync); `_host_choice` makes it again on the host."""
        device = batch.pids.device
        at = device_index(rows, device)
        return _phrasing_choice(batch.indices.to(device).index_select(0, at), self.phrase_draws, self.phrase_seed)

    # ---------------------------------------------------------------- editing
    def edit(self, image_tokens: torch.Tensor, instruction_tokens: torch.Tensor, instruction_valid: torch.Tensor,
             instruction_cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(bio, clo) (n, D): the two streams through the shared editing blocks.

        image_tokens (n, P + N, D) after the ViT's final norm (P prefix tokens, class
        token first); instruction_tokens (n, L, D) with instruction_valid (n, L);
        instruction_cls (n, D)."""
        n = image_tokens.shape[0]
        bio = torch.cat([image_tokens[:, :1], instruction_tokens], dim=1)
        clo = torch.cat([instruction_cls[:, None], image_tokens[:, self.num_prefix_tokens:]], dim=1)
        mask = None
        if self.mask_padding:
            keys = torch.cat([torch.ones(n, 1, dtype=torch.bool, device=bio.device), instruction_valid], dim=1)
            mask = keys[:, None, None, :]  # (n, 1, 1, 1 + L): every query row may read the valid keys
        for block in self.editing:
            bio = block(bio, attn_mask=mask)
            clo = block(clo)
        return self.editing_norm(bio[:, 0]), self.editing_norm(clo[:, 0])

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        device = batch.images.device
        n = len(batch)
        host_image = host_has_image(batch)  # on the host: no sync
        image_rows = np.flatnonzero(host_image)
        has_image = host_to_device(host_image, device)
        batch.keep_host_output("has_image", has_image, host_image)  # for the head and the losses
        instr = self.encode_instructions(batch)
        dim = self.feature_dim
        out = {"instruction_cls": instr["cls"], "instruction_embedding": instr["embedding"], "has_image": has_image}
        if not self.training:
            out["reference_instruction_embedding"] = self.reference_embeddings(batch)
        zeros = instr["cls"].new_zeros(n, dim)
        # text-only rows skip the image path (the rows chosen on the host: no sync)
        if len(image_rows) == 0:  # no image: zero token states (T = prefix + patches)
            tokens = self.num_prefix_tokens + int(self.image_encoder.model.patch_embed.num_patches)
            out["image_tokens"] = zeros.new_zeros(n, tokens, dim)
            return {**out, "global": zeros, "bio": zeros, "clo": zeros}
        rows = device_index(image_rows, device)
        vit = self.image_encoder.model
        feats = vit.forward_features(batch.images.index_select(0, rows))
        global_ = vit.forward_head(feats, pre_logits=True)
        bio, clo = self.edit(feats, instr["tokens"].index_select(0, rows), instr["valid"].index_select(0, rows),
                             instr["cls"].index_select(0, rows))
        # the text-to-image matching branch's inputs (t2i_matching.py; in evaluation its ITM re-ranking)
        out["image_tokens"] = feats if len(image_rows) == n else \
            feats.new_zeros(n, *feats.shape[1:]).index_copy(0, rows, feats)
        if self.training:
            out["instruction_tokens"], out["instruction_valid"] = instr["tokens"], instr["valid"]
        if len(image_rows) == n:
            return {**out, "global": global_, "bio": bio, "clo": clo}
        return {**out, "global": zeros.index_copy(0, rows, global_.to(zeros.dtype)),
                "bio": zeros.index_copy(0, rows, bio.to(zeros.dtype)),
                "clo": zeros.index_copy(0, rows, clo.to(zeros.dtype))}


_P = 2_147_483_647  # 2^31 - 1: products of two residues stay below 2^62 in int64


def _phrasing_choice(index: torch.Tensor, draws: torch.Tensor | int, seed: int) -> torch.Tensor:
    """A uniform 31-bit integer per sample (int64, on `index`'s device) from (seed, draws,
    sample index): an integer hash (multiply mod 2^31 - 1, xor-shift rounds) computed
    with exact integer ops, so every device and rank gets the same numbers."""
    key = mix_seed(seed)
    x = (index.long() ^ (key & 0x7FFFFFFF)) % _P
    x = (x * 1_103_515_245 + torch.as_tensor(draws, device=index.device).long() % _P) % _P
    x = x ^ (x >> 16)
    x = (x * 747_796_405 + ((key >> 31) & 0x7FFFFFFF)) % _P
    x = x ^ (x >> 13)
    x = (x * 1_597_334_677) % _P
    return x ^ (x >> 16)


def _reset(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

"""IRM's text-to-image matching branch (YAML loss name `t2i_matching`): a BERT-style
fusion encoder over a caption's tokens with cross-attention to an image's tokens, trained
with proximity-sensitive image-text matching on hard negatives (p-ITM), masked language
modelling with momentum distillation (MLM) and momentum-based replaced token detection
(m-RTD), as the authors' code trains the text-to-image task (RaSa's L_pitm, L_mlm and
L_mrtd; their total 0.5 L_cl + L_pitm + L_mlm + 0.5 L_mrtd).

Fusion layer (BERT, post-norm): h <- LN(h + SelfAttn(h)); h <- LN(h + CrossAttn(h, image));
h <- LN(h + FFN(h)); text padding is masked as keys. Inputs: the caption's token states
projected to the image width ("instruction_tokens", the text encoder of the authors'
BERT split into text and fusion layers) and the ViT's token states ("image_tokens").

p-ITM (Eq. of RaSa / the authors' forward): each caption row i is paired with an image row
of its identity (the first in the batch); one hard negative image per caption is drawn
with probability softmax(t_i . v_j / temp) over the batch's image rows of *other*
identities, one hard negative caption per paired image likewise from softmax(v . t / temp);
the matching head (Linear(D, 2) on the fused first token) is trained with cross-entropy,
labels 1 for the n positive pairs and 0 for the (up to) 2n negative ones.

MLM (BERT): 15 % of each caption's tokens (not start-, end-of-text or padding) are
chosen; of those 80 % become the mask token, 10 % a random token, 10 % stay; the caption
is re-encoded by the live text encoder, fused with its paired image, and a BERT prediction
head (Linear, GELU, LayerNorm, Linear to the vocabulary) predicts the chosen tokens, with
momentum distillation (ALBEF; the authors' `soft_labels`, alpha = 0.4):

    L_mlm = (1 - a) CE(p, y) + a mean_chosen( -sum_v q_m(v) log p(v) )

p the live prediction, y the original token, q_m the momentum model's prediction for the
same masked caption and image (softmax over the vocabulary; the authors' code takes it
over the sequence axis, `dim=1` of (B, L, V), which we take to be an oversight).

m-RTD (RaSa's momentum-based replaced token detection, the authors' `loss_mrtd`): 30 % of
the caption's tokens are masked (80/10/10 as above), the momentum model (generator)
predicts them and one token per masked position is sampled from its prediction (over
ordinary tokens: never start-, end-of-text or padding, which delimit a CLIP caption); the
live text encoder and fusion read the corrupted caption with the paired image and a
detection head (Linear(D, 2)) classifies every caption position after the start token,
end-of-text included, as replaced (the token differs from the original) or not:

    L_mrtd = CE(head(fused(corrupt, image)), [corrupt != original])

`mrtd_resample: all` samples every position between start and end of text (the authors'
code resamples every position; ours keeps the two delimiters), `masked` (default) only
the masked ones (RaSa's and ELECTRA's definition).

The momentum model (`momentum`, 0.995; EMA updated once per step before use, never by
gradient) copies the text side the MLM head reads: the CLIP text tower, its token
projection, the fusion encoder and the MLM head (the authors' `text_encoder_m`, a BERT
with its fusion layers and MLM head), never an image encoder; it is saved with the loss's
state (`momentum.MomentumState`). `momentum: null` drops it and both terms that need it
(MLM without distillation, no m-RTD). Its CLIP text tower is one module with
`t2i_contrastive`'s momentum model (the authors keep one momentum model;
`momentum.SharedCopy`): whichever loss is bound first holds it in its state, and it takes
one EMA step per training forward, by the first loss that runs (the contrastive loss runs
in every training forward, so with it the tower follows every step, also those of other
tasks' batches; the fusion encoder and MLM head step in the forwards with caption pairs).

Total of the authors for the task: 0.5 L_cl + L_pitm + L_mlm + 0.5 L_mrtd (`itm_weight`,
`mlm_weight`, `mrtd_weight`: 1, 1, 0.5 here; `weight: 0.5` of `t2i_contrastive`). The ITM
head re-ranks the top-k at test time (`itm_rerank.py`, evaluator key `itm_rerank`).
Sizes: the authors' fusion is BERT-base's last 6 layers (width 768, 12 heads); `layers`,
`heads` set ours (the backbone's width).

Needs the bound model's text encoder for MLM (`bind(model)`; the trainer binds it before
the first training step), the backbone's training outputs "instruction_tokens", "instruction_valid",
"image_tokens", and the retrieval "embedding" for hard-negative sampling.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.context import BuildContext
from core.interfaces import Loss, read_output
from core.pipeline import ReIDModel
from core.host_syncs import host_array
from core.records import Batch, device_index, host_to_device
from reid_instruct_editor.instruction_text import first_tokens
from reid_instruct_editor.momentum import MomentumCopy, MomentumState
from reid_instruct_editor.rows import host_image_rows
from reid_instruct_editor.tasks import TEXT_TO_IMAGE

NAME = "loss 't2i_matching'"
HINT = "the `instruct_editor` backbone produces it in training"
RESAMPLE = ("masked", "all")


class FusionLayer(nn.Module):
    """One BERT layer with cross-attention (post-norm, GELU feed-forward of 4 D)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.dropout = nn.Dropout(dropout)

    def forward(self, text: torch.Tensor, valid: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        pad = ~valid
        h = self.norms[0](text + self.dropout(self.self_attn(text, text, text, key_padding_mask=pad,
                                                              need_weights=False)[0]))
        h = self.norms[1](h + self.dropout(self.cross_attn(h, image, image, need_weights=False)[0]))
        return self.norms[2](h + self.dropout(self.ffn(h)))


class FusionEncoder(nn.Module):
    """`layers` FusionLayers: caption tokens (n, L, D) attend to image tokens (n, T, D)."""

    def __init__(self, dim: int, layers: int, heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.layers = nn.ModuleList(FusionLayer(dim, heads, dropout) for _ in range(layers))

    def forward(self, text: torch.Tensor, valid: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            text = layer(text, valid, image)
        return text


def mask_tokens(tokens: torch.Tensor, maskable: torch.Tensor, mask_id: int, vocab: tuple[int, int],
                probability: float = 0.15, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: (masked tokens, chosen (bool)). Each maskable position is chosen with
    `probability`; a chosen one becomes `mask_id` (80 %), a random id in [vocab) (10 %) or
    stays (10 %). Drawn by the CPU generator; masks applied by `where` (no selection: no
    host sync where `tokens` is on a GPU)."""
    def draw(p: float) -> torch.Tensor:
        return torch.rand(tokens.shape, generator=generator, device="cpu").to(tokens.device) < p

    chosen = draw(probability) & maskable
    replaced = draw(0.8) & chosen
    randomised = draw(0.5) & chosen & ~replaced
    random_ids = torch.randint(vocab[0], vocab[1], tokens.shape, generator=generator).to(tokens.device)
    out = torch.where(replaced, torch.full_like(tokens, mask_id), tokens)
    return torch.where(randomised, random_ids, out), chosen


def sample_rows(weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One column per row of `weights` (n, m) >= 0, drawn with probability proportional to
    the row: argmax_j w_j / q_j with q_j ~ Exp(1) (the exponential race, the algorithm of
    `torch.multinomial(w, 1)` itself, without its host-side validity check: no host sync on
    a GPU). A row of zeros gives column 0; callers keep such rows out."""
    race = torch.empty_like(weights, dtype=torch.float32).exponential_(1, generator=generator)
    return (weights.float() / race).argmax(dim=1)


def hard_negatives(sim: torch.Tensor, same: torch.Tensor, generator: torch.Generator | None = None
                   ) -> torch.Tensor:
    """For each row of `sim` (n, m) an index drawn with probability softmax(sim) over the
    columns where `same` is False. Every row must have such a column: the caller keeps the
    others out (on the host, from the identities' host copy: no host sync)."""
    weights = F.softmax(sim.float(), dim=1).masked_fill(same, 0.0)
    return sample_rows(weights, generator)


class MatchingSide(nn.Module):
    """The text side the MLM and m-RTD read, on the live modules it is built from: the
    model's CLIP text tower and token projection, the loss's fusion encoder and MLM head
    (the authors' `text_encoder`, which their momentum model copies). `image_side`: what
    a momentum copy leaves out (the CLIP image tower)."""

    def __init__(self, model: nn.Module, loss: "T2IMatchingLoss") -> None:
        super().__init__()
        self.encoder, self.text_tokens = model.backbone.instruction, model.backbone.text_tokens
        self.fusion, self.mlm_transform, self.mlm_decoder = loss.fusion, loss.mlm_transform, loss.mlm_decoder

    @property
    def image_side(self) -> list[nn.Module]:
        return [self.encoder.clip.visual]

    def fused(self, tokens: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """(n, L, D) fused states of caption tokens (n, L) with image tokens (n, T, D)."""
        _, states, valid = self.encoder.encode_text(tokens)
        return self.fusion(self.text_tokens(states), valid, image)

    def forward(self, tokens: torch.Tensor, image: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """(k, V) MLM logits at the positions `at`: flat indices into (n, L), int64 (taken
        on the host: a boolean selection would be a host sync)."""
        return self.mlm_decoder(self.mlm_transform(_rows_at(self.fused(tokens, image), at)))


class T2IMatchingLoss(MomentumState, Loss):
    """L_pitm + L_mlm + L_mrtd of the module docstring (logged separately). Keys: `layers` (fusion
    depth; authors 6), `heads` (authors 12), `dropout` (0.1), `mlm_probability` (0.15),
    `itm_weight`, `mlm_weight` (1, 1), `temperature` (0.07: hard-negative sampling),
    `features` (embedding: the similarities of the sampling), `task` (text-to-image),
    `vocab_size` (49408: CLIP's; the MLM decoder's width), `momentum` (0.995; null: no
    momentum model, no distillation, no m-RTD), `mlm_distill` (0.4), `mrtd_weight` (0.5),
    `mrtd_probability` (0.3), `mrtd_resample` (masked | all)."""

    momentum_owner = NAME

    def __init__(self, ctx: BuildContext, layers: int = 6, heads: int = 12, dropout: float = 0.1,
                 mlm_probability: float = 0.15, itm_weight: float = 1.0, mlm_weight: float = 1.0,
                 temperature: float = 0.07, features: str = "embedding", task: str = TEXT_TO_IMAGE,
                 vocab_size: int = 49408, momentum: float | None = 0.995, mlm_distill: float = 0.4,
                 mrtd_weight: float = 0.5, mrtd_probability: float = 0.3, mrtd_resample: str = "masked") -> None:
        super().__init__()
        dim = int(ctx.feature_dim or 0)
        if not dim:
            raise ValueError(f"{NAME} needs the backbone's width (ctx.feature_dim); build the backbone first")
        if layers < 1 or heads < 1 or dim % heads:
            raise ValueError(f"{NAME}: layers >= 1 and heads dividing the width {dim} required, "
                             f"got layers={layers}, heads={heads}")
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"{NAME}: mlm_probability must be in (0, 1), got {mlm_probability}")
        if momentum is not None and not 0.0 <= momentum < 1.0:
            raise ValueError(f"{NAME}: momentum must be in [0, 1) or null, got {momentum}")
        if not 0.0 <= mlm_distill <= 1.0:
            raise ValueError(f"{NAME}: mlm_distill must be in [0, 1], got {mlm_distill}")
        if not 0.0 < mrtd_probability < 1.0:
            raise ValueError(f"{NAME}: mrtd_probability must be in (0, 1), got {mrtd_probability}")
        if mrtd_resample not in RESAMPLE:
            raise ValueError(f"{NAME}: mrtd_resample must be one of {', '.join(RESAMPLE)}, got {mrtd_resample!r}")
        self.momentum = None if momentum is None else float(momentum)
        self.mlm_distill = float(mlm_distill) if momentum is not None else 0.0
        self.mrtd_weight = float(mrtd_weight) if momentum is not None else 0.0
        self.mrtd_probability, self.mrtd_resample = float(mrtd_probability), mrtd_resample
        self._momentum_model: MomentumCopy | None = None  # not a submodule (momentum.py)
        self.fusion = FusionEncoder(dim, layers, heads, dropout)
        self.itm_head = nn.Linear(dim, 2)
        self.mlm_transform = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))
        self.mlm_probability, self.itm_weight, self.mlm_weight = float(mlm_probability), float(itm_weight), \
            float(mlm_weight)
        self.temperature, self.features, self.task = float(temperature), features, task
        self.mlm_decoder = nn.Linear(dim, int(vocab_size))
        # m-RTD's detection head; none without it (DDP: no parameter that never trains)
        self.mrtd_head = nn.Linear(dim, 2) if self.mrtd_weight > 0 else None
        self._side: list[MatchingSide] = []  # set by bind: the live text side (MLM, m-RTD)
        self._model: list[ReIDModel] = []  # not a submodule: the live model, for re-encoding masked captions
        # training forwards so far (checkpointed): ITM re-ranking refuses a head that never trained
        self.register_buffer("trained_steps", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # checkpoints written before the counter existed: their head trained (count unknown)
        state_dict.setdefault(prefix + "trained_steps", torch.ones((), dtype=torch.long))
        if self.mrtd_head is not None:  # written before m-RTD existed: its head starts as initialised
            for name, value in self.mrtd_head.state_dict().items():
                state_dict.setdefault(prefix + "mrtd_head." + name, value.clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---------------------------------------------------------------- binding
    def bind(self, model: nn.Module) -> None:
        """The model whose text encoder re-encodes masked captions (MLM)."""
        clip = model.backbone.instruction.clip
        embedding = getattr(clip, "token_embedding", None)
        vocab = getattr(embedding, "num_embeddings", None)
        if vocab is not None and vocab != self.mlm_decoder.out_features:
            raise ValueError(f"{NAME}: vocab_size is {self.mlm_decoder.out_features} but the text encoder's "
                             f"vocabulary has {vocab} tokens; set vocab_size: {vocab}")
        self._model[:] = [model]
        side = MatchingSide(model, self)
        self._side = [side]  # a list: not a submodule (its parts are the model's and ours)
        if self.momentum is None:
            return
        live = self._momentum_model.live if self._momentum_model is not None else None
        if live is None or any(getattr(live, n) is not getattr(side, n) for n in ("encoder", "text_tokens")):
            # the CLIP text tower's copy is one module with t2i_contrastive's (momentum.py)
            self._momentum_model = MomentumCopy(side, self.momentum, skip=side.image_side, shared=("encoder",),
                                                name=NAME)
        self._adopt_pending_momentum()

    @property
    def momentum_model(self) -> MomentumCopy | None:
        return self._momentum_model

    # ---------------------------------------------------------------- pieces
    def pairs(self, outputs: dict[str, torch.Tensor], batch: Batch):
        """(caption rows, their paired image rows, image rows, text rows) of the task, as
        index tensors on the batch's device (`host_pairs` moved: no host sync)."""
        return tuple(device_index(rows, batch.pids.device) for rows in self.host_pairs(outputs, batch))

    def host_pairs(self, outputs: dict[str, torch.Tensor], batch: Batch) -> tuple[np.ndarray, ...]:
        """`pairs` on the host: chosen from the batch's `text_query` flags, task names and
        identities kept by collate (`Batch.host`), with no device read."""
        n = len(batch)
        has_image = host_image_rows(outputs, batch, n)
        tasks = batch.extras.get("task")
        mine = np.ones(n, dtype=bool) if tasks is None else np.asarray([str(t) == self.task for t in tasks], dtype=bool)
        images, texts = np.flatnonzero(mine & has_image), np.flatnonzero(mine & ~has_image)
        if len(images) == 0 or len(texts) == 0:
            return texts[:0], images[:0], images, texts
        pids = batch.host("pids")
        same = pids[texts][:, None] == pids[images][None, :]
        has_pair = same.any(axis=1)
        return texts[has_pair], images[same[has_pair].argmax(axis=1)], images, texts  # first image of the identity

    def match_logits(self, text: torch.Tensor, valid: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """(n, 2) matching logits of caption tokens with image tokens."""
        return self.itm_head(self.fusion(text, valid, image)[:, 0])

    def forward(self, outputs: dict[str, torch.Tensor], batch: Batch):
        x = read_output(outputs, self.features, NAME, HINT)
        zero = x.sum() * 0.0
        if not self.training:
            return zero, {}
        text_tok = read_output(outputs, "instruction_tokens", NAME, HINT)
        valid = read_output(outputs, "instruction_valid", NAME, HINT).bool()
        image_tok = read_output(outputs, "image_tokens", NAME, HINT)
        with torch.no_grad():
            self.trained_steps += 1
        rows = self.host_pairs(outputs, batch)
        host_caps = rows[0]
        if len(host_caps) == 0:
            return zero + sum(p.sum() * 0.0 for p in self.parameters()), {}
        imgs = device_index(rows[1], x.device)
        itm = self.itm_loss(x, text_tok, valid, image_tok, rows, batch.host("pids"))
        if self._momentum_model is not None:
            self._momentum_model.update(batch)  # once per step, before use (the authors' _momentum_update)
        mlm = self.mlm_loss(batch, host_caps, imgs, image_tok)  # the captions read on the host
        total = self.itm_weight * itm + self.mlm_weight * mlm
        parts = {"pitm": itm.detach(), "mlm": mlm.detach()}
        if self.mrtd_head is not None:
            mrtd = self.mrtd_loss(batch, host_caps, imgs, image_tok)
            total = total + self.mrtd_weight * mrtd
            parts["mrtd"] = mrtd.detach()
        return total, parts

    def itm_loss(self, x, text_tok, valid, image_tok, rows, pids) -> torch.Tensor:
        """p-ITM: positives (caption, paired image); one hard negative image per caption and
        one hard negative caption per paired image, never of the same identity. `rows`:
        (caps, imgs, image_rows, text_rows) as host arrays; which rows have a negative (a
        row of another identity among the candidates) is decided on the host from the
        identities' host copy, the draw on the device: no host sync."""
        device = x.device
        caps, imgs, image_rows, text_rows = (device_index(r, device) for r in rows)
        f = F.normalize(x.float(), dim=1)
        t_rows, i_rows = [caps], [imgs]
        for anchors, candidates, c, anchor_side in ((rows[0], rows[2], image_rows, "text"),
                                                    (rows[1], rows[3], text_rows, "image")):
            other = pids[anchors][:, None] != pids[candidates][None, :]  # host
            keep = np.flatnonzero(other.any(axis=1))
            if len(keep) == 0:
                continue
            a = device_index(anchors[keep], device)
            with torch.no_grad():
                drawn = c[hard_negatives(f[a] @ f[c].t() / self.temperature, host_to_device(~other[keep], device))]
            t_rows.append(a if anchor_side == "text" else drawn)
            i_rows.append(drawn if anchor_side == "text" else a)
        t_all, i_all = torch.cat(t_rows), torch.cat(i_rows)
        labels = (torch.arange(len(t_all), device=device) < len(caps)).long()
        logits = self.match_logits(text_tok[t_all], valid[t_all], image_tok[i_all])
        return F.cross_entropy(logits.float(), labels)

    @torch.compiler.disable  # host work: under torch.compile it runs eagerly (dynamo cannot draw
    # `torch.rand` of a shape it has made dynamic; the masking never touches the device)
    def _masked_captions(self, batch: Batch, caps: torch.Tensor | np.ndarray, probability: float
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """BERT masking (`mask_tokens`) of the captions of rows `caps`, all on the host (the
        masking and the positions it selects are decided there: no host sync): (tokens (n,
        L), maskable (n, L): not start-, end-of-text or padding, masked tokens, chosen, the
        start-of-text id, which is also the mask id and the end of the ordinary vocabulary)."""
        if not self._model:
            raise RuntimeError(f"{NAME}: no model is bound for masked language modelling; the trainer binds it "
                               "before the first training step, elsewhere call loss.bind(model)")
        # tokenized in the loader (the backbone's batch preparer), else here
        tokens = first_tokens(batch, np.asarray(caps), self._model[0].backbone.instruction, host=True, component=NAME)
        eot = tokens.argmax(dim=1)
        positions = torch.arange(tokens.shape[1])[None, :]
        maskable = (positions > 0) & (positions < eot[:, None])
        host_tokens = host_array(tokens)
        sot = int(host_tokens[0, 0])
        masked, chosen = mask_tokens(tokens, maskable, mask_id=sot, vocab=(1, sot), probability=probability)
        return host_tokens, host_array(maskable), host_array(masked), host_array(chosen), sot

    def _momentum(self) -> MomentumCopy:
        if self._momentum_model is None:
            raise RuntimeError(f"{NAME}: momentum is {self.momentum} but no model is bound; the trainer binds it "
                               "before the first training step, elsewhere call loss.bind(model) (or momentum: null)")
        return self._momentum_model

    def _unused(self, image_tok: torch.Tensor, *modules: nn.Module) -> torch.Tensor:
        # every parameter in the graph (DDP: no unused parameter)
        return image_tok.sum() * 0.0 + sum(p.sum() * 0.0 for m in modules for p in m.parameters())

    def mlm_loss(self, batch: Batch, caps: torch.Tensor | np.ndarray, imgs: torch.Tensor,
                 image_tok: torch.Tensor) -> torch.Tensor:
        """MLM: the chosen tokens of each caption, predicted through the fusion encoder from
        the masked caption (re-encoded by the live text encoder) and its paired image; with
        a momentum model, 0.4 of the target is its prediction (module docstring)."""
        device = image_tok.device
        tokens, _, masked, chosen, _ = self._masked_captions(batch, caps, self.mlm_probability)
        if not chosen.any():
            return self._unused(image_tok, self.mlm_decoder, self.mlm_transform)
        at = device_index(np.flatnonzero(chosen), device)
        masked, image = host_to_device(masked, device), image_tok[imgs]
        logits = self._side[0](masked, image, at).float()
        loss = F.cross_entropy(logits, host_to_device(tokens[chosen], device))
        if self.mlm_distill > 0:
            soft = F.softmax(self._momentum()(masked, image.detach(), at).float(), dim=-1)  # no gradient
            distill = -(soft * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()
            loss = (1.0 - self.mlm_distill) * loss + self.mlm_distill * distill
        return loss

    def mrtd_loss(self, batch: Batch, caps: torch.Tensor | np.ndarray, imgs: torch.Tensor,
                  image_tok: torch.Tensor) -> torch.Tensor:
        """m-RTD (module docstring): mask, let the momentum model fill the masked positions
        (or every position, `mrtd_resample: all`) by sampling, detect the replaced tokens.
        Positions are chosen on the host and the fill is drawn on the device (no host sync)."""
        device = image_tok.device
        host_tokens, maskable, masked, chosen, sot = self._masked_captions(batch, caps, self.mrtd_probability)
        fill = maskable if self.mrtd_resample == "all" else chosen
        tokens, masked, image = host_to_device(host_tokens, device), host_to_device(masked, device), image_tok[imgs]
        corrupt = tokens.clone()
        if fill.any():
            at = device_index(np.flatnonzero(fill), device)
            with torch.no_grad():
                logits = self._momentum()(masked, image.detach(), at).float()
                logits[:, sot:] = float("-inf")  # ordinary tokens only: start-, end-of-text delimit a caption
                logits[:, 0] = float("-inf")  # padding
                corrupt.view(-1).index_copy_(0, at, sample_rows(F.softmax(logits, dim=-1)))
        eot = host_tokens.argmax(axis=1)
        positions = np.arange(host_tokens.shape[1])[None, :]
        detect = device_index(np.flatnonzero((positions > 0) & (positions <= eot[:, None])), device)
        # after the start token, end-of-text included
        logits = self.mrtd_head(_rows_at(self._side[0].fused(corrupt, image), detect)).float()
        return F.cross_entropy(logits, (corrupt != tokens).view(-1).index_select(0, detect).long())


def _rows_at(states: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """The (k, D) states at the flat positions `at` of (n, L, D) `states`."""
    return states.flatten(0, 1).index_select(0, at)



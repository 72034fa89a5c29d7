"""IRM's text-to-image branch (YAML loss name `t2i_contrastive`): identity-aware
image-text contrastive learning against queues of past features, with a momentum text
encoder and momentum distillation, as the authors' code trains the text-to-image task
(its `loss_cl`, from RaSa / ALBEF).

For the batch's image rows (features v, unit norm) and text rows (captions alone, t), the
momentum model's features of the same captions t_m (EMA of the model, m = 0.995, updated
before each step; `momentum.py`), and queues V_q, T_q of past image features and past
momentum text features with their identities:

    keys_img = [v ; V_q],   keys_txt = [t_m ; T_q]                 (no gradient)
    y_i(j)   = [id_i = id_j] / #{j : id_i = id_j}                  (identity-aware)
    target_i = alpha softmax(q_m,i . keys / temp) + (1 - alpha) y_i   (alpha = 0.4)
    L_x2y    = mean_i -sum_j target_i(j) log softmax_j(x_i . keys_y_j / temp)
    L_cl     = (L_i2t + L_t2i + L_i2i + L_t2t) / 4

q_m is the query's momentum feature: v itself for image queries (the authors keep no
momentum image encoder: their `model_pairs` are the text encoder and its projection),
t_m for caption queries. `temp` is learnt (initial 0.07, clamped to [0.001, 0.5]); after
the loss v and t_m (of every process) enter the queues (first in, first out;
`queue_size` 65,536 in the authors' code). `momentum: null` drops the momentum model:
keys and queue hold t, targets are y alone (the earlier variant).

The momentum model is a copy of the text side only (`TextSide`: the instruction encoder's
text tower, its class-token projection and the head's text projection and BatchNorm: the
authors' text encoder and text projection), never the image side (ViT, editing blocks,
CLIP image tower). The trainer binds it at the first training step, after weights are
restored (core.pipeline.bind_losses); outside a trainer call `bind(model)`. It is saved
with the loss's state (`momentum.MomentumState`): a resumed run continues the same
average. Its copy of the CLIP text tower is one module with `t2i_matching`'s (the
authors' one momentum model; `momentum.SharedCopy`): one EMA step per training forward.
Captions with several phrasings: the momentum model reads the phrasing the live model
drew in the same step (backbone.py `drawn_texts`; its tokens, `drawn_tokens`).

Features: the retrieval embedding ("embedding"), so the space the loss shapes is the
one a caption query is ranked in (the authors' code uses a separate 256-d image-text
space; ours: one space for every task, the task-free setting's). The matching (p-ITM),
masked-language (momentum-distilled) and replaced-token detection (m-RTD) terms are
`t2i_matching.py`; the ITM re-ranking at test `itm_rerank.py`.
Their total for the task is 0.5 L_cl + L_pitm + L_mlm + 0.5 L_mrtd: `weight: 0.5` gives
the first term.

Rows of other tasks are ignored (`task`); a batch without both image and text rows of
the task gives 0.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.context import BuildContext
from core.interfaces import Loss, read_output
from core.records import Batch, device_index
from core.training import distributed as D
from reid_instruct_editor.head import _rows_batch_norm
from reid_instruct_editor.momentum import MomentumCopy, MomentumState
from reid_instruct_editor.rows import host_image_rows, whole_batch_rows
from reid_instruct_editor.tasks import TEXT_TO_IMAGE

NAME = "loss 't2i_contrastive'"


class TextSide(nn.Module):
    """The text path of a text-only row (backbone.py, head.py), on the live modules it is
    built from: caption -> CLIP text embedding e -> instruction_cls -> text_projection ->
    text_bn = the row's [bio_bn ; clo_bn] ("embedding"). `image_side` lists the
    submodules a momentum copy leaves out (the CLIP image tower)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        backbone, head = model.backbone, model.head
        missing = [n for n, o, a in (("backbone.instruction", backbone, "instruction"),
                                     ("backbone.instruction_cls", backbone, "instruction_cls"),
                                     ("head.text_projection", head, "text_projection"),
                                     ("head.text_bn", head, "text_bn")) if not hasattr(o, a)]
        if missing:
            raise ValueError(f"{NAME}: the momentum model follows the `instruct_editor` backbone and head's "
                             f"text path; this model lacks {', '.join(missing)}")
        self.encoder, self.cls = backbone.instruction, backbone.instruction_cls
        self.projection, self.bn = head.text_projection, head.text_bn

    @property
    def image_side(self) -> list[nn.Module]:
        return [self.encoder.clip.visual]

    def forward(self, captions: list[str] | torch.Tensor) -> dict[str, torch.Tensor]:
        """`captions`: texts, or their tokens (n, L) (a prepared batch's: no tokenizer here)."""
        device = self.cls.weight.device
        tokens = captions.to(device) if isinstance(captions, torch.Tensor) else self.encoder.tokenize(captions, device)
        embedding = self.encoder.encode_text(tokens)[0]
        # one process's statistics (a copy of a synchronised BN must not wait for other ranks)
        x = _rows_batch_norm(self.bn, self.projection(self.cls(embedding)), plain=True)
        half = x.shape[1] // 2
        return {"embedding": x, "bio_bn": x[:, :half], "clo_bn": x[:, half:]}


def captions_of(batch: Batch, rows: torch.Tensor) -> list[str]:
    """The text of each row in `rows` (the first of a tuple of phrasings)."""
    texts = batch.require("instruction", NAME)
    out = []
    for r in rows.tolist():
        value = texts[r]
        value = value[0] if isinstance(value, (tuple, list)) and value else value
        if value is None or isinstance(value, (tuple, list)):
            raise ValueError(f"{NAME}: caption row {r} has no text instruction")
        out.append(str(value))
    return out


def contrastive(queries: torch.Tensor, q_ids: torch.Tensor, keys: torch.Tensor, k_ids: torch.Tensor,
                temp: torch.Tensor, soft_queries: torch.Tensor | None = None, alpha: float = 0.0) -> torch.Tensor:
    """mean over queries of the cross-entropy between the targets and
    softmax(queries . keys / temp); targets: identity-aware (every query must have a key
    of its identity), mixed with weight `alpha` with softmax(soft_queries . keys / temp)
    (momentum distillation; no gradient) when `soft_queries` is given."""
    logits = queries @ keys.t() / temp
    positive = (q_ids[:, None] == k_ids[None, :]).float()
    targets = positive / positive.sum(dim=1, keepdim=True)
    if soft_queries is not None and alpha > 0:
        with torch.no_grad():
            soft = F.softmax(soft_queries @ keys.t() / temp, dim=1)
        targets = alpha * soft + (1.0 - alpha) * targets
    return -(F.log_softmax(logits, dim=1) * targets).sum(dim=1).mean()


class T2IContrastiveLoss(MomentumState, Loss):
    """L_cl of the module docstring. Keys: `features` (embedding), `queue_size` (65536),
    `temperature` (0.07, learnt; `learn_temperature`), `task` (text-to-image), `dim` (null:
    the head's embedding width), `momentum` (0.995; null: no momentum model),
    `distill` (0.4: the weight of the momentum model's soft targets)."""

    #: updated from every process's gathered rows: equal on all ranks (no DDP broadcast)
    shared_buffers = ("image_*", "text_*")
    momentum_owner = NAME

    def __init__(self, ctx: BuildContext, features: str = "embedding", queue_size: int = 65536,
                 temperature: float = 0.07, learn_temperature: bool = True, task: str = TEXT_TO_IMAGE,
                 dim: int | None = None, momentum: float | None = 0.995, distill: float = 0.4) -> None:
        super().__init__()
        if momentum is not None and not 0.0 <= momentum < 1.0:
            raise ValueError(f"{NAME}: momentum must be in [0, 1) or null, got {momentum}")
        if not 0.0 <= distill <= 1.0:
            raise ValueError(f"{NAME}: distill must be in [0, 1], got {distill}")
        if queue_size < 0:
            raise ValueError(f"{NAME}: queue_size must be >= 0, got {queue_size}")
        if not 0.001 <= temperature <= 0.5:
            raise ValueError(f"{NAME}: temperature must be in [0.001, 0.5], got {temperature}")
        dim = dim or ctx.extras.get("embedding_dim") or ctx.feature_dim
        if not dim:
            raise ValueError(f"{NAME}: the queue width is unknown; set `dim` (the width of '{features}')")
        self.features, self.task, self.queue_size = features, task, int(queue_size)
        self.momentum = None if momentum is None else float(momentum)
        self.distill = float(distill) if momentum is not None else 0.0
        self._momentum_model: MomentumCopy | None = None  # not a submodule (momentum.py)
        self._backbone: list[nn.Module] = []
        self.temp = nn.Parameter(torch.tensor(float(temperature)), requires_grad=bool(learn_temperature))
        for name in ("image", "text"):
            self.register_buffer(f"{name}_queue", torch.zeros(self.queue_size, int(dim)))
            self.register_buffer(f"{name}_ids", torch.full((self.queue_size,), -1, dtype=torch.long))
            self.register_buffer(f"{name}_ptr", torch.zeros((), dtype=torch.long))
        # the host mirror of the fresh queues (empty: ids -1, pointer 0), written from those
        # values rather than read back from the buffers, which have none when the loss is
        # built on the meta device (a sweep's check)
        self._host_queues: dict[str, list] = {name: [np.full(self.queue_size, -1, dtype=np.int64), 0]
                                              for name in ("image", "text")}

    def _mirror_queues(self) -> None:
        """Keep on the host each queue's identities and pointer (`_host_queues[name]` =
        [ids, ptr]), which `_enqueue` updates with the buffers: which queue slots are
        filled and which queries have a key of their identity are then chosen on the host,
        with no host sync in a step. Read from the buffers when built and after a state
        is loaded (once, outside the step)."""
        for name in ("image", "text"):
            ids, ptr = getattr(self, f"{name}_ids"), getattr(self, f"{name}_ptr")
            self._host_queues[name] = [ids.detach().cpu().numpy().copy(), int(ptr)]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._mirror_queues()

    # ---------------------------------------------------------------- momentum model
    def bind(self, model: nn.Module) -> None:
        """Keep a momentum copy of `model`'s text side (a ReIDModel: backbone + head of
        `instruct_editor`); binding the same backbone and head again keeps the copy. A
        momentum state restored from a checkpoint replaces the fresh copy's weights."""
        if self.momentum is None:
            return
        self._backbone = [model.backbone]  # a list: not a submodule; its phrasing draw (drawn_texts)
        live = self._momentum_model.live if self._momentum_model is not None else None
        parts = (getattr(model.backbone, "instruction", None), getattr(model.backbone, "instruction_cls", None),
                 getattr(model.head, "text_projection", None), getattr(model.head, "text_bn", None))
        if live is None or any(a is not b for a, b in zip((live.encoder, live.cls, live.projection, live.bn), parts)):
            side = TextSide(model)
            # the CLIP text tower's copy is one module with t2i_matching's (momentum.py)
            self._momentum_model = MomentumCopy(side, self.momentum, skip=side.image_side, shared=("encoder",),
                                                name=NAME)
        self._adopt_pending_momentum()

    @property
    def momentum_model(self) -> MomentumCopy | None:
        return self._momentum_model

    def _momentum_features(self, batch: Batch, texts: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        """(B, d) momentum features of the text rows (`texts`: a host mask; zeros
        elsewhere), after the update."""
        if self._momentum_model is None:
            raise RuntimeError(f"{NAME}: momentum is {self.momentum} but no model is bound; the trainer binds "
                               "it before the first training step, elsewhere call loss.bind(model) (or set momentum: null)")
        self._momentum_model.update(batch)
        out = like.new_zeros(like.shape)
        if texts.any():
            rows = np.flatnonzero(texts)
            drawn = getattr(self._backbone[0], "drawn_tokens", None) if self._backbone else None
            # the phrasing the live model read this step (backbone.py's draw), else the first
            captions = drawn(batch, rows) if drawn is not None else captions_of(batch, rows)
            feats = self._momentum_model(captions)
            if self.features not in feats:
                raise ValueError(f"{NAME}: with a momentum model `features` must be one of {', '.join(feats)} "
                                 f"(a text row's outputs), got '{self.features}'")
            out[device_index(rows, out.device)] = feats[self.features].float().to(out.dtype)
        return out

    def _rows(self, outputs: dict[str, torch.Tensor], batch: Batch, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Host bool masks of the task's image rows and text rows: the batch's
        `has_image` output (its host copy, `rows.host_image_rows`) and task names: no host sync."""
        has_image = host_image_rows(outputs, batch, n)
        tasks = batch.extras.get("task")
        mine = np.ones(n, dtype=bool) if tasks is None else np.asarray([str(t) == self.task for t in tasks], dtype=bool)
        return mine & has_image, mine & ~has_image

    def forward(self, outputs: dict[str, torch.Tensor], batch: Batch):
        x = read_output(outputs, self.features, NAME, "the `instruct_editor` head produces it")
        images, texts = self._rows(outputs, batch, len(x))
        local = {"x": x}
        if self.momentum is not None and self.training:
            local["m"] = self._momentum_features(batch, texts, x.detach())
        # every process's rows of the task, read from the records in a DDP step (checked
        # before any collective), else exchanged
        rows = whole_batch_rows(batch, host_image_rows(outputs, batch, len(x)), self.task)
        # under DDP: every process's rows (with their gradient), as one process's batch
        gathered, batch = D.gather_for_loss(local, batch, list(local))
        if rows is None:
            rows = D.gather_host({"images": images, "texts": texts})
        x = gathered["x"].float()
        zero = x.sum() * 0.0
        if not rows["images"].any() or not rows["texts"].any():
            return zero, {"temp": self.temp.detach()}
        # the rows chosen on the host, taken by index on the device: no host sync
        images, texts = (device_index(np.flatnonzero(rows[k]), x.device) for k in ("images", "texts"))
        pids = batch.pids.to(x.device, torch.long)
        v, t = F.normalize(x.index_select(0, images), dim=1), F.normalize(x.index_select(0, texts), dim=1)
        v_ids, t_ids = pids.index_select(0, images), pids.index_select(0, texts)
        if x.shape[1] != self.image_queue.shape[1]:
            raise ValueError(f"{NAME}: '{self.features}' has width {x.shape[1]}, the queues "
                             f"{self.image_queue.shape[1]}; set `dim`")
        temp = self.temp.clamp(0.001, 0.5)
        # the momentum model's caption features (keys, queue and soft targets); without it, t
        t_m = F.normalize(gathered["m"].float().index_select(0, texts), dim=1) if "m" in gathered else t.detach()
        # the identities of the rows on the host (the gathered batch's host copy): which
        # queue slots are keys and which queries have a key of their identity are chosen
        # there, the rows taken by index on the device (no host sync)
        host_pids = batch.host("pids")
        v_host, t_host = host_pids[rows["images"]], host_pids[rows["texts"]]
        with torch.no_grad():
            img_keys, img_ids, img_host = self._keys("image", v.detach(), v_ids, v_host)
            txt_keys, txt_ids, txt_host = self._keys("text", t_m, t_ids, t_host)
        soft = "m" in gathered and self.distill > 0
        # queries whose identity has no key on the other side (an unpaired row) leave that term
        parts = {}
        for name, q, q_m, q_ids, q_host, keys, k_ids, k_host in (
                ("i2t", v, v, v_ids, v_host, txt_keys, txt_ids, txt_host),
                ("t2i", t, t_m, t_ids, t_host, img_keys, img_ids, img_host),
                ("i2i", v, v, v_ids, v_host, img_keys, img_ids, img_host),
                ("t2t", t, t_m, t_ids, t_host, txt_keys, txt_ids, txt_host)):
            paired = np.isin(q_host, k_host)
            if not paired.any():
                parts[name] = zero
                continue
            at = device_index(np.flatnonzero(paired), q.device)
            parts[name] = contrastive(q.index_select(0, at), q_ids.index_select(0, at), keys, k_ids, temp,
                                      q_m.index_select(0, at).detach() if soft else None, self.distill)
        loss = sum(parts.values()) / 4
        if self.training:
            self._enqueue("image", v.detach(), v_ids, v_host)
            self._enqueue("text", t_m, t_ids, t_host)
        return loss, {**{k: p.detach() for k, p in parts.items()}, "temp": temp.detach()}

    def _keys(self, name: str, current: torch.Tensor, ids: torch.Tensor,
              host_ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """[current ; the filled part of the queue], their identities, and those on the host."""
        queue, q_ids = getattr(self, f"{name}_queue"), getattr(self, f"{name}_ids")
        mirror = self._host_queues[name][0]
        filled = np.flatnonzero(mirror >= 0)
        at = device_index(filled, queue.device)
        return (torch.cat([current, queue.index_select(0, at)]), torch.cat([ids, q_ids.index_select(0, at)]),
                np.concatenate([host_ids, mirror[filled]]))

    def _enqueue(self, name: str, feats: torch.Tensor, ids: torch.Tensor, host_ids: np.ndarray) -> None:
        if self.queue_size == 0:
            return
        # already every process's rows
        feats, ids, host_ids = feats[-self.queue_size:], ids[-self.queue_size:], host_ids[-self.queue_size:]
        queue, q_ids, ptr = getattr(self, f"{name}_queue"), getattr(self, f"{name}_ids"), getattr(self, f"{name}_ptr")
        mirror = self._host_queues[name]
        slots = (mirror[1] + np.arange(len(host_ids))) % self.queue_size
        at = device_index(slots, queue.device)
        queue[at] = feats.to(queue.dtype)
        q_ids[at] = ids
        mirror[0][slots] = host_ids
        mirror[1] = int((mirror[1] + len(host_ids)) % self.queue_size)
        ptr.fill_(mirror[1])

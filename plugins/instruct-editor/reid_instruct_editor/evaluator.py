"""The `instruct_reid` evaluator: Instruct-ReID++'s two evaluation settings (Fig. 2) and
mAP-tau (Fig. 4), beside the ordinary metrics.

- task-specific: each query is ranked against the gallery items of its own task (a
  gallery per task); keys "<task>/<metric>", and "<metric>" = mean over tasks;
- task-free: each query is ranked against the whole gallery (every task's items, each
  with its own instruction); keys "free/<task>/<metric>" and "free/<metric>".

Metrics per setting and task: CMC rank-k, mAP, mINP (the core's protocol and ranking
code, `core.evaluation.ranking`) and the same with mAP-tau's positives, "<metric>_tau"
(`map_tau.py`): an item of the query's identity whose instruction similarity to the
query's is below `tau` counts as a negative. The similarity never comes from the model
being evaluated (its own, trainable instruction encoder could move its own positives):

- `reference: labels`: ground truth — the records' extras "instruction_id" (the outfit a
  clothes template or attribute sentences show, the text of a fixed instruction, the
  caption): similarity 1 for equal ids, 0 otherwise;
- `reference: encoder`: the cosine of the model output `reference_output`
  ("reference_instruction_embedding"), which the `instruct_editor` backbone computes with
  a frozen copy of its instruction encoder as built (pretrained CLIP in the paper's
  setting), never trained;
- `auto` (default): labels when every query and gallery record has an instruction id
  (the `instruct` dataset gives every record one), the encoder otherwise.

The reference used is returned as the key "tau_reference_labels" (1 for labels, 0 for the
frozen encoder). A task without a valid query under tau (e.g. text-to-image in the
task-specific setting, whose gallery instruction is a fixed phrase, never a caption)
reports no "_tau" metrics, and the means over tasks skip it.

Clothes-changing: a gallery item of the query's identity in the query's clothes (records'
extras "clothes_id") is removed as well, LTCC / PRCC's clothes-changing setting
(`exclude_same_clothes`: auto = when every record of the task has a clothes id; true =
required; false = never).

ITM re-ranking (`itm_rerank: k`, 0 = off, the default; `itm_rerank.py`): each text-to-image
query (records' extras "text_query") ranks its k nearest gallery items by the ITM score of
the `t2i_matching` loss's fusion encoder and head (the authors' evaluation, k = 128)
ahead of the rest. The trainer binds the evaluated model and its matching loss at each
evaluation (`on_evaluate_start`; elsewhere `bind(model, matching)`); `core eval` of a run
folder or checkpoint restores the losses' state (core.restore), so its evaluation is
re-ranked as the run's was. A matching head that has not trained (the baseline
evaluation) or was not restored (a weights file, a checkpoint without the losses) re-ranks
nothing, with one warning line saying which, and the key "itm_reranked" says whether
(1 / 0). The gallery's ViT token states come from extraction (model output
"image_tokens"): N x T x D floats per split while evaluating.

The task of a query or gallery item is its record's extras "task" (the `instruct`
dataset sets it); records without one form the task "all". A test set holding one task
gives equal task-specific and task-free numbers; several `instruct` test sets, one per
task, are the paper's task-specific setting too (the trainer then averages them under
"mean/").
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from core.evaluation.distances import METRICS, distance_to
from core.evaluation.protocol import removed_by_protocol
from core.evaluation.ranking import DEFAULT_MEMORY_BUDGET, PerQueryMetrics, per_query_metrics, \
    query_gallery_labels, summarise, validate_ranks
from core.evaluation.reid import clothes_ids
from core.interfaces import Evaluator, FeatureSet, RankedGallery
from reid_instruct_editor.itm_rerank import SCORES, ITMScorer, rerank_top_k
from reid_instruct_editor.map_tau import per_query_metrics_tau
from reid_instruct_editor.tasks import CLOTHES_CHANGING

log = logging.getLogger(__name__)
NAME = "evaluator 'instruct_reid'"
SETTINGS = ("both", "task-specific", "task-free")
REFERENCES = ("auto", "labels", "encoder")
#: The record extra holding the ground-truth identity of an instruction's content.
INSTRUCTION_ID = "instruction_id"


class InstructReIDEvaluator(Evaluator):
    """Keys: `setting` (both, task-specific, task-free), `tau` (0.5, the paper's Fig. 4),
    `metric` (cosine, euclidean), `ranks`, `exclude_same_camera`, `reference` (auto,
    labels, encoder: where mAP-tau's instruction similarity comes from, module doc),
    `reference_output` (the frozen reference encoder's output), `exclude_same_clothes` (auto, true, false: the
    clothes-changing task's protocol, see the module doc), `chunk_size`, `memory_budget_mb`,
    `itm_rerank` (k of the text-to-image ITM re-ranking; 0: off), `itm_score` (logit, the
    authors'; probability), `itm_batch` (pairs per fusion forward)."""

    def __init__(self, setting: Literal["both", "task-specific", "task-free"] = "both", tau: float = 0.5,
                 metric: str = "cosine", ranks: list[int] = [1, 5, 10],  # noqa: B006 - YAML default
                 exclude_same_camera: bool = True,
                 reference: Literal["auto", "labels", "encoder"] = "auto",
                 reference_output: str = "reference_instruction_embedding",
                 chunk_size: int = 0, memory_budget_mb: int = DEFAULT_MEMORY_BUDGET // 2**20,
                 exclude_same_clothes: Literal["auto", True, False] = "auto", itm_rerank: int = 0,
                 itm_score: Literal["logit", "probability"] = "logit", itm_batch: int = 256) -> None:
        if setting not in SETTINGS:
            raise ValueError(f"{NAME}: setting must be one of {', '.join(SETTINGS)}, got {setting!r}")
        if metric not in METRICS:
            raise ValueError(f"{NAME}: unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")
        if not -1.0 <= float(tau) <= 1.0:
            raise ValueError(f"{NAME}: tau is a cosine similarity threshold in [-1, 1], got {tau}")
        try:
            self.ranks = validate_ranks(ranks)
        except ValueError as exc:
            raise ValueError(f"{NAME}: {exc}") from None
        self.setting, self.tau, self.metric = setting, float(tau), metric
        self.exclude_same_camera = bool(exclude_same_camera)
        if exclude_same_clothes not in ("auto", True, False):
            raise ValueError(f"{NAME}: exclude_same_clothes must be auto, true or false, got {exclude_same_clothes!r}")
        self.exclude_same_clothes = exclude_same_clothes
        if reference not in REFERENCES:
            raise ValueError(f"{NAME}: reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
        if reference_output == "instruction_embedding":
            raise ValueError(f"{NAME}: reference_output 'instruction_embedding' is the evaluated model's own "
                             "(trainable) instruction encoder; use 'reference_instruction_embedding' (a frozen copy) "
                             "or reference: labels")
        self.reference, self.reference_output = reference, reference_output
        self.outputs = (reference_output,)  # extraction keeps them in FeatureSet.extras
        self.chunk_size, self.memory_budget = int(chunk_size), int(memory_budget_mb) * 2**20
        if itm_rerank is None or isinstance(itm_rerank, bool) or int(itm_rerank) < 0:
            raise ValueError(f"{NAME}: itm_rerank is the number of top items re-scored by the ITM head "
                             f"(0: off; the authors' 128), got {itm_rerank!r}")
        if itm_score not in SCORES:
            raise ValueError(f"{NAME}: itm_score must be one of {', '.join(SCORES)}, got {itm_score!r}")
        self.itm_rerank, self.itm_score, self.itm_batch = int(itm_rerank), itm_score, int(itm_batch)
        self._scorer: ITMScorer | None = None
        self._skipped = False  # bound by the trainer to a matching head that never trained
        if self.itm_rerank:
            self.outputs = (reference_output, "image_tokens")

    # ------------------------------------------------------------- ITM re-ranking
    def bind(self, model, matching) -> None:
        """The model whose text encoder reads the caption queries and the `t2i_matching`
        loss whose fusion encoder and ITM head score (caption, image) pairs."""
        self._skipped = False
        if not hasattr(matching, "match_logits"):
            raise ValueError(f"{NAME}: itm_rerank needs a `t2i_matching` loss (its fusion encoder and ITM head); "
                             f"got {type(matching).__name__}")
        self._scorer = ITMScorer(model, matching, self.itm_score, self.itm_batch)

    def on_evaluate_start(self, trainer, **_) -> None:
        """Bind the evaluated model (the EMA copy when enabled) and its matching loss."""
        if not self.itm_rerank:
            return
        model = trainer.model

        def matching_of(net):
            return [m for m in getattr(net, "losses", []) if hasattr(m, "match_logits")]

        matching = matching_of(model)
        if not matching:
            raise ValueError(f"{NAME}: itm_rerank is {self.itm_rerank} but the pipeline has no `t2i_matching` loss "
                             "(whose ITM head re-scores the top-k); add it or set itm_rerank: 0")
        trained = (matching_of(getattr(trainer, "net", None)) or matching)[0]  # the training copy counts steps
        self.bind(model, matching[0])
        if int(getattr(trained, "trained_steps", 1)) == 0:
            # the baseline evaluation before training, or losses never restored (a weights
            # file holds the model only): an untrained ITM head would only shuffle the top-k
            if getattr(trainer, "losses_restored", None) is False:  # core eval / tools (core.restore)
                log.warning(f"{NAME}: itm_rerank needs the trained `t2i_matching` loss's state (fusion encoder, "
                            "ITM head), which this checkpoint or weights file does not hold: evaluate the run "
                            "folder or its checkpoints/last.pt; this evaluation is not re-ranked (itm_reranked: 0)")
            else:
                log.warning(f"{NAME}: the `t2i_matching` loss has not trained (no step yet): this evaluation "
                            "is not re-ranked (itm_reranked: 0)")
            self._scorer = None
            self._skipped = True

    def evaluate(self, query: FeatureSet, gallery: FeatureSet) -> dict[str, float]:
        q_instr, g_instr, by_labels = self._references(query, gallery)
        out: dict[str, float] = {"tau_reference_labels": float(by_labels)}
        if self.itm_rerank:  # 1: text-to-image queries re-ranked by the ITM head; 0: not (head untrained)
            out["itm_reranked"] = 0.0 if self._skipped else 1.0
        settings = [s for s in ("task-specific", "task-free") if self.setting in (s, "both")]
        with torch.no_grad():
            for setting in settings:
                prefix = "free/" if setting == "task-free" else ""
                per_task: dict[str, dict[str, float]] = {}
                for task, q_rows, g_rows, groups in self._task_blocks(query, gallery, setting):
                    per_task[task] = self._evaluate_rows(query, gallery, q_rows, g_rows, q_instr, g_instr, groups,
                                                         by_labels)
                for task, metrics in per_task.items():
                    if len(per_task) > 1 or task != "all":
                        out.update({f"{prefix}{task}/{k}": v for k, v in metrics.items()})
                keys = set().union(*(m.keys() for m in per_task.values()))
                for key in sorted(keys):
                    values = [m[key] for m in per_task.values() if key in m]
                    out[f"{prefix}{key}"] = float(np.sum(values) if key.startswith("num_valid") else np.mean(values))
        return out

    def _task_blocks(self, query: FeatureSet, gallery: FeatureSet,
                     setting: str) -> list[tuple[str, np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
        """(task, query rows, gallery rows, clothes groups) of each task in `setting`: the
        task's queries against its own gallery items (task-specific) or every item
        (task-free); the clothes-changing task's with its clothes ids (`_clothes`).
        `evaluate` ranks these blocks and `ranked_gallery` says the same to the tools."""
        q_tasks, g_tasks = _tasks(query), _tasks(gallery)
        blocks = []
        for task in sorted(set(q_tasks)):
            q_rows = np.flatnonzero(q_tasks == task)
            g_rows = np.flatnonzero(g_tasks == task) if setting == "task-specific" else np.arange(len(gallery))
            groups = self._clothes(query, gallery, q_rows, g_rows) if task == CLOTHES_CHANGING else {}
            blocks.append((task, q_rows, g_rows, groups))
        return blocks

    def ranked_gallery(self, query: FeatureSet, gallery: FeatureSet) -> RankedGallery:
        """What `evaluate` ranks in its headline setting (task-specific unless `setting:
        task-free`), from the same `_task_blocks`: each query's task gallery (or the whole
        gallery) less its identity in its camera and, for clothes-changing queries with
        clothes ids, in its clothes. The key "mAP" ("free/mAP") is the mean over tasks of
        each task's mean AP: `groups` are the query tasks."""
        setting = "task-free" if self.setting == "task-free" else "task-specific"
        blocks = self._task_blocks(query, gallery, setting)
        q_pids, g_pids, q_cams, g_cams, _, _ = query_gallery_labels(query.pids, gallery.pids, query.camids,
                                                                    gallery.camids)
        block_of = np.zeros(len(query), dtype=np.int64)
        position = np.zeros(len(query), dtype=np.int64)  # a query's row within its block (its clothes id's)
        for b, (_, q_rows, _, _) in enumerate(blocks):
            block_of[q_rows], position[q_rows] = b, np.arange(len(q_rows))

        def ranked(rows: np.ndarray) -> np.ndarray:
            rows = np.asarray(rows, dtype=np.int64)
            out = np.zeros((len(rows), len(gallery)), dtype=bool)
            for b in np.unique(block_of[rows]):
                at = np.flatnonzero(block_of[rows] == b)
                _, _, g_rows, groups = blocks[b]
                picked = rows[at]
                out[np.ix_(at, g_rows)] = ~removed_by_protocol(
                    q_pids[picked], q_cams[picked], g_pids[g_rows], g_cams[g_rows], self.exclude_same_camera,
                    groups["q_groups"][position[picked]] if groups else None, groups.get("g_groups"))
            return out

        clothes = any(groups for _, _, _, groups in blocks)
        rule = ("each query's task gallery (records' extras 'task')" if setting == "task-specific"
                else "the whole gallery (task-free)")
        if self.exclude_same_camera:
            rule += " less its identity in its camera"
        if clothes:
            rule += "; clothes-changing queries also less their identity in their clothes"
        differs = (f"evaluation re-ranks each text-to-image query's top {self.itm_rerank} by the ITM head "
                   "(itm_rerank)" if self.itm_rerank else "")
        return RankedGallery(ranked=ranked, key="free/mAP" if setting == "task-free" else "mAP",
                             groups=_tasks(query), group_name="tasks", rule=rule, differs=differs)

    def _references(self, query: FeatureSet, gallery: FeatureSet) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(query rows, gallery rows, by labels): integer codes of the instruction ids
        (labels: similarity 1 where codes are equal) or the frozen reference encoder's
        normalised embeddings (similarity: their dot product)."""
        q_ids, g_ids = _instruction_ids(query), _instruction_ids(gallery)
        labels = q_ids is not None and g_ids is not None
        if self.reference == "labels" and not labels:
            which = "query" if q_ids is None else "gallery"
            raise ValueError(f"{NAME}: reference: labels, but a {which} record has no extras '{INSTRUCTION_ID}' "
                             "(the `instruct` dataset sets it; a manifest's `instruction_id` column)")
        if labels and self.reference != "encoder":
            codes: dict[str, int] = {}
            q_codes = torch.as_tensor([codes.setdefault(i, len(codes)) for i in q_ids], dtype=torch.long)
            g_codes = torch.as_tensor([codes.setdefault(i, len(codes)) for i in g_ids], dtype=torch.long)
            return q_codes, g_codes, True
        q = F.normalize(self._encoded(query, "query").float(), dim=1)
        return q, F.normalize(self._encoded(gallery, "gallery").float(), dim=1).to(q.device), False

    def _encoded(self, features: FeatureSet, which: str) -> torch.Tensor:
        value = features.extras.get(self.reference_output)
        if value is None:
            raise KeyError(f"{NAME}: the {which} features lack the model output '{self.reference_output}' (the frozen "
                           f"reference encoder's instruction embeddings; the `instruct_editor` backbone produces it) "
                           f"and not every record has an '{INSTRUCTION_ID}' for reference: labels")
        if value.shape[0] != len(features):
            raise ValueError(f"{NAME}: {which} has {len(features)} embeddings but {value.shape[0]} instruction rows")
        return value

    def _clothes(self, query: FeatureSet, gallery: FeatureSet, q_rows: np.ndarray,
                 g_rows: np.ndarray) -> dict[str, np.ndarray]:
        """q_groups / g_groups (clothes ids) for the clothes-changing task's ranking, or {}."""
        if self.exclude_same_clothes is False:
            return {}
        try:
            if not query.records or not gallery.records:
                raise ValueError(f"{NAME}: exclude_same_clothes: the features carry no records (extras 'clothes_id')")
            return {"q_groups": clothes_ids([query.records[i] for i in q_rows], "clothes-changing query"),
                    "g_groups": clothes_ids([gallery.records[i] for i in g_rows], "clothes-changing gallery")}
        except ValueError:
            if self.exclude_same_clothes == "auto":  # not every record has a clothes id: no removal
                return {}
            raise

    def _evaluate_rows(self, query: FeatureSet, gallery: FeatureSet, q_rows: np.ndarray, g_rows: np.ndarray,
                       q_instr: torch.Tensor, g_instr: torch.Tensor,
                       groups: dict[str, np.ndarray], by_labels: bool = False) -> dict[str, float]:
        """Ordinary and tau metrics of queries `q_rows` against gallery items `g_rows`."""
        q_emb = query.embeddings.detach()[torch.as_tensor(q_rows, device=query.embeddings.device)]
        g_emb = gallery.embeddings.detach()[torch.as_tensor(g_rows, device=gallery.embeddings.device)].to(q_emb.device)
        to_gallery = distance_to(g_emb, self.metric)
        q_pids, g_pids = query.pids[q_rows], gallery.pids[g_rows]
        q_cams, g_cams = query.camids[q_rows], gallery.camids[g_rows]
        qi_all, gi_all = q_instr[torch.as_tensor(q_rows)], g_instr[torch.as_tensor(g_rows)]

        rerank = self._reranker(query, gallery, q_rows, g_rows)

        def rows_of(indices: np.ndarray):
            picked = q_emb[torch.as_tensor(indices, device=q_emb.device)]
            if rerank is None:
                return lambda start, stop: to_gallery(picked[start:stop])
            return lambda start, stop: rerank(to_gallery(picked[start:stop]), np.asarray(indices)[start:stop])

        def similarity(qi: np.ndarray, gi: np.ndarray) -> np.ndarray:
            a, b = qi_all[torch.as_tensor(qi)], gi_all[torch.as_tensor(gi)]
            return (a == b).double().cpu().numpy() if by_labels else (a * b).sum(1).cpu().numpy()

        common = dict(exclude_same_camera=self.exclude_same_camera, chunk_size=self.chunk_size,
                      memory_budget=self.memory_budget, **groups)
        metrics: dict[str, float] = {}
        plain = per_query_metrics(rows_of(np.arange(len(q_rows))), q_pids, g_pids, q_cams, g_cams, **common)
        metrics.update(_summary(plain, self.ranks, ""))
        tau = per_query_metrics_tau(rows_of, q_pids, g_pids, q_cams, g_cams, similarity, self.tau, **common)
        metrics.update(_summary(tau, self.ranks, "_tau"))
        return metrics


    def _reranker(self, query: FeatureSet, gallery: FeatureSet, q_rows: np.ndarray, g_rows: np.ndarray):
        """None without re-ranking; else (distances (c, m), positions in q_rows (c,)) ->
        distances with each text query's top-k re-ranked by the ITM score (itm_rerank.py).
        Scores are kept per query: the ordinary and the tau metrics rank the same rows."""
        if not self.itm_rerank or self._skipped or not query.records:
            return None
        texts = np.asarray([bool(query.records[int(i)].extras.get("text_query", False)) for i in q_rows])
        if not texts.any():
            return None
        if self._scorer is None:
            raise ValueError(f"{NAME}: itm_rerank is {self.itm_rerank} but no matching head is bound; the trainer "
                             "binds it at each evaluation, elsewhere call evaluator.bind(model, matching_loss)")
        tokens = gallery.extras.get("image_tokens")
        if tokens is None or tokens.dim() != 3 or tokens.shape[0] != len(gallery):
            raise KeyError(f"{NAME}: itm_rerank needs the gallery's model output 'image_tokens' (N, T, D), one row "
                           "per item (the `instruct_editor` backbone gives it)")
        g_tokens = tokens[torch.as_tensor(g_rows, device=tokens.device)]
        scorer, cache = self._scorer, {}

        def score(positions: np.ndarray, top: torch.Tensor) -> torch.Tensor:
            todo = [j for j, p in enumerate(positions) if int(p) not in cache or
                    not torch.equal(cache[int(p)][0], top[j])]
            if todo:
                device = next(scorer.matching.parameters()).device
                captions = [_caption(query.records[int(q_rows[positions[j]])]) for j in todo]
                text, valid = scorer.text_tokens(captions, device)
                s = scorer(text, valid, g_tokens, top[todo].to(device)).to(top.device)
                for j, row in zip(todo, s):
                    cache[int(positions[j])] = (top[j].clone(), row)
            return torch.stack([cache[int(p)][1] for p in positions])

        def apply(distances: torch.Tensor, positions: np.ndarray) -> torch.Tensor:
            mine = texts[positions]
            if not mine.any():
                return distances
            at = torch.as_tensor(np.flatnonzero(mine), device=distances.device)
            sub = rerank_top_k(distances[at], self.itm_rerank,
                               lambda rows, top: score(positions[mine][rows.cpu().numpy()], top))
            out = distances.clone()
            out[at] = sub
            return out

        return apply


def _caption(record) -> str:
    value = record.extras.get("instruction")
    value = value[0] if isinstance(value, (tuple, list)) and value else value
    if not isinstance(value, str):
        raise ValueError(f"{NAME}: text-to-image query {record.path or ''} (pid {record.pid}) has no caption in "
                         "extras 'instruction'")
    return value


def _summary(per_query: PerQueryMetrics, ranks: list[int], suffix: str) -> dict[str, float]:
    """The core's summary with `suffix` on each key; {} when no query is valid (only the
    count, for the ordinary metrics, so a set without positives is visible)."""
    if not per_query.valid.any():
        return {} if suffix else {"num_valid_queries": 0}
    return {f"{k}{suffix}": float(v) for k, v in summarise(per_query, ranks).items()}


def _instruction_ids(features: FeatureSet) -> list[str] | None:
    """The records' instruction ids (as strings), or None when a record lacks one."""
    if not features.records or len(features.records) != len(features):
        return None
    ids = [r.extras.get(INSTRUCTION_ID) for r in features.records]
    return None if any(i is None for i in ids) else [str(i) for i in ids]


def _tasks(features: FeatureSet) -> np.ndarray:
    if not features.records:
        return np.full(len(features), "all", dtype=object)
    return np.asarray([str(r.extras.get("task", "all")) for r in features.records], dtype=object)

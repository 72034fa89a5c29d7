"""The built-in `reid` evaluator: retrieval under the standard ReID protocol, exact or
with faiss, optionally after k-reciprocal re-ranking."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from core.evaluation.distances import METRICS, blocked_rows, distance_to
from core.evaluation.ranking import (DEFAULT_MEMORY_BUDGET, NoValidQuery, _codes, _per_category, _per_category_with,
                                    rank_metrics, summarise, validate_ranks)
from core.evaluation.search import SEARCHES
from core.interfaces import Evaluator, FeatureSet, RankedGallery
from core.records import Record


class ReIDEvaluator(Evaluator):
    """CMC (rank-k), mAP and mINP of query against gallery (Zheng et al. 2015; as
    torchreid / fast-reid), plus the same per query category when the query set has
    more than one ("person/mAP", ...).

    Distances are computed block by block (2^23 entries per matrix product) on the device
    the embeddings live on (memory-mapped embeddings: the GPU they were computed on,
    `search_device`) and ranked chunk by chunk, so the (Q, G) matrix never exists
    whole; see `core.evaluation.ranking` for the protocol, the tie rule (stable by
    gallery index) and the memory bound.

    Args:
        metric: "cosine" (1 - cosine similarity) or "euclidean".
        ranks: the CMC ranks to report, integers >= 1.
        exclude_same_camera: drop gallery items with the query's identity and camera
            (the standard protocol); false for single-camera or cross-modality sets
            where that filter would drop every positive.
        exclude_same_clothes: also drop gallery items with the query's identity and
            clothes (records' extras "clothes_id"): the clothes-changing setting of LTCC /
            PRCC, where only the person in other clothes counts.
        per_category: also report the metrics per query category.
        chunk_size: queries per chunk; 0 picks it from `memory_budget_mb` (and cache).
        memory_budget_mb: bound on the temporaries of the chunks ranked at once, in MiB.
        ranking_threads: chunks ranked at once (0: two when torch has two or more
            threads); the next chunk's distances are computed while one is ranked.
        search: "exact" (torch), "faiss_flat" (the same exact protocol on faiss's
            distance kernels) or "faiss_ivf" (approximate top-`topk` search for large
            galleries; reports "mAP@<topk>" and CMC, no mINP; see
            `core.evaluation.search`). faiss is imported only for the faiss searches.
        nlist: inverted lists of "faiss_ivf" / "faiss_ivfpq"; 0 = about 4 sqrt(G) for
            faiss_ivf (`search.ivf_search`), sqrt(G) for faiss_ivfpq (`search.build_ivfpq`).
        nprobe: lists visited per query by "faiss_ivf" / "faiss_ivfpq"; null: 16 for
            faiss_ivf, half the lists for faiss_ivfpq (`search.IVFPQ_PROBE_FRACTION`).
        topk: length of the retrieved list of "faiss_ivf".
            "blocked" (issue 24): the exact protocol out of core, query blocks of
            `chunk_size` (0: 1024) x gallery blocks of `gallery_block` rows, for galleries
            of millions, e.g. memory-mapped float16 (`core.evaluation.blocked`); the same
            metrics as "exact". "faiss_ivfpq": IVF with product-quantised codes (`nlist`,
            `nprobe`, `pq_m`, `pq_bits`) filled block by block; like "faiss_ivf" it
            reports CMC and mAP@<topk>, plus "recall@<topk>" against the exact top k.
        gallery_block: gallery rows per block of "blocked" (and per add of "faiss_ivfpq").
            Features the trainer keeps on disk (`trainer.eval_features`) are searched as
            "blocked" under search "exact" or "faiss_flat" (the same metrics).
        pq_m, pq_bits: sub-quantisers (0: the largest divisor of D <= D / 2) and bits each.
        refine: "faiss_ivfpq" asks the index for `refine` x topk candidates and re-ranks
            them by exact distances read from the gallery (`search.refine_exact`); 0: off;
            null: 4 (`search.IVFPQ_REFINE`).
        recall_queries: queries (a seeded sample) whose approximate top-k lists are checked
            against exact search for "recall@<topk>"; null: 1000 for faiss_ivfpq, none for
            faiss_ivf (0: none).
        rerank: k-reciprocal re-ranking (Zhong et al. 2017) before ranking; needs the
            (Q + G)^2 neighbour search, so at most 40,000 items; search "exact" only.
        k1, k2, lambda_value: the re-ranking's parameters (paper defaults 20, 6, 0.3;
            MUVA reports 50, 15, 0.3).
    """

    out_of_core = True  # memory-mapped features are searched block by block (`_on_disk`)

    def __init__(self, metric: str = "cosine", ranks: list[int] = [1, 5, 10],  # noqa: B006 - YAML default, never mutated
                 exclude_same_camera: bool = True, per_category: bool = True, exclude_same_clothes: bool = False,
                 chunk_size: int = 0, memory_budget_mb: int = DEFAULT_MEMORY_BUDGET // 2**20,
                 search: str = "exact", nlist: int = 0, nprobe: int | None = None, topk: int = 1000,
                 rerank: bool = False, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                 ranking_threads: int = 0, gallery_block: int = 65536, pq_m: int = 0, pq_bits: int = 8,
                 recall_queries: int | None = None, refine: int | None = None):
        if metric not in METRICS:
            raise ValueError(f"evaluator 'reid': unknown metric {metric!r}; valid metrics: "
                             f"{', '.join(METRICS)}")
        if search not in SEARCHES:
            raise ValueError(f"evaluator 'reid': unknown search {search!r}; valid searches: "
                             f"{', '.join(SEARCHES)}")
        if exclude_same_clothes and search in ("faiss_ivf", "faiss_ivfpq"):
            raise ValueError("evaluator 'reid': exclude_same_clothes needs an exact search (exact, faiss_flat or "
                             f"blocked), not {search}")
        if rerank and search != "exact":
            raise ValueError(f"evaluator 'reid': rerank: true needs search: exact (re-ranking builds its "
                             f"own exact neighbour lists), got search {search!r}")
        for key, value, least in (("chunk_size", chunk_size, 0), ("memory_budget_mb", memory_budget_mb, 1),
                                  ("nlist", nlist, 0), ("nprobe", 1 if nprobe is None else nprobe, 1),
                                  ("topk", topk, 1),
                                  ("k1", k1, 1), ("k2", k2, 1), ("ranking_threads", ranking_threads, 0),
                                  ("gallery_block", gallery_block, 1), ("pq_m", pq_m, 0), ("pq_bits", pq_bits, 1),
                                  ("refine", 0 if refine is None else refine, 0),
                                  ("recall_queries", 0 if recall_queries is None else recall_queries, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"evaluator 'reid': {key} must be an integer >= {least}"
                                 f"{' (0 = automatic)' if key in ('chunk_size', 'nlist', 'ranking_threads') else ''}, got {value!r}")
        if not 0.0 <= float(lambda_value) <= 1.0:
            raise ValueError(f"evaluator 'reid': lambda_value must be in [0, 1], got {lambda_value!r}")
        try:
            self.ranks = validate_ranks(ranks)
        except ValueError as exc:
            raise ValueError(f"evaluator 'reid': {exc}") from None
        self.metric = metric
        self.exclude_same_camera = bool(exclude_same_camera)
        self.exclude_same_clothes = bool(exclude_same_clothes)
        self.per_category = bool(per_category)
        self.chunk_size = chunk_size
        self.ranking_threads = ranking_threads
        self.memory_budget = memory_budget_mb * 2**20
        self.search, self.nlist, self.nprobe, self.topk = search, nlist, nprobe, topk
        self.rerank, self.k1, self.k2, self.lambda_value = bool(rerank), k1, k2, float(lambda_value)
        self.gallery_block, self.pq_m, self.pq_bits = gallery_block, pq_m, pq_bits
        self.refine = refine
        self.recall_queries = (1000 if search == "faiss_ivfpq" else 0) if recall_queries is None else recall_queries

    def evaluate(self, query: FeatureSet, gallery: FeatureSet) -> dict[str, float]:
        """Metrics of `query` against `gallery` (percentages, plus num_valid_queries)."""
        _check_feature_set(query, "query")
        _check_feature_set(gallery, "gallery")
        categories, names = None, None
        if self.per_category and len(np.unique(query.categories)) > 1:
            categories, names = query.categories, query.category_names
        groups = self._groups(query, gallery)
        try:
            return self._evaluate(query, gallery, categories, names, groups)
        except NoValidQuery:
            raise NoValidQuery(self.no_valid_query(query, gallery)) from None

    def _evaluate(self, query: FeatureSet, gallery: FeatureSet, categories, names,
                  groups: dict) -> dict[str, float]:
        with torch.no_grad():
            if self.search in ("faiss_ivf", "faiss_ivfpq"):
                return self._evaluate_top_k(query, gallery, categories, names)
            if self.search == "blocked" or self._on_disk(query, gallery):
                return self._evaluate_blocked(query, gallery, categories, names, groups)
            return rank_metrics(self._distance_rows(query, gallery), query.pids, gallery.pids,
                                query.camids, gallery.camids, ranks=self.ranks,
                                exclude_same_camera=self.exclude_same_camera, chunk_size=self.chunk_size,
                                memory_budget=self.memory_budget, q_categories=categories,
                                category_names=names, threads=self.ranking_threads, **groups)

    def _groups(self, query: FeatureSet, gallery: FeatureSet) -> dict[str, np.ndarray]:
        """The clothes ids (q_groups, g_groups) under `exclude_same_clothes`, else {}."""
        if not self.exclude_same_clothes:
            return {}
        return dict(q_groups=clothes_ids(_records(query, "query"), "query"),
                    g_groups=clothes_ids(_records(gallery, "gallery"), "gallery"))

    def ranked_gallery(self, query: FeatureSet, gallery: FeatureSet) -> RankedGallery:
        """The standard protocol with this evaluator's camera and clothes rules (the groups
        `evaluate` uses); `differs` says when `evaluate` ranks other distances (re-ranking)
        or reports another number (faiss IVF's mAP@topk)."""
        from core.evaluation.protocol import standard_ranked_gallery

        differs = ""
        if self.rerank:
            differs = "evaluation ranks k-reciprocal re-ranked distances (rerank: true)"
        elif self.search in ("faiss_ivf", "faiss_ivfpq"):
            differs = f"evaluation reports mAP@{self.topk} of an approximate search ({self.search})"
        return standard_ranked_gallery(query, gallery, self.exclude_same_camera, differs=differs,
                                       **self._groups(query, gallery))

    def _on_disk(self, query: FeatureSet, gallery: FeatureSet) -> bool:
        """Whether a set is memory-mapped (`FeatureSet.embeddings_file`, the trainer's
        `eval_features`): the exact searches then run out of core, as `search: blocked`
        (the same metrics) instead of reading the features whole."""
        if query.embeddings_file is None and gallery.embeddings_file is None:
            return False
        if self.rerank:
            raise ValueError("evaluator 'reid': rerank: true needs every distance in memory, but the features are "
                             "on disk (trainer.eval_features); set trainer.eval_features: memory or rerank: false")
        return True

    def _distance_rows(self, query: FeatureSet, gallery: FeatureSet):
        """The (Q, G) distances, as a matrix (re-ranking) or chunk by chunk."""
        q_emb = query.embeddings.detach()
        g_emb = gallery.embeddings.detach().to(q_emb.device)
        if self.rerank:
            from core.evaluation.reranking import k_reciprocal_distances

            return k_reciprocal_distances(q_emb, g_emb, self.metric, self.k1, self.k2, self.lambda_value)
        if self.search == "faiss_flat":
            from core.evaluation.search import faiss_distance_rows

            return faiss_distance_rows(q_emb, g_emb, self.metric)
        return blocked_rows(distance_to(g_emb, self.metric), q_emb, len(g_emb))

    def _evaluate_blocked(self, query: FeatureSet, gallery: FeatureSet, categories, names,
                          groups: dict) -> dict[str, float]:
        """The exact protocol, query blocks x gallery blocks (`core.evaluation.blocked`);
        `groups`: the clothes ids when excluding same clothes."""
        from core.evaluation.blocked import DEFAULT_QUERY_BLOCK, blocked_per_query_metrics

        per_query = blocked_per_query_metrics(
            query.embeddings.detach(), gallery.embeddings.detach(), self.metric, query.pids, gallery.pids,
            query.camids, gallery.camids, self.exclude_same_camera, self.chunk_size or DEFAULT_QUERY_BLOCK,
            self.gallery_block, search_device(query), **groups)
        metrics = summarise(per_query, self.ranks)
        if categories is not None:
            metrics.update(_per_category(per_query, self.ranks, categories, names))
        return metrics

    def _evaluate_top_k(self, query: FeatureSet, gallery: FeatureSet, categories, names) -> dict[str, float]:
        """CMC and mAP@topk from faiss IVF's (or IVF-PQ's) retrieved lists, and recall@topk
        against exact search (`core.evaluation.search`)."""
        from core.evaluation.search import ivf_search, ivfpq_search, kept_positives, summarise_topk, topk_per_query

        q_pids, g_pids = _codes(query.pids, gallery.pids, "pids")
        q_cams, g_cams = _codes(query.camids, gallery.camids, "camids")
        removed = (kept_positives(q_pids, g_pids, q_cams, g_cams, exclude_same_camera=False)
                   - kept_positives(q_pids, g_pids, q_cams, g_cams, self.exclude_same_camera))
        k = self.topk + int(removed.max(initial=0))  # so that topk kept items remain
        if self.search == "faiss_ivf":
            retrieved = ivf_search(query.embeddings, gallery.embeddings, self.metric, k, self.nlist,
                                   16 if self.nprobe is None else self.nprobe)
        else:
            from core.evaluation.search import IVFPQ_REFINE

            retrieved = ivfpq_search(query.embeddings, gallery.embeddings, self.metric, k, self.nlist,
                                     self.nprobe or 0, self.pq_m, self.pq_bits, self.gallery_block,
                                     refine=IVFPQ_REFINE if self.refine is None else self.refine)
        per_query = topk_per_query(retrieved, q_pids, g_pids, q_cams, g_cams, self.topk, self.exclude_same_camera)
        summary = lambda mask=None: summarise_topk(*per_query, self.ranks, self.topk, mask)  # noqa: E731
        metrics = summary()
        if self.recall_queries:
            metrics[f"recall@{self.topk}"] = self._recall(query, gallery, retrieved)
        if categories is not None:
            metrics.update(_per_category_with(summary, per_query[0], categories, names))
        return metrics


    def _recall(self, query: FeatureSet, gallery: FeatureSet, retrieved: np.ndarray) -> float:
        """recall@topk of the retrieved lists on a seeded sample of queries (search module doc)."""
        from core.evaluation.blocked import blocked_topk
        from core.evaluation.search import recall_at_k

        n = len(query)
        sample = np.sort(np.random.default_rng(0).choice(n, min(self.recall_queries, n), replace=False))
        exact = blocked_topk(query.embeddings.detach()[torch.from_numpy(sample)], gallery.embeddings.detach(),
                             self.metric, self.topk, gallery_block=self.gallery_block,
                             device=search_device(query))[1]
        return recall_at_k(retrieved[sample], exact)


    def no_valid_query(self, query: FeatureSet, gallery: FeatureSet) -> str:
        """The one line for a test set where no query has a match left: which images (the
        records' domains and folders: the test set's dataset and root), what a valid query
        is under this evaluator's rules, and where the cameras came from."""
        rule = "its identity"
        if self.exclude_same_camera:
            rule += " taken by another camera (exclude_same_camera: true)"
        if self.exclude_same_clothes:
            rule += " in other clothes (exclude_same_clothes: true)"
        fix = ("check the query and gallery pids/camids, or set the evaluator's exclude_same_camera: false for "
               "single-camera data" if self.exclude_same_camera else
               "check that the query and gallery share identities (pids)")
        return (f"no valid query in the query set{where_from(query, gallery)}: none of its {len(query)} queries has "
                f"a gallery item of its identity to find; a query is valid when the gallery holds an image of "
                f"{rule}; {fix}{camera_source(query)}")


def where_from(query: FeatureSet, gallery: FeatureSet) -> str:
    """' (query images of 'market1501' under /data/market/query; gallery images under
    /data/market/bounding_box_test)': the test set's datasets and folders, for errors; read
    from the columns (a test set of millions: no Record per row)."""
    from core.data.columns import as_columns

    if not len(query.records):
        return ""
    cols = as_columns(query.records)
    codes, names = cols.codes("domain")
    domains = sorted(names[int(c)] for c in np.unique(codes))
    text = f" (query images of {', '.join(repr(d) for d in domains[:3])}{', ...' if len(domains) > 3 else ''}"
    for which, features in (("query", query), ("gallery", gallery)):
        folder = _common_folder(features.records)
        if folder:
            text += f"; gallery images under {folder}" if which == "gallery" else f" under {folder}"
    return text + ")"


def _common_folder(records) -> str:
    """The folder every record's file lies in or below ('' when none has a path): the
    common folder of the lexicographically first and last paths, which is every path's."""
    from core.data.columns import as_columns

    if not len(records):
        return ""
    cols = as_columns(records)
    paths = cols.path.to_arrow()
    if cols.path_valid is not None:
        paths = paths.filter(np.asarray(cols.path_valid, dtype=bool))
    import pyarrow.compute as pc

    paths = paths.filter(pc.greater(pc.binary_length(paths), 0))
    if not len(paths):
        return ""
    ends = pc.min_max(paths)
    first, last = ends["min"].as_py(), ends["max"].as_py()
    try:
        return os.path.dirname(first) if first == last else os.path.commonpath([first, last])
    except ValueError:  # absolute and relative paths mixed
        return ""


def camera_source(query: FeatureSet) -> str:
    """For the 'no valid query' error: for images read from files, where their cameras came
    from, with one file and the camid read from it."""
    records = query.records
    if not len(records) or records[0].path is None:  # rendered in memory: no file name to read a camera from
        return ""
    first = records[0]
    return ("; cameras come from the image file names in a folder tree (the `c<N>` token, as written) or a "
            "Market-style layout (c1 is camid 0), and from the camid column in a manifest: "
            f"{first.path} has camid {first.camid}")


def search_device(query: FeatureSet) -> torch.device:
    """Where `search: blocked` computes: the embeddings' own device when they are on a GPU,
    else the GPU they were computed on (`FeatureSet.compute_device`: the trainer's on-disk
    features are a host memory map, read block by block and copied there) when this
    process can use it, else the CPU."""
    if query.embeddings.device.type != "cpu":
        return query.embeddings.device
    device = torch.device(query.compute_device or "cpu")
    return device if device.type != "cpu" and _usable(device) else torch.device("cpu")


def _usable(device: torch.device) -> bool:
    """Whether this process can put data on `device` (a GPU of another machine or process
    setup, or one CUDA cannot reach here, is not; nor is torch's data-less `meta`)."""
    try:
        return not torch.empty(1, device=device).is_meta
    except (RuntimeError, AssertionError):  # no such device, or torch built without its backend
        return False


def _check_feature_set(features: FeatureSet, which: str) -> None:
    """Lengths agree, so a mismatch is reported by name and not as an index error."""
    if features.embeddings.dim() != 2:
        raise ValueError(f"{which} embeddings must be 2-D (N, D), got shape "
                         f"{tuple(features.embeddings.shape)}")
    n = len(features)
    for field in ("pids", "camids"):
        if len(getattr(features, field)) != n:
            raise ValueError(f"{which} has {n} embeddings but {len(getattr(features, field))} {field}")
    if len(features.categories) not in (0, n):
        raise ValueError(f"{which} has {n} embeddings but {len(features.categories)} categories")


def clothes_ids(records: Sequence[Record], which: str) -> np.ndarray:
    """The extras "clothes_id" of `records` (the query or gallery records of a feature
    set, in embedding order); the error names the first record without one."""
    ids = []
    for i, record in enumerate(records):
        value = record.extras.get("clothes_id")
        if value is None:
            raise ValueError(f"exclude_same_clothes: {which} record {i} (pid {record.pid}, {record.path or 'no path'}) "
                             "has no extras 'clothes_id'; use a clothes-changing dataset (the synthetic world with "
                             "clothes_changes > 0, a manifest with a clothes_id column) or set exclude_same_clothes: "
                             "false")
        ids.append(int(value))
    return np.asarray(ids, dtype=np.int64)


def _records(features: FeatureSet, which: str) -> list[Record]:
    if len(features.records) != len(features):
        raise ValueError(f"exclude_same_clothes needs the {which} records (extras 'clothes_id'); the {which} "
                         f"features carry {len(features.records)} records for {len(features)} embeddings")
    return features.records

"""The standard ReID evaluation protocol (core.evaluation), specified against a plain
per-query reference and hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import core.evaluation.ranking as ranking
from core.evaluation import ReIDEvaluator, pairwise_distance, rank_metrics
from core.evaluation.ranking import resolve_chunk_size
from core.interfaces import FeatureSet
from tests.evaluation_helpers import RANKS, assert_metrics_equal, feature_sets, random_problem, reference_metrics
import math


# --- agreement with the reference ---------------------------------------------------------


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("clustered", [False, True])
def test_matches_reference_on_random_features(seed, metric, clustered):
    q, g, qp, gp, qc, gc = random_problem(seed, clustered=clustered)
    d = pairwise_distance(q, g, metric)
    assert_metrics_equal(rank_metrics(d, qp, gp, qc, gc), reference_metrics(d, qp, gp, qc, gc))


#: (most bins per row, fraction of listed items above which the whole chunk is binned):
#: every way through `ranking._positive_ranks`.
SEARCH_PATHS = pytest.mark.parametrize("max_bins, list_fraction", [(1, 2.0), (8192, 2.0), (8192, -1.0)],
                                       ids=["one-bin-listed", "fine-bins-listed", "fine-bins-whole-chunk"])


def force_search_path(monkeypatch, max_bins, list_fraction):
    monkeypatch.setattr(ranking, "_MAX_BINS", max_bins)
    monkeypatch.setattr(ranking, "_LIST_FRACTION", list_fraction)


@SEARCH_PATHS
@pytest.mark.parametrize("clustered", [False, True])
def test_every_search_path_matches_reference(monkeypatch, max_bins, list_fraction, clustered):
    """One bin (every item up to the hardest positive ordered exactly) and fine bins
    (most items counted by the histogram), over the listed items up to the hardest
    positive or over the whole chunk, give the reference's ranks."""
    force_search_path(monkeypatch, max_bins, list_fraction)
    q, g, qp, gp, qc, gc = random_problem(7, clustered=clustered)
    d = pairwise_distance(q, g, "cosine")
    assert_metrics_equal(rank_metrics(d, qp, gp, qc, gc), reference_metrics(d, qp, gp, qc, gc))


def test_float64_distances_match_reference():
    q, g, qp, gp, qc, gc = random_problem(4, clustered=True)
    d = pairwise_distance(q.double(), g.double(), "euclidean")
    assert d.dtype == torch.float64
    assert_metrics_equal(rank_metrics(d, qp, gp, qc, gc), reference_metrics(d, qp, gp, qc, gc))


# --- ties ---------------------------------------------------------------------------------


@SEARCH_PATHS
@pytest.mark.parametrize("seed", [0, 1])
def test_ties_are_ordered_by_gallery_index(monkeypatch, max_bins, list_fraction, seed):
    """Quantised features make many distances equal; the stable (distance, index) order
    decides, exactly as np.argsort(kind="stable")."""
    force_search_path(monkeypatch, max_bins, list_fraction)
    q, g, qp, gp, qc, gc = random_problem(seed, dim=3, num_ids=8)
    q, g = torch.round(q * 2) / 2, torch.round(g * 2) / 2
    d = pairwise_distance(q, g, "euclidean")
    assert len(torch.unique(d)) < d.numel() / 20  # heavily tied
    assert_metrics_equal(rank_metrics(d, qp, gp, qc, gc), reference_metrics(d, qp, gp, qc, gc))


def test_ties_in_float64_distances_are_ordered_by_gallery_index():
    q, g, qp, gp, qc, gc = random_problem(2, dim=3, num_ids=8)
    d = pairwise_distance(torch.round(q * 2).double() / 2, torch.round(g * 2).double() / 2, "euclidean")
    assert_metrics_equal(rank_metrics(d, qp, gp, qc, gc), reference_metrics(d, qp, gp, qc, gc))


def test_all_equal_distances_rank_by_gallery_index():
    # Gallery pids 5, 1, 1, 2 at equal distance: the order is the gallery order, so the
    # positives (indices 1, 2) rank 2 and 3: AP = (1/2 + 2/3) / 2, INP = 2/3.
    d = torch.zeros(1, 4)
    out = rank_metrics(d, np.array([1]), np.array([5, 1, 1, 2]), np.array([0]), np.array([1, 1, 1, 1]),
                       ranks=[1, 2])
    assert out == pytest.approx({"rank-1": 0.0, "rank-2": 100.0, "mAP": 100 * (1 / 2 + 2 / 3) / 2,
                                 "mINP": 100 * 2 / 3, "num_valid_queries": 1})


@SEARCH_PATHS
def test_negative_and_signed_zero_distances(monkeypatch, max_bins, list_fraction):
    """Distances may be negative (e.g. negated similarities); -0.0 ties with +0.0."""
    force_search_path(monkeypatch, max_bins, list_fraction)
    rng = np.random.default_rng(0)
    d = rng.choice(np.array([-2.0, -1.0, -0.0, 0.0, 0.5, 1.0], dtype=np.float32), size=(20, 50))
    qp, gp = rng.integers(0, 5, 20), rng.integers(0, 5, 50)
    qc, gc = rng.integers(0, 3, 20), rng.integers(0, 3, 50)
    assert_metrics_equal(rank_metrics(torch.from_numpy(d), qp, gp, qc, gc),
                         reference_metrics(d, qp, gp, qc, gc))


def spy_on_bit_bins(monkeypatch) -> list:
    """Record each chunk binned from its distances' bits (`ranking._BitBinMap`)."""
    used, original = [], ranking._BitBinMap
    monkeypatch.setattr(ranking, "_BitBinMap", lambda *args: used.append(args) or original(*args))
    return used


@pytest.mark.parametrize("max_bins", [1, 8192])
@pytest.mark.parametrize("clustered", [False, True])
def test_whole_chunks_of_non_negative_float32_are_binned_from_bits(monkeypatch, max_bins, clustered):
    """Non-negative float32 distances of a whole-chunk search are binned by their bits
    (one bin for all, or fine bins): the reference's ranks, ties included."""
    force_search_path(monkeypatch, max_bins, -1.0)
    used = spy_on_bit_bins(monkeypatch)
    q, g, qp, gp, qc, gc = random_problem(3, dim=4, clustered=clustered)
    q, g = torch.round(q * 4) / 4, torch.round(g * 4) / 4  # ties too
    d = pairwise_distance(q, g, "euclidean")
    out = rank_metrics(d, qp, gp, qc, gc)
    assert used and float(d.min()) >= 0
    assert_metrics_equal(out, reference_metrics(d, qp, gp, qc, gc))


def test_bit_bins_put_negative_and_signed_zero_items_first(monkeypatch):
    """The columns sampled for a chunk's minimum are >= -0.0, others also hold negative
    values: those clamp into the first bin, where they are compared exactly."""
    force_search_path(monkeypatch, 8192, -1.0)
    used = spy_on_bit_bins(monkeypatch)
    rng = np.random.default_rng(1)
    d = rng.choice(np.array([-0.0, 0.0, 0.25, 0.5, 1.0, 2.0], dtype=np.float32), size=(20, 64))
    unsampled = np.arange(64) % ranking._SAMPLE_STRIDE != 0
    hidden = rng.choice(np.array([-1.0, -0.0, 0.0], dtype=np.float32), size=(20, int(unsampled.sum())))
    d[:, unsampled] = np.where(rng.random(hidden.shape) < 0.3, hidden, d[:, unsampled])
    qp, gp = rng.integers(0, 4, 20), rng.integers(0, 4, 64)
    qc, gc = rng.integers(0, 3, 20), rng.integers(0, 3, 64)
    out = rank_metrics(torch.from_numpy(d), qp, gp, qc, gc)
    assert used and (d < 0).any() and np.signbit(d[d == 0]).any()
    assert_metrics_equal(out, reference_metrics(d, qp, gp, qc, gc))


# --- filtering and skipped queries -------------------------------------------------------------


def test_queries_without_a_kept_positive_are_skipped_and_counted():
    q, g, qp, gp, qc, gc = random_problem(5)
    qp[:10] = 1000  # identity absent from the gallery
    qp[10] = 2000
    gp[0], gc[0] = 2000, qc[10]  # its only gallery image is in its own camera: removed
    d = pairwise_distance(q, g, "cosine")
    out = rank_metrics(d, qp, gp, qc, gc)
    assert out["num_valid_queries"] == len(qp) - 11 == reference_metrics(d, qp, gp, qc, gc)["num_valid_queries"]
    assert_metrics_equal(out, reference_metrics(d, qp, gp, qc, gc))


def test_single_camera_gallery_needs_exclude_same_camera_false():
    q, g, qp, gp, qc, gc = random_problem(6)
    qc, gc = np.zeros_like(qc), np.zeros_like(gc)
    d = pairwise_distance(q, g, "cosine")
    with pytest.raises(ValueError, match="no valid query.*exclude_same_camera"):
        rank_metrics(d, qp, gp, qc, gc)
    assert_metrics_equal(rank_metrics(d, qp, gp, qc, gc, exclude_same_camera=False),
                         reference_metrics(d, qp, gp, qc, gc, exclude_same_camera=False))


@pytest.mark.parametrize("clustered", [False, True])
def test_exclude_same_camera_false_removes_nothing(clustered):
    q, g, qp, gp, qc, gc = random_problem(8, clustered=clustered)
    d = pairwise_distance(q, g, "euclidean")
    assert_metrics_equal(rank_metrics(d, qp, gp, qc, gc, exclude_same_camera=False),
                         reference_metrics(d, qp, gp, qc, gc, exclude_same_camera=False))


@pytest.mark.parametrize("exclude_same_camera", [True, False])
@pytest.mark.parametrize("clustered", [False, True])
def test_clothes_groups_remove_same_clothes_positives_like_the_reference(exclude_same_camera, clustered):
    """The clothes-changing protocol: a gallery image of the query's identity in the
    query's clothes is removed (as one from its camera)."""
    q, g, qp, gp, qc, gc = random_problem(14, clustered=clustered)
    rng = np.random.default_rng(14)
    q_clothes, g_clothes = qp * 3 + rng.integers(0, 3, len(qp)), gp * 3 + rng.integers(0, 3, len(gp))
    d = pairwise_distance(q, g, "cosine")
    expected = reference_metrics(d, qp, gp, qc, gc, exclude_same_camera=exclude_same_camera,
                                 q_groups=q_clothes, g_groups=g_clothes)
    ours = rank_metrics(d, qp, gp, qc, gc, exclude_same_camera=exclude_same_camera, q_groups=q_clothes,
                        g_groups=g_clothes)
    assert_metrics_equal(ours, expected)
    assert ours != rank_metrics(d, qp, gp, qc, gc, exclude_same_camera=exclude_same_camera)  # it removes some
    with pytest.raises(ValueError, match="q_groups and g_groups go together"):
        rank_metrics(d, qp, gp, qc, gc, q_groups=q_clothes)
    with pytest.raises(ValueError, match="q_groups has 59 entries but there are 60 queries"):
        rank_metrics(d, qp, gp, qc, gc, q_groups=q_clothes[:-1], g_groups=g_clothes)


# --- hand-worked ----------------------------------------------------------------------------


def test_hand_worked_single_query():
    # Query: pid 1, camera 0. Gallery (index: distance, pid, camera), listed out of order:
    #   g0: 0.4 pid 3 cam 0
    #   g1: 0.2 pid 1 cam 1   positive
    #   g2: 0.3 pid 1 cam 0   same pid AND camera: removed
    #   g3: 0.1 pid 2 cam 0
    #   g4: 0.5 pid 1 cam 1   positive
    # Kept ranking by distance: g3, g1, g0, g4 -> positives at ranks 2 and 4.
    #   CMC: rank-1 = 0, rank-2 = 1, rank-5 = 1
    #   AP  = (1/2 + 2/4) / 2 = 0.5
    #   INP = 2 positives / rank 4 of the last one = 0.5
    d = torch.tensor([[0.4, 0.2, 0.3, 0.1, 0.5]])
    args = (np.array([1]), np.array([3, 1, 1, 2, 1]), np.array([0]), np.array([0, 1, 0, 0, 1]))
    out = rank_metrics(d, *args, ranks=[1, 2, 5])
    assert out == pytest.approx({"rank-1": 0.0, "rank-2": 100.0, "rank-5": 100.0, "mAP": 50.0,
                                 "mINP": 50.0, "num_valid_queries": 1})
    # Without the camera filter g2 stays: g3, g1, g2, g0, g4 -> positives at 2, 3, 5:
    #   AP = (1/2 + 2/3 + 3/5) / 3 = 53/90, INP = 3/5
    out = rank_metrics(d, *args, ranks=[1, 2, 5], exclude_same_camera=False)
    assert out == pytest.approx({"rank-1": 0.0, "rank-2": 100.0, "rank-5": 100.0,
                                 "mAP": 100 * 53 / 90, "mINP": 60.0, "num_valid_queries": 1})


def test_rank_beyond_the_gallery_size_counts_as_found():
    d = torch.tensor([[0.3, 0.1, 0.2]])
    out = rank_metrics(d, np.array([0]), np.array([1, 2, 0]), np.array([0]), np.array([1, 1, 1]),
                       ranks=[1, 3, 100])
    assert (out["rank-1"], out["rank-3"], out["rank-100"]) == (0.0, 100.0, 100.0)


# --- chunking -------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 7, 60])
def test_chunked_equals_single_chunk(chunk_size):
    q, g, qp, gp, qc, gc = random_problem(9, clustered=True)
    d = pairwise_distance(q, g, "cosine")
    whole = rank_metrics(d, qp, gp, qc, gc, chunk_size=len(qp))
    assert rank_metrics(d, qp, gp, qc, gc, chunk_size=chunk_size) == whole


def test_distances_may_come_row_chunk_by_row_chunk():
    q, g, qp, gp, qc, gc = random_problem(10)
    calls = []

    def rows(start, stop):
        calls.append((start, stop))
        return pairwise_distance(q[start:stop], g, "cosine")

    out = rank_metrics(rows, qp, gp, qc, gc, chunk_size=25)
    assert calls == [(0, 25), (25, 50), (50, 60)]
    assert out == rank_metrics(pairwise_distance(q, g, "cosine"), qp, gp, qc, gc)


@pytest.mark.parametrize("threads", [2, 3])
def test_ranking_threads_give_the_single_thread_results(threads):
    """Chunks ranked by several threads: the same per-query results, and the row source
    is still called one chunk at a time, in order."""
    q, g, qp, gp, qc, gc = random_problem(12, num_q=90)
    calls, inside = [], [0]

    def rows(start, stop):
        inside[0] += 1
        assert inside[0] == 1, "row source called by two threads at once"
        calls.append(start)
        d = pairwise_distance(q[start:stop], g, "cosine")
        inside[0] -= 1
        return d

    one = ranking.per_query_metrics(pairwise_distance(q, g, "cosine"), qp, gp, qc, gc, chunk_size=7, threads=1)
    many = ranking.per_query_metrics(rows, qp, gp, qc, gc, chunk_size=7, threads=threads)
    assert calls == list(range(0, 90, 7))
    for field in ("valid", "num_positives", "first_rank", "average_precision", "inverse_negative_penalty"):
        np.testing.assert_array_equal(getattr(many, field), getattr(one, field), err_msg=field)


@pytest.mark.parametrize("clustered", [False, True])
def test_chunks_grow_after_listed_chunks_and_cover_every_query_once(monkeypatch, clustered):
    """Automatic chunks: larger after a chunk whose few items were listed (a trained
    model); the rows fetched still tile the queries, and the metrics do not change."""
    monkeypatch.setattr(ranking, "_CACHE_ENTRIES", 400 * 5)
    monkeypatch.setattr(ranking, "_LISTED_CACHE_ENTRIES", 400 * 12)
    q, g, qp, gp, qc, gc = random_problem(16, num_q=70, clustered=clustered)
    calls = []

    def rows(start, stop):
        calls.append((start, stop))
        return pairwise_distance(q[start:stop], g, "cosine")

    out = rank_metrics(rows, qp, gp, qc, gc, threads=1)
    assert [a for a, _ in calls] == [0] + [b for _, b in calls[:-1]] and calls[-1][1] == 70
    sizes = {b - a for a, b in calls[:-1]}
    assert sizes == ({5, 12} if clustered else {5})
    assert_metrics_equal(out, reference_metrics(pairwise_distance(q, g, "cosine"), qp, gp, qc, gc))


def test_an_error_in_a_ranking_thread_reaches_the_caller():
    q, g, qp, gp, qc, gc = random_problem(13)

    def rows(start, stop):
        d = pairwise_distance(q[start:stop], g, "cosine")
        if start >= 20:
            d[0, 0] = float("nan")
        return d

    with pytest.raises(ValueError, match=r"distance rows \[2\d, \d+\) contain NaN"):
        rank_metrics(rows, qp, gp, qc, gc, chunk_size=10, threads=2)
    with pytest.raises(ValueError, match="threads must be >= 0"):
        rank_metrics(rows, qp, gp, qc, gc, threads=-1)


def test_blocked_rows_serve_consecutive_chunks_from_few_products(monkeypatch):
    from core.evaluation import distances
    from core.evaluation.distances import blocked_rows, distance_to

    q, g, *_ = random_problem(17, num_q=50)
    products = []

    def rows_of(block):
        products.append(len(block))
        return distance_to(g, "cosine")(block)

    monkeypatch.setattr(distances, "MIN_BLOCK_ROWS", 1)  # blocks of 20 rows, as block_entries asks
    rows = blocked_rows(rows_of, q, len(g), block_entries=20 * len(g))
    got = torch.cat([rows(a, min(a + 7, 50)) for a in range(0, 50, 7)])
    assert products == [20, 20, 20, 8]  # 7-row chunks; one crossing a block end starts the next block
    assert torch.equal(got, pairwise_distance(q, g, "cosine"))
    assert torch.equal(rows(3, 5), pairwise_distance(q[3:23], g, "cosine")[:2])  # going back: a new block
    assert products[-1] == 20


def test_distance_blocks_keep_enough_rows_for_an_efficient_product():
    """Small galleries: BLOCK_ENTRIES worth of rows; large ones: at least MIN_BLOCK_ROWS
    rows (few rows against a large gallery are memory-bound), unless that block would
    exceed MAX_BLOCK_ENTRIES; always at least one row."""
    from core.evaluation.distances import BLOCK_ENTRIES, MAX_BLOCK_ENTRIES, MIN_BLOCK_ROWS, block_rows_for

    assert block_rows_for(15_913) == BLOCK_ENTRIES // 15_913 == 527  # Market-1501
    assert block_rows_for(515_913) == MIN_BLOCK_ROWS  # Market-1501+500k: 16 rows by entries alone
    assert block_rows_for(5_000_000) == MAX_BLOCK_ENTRIES // 5_000_000 == 13
    assert block_rows_for(10**9) == 1 and block_rows_for(0) == BLOCK_ENTRIES


def test_memory_budget_sets_the_chunk_size():
    assert resolve_chunk_size(0, 10_000, 1000, memory_budget=ranking._BYTES_PER_ENTRY * 1000 * 50) == 50
    assert resolve_chunk_size(0, 10, 10**9, memory_budget=1) == 1  # at least one query
    assert resolve_chunk_size(0, 30, 10, memory_budget=2**30) == 30  # at most all queries
    assert resolve_chunk_size(17, 100, 10) == 17


# --- the evaluator ----------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_evaluator_matches_reference(metric):
    query, gallery = feature_sets()
    out = ReIDEvaluator(metric=metric, chunk_size=13).evaluate(query, gallery)
    d = pairwise_distance(query.embeddings, gallery.embeddings, metric)
    assert_metrics_equal(out, reference_metrics(d, query.pids, gallery.pids, query.camids, gallery.camids))


def test_per_category_metrics_equal_each_category_evaluated_alone():
    query, gallery = feature_sets(categories=True)
    out = ReIDEvaluator().evaluate(query, gallery)
    for cat, name in enumerate(query.category_names):
        keep = query.categories == cat
        alone = ReIDEvaluator().evaluate(
            FeatureSet(query.embeddings[torch.from_numpy(keep)], query.pids[keep], query.camids[keep]), gallery)
        assert {key: out[f"{name}/{key}"] for key in alone} == alone
    overall = ReIDEvaluator(per_category=False).evaluate(query, gallery)
    assert {key: out[key] for key in overall} == overall
    assert set(out) == set(overall) | {f"{n}/{k}" for n in query.category_names for k in overall}


def test_no_per_category_keys_for_a_single_category():
    query, gallery = feature_sets()
    query.categories, query.category_names = np.zeros(len(query), dtype=np.int64), ["person"]
    assert not any("/" in key for key in ReIDEvaluator().evaluate(query, gallery))


def test_half_precision_embeddings_are_ranked_in_float32():
    query, gallery = feature_sets()
    half = FeatureSet(query.embeddings.half(), query.pids, query.camids)
    d = pairwise_distance(query.embeddings.half(), gallery.embeddings, "cosine")
    assert d.dtype == torch.float32
    assert_metrics_equal(ReIDEvaluator().evaluate(half, gallery),
                         reference_metrics(d, query.pids, gallery.pids, query.camids, gallery.camids))


def test_string_identities_are_supported():
    query, gallery = feature_sets()
    as_str = lambda fs: FeatureSet(fs.embeddings, fs.pids.astype(str), fs.camids)  # noqa: E731
    assert ReIDEvaluator().evaluate(as_str(query), as_str(gallery)) == ReIDEvaluator().evaluate(query, gallery)


# --- distances ------------------------------------------------------------------------------


def test_pairwise_distances_match_their_definitions():
    q, g = torch.randn(5, 8, dtype=torch.float64), torch.randn(7, 8, dtype=torch.float64)
    cos = 1 - torch.nn.functional.cosine_similarity(q[:, None], g[None], dim=2)
    assert torch.allclose(pairwise_distance(q, g, "cosine"), cos)
    assert torch.allclose(pairwise_distance(q, g, "euclidean"), torch.cdist(q, g))
    assert torch.all(pairwise_distance(q, q, "euclidean") >= 0)


# --- errors ---------------------------------------------------------------------------------


def test_no_valid_query_is_an_error():
    d = torch.rand(2, 3)
    with pytest.raises(ValueError, match="no valid query"):
        rank_metrics(d, np.array([7, 8]), np.array([1, 2, 3]), np.array([0, 0]), np.array([1, 1, 1]))


def test_unknown_metric_names_the_valid_ones():
    with pytest.raises(ValueError, match="'manhattan'.*cosine, euclidean"):
        pairwise_distance(torch.randn(2, 3), torch.randn(2, 3), "manhattan")
    with pytest.raises(ValueError, match="'manhattan'.*cosine, euclidean"):
        ReIDEvaluator(metric="manhattan")


@pytest.mark.parametrize("ranks", [[0, 5], [1, 1], [], [1.5], 5])
def test_invalid_ranks_are_rejected(ranks):
    with pytest.raises(ValueError, match="ranks"):
        ReIDEvaluator(ranks=ranks)


def test_invalid_chunk_size_and_threads_are_rejected():
    with pytest.raises(ValueError, match="chunk_size"):
        ReIDEvaluator(chunk_size=-1)
    with pytest.raises(ValueError, match="ranking_threads must be an integer >= 0"):
        ReIDEvaluator(ranking_threads=-2)


def test_shape_mismatches_name_the_inputs():
    with pytest.raises(ValueError, match=r"distance matrix has shape \(2, 3\).*2 queries and 4 gallery"):
        rank_metrics(torch.rand(2, 3), np.array([0, 1]), np.arange(4), np.array([0, 0]), np.zeros(4, int))
    query, gallery = feature_sets()
    query.camids = query.camids[:-1]
    with pytest.raises(ValueError, match="query has 60 embeddings but 59 camids"):
        ReIDEvaluator().evaluate(query, gallery)


def test_non_finite_distances_are_rejected():
    d = torch.rand(2, 3)
    d[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        rank_metrics(d, np.array([0, 1]), np.array([0, 1, 1]), np.array([0, 0]), np.array([1, 1, 1]))


# --- faiss search ------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_faiss_flat_equals_exact(metric):
    pytest.importorskip("faiss")
    query, gallery = feature_sets(categories=True)
    exact = ReIDEvaluator(metric=metric).evaluate(query, gallery)
    assert_metrics_equal(ReIDEvaluator(metric=metric, search="faiss_flat").evaluate(query, gallery), exact, tol=1e-4)


def test_faiss_ivf_reports_truncated_map_and_finds_clustered_neighbours():
    """IVF on a clustered set: rank-1 close to exact; mAP is named for its truncation."""
    pytest.importorskip("faiss")
    q, g, qp, gp, qc, gc = random_problem(12, num_q=200, num_g=2000, dim=32, num_ids=50, clustered=True)
    query, gallery = FeatureSet(q, qp, qc), FeatureSet(g, gp, gc)
    exact = ReIDEvaluator().evaluate(query, gallery)
    ivf = ReIDEvaluator(search="faiss_ivf", nprobe=8, topk=100).evaluate(query, gallery)
    assert set(ivf) == {"rank-1", "rank-5", "rank-10", "mAP@100", "num_valid_queries"}
    assert ivf["num_valid_queries"] == exact["num_valid_queries"]
    assert ivf["rank-1"] == pytest.approx(exact["rank-1"], abs=3.0)


def test_faiss_ivf_with_the_whole_gallery_retrieved_equals_exact():
    """With every list probed and k = G, mAP@G is the full mAP and CMC is exact."""
    pytest.importorskip("faiss")
    query, gallery = feature_sets()
    exact = ReIDEvaluator().evaluate(query, gallery)
    ivf = ReIDEvaluator(search="faiss_ivf", nlist=4, nprobe=4, topk=len(gallery)).evaluate(query, gallery)
    assert ivf[f"mAP@{len(gallery)}"] == pytest.approx(exact["mAP"], abs=1e-4)
    for k in RANKS:
        assert ivf[f"rank-{k}"] == pytest.approx(exact[f"rank-{k}"], abs=1e-9)


def test_missing_faiss_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    query, gallery = feature_sets()
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        ReIDEvaluator(search="faiss_flat").evaluate(query, gallery)


def test_unknown_search_names_the_valid_ones():
    with pytest.raises(ValueError, match="'annoy'.*exact, faiss_flat, faiss_ivf"):
        ReIDEvaluator(search="annoy")


def test_the_evaluator_excludes_same_clothes_from_the_records():
    from core.records import Record

    query, gallery = feature_sets(15)
    rng = np.random.default_rng(15)
    q_clothes = query.pids * 2 + rng.integers(0, 2, len(query))
    g_clothes = gallery.pids * 2 + rng.integers(0, 2, len(gallery))
    query.records = [Record(path=None, pid=int(p), camid=int(c), extras={"clothes_id": int(k)})
                     for p, c, k in zip(query.pids, query.camids, q_clothes)]
    gallery.records = [Record(path=None, pid=int(p), camid=int(c), extras={"clothes_id": int(k)})
                       for p, c, k in zip(gallery.pids, gallery.camids, g_clothes)]
    d = pairwise_distance(query.embeddings, gallery.embeddings, "cosine")
    expected = reference_metrics(d, query.pids, gallery.pids, query.camids, gallery.camids,
                                 q_groups=q_clothes, g_groups=g_clothes)
    assert_metrics_equal(ReIDEvaluator(exclude_same_clothes=True).evaluate(query, gallery), expected)
    gallery.records[3] = Record(path="g/3.jpg", pid=int(gallery.pids[3]), camid=0)
    with pytest.raises(ValueError, match=r"gallery record 3 \(pid \d+, g/3.jpg\) has no extras 'clothes_id'"):
        ReIDEvaluator(exclude_same_clothes=True).evaluate(query, gallery)
    with pytest.raises(ValueError, match="exclude_same_clothes needs an exact search"):
        ReIDEvaluator(exclude_same_clothes=True, search="faiss_ivf")


# --- SE1, SE2, SE4, SE5: truncated top-k metrics of the approximate searches ---------------------------

def topk_loop(d, qp, gp, qc, gc, k, ranks, exclude=True):
    """CMC and mAP@k (AP@k = sum over kept positives within the first k kept items of P(i), / min(m, k))."""
    firsts, aps = [], []
    for i in range(d.shape[0]):
        order = sorted(range(d.shape[1]), key=lambda j: (d[i, j], j))
        kept = [j for j in order if not (exclude and gp[j] == qp[i] and gc[j] == qc[i])]
        m = sum(gp[j] == qp[i] for j in kept)
        if m == 0:
            continue
        hits = [r + 1 for r, j in enumerate(kept[:k]) if gp[j] == qp[i]]
        aps.append(sum((n + 1) / r for n, r in enumerate(hits)) / min(m, k))
        firsts.append(hits[0] if hits else math.inf)
    firsts = np.array(firsts)
    out = {f"rank-{r}": 100.0 * np.mean(firsts <= r) for r in ranks}
    out[f"mAP@{k}"] = 100.0 * np.mean(aps)
    out["num_valid_queries"] = len(aps)
    return out


@pytest.mark.parametrize("k", [1, 3, 7])
def test_topk_metrics_of_the_exact_lists_match_a_plain_loop(k):
    from core.evaluation.search import kept_positives, summarise_topk, topk_per_query
    rng = np.random.default_rng(k)
    qp, gp = rng.integers(0, 6, 25), rng.integers(0, 6, 80)
    qc, gc = rng.integers(0, 3, 25), rng.integers(0, 3, 80)
    d = rng.random((25, 80))
    removed = kept_positives(qp, gp, qc, gc, False) - kept_positives(qp, gp, qc, gc, True)
    lists = np.argsort(d, axis=1, kind="stable")[:, :k + removed.max()]
    ours = summarise_topk(*topk_per_query(lists, qp, gp, qc, gc, k), (1, 2, 5), k)
    expected = topk_loop(d, qp, gp, qc, gc, k, (1, 2, 5))
    assert set(ours) == set(expected)
    for key in expected:
        assert ours[key] == pytest.approx(expected[key], abs=1e-9), key


def test_exhaustive_ivf_with_a_short_list_matches_the_plain_top_k_loop():
    """One inverted list probed: IVF is exact, so mAP@k and CMC must be the plain loop's on the exact
    distances, including queries whose same-camera positives fill the top of the list."""
    pytest.importorskip("faiss")
    from core.evaluation import ReIDEvaluator, pairwise_distance
    from core.interfaces import FeatureSet
    rng = np.random.default_rng(4)
    pids = np.repeat(np.arange(10), 8)
    cams = np.tile(np.arange(8) % 2, 10)  # 4 images per identity and camera
    x = torch.tensor(3 * rng.standard_normal((10, 16))[pids] + rng.standard_normal((80, 16)), dtype=torch.float32)
    qsel = np.arange(80) % 8 == 0
    query, gallery = FeatureSet(x[qsel], pids[qsel], cams[qsel]), FeatureSet(x[~qsel], pids[~qsel], cams[~qsel])
    out = ReIDEvaluator(metric="euclidean", search="faiss_ivf", nlist=1, nprobe=1, topk=4).evaluate(query, gallery)
    d = pairwise_distance(query.embeddings, gallery.embeddings, "euclidean").numpy()
    expected = topk_loop(d, pids[qsel], pids[~qsel], cams[qsel], cams[~qsel], 4, (1, 5, 10))
    for key in expected:
        assert out[key] == pytest.approx(expected[key], abs=1e-4), key


# --- RE3, RE4: the evaluator's exclude_same_camera: false -------------------------------------------------

@pytest.mark.parametrize("search", ["exact", "blocked"])
def test_evaluator_exclude_same_camera_false_keeps_same_camera_positives(search):
    from core.evaluation import ReIDEvaluator, pairwise_distance
    from core.interfaces import FeatureSet
    q, g = feature_sets()
    query, gallery = FeatureSet(q.embeddings, q.pids, np.zeros_like(q.camids)), \
        FeatureSet(g.embeddings, g.pids, np.zeros_like(g.camids))  # one camera
    out = ReIDEvaluator(exclude_same_camera=False, search=search).evaluate(query, gallery)
    d = pairwise_distance(query.embeddings, gallery.embeddings, "cosine").numpy()
    assert_metrics_equal(out, reference_metrics(d, query.pids, gallery.pids, query.camids, gallery.camids,
                                                exclude_same_camera=False), tol=1e-4)

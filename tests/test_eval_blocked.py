"""Evaluation at millions of gallery items (issue 24): the exact protocol out of core
(query blocks x gallery blocks, `core.evaluation.blocked`), memory-mapped float16
features (`core.evaluation.features`) and IVF-PQ with recall@k against exact search,
specified against the plain per-query loop of tests/test_evaluation.py, numpy's stable
argsort and faiss's IndexFlat."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import core.evaluation.blocked as blocked
from core.evaluation import ReIDEvaluator, pairwise_distance, rank_metrics
from core.evaluation.blocked import MIN_TAIL, blocked_per_query_metrics, blocked_topk, gallery_blocks
from core.evaluation.features import FeatureWriter, open_features
from core.evaluation.ranking import summarise
from core.evaluation.search import recall_at_k
from core.interfaces import FeatureSet
from tests.test_evaluation import assert_metrics_equal, random_problem, reference_metrics

RANKS = [1, 5, 10]


def tied_problem(seed, num_q=40, num_g=300):
    """Integer features in {0, 1, 2}^2: most distances are tied, so the tie rule (gallery
    index) decides ranks, across block boundaries too."""
    rng = np.random.default_rng(seed)
    q = torch.tensor(rng.integers(0, 3, (num_q, 2)), dtype=torch.float32)
    g = torch.tensor(rng.integers(0, 3, (num_g, 2)), dtype=torch.float32)
    return q, g, rng.integers(0, 8, num_q), rng.integers(0, 9, num_g), rng.integers(0, 3, num_q), \
        rng.integers(0, 3, num_g)


def blocked_summary(q, g, metric, qp, gp, qc, gc, qb, gb, exclude=True):
    return summarise(blocked_per_query_metrics(q, g, metric, qp, gp, qc, gc, exclude, qb, gb), RANKS)


#: both ways of counting the items before a positive (comparison passes, sorted block)
COUNTING = pytest.mark.parametrize("compare_width", [0, 1000], ids=["sorted", "compared"])


@COUNTING
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("seed, clustered", [(0, False), (1, True), (2, True)])
@pytest.mark.parametrize("qb, gb", [(7, 50), (64, 97), (1000, 128), (13, 1000)])
def test_blocked_metrics_equal_the_reference_loop_and_the_dense_path(metric, seed, clustered, qb, gb, compare_width,
                                                                     monkeypatch):
    monkeypatch.setattr(blocked, "COMPARE_WIDTH", compare_width)
    q, g, qp, gp, qc, gc = random_problem(seed, num_q=50, num_g=401, clustered=clustered)
    d = pairwise_distance(q, g, metric)
    ours = blocked_summary(q, g, metric, qp, gp, qc, gc, qb, gb)
    assert_metrics_equal(ours, reference_metrics(d.numpy(), qp, gp, qc, gc, RANKS))
    assert ours == rank_metrics(d, qp, gp, qc, gc, RANKS)  # byte-identical to today's exact path


@COUNTING
@pytest.mark.parametrize("exclude", [True, False])
@pytest.mark.parametrize("gb", [64, 100, 300])
def test_blocked_metrics_on_tied_distances_follow_the_gallery_index(exclude, gb, compare_width, monkeypatch):
    monkeypatch.setattr(blocked, "COMPARE_WIDTH", compare_width)
    for seed in range(3):
        q, g, qp, gp, qc, gc = tied_problem(seed)
        d = pairwise_distance(q, g, "euclidean")
        ours = blocked_summary(q, g, "euclidean", qp, gp, qc, gc, 9, gb, exclude)
        assert_metrics_equal(ours, reference_metrics(d.numpy(), qp, gp, qc, gc, RANKS, exclude_same_camera=exclude))


def test_blocked_topk_is_the_stable_argsort_prefix():
    for seed in range(2):
        q, g, *_ = tied_problem(seed, num_q=30, num_g=500)
        d = pairwise_distance(q, g, "euclidean").numpy()
        for gb in (64, 100, 499):
            values, index = blocked_topk(q, g, "euclidean", 20, query_block=7, gallery_block=gb)
            order = np.argsort(d, axis=1, kind="stable")[:, :20]
            assert (index == order).all()
            assert (values == np.take_along_axis(d, order, 1)).all()


def test_blocked_topk_matches_faiss_index_flat():
    faiss = pytest.importorskip("faiss")
    q, g, *_ = random_problem(3, num_q=40, num_g=700, dim=24)
    index = faiss.IndexFlatL2(24)
    index.add(g.numpy())
    _, expected = index.search(q.numpy(), 15)
    _, ours = blocked_topk(q, g, "euclidean", 15, query_block=16, gallery_block=128)
    assert (ours == expected).all()
    assert recall_at_k(expected, ours) == 100.0


def test_gallery_blocks_cover_every_row_once_and_merge_a_narrow_tail():
    for n, b in [(1000, 100), (1003, 100), (100 + MIN_TAIL, 100), (50, 100), (1, 7)]:
        blocks = gallery_blocks(n, b)
        assert blocks[0][0] == 0 and blocks[-1][1] == n
        assert all(a1 == b0 for (_, a1), (b0, _) in zip(blocks, blocks[1:]))
        assert all(stop - start >= MIN_TAIL for start, stop in blocks[1:])
    assert gallery_blocks(1003, 100)[-1] == (900, 1003)
    assert gallery_blocks(100 + MIN_TAIL, 100) == [(0, 100), (100, 100 + MIN_TAIL)]


def feature_sets(seed=11, categories=True):
    q, g, qp, gp, qc, gc = random_problem(seed, num_q=60, num_g=500, clustered=True)
    query, gallery = FeatureSet(q, qp, qc), FeatureSet(g, gp, gc)
    if categories:
        query.categories = np.arange(len(qp)) % 3
        query.category_names = ["person", "vehicle", "animal"]
    return query, gallery


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_evaluator_blocked_equals_exact_with_categories(metric):
    query, gallery = feature_sets()
    exact = ReIDEvaluator(metric=metric).evaluate(query, gallery)
    assert ReIDEvaluator(metric=metric, search="blocked", chunk_size=16, gallery_block=96).evaluate(
        query, gallery) == exact


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
def test_evaluator_blocked_on_a_memory_mapped_float16_gallery(tmp_path):
    """Features written in chunks to a float16 memmap rank like the float16-rounded
    features in memory (the exact path), and the file reads back the rounded values."""
    query, gallery = feature_sets()
    writer = FeatureWriter(tmp_path / "g.npy", len(gallery), gallery.embeddings.shape[1])
    for start in range(0, len(gallery), 64):  # the last chunk is partial
        writer.write(gallery.embeddings[start:start + 64].numpy())
    stored = writer.close()
    assert isinstance(open_features(tmp_path / "g.npy"), np.memmap)
    rounded = gallery.embeddings.half()
    assert np.array_equal(np.asarray(stored), rounded.numpy())
    on_disk = FeatureSet(torch.from_numpy(np.asarray(stored)), gallery.pids, gallery.camids)
    in_memory = FeatureSet(rounded.float(), gallery.pids, gallery.camids)
    expected = ReIDEvaluator().evaluate(query, in_memory)
    assert ReIDEvaluator(search="blocked", gallery_block=100).evaluate(query, on_disk) == expected


def test_feature_writer_refuses_values_float16_cannot_hold(tmp_path):
    writer = FeatureWriter(tmp_path / "f.npy", 4, 3)
    writer.write(np.ones((2, 3), np.float32))
    big = np.ones((2, 3), np.float32)
    big[1, 2] = 70000.0
    with pytest.raises(ValueError, match="row 3 has a value that float16 cannot hold"):
        writer.write(big)
    with pytest.raises(ValueError, match="2 of 4 rows written"):
        writer.close()
    nan = np.ones((1, 3), np.float32)
    nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="row 2"):
        writer.write(nan)


def test_evaluator_ivfpq_reports_recall_and_truncated_metrics():
    pytest.importorskip("faiss")
    q, g, qp, gp, qc, gc = random_problem(12, num_q=100, num_g=3000, dim=32, num_ids=50, clustered=True)
    query, gallery = FeatureSet(q, qp, qc), FeatureSet(g, gp, gc)
    exact = ReIDEvaluator().evaluate(query, gallery)
    pq = ReIDEvaluator(search="faiss_ivfpq", nlist=16, nprobe=16, pq_m=8, topk=50, gallery_block=700,
                       recall_queries=40).evaluate(query, gallery)
    assert set(pq) == {"rank-1", "rank-5", "rank-10", "mAP@50", "recall@50", "num_valid_queries"}
    assert pq["num_valid_queries"] == exact["num_valid_queries"]
    assert 50.0 <= pq["recall@50"] <= 100.0
    assert pq["rank-1"] == pytest.approx(exact["rank-1"], abs=5.0)


def test_recall_of_ivf_over_every_list_with_the_whole_gallery_is_complete():
    """faiss_ivf probing every list returns the exact neighbours: recall@k is 100."""
    pytest.importorskip("faiss")
    query, gallery = feature_sets(categories=False)
    out = ReIDEvaluator(search="faiss_ivf", nlist=4, nprobe=4, topk=20, recall_queries=30).evaluate(query, gallery)
    assert out["recall@20"] == pytest.approx(100.0)


def test_recall_at_k_against_a_plain_count():
    exact = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    retrieved = np.array([[3, 9, 0, -1], [7, 6, 5, 4]])
    assert recall_at_k(retrieved, exact) == pytest.approx(100.0 * (2 / 4 + 4 / 4) / 2)


def test_blocked_search_refuses_clothes_filtering():
    with pytest.raises(ValueError, match=r"needs an exact search \(exact or faiss_flat\), not blocked"):
        ReIDEvaluator(search="blocked", exclude_same_clothes=True)

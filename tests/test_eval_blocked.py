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
from tests.evaluation_helpers import assert_metrics_equal, feature_sets, random_problem, reference_metrics

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


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_evaluator_blocked_equals_exact_with_categories(metric):
    query, gallery = feature_sets(categories=True, num_g=500)
    exact = ReIDEvaluator(metric=metric).evaluate(query, gallery)
    assert ReIDEvaluator(metric=metric, search="blocked", chunk_size=16, gallery_block=96).evaluate(
        query, gallery) == exact


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
def test_evaluator_blocked_on_a_memory_mapped_float16_gallery(tmp_path):
    """Features written in chunks to a float16 memmap rank like the float16-rounded
    features in memory (the exact path), and the file reads back the rounded values."""
    query, gallery = feature_sets(categories=True, num_g=500)
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


def test_ivfpq_on_a_gallery_smaller_than_its_codebooks_is_one_clear_error():
    """2^pq_bits codes per sub-quantiser need as many training items (faiss's own message
    names its C++ source, not the evaluator's settings)."""
    pytest.importorskip("faiss")
    query, gallery = feature_sets(categories=False, num_g=200)
    with pytest.raises(ValueError, match=r"faiss_ivfpq trains 2\^pq_bits = 256 codes.*this gallery has 200"):
        ReIDEvaluator(search="faiss_ivfpq").evaluate(query, gallery)
    assert ReIDEvaluator(search="faiss_ivfpq", pq_bits=6, topk=10).evaluate(query, gallery)["num_valid_queries"] > 0


def test_recall_of_ivf_over_every_list_with_the_whole_gallery_is_complete():
    """faiss_ivf probing every list returns the exact neighbours: recall@k is 100."""
    pytest.importorskip("faiss")
    query, gallery = feature_sets(categories=False, num_g=500)
    out = ReIDEvaluator(search="faiss_ivf", nlist=4, nprobe=4, topk=20, recall_queries=30).evaluate(query, gallery)
    assert out["recall@20"] == pytest.approx(100.0)


def test_recall_at_k_against_a_plain_count():
    exact = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    retrieved = np.array([[3, 9, 0, -1], [7, 6, 5, 4]])
    assert recall_at_k(retrieved, exact) == pytest.approx(100.0 * (2 / 4 + 4 / 4) / 2)


def clothes_problem(seed, num_q=50, num_g=400, clustered=True):
    """A random problem with clothes ids: 3 outfits per identity, so each query has
    same-identity items in its own clothes (removed) and in others (kept)."""
    q, g, qp, gp, qc, gc = random_problem(seed, num_q=num_q, num_g=num_g, clustered=clustered)
    rng = np.random.default_rng(seed + 100)
    return q, g, qp, gp, qc, gc, qp * 3 + rng.integers(0, 3, num_q), gp * 3 + rng.integers(0, 3, num_g)


@COUNTING
@pytest.mark.parametrize("exclude_camera", [True, False])
@pytest.mark.parametrize("seed, clustered, metric", [(20, True, "cosine"), (21, False, "euclidean"),
                                                     (22, True, "euclidean")])
def test_blocked_clothes_exclusion_equals_the_reference_loop_and_the_dense_path(seed, clustered, metric,
                                                                                exclude_camera, compare_width,
                                                                                monkeypatch):
    """Clothes-changing protocol (LTCC / PRCC): a same-identity item in the query's clothes
    is removed, like one from its camera; the blocked search equals the plain loop and the
    dense path's exclusion, across block boundaries (query blocks 7, gallery blocks 96)."""
    monkeypatch.setattr(blocked, "COMPARE_WIDTH", compare_width)
    q, g, qp, gp, qc, gc, qk, gk = clothes_problem(seed, clustered=clustered)
    d = pairwise_distance(q, g, metric)
    ours = summarise(blocked_per_query_metrics(q, g, metric, qp, gp, qc, gc, exclude_camera, 7, 96,
                                               q_groups=qk, g_groups=gk), RANKS)
    expected = reference_metrics(d.numpy(), qp, gp, qc, gc, RANKS, exclude_same_camera=exclude_camera,
                                 q_groups=qk, g_groups=gk)
    assert_metrics_equal(ours, expected)
    assert ours == rank_metrics(d, qp, gp, qc, gc, RANKS, exclude_same_camera=exclude_camera,
                                q_groups=qk, g_groups=gk)
    plain = reference_metrics(d.numpy(), qp, gp, qc, gc, RANKS, exclude_same_camera=exclude_camera)
    assert ours != plain  # the clothes filter changed the result: the case exercises it


def test_blocked_clothes_exclusion_on_tied_distances():
    """Ties across the removed same-clothes items: the removed item before a positive in
    the (distance, index) order must not be counted."""
    for seed in range(3):
        q, g, qp, gp, qc, gc = tied_problem(seed)
        rng = np.random.default_rng(seed)
        qk, gk = rng.integers(0, 2, len(qp)), rng.integers(0, 2, len(gp))
        d = pairwise_distance(q, g, "euclidean")
        ours = summarise(blocked_per_query_metrics(q, g, "euclidean", qp, gp, qc, gc, False, 9, 64,
                                                   q_groups=qk, g_groups=gk), RANKS)
        assert_metrics_equal(ours, reference_metrics(d.numpy(), qp, gp, qc, gc, RANKS, exclude_same_camera=False,
                                                     q_groups=qk, g_groups=gk))


def test_evaluator_blocked_excludes_same_clothes_from_the_records():
    from core.records import Record

    q, g, qp, gp, qc, gc, qk, gk = clothes_problem(23, num_q=60, num_g=500)
    query, gallery = FeatureSet(q, qp, qc), FeatureSet(g, gp, gc)
    query.records = [Record(path=None, pid=int(p), camid=int(c), extras={"clothes_id": int(k)})
                     for p, c, k in zip(qp, qc, qk)]
    gallery.records = [Record(path=None, pid=int(p), camid=int(c), extras={"clothes_id": int(k)})
                       for p, c, k in zip(gp, gc, gk)]
    dense = ReIDEvaluator(exclude_same_clothes=True).evaluate(query, gallery)
    assert ReIDEvaluator(exclude_same_clothes=True, search="blocked", chunk_size=16,
                         gallery_block=100).evaluate(query, gallery) == dense
    assert dense != ReIDEvaluator().evaluate(query, gallery)


def test_blocked_groups_go_together_and_match_the_lengths():
    q, g, qp, gp, qc, gc, qk, gk = clothes_problem(24)
    with pytest.raises(ValueError, match="q_groups and g_groups go together"):
        blocked_per_query_metrics(q, g, "cosine", qp, gp, qc, gc, q_groups=qk)
    with pytest.raises(ValueError, match="g_groups has 399 entries but there are 400 gallery items"):
        blocked_per_query_metrics(q, g, "cosine", qp, gp, qc, gc, q_groups=qk, g_groups=gk[:-1])


def test_approximate_searches_refuse_clothes_filtering():
    with pytest.raises(ValueError, match=r"needs an exact search \(exact, faiss_flat or blocked\), not faiss_ivfpq"):
        ReIDEvaluator(search="faiss_ivfpq", exclude_same_clothes=True)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_refine_exact_is_the_stable_order_of_the_candidates_exact_distances(metric):
    """Re-ranking keeps, of each query's candidates (-1: none), the k nearest by exact
    distance, ties by gallery index: a plain sort of (float64 distance, index) per query."""
    from core.evaluation.search import refine_exact

    q, g, *_ = random_problem(30, num_q=25, num_g=300, dim=12, clustered=True)
    rng = np.random.default_rng(30)
    candidates = np.stack([rng.choice(300, 40, replace=False) for _ in range(25)])
    candidates[::3, -7:] = -1  # fewer found for some queries
    candidates[5, :] = -1  # none
    d = pairwise_distance(q.double(), g.double(), metric).numpy()
    for k in (1, 10, 40):
        from_tensor = refine_exact(q, g, candidates, metric, k)
        from_array = refine_exact(q.numpy(), g.numpy(), candidates, metric, k)
        expected = np.full((25, k), -1)
        for i, row in enumerate(candidates):
            best = sorted((d[i, c], c) for c in row if c >= 0)[:k]
            expected[i, :len(best)] = [c for _, c in best]
        assert (from_tensor == expected).all() and (from_array == expected).all()


def test_refine_exact_over_the_whole_gallery_is_the_exact_top_k():
    from core.evaluation.search import refine_exact

    q, g, *_ = random_problem(31, num_q=30, num_g=200, dim=8)
    everything = np.tile(np.random.default_rng(31).permutation(200), (30, 1))
    assert (refine_exact(q, g, everything, "cosine", 15) == blocked_topk(q, g, "cosine", 15)[1]).all()


def test_ivfpq_with_refinement_over_every_candidate_is_exact():
    """One list probed and refine x k >= G: every item is a candidate, re-ranked exactly,
    so the lists are the exact top k (recall 100) and CMC is the exact one."""
    pytest.importorskip("faiss")
    q, g, qp, gp, qc, gc = random_problem(32, num_q=40, num_g=600, dim=16, num_ids=40, clustered=True)
    query, gallery = FeatureSet(q, qp, qc), FeatureSet(g, gp, gc)
    exact = ReIDEvaluator().evaluate(query, gallery)
    pq = ReIDEvaluator(search="faiss_ivfpq", nlist=1, nprobe=1, pq_m=4, topk=30, refine=20,
                       recall_queries=40).evaluate(query, gallery)
    assert pq["recall@30"] == 100.0
    for r in RANKS:
        assert pq[f"rank-{r}"] == pytest.approx(exact[f"rank-{r}"], abs=1e-9)
    coarse = ReIDEvaluator(search="faiss_ivfpq", nlist=1, nprobe=1, pq_m=4, topk=30, refine=0,
                           recall_queries=40).evaluate(query, gallery)
    assert coarse["recall@30"] < 100.0  # 4-byte codes alone do not find the exact lists
    with pytest.raises(ValueError, match="refine must be an integer >= 0"):
        ReIDEvaluator(search="faiss_ivfpq", refine=-1)


def test_refine_exact_breaks_ties_by_gallery_index():
    """Integer features: most candidate distances tie, and the re-ranked list must follow
    the exact search's tie rule (gallery index), whatever order the index returned."""
    from core.evaluation.search import refine_exact

    q, g, *_ = tied_problem(33, num_q=20, num_g=200)
    rng = np.random.default_rng(33)
    candidates = np.stack([rng.choice(200, 50, replace=False) for _ in range(20)])  # unsorted
    d = pairwise_distance(q.double(), g.double(), "euclidean").numpy()
    expected = np.array([[c for _, c in sorted((d[i, c], c) for c in row)[:12]] for i, row in enumerate(candidates)])
    assert (refine_exact(q, g, candidates, "euclidean", 12) == expected).all()


def test_refine_exact_with_no_candidate_found_returns_none():
    from core.evaluation.search import refine_exact

    q, g, *_ = random_problem(34, num_q=3, num_g=50, dim=4)
    assert (refine_exact(q, g, np.full((3, 8), -1), "cosine", 5) == -1).all()

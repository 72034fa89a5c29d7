"""k-reciprocal re-ranking (Zhong et al. 2017), specified on hand-worked sets and on a
clustered set where it should help."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.evaluation import ReIDEvaluator, pairwise_distance
from core.evaluation.reranking import MAX_ITEMS, k_reciprocal_distances, k_reciprocal_sets
from core.interfaces import FeatureSet
from tests.evaluation_helpers import random_problem

# Five points on a line: 0, 1, 3, 10, 12 (items 0..4), squared euclidean distances.
LINE = torch.tensor([[0.0], [1.0], [3.0], [10.0], [12.0]])


def nearest_on_the_line(k):
    d = pairwise_distance(LINE, LINE, "euclidean") ** 2
    return torch.topk(d, k + 1, dim=1, largest=False).indices


def test_k_reciprocal_sets_on_a_line():
    # 3 nearest (self included): 0: 0 1 2 | 1: 1 0 2 | 2: 2 1 0 | 3: 3 4 2 | 4: 4 3 2.
    # Item 2 is among the nearest of 3 and 4, but neither is among 2's: not reciprocal.
    sets = [sorted(s.tolist()) for s in k_reciprocal_sets(nearest_on_the_line(2), 2)]
    assert sets == [[0, 1, 2], [0, 1, 2], [0, 1, 2], [3, 4], [3, 4]]
    # 2 nearest: 0: 0 1 | 1: 1 0 | 2: 2 1 | 3: 3 4 | 4: 4 3 -> 2 keeps only itself.
    sets = [sorted(s.tolist()) for s in k_reciprocal_sets(nearest_on_the_line(1), 1)]
    assert sets == [[0, 1], [0, 1], [2], [3, 4], [3, 4]]


def test_disjoint_sets_give_jaccard_distance_one():
    # Query 0 against gallery 1..4 with k1 = 2, k2 = 1: R*(0) = {0, 1, 2} shares nothing
    # with R*(3) = R*(4) = {3, 4}, so d_J = 1 and the final distance is
    # (1 - lambda) * 1 + lambda * d(0, j) / max_j d(0, j).
    out = k_reciprocal_distances(LINE[:1], LINE[1:], "euclidean", k1=2, k2=1, lambda_value=0.3)
    original = torch.tensor([1.0, 9.0, 100.0, 144.0]) / 144.0
    assert out.shape == (1, 4)
    assert out[0, 2:].tolist() == pytest.approx((0.7 + 0.3 * original[2:]).tolist())
    assert (out[0, :2] < 0.7 + 0.3 * original[:2]).all()  # shared neighbours pull these closer


def test_lambda_one_is_the_normalised_original_distance():
    q, g = torch.randn(5, 8), torch.randn(20, 8)
    out = k_reciprocal_distances(q, g, "cosine", k1=4, k2=2, lambda_value=1.0)
    d_all = pairwise_distance(q, torch.cat([q, g]), "cosine")
    assert torch.allclose(out, d_all[:, 5:] / d_all.amax(1, keepdim=True), atol=1e-6)


def per_item_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """The published algorithm written item by item (the structure of the authors' numpy
    code), as the reference: squared euclidean distances, rows normalised by their max."""
    original_dist = np.concatenate([np.concatenate([q_q_dist, q_g_dist], axis=1),
        np.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0)
    original_dist = np.power(original_dist, 2).astype(np.float32)
    original_dist = np.transpose(1. * original_dist/np.max(original_dist,axis = 0))
    V = np.zeros_like(original_dist).astype(np.float32)
    initial_rank = np.argsort(original_dist).astype(np.int32)
    query_num = q_g_dist.shape[0]; all_num = original_dist.shape[0]
    for i in range(all_num):
        forward_k_neigh_index = initial_rank[i,:k1+1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index,:k1+1]
        fi = np.where(backward_k_neigh_index==i)[0]
        k_reciprocal_index = forward_k_neigh_index[fi]
        k_reciprocal_expansion_index = k_reciprocal_index
        for j in range(len(k_reciprocal_index)):
            candidate = k_reciprocal_index[j]
            candidate_forward_k_neigh_index = initial_rank[candidate,:int(np.around(k1/2.))+1]
            candidate_backward_k_neigh_index = initial_rank[candidate_forward_k_neigh_index,:int(np.around(k1/2.))+1]
            fi_candidate = np.where(candidate_backward_k_neigh_index == candidate)[0]
            candidate_k_reciprocal_index = candidate_forward_k_neigh_index[fi_candidate]
            if len(np.intersect1d(candidate_k_reciprocal_index,k_reciprocal_index))> 2./3*len(candidate_k_reciprocal_index):
                k_reciprocal_expansion_index = np.append(k_reciprocal_expansion_index,candidate_k_reciprocal_index)
        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        weight = np.exp(-original_dist[i,k_reciprocal_expansion_index])
        V[i,k_reciprocal_expansion_index] = 1.*weight/np.sum(weight)
    original_dist = original_dist[:query_num,]
    if k2 != 1:
        V_qe = np.zeros_like(V,dtype=np.float32)
        for i in range(all_num):
            V_qe[i,:] = np.mean(V[initial_rank[i,:k2],:],axis=0)
        V = V_qe
    invIndex = [np.where(V[:,i] != 0)[0] for i in range(all_num)]
    jaccard_dist = np.zeros_like(original_dist,dtype = np.float32)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1,all_num],dtype=np.float32)
        indNonZero = np.where(V[i,:] != 0)[0]
        indImages = [invIndex[ind] for ind in indNonZero]
        for j in range(len(indNonZero)):
            temp_min[0,indImages[j]] = temp_min[0,indImages[j]]+ np.minimum(V[i,indNonZero[j]],V[indImages[j],indNonZero[j]])
        jaccard_dist[i] = 1-temp_min/(2.-temp_min)
    final_dist = jaccard_dist*(1-lambda_value) + original_dist*lambda_value
    return final_dist[:query_num,query_num:]


@pytest.mark.parametrize("k1, k2", [(20, 6), (10, 1), (7, 3)])
def test_matches_the_per_item_reference(k1, k2):
    rng = torch.Generator().manual_seed(k1)
    q, g = torch.randn(30, 8, generator=rng), torch.randn(150, 8, generator=rng)
    cd = lambda a, b: torch.cdist(a.double(), b.double()).numpy()  # noqa: E731
    expected = per_item_re_ranking(cd(q, g), cd(q, q), cd(g, g), k1, k2, 0.3)
    ours = k_reciprocal_distances(q, g, "euclidean", k1, k2, 0.3).numpy()
    assert np.abs(ours - expected).max() < 1e-5


def clustered_sets(seed=0, num_ids=20, per_id=8, dim=16):
    rng = np.random.default_rng(seed)
    centres = 2.0 * rng.standard_normal((num_ids, dim))
    pids = np.repeat(np.arange(num_ids), per_id)
    x = torch.tensor(centres[pids] + rng.standard_normal((len(pids), dim)), dtype=torch.float32)
    is_query = np.arange(len(pids)) % per_id == 0
    cams = (np.arange(len(pids)) % per_id > 0).astype(np.int64)  # queries camera 0, gallery camera 1
    sel = torch.from_numpy(is_query)
    return (FeatureSet(x[sel], pids[is_query], cams[is_query]),
            FeatureSet(x[~sel], pids[~is_query], cams[~is_query]))


def test_reranking_does_not_reduce_map_on_clustered_data():
    query, gallery = clustered_sets()
    plain = ReIDEvaluator(metric="euclidean").evaluate(query, gallery)
    reranked = ReIDEvaluator(metric="euclidean", rerank=True, k1=6, k2=3).evaluate(query, gallery)
    assert reranked["mAP"] >= plain["mAP"]
    assert set(reranked) == set(plain)


def test_too_many_items_is_an_error_naming_the_size(monkeypatch):
    import core.evaluation.reranking as reranking

    monkeypatch.setattr(reranking, "MAX_ITEMS", 10)
    with pytest.raises(ValueError, match=r"4 queries \+ 8 gallery items = 12 items exceeds the limit of 10"):
        reranking.k_reciprocal_distances(torch.randn(4, 3), torch.randn(8, 3), "cosine")
    assert MAX_ITEMS == 40_000


def test_rerank_needs_exact_search():
    with pytest.raises(ValueError, match="rerank: true needs search: exact"):
        ReIDEvaluator(rerank=True, search="faiss_ivf")


# --- RE1, RE2: the evaluator's re-ranking wiring --------------------------------------------------------

def test_evaluator_passes_k1_k2_lambda_to_the_re_ranking():
    from core.evaluation import ReIDEvaluator
    from core.evaluation.ranking import rank_metrics
    from core.evaluation.reranking import k_reciprocal_distances
    from core.interfaces import FeatureSet
    q, g, qp, gp, qc, gc = random_problem(3, num_q=30, num_g=120)  # unclustered: lambda changes the order
    out = ReIDEvaluator(metric="euclidean", rerank=True, k1=9, k2=3, lambda_value=0.2).evaluate(
        FeatureSet(q, qp, qc), FeatureSet(g, gp, gc))

    def direct(k1, k2, lam):
        return rank_metrics(k_reciprocal_distances(q, g, "euclidean", k1, k2, lam), qp, gp, qc, gc)

    assert out == direct(9, 3, 0.2)
    assert out != direct(3, 9, 0.2) and out != direct(9, 3, 0.8)  # the case tells the parameters apart




# --- RR8: query expansion at k2 = 2 -----------------------------------------------------------------------

def test_re_ranking_k2_two_matches_the_authors_code():
    rng = torch.Generator().manual_seed(5)
    q, g = torch.randn(20, 8, generator=rng), torch.randn(90, 8, generator=rng)
    cd = lambda a, b: torch.cdist(a.double(), b.double()).numpy()  # noqa: E731
    expected = per_item_re_ranking(cd(q, g), cd(q, q), cd(g, g), 8, 2, 0.3)
    assert np.abs(k_reciprocal_distances(q, g, "euclidean", 8, 2, 0.3).numpy() - expected).max() < 1e-5

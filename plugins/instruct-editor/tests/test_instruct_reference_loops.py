"""Each formula evaluated by a plain per-anchor / per-query
loop written from METHODS.md "Instruct-ReID" (Eqs. 11-13, IRM++ memory, mAP-tau) and
compared with the implementation on random data that exercises every branch."""

import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.context import BuildContext
from reid_instruct_editor.adaptive_triplet import AdaptiveTripletLoss, adaptive_triplet
from reid_instruct_editor.evaluator import InstructReIDEvaluator
from reid_instruct_editor.map_tau import per_query_metrics_tau
from reid_instruct_editor.memory import IRMMemoryLoss, memory_loss


# ---------------------------------------------------------------- adaptive triplet
def at_reference(x, pids, s, m=0.3, w=0.1):
    """METHODS.md: L13 = mean max(0, d(i,p1) - d(i,n) + m s(i,p1));
    L11 = mean max(0, sign(s1 - s2)(d(i,p1) - d(i,p2)) + m |s1 - s2|); AT = w L11 + L13.
    p1 / p2: the farthest / second-farthest other sample of i's identity, n: the nearest
    sample of another identity; anchors without (two) positives leave the mean."""
    x, s = x.double().tolist(), s.double().tolist()
    pids = [int(p) for p in pids]
    n = len(pids)
    d = [[math.dist(x[i], x[j]) for j in range(n)] for i in range(n)]
    l13, l11 = [], []
    for i in range(n):
        pos = sorted((j for j in range(n) if j != i and pids[j] == pids[i]), key=lambda j: -d[i][j])
        neg = [j for j in range(n) if pids[j] != pids[i]]
        if pos and neg:
            l13.append(max(0.0, d[i][pos[0]] - min(d[i][j] for j in neg) + m * s[i][pos[0]]))
        if len(pos) >= 2:
            p1, p2 = pos[0], pos[1]
            gap = s[i][p1] - s[i][p2]
            sign = (gap > 0) - (gap < 0)
            l11.append(max(0.0, sign * (d[i][p1] - d[i][p2]) + m * abs(gap)))
    mean = lambda v: sum(v) / len(v) if v else 0.0  # noqa: E731
    return w * mean(l11) + mean(l13), mean(l11), mean(l13)


@pytest.mark.parametrize("seed", range(6))
def test_adaptive_triplet_matches_a_per_anchor_loop(seed):
    g = torch.Generator().manual_seed(seed)
    pids = torch.tensor([0] * 4 + [1] * 3 + [2] * 2 + [3] * 1 + [4] * 4)  # K = 4, 3, 2, 1, 4
    x = torch.randn(len(pids), 5, generator=g)
    e = F.normalize(torch.randn(len(pids), 3, generator=g), dim=1)
    s = e @ e.t()  # cosines of both signs; s1 - s2 of both signs across anchors
    total, parts = adaptive_triplet(x, pids, s, margin=0.3, l11_weight=0.1)
    want, l11, l13 = at_reference(x, pids, s)
    assert float(parts["l13"]) == pytest.approx(l13, rel=1e-5, abs=1e-6)
    assert float(parts["l11"]) == pytest.approx(l11, rel=1e-5, abs=1e-6)
    assert float(total) == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert l11 > 0  # the L11 branch is exercised


# ---------------------------------------------------------------- IRM++ memory
def memory_reference(f, pids, s, memory, filled, T, tau, lam):
    """METHODS.md / memory.py docstring as a loop: softmax over the *filled* slots only;
    L_hard = mean_i -log p_i[y_i] (the true identity); P_i = {j : y_j = y_i, s(i,j) >= tau} u {i};
    q_i = mean_{j in P_i} p_j; L_soft = mean_i -sum_k q_ik log p_ik; L = (1 - lam) L_hard + lam L_soft."""
    f, memory, s = f.double().tolist(), memory.double().tolist(), s.double().tolist()
    slots = [k for k in range(len(memory)) if bool(filled[k])]
    n = len(f)

    def p(j):
        z = [sum(a * b for a, b in zip(f[j], memory[k])) / T for k in slots]
        top = max(z)
        e = [math.exp(v - top) for v in z]
        return {k: v / sum(e) for k, v in zip(slots, e)}

    probs = [p(j) for j in range(n)]
    hard = sum(-math.log(probs[i][int(pids[i])]) for i in range(n)) / n
    soft = 0.0
    for i in range(n):
        group = [j for j in range(n) if int(pids[j]) == int(pids[i]) and (j == i or s[i][j] >= tau)]
        q = {k: sum(probs[j][k] for j in group) / len(group) for k in slots}
        soft += -sum(q[k] * math.log(probs[i][k]) for k in slots) / n
    return (1 - lam) * hard + lam * soft, hard, soft


def test_memory_loss_matches_a_loop_with_unfilled_slots_ties_at_tau_and_wrong_argmax():
    g = torch.Generator().manual_seed(0)
    slots, dim = 6, 4
    memory = F.normalize(torch.randn(slots, dim, generator=g), dim=1)
    filled = torch.tensor([True, True, True, False, True, False])
    memory[~filled] = 0.0  # the module's unfilled slots are zero rows
    pids = torch.tensor([0, 0, 1, 1, 2, 4, 4])
    f = F.normalize(torch.randn(len(pids), dim, generator=g), dim=1)
    f[0] = memory[1]  # sample 0 (identity 0) sits on identity 1's slot: its argmax is not its label
    s = torch.tensor([[1.0, 0.5, 0, 0, 0, 0, 0],  # 0.5 == tau: a consistent pair ("reaches" tau)
                      [0.5, 1.0, 0, 0, 0, 0, 0],
                      [0, 0, 1.0, 0.4, 0, 0, 0],  # below tau: not consistent
                      [0, 0, 0.4, 1.0, 0, 0, 0],
                      [0, 0, 0, 0, 1.0, 0, 0],
                      [0, 0, 0, 0, 0, 1.0, 0.9],
                      [0, 0, 0, 0, 0, 0.9, 1.0]])
    assert int((f @ memory.t()).masked_fill(~filled, -1e9)[0].argmax()) != 0
    loss, parts = memory_loss(f, pids, s, memory, filled, temperature=0.05, tau=0.5, soft_weight=0.4)
    want, hard, soft = memory_reference(f, pids, s, memory, filled, 0.05, 0.5, 0.4)
    assert float(parts["hard"]) == pytest.approx(hard, rel=1e-5)
    assert float(parts["soft"]) == pytest.approx(soft, rel=1e-5)
    assert float(loss) == pytest.approx(want, rel=1e-5)


# ---------------------------------------------------------------- mAP-tau
def tau_reference(d, q_pids, g_pids, q_cams, g_cams, sim, tau):
    """Per query: stable sort, drop same identity + camera, positives = same identity with
    similarity >= tau (the similarity *reaches* tau)."""
    out = []
    for i in range(len(q_pids)):
        order = np.argsort(d[i], kind="stable")
        order = order[~((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i]))]
        hits = (g_pids[order] == q_pids[i]) & (sim[i, order] >= tau)
        if not hits.any():
            out.append(None)
            continue
        ranks = np.flatnonzero(hits) + 1
        out.append((ranks[0], float(np.mean(np.arange(1, len(ranks) + 1) / ranks))))
    return out


def test_map_tau_counts_a_similarity_equal_to_tau_as_consistent():
    rng = np.random.default_rng(7)
    n_q, n_g = 30, 120
    q_pids, g_pids = rng.integers(0, 6, n_q), rng.integers(0, 6, n_g)
    q_cams, g_cams = rng.integers(0, 3, n_q), rng.integers(0, 3, n_g)
    d = rng.random((n_q, n_g))
    sim = rng.choice([0.0, 0.5, 1.0], size=(n_q, n_g))  # many similarities exactly at tau
    got = per_query_metrics_tau(lambda rows: (lambda a, b: torch.as_tensor(d[rows][a:b])), q_pids, g_pids,
                                q_cams, g_cams, lambda a, b: sim[a, b], 0.5)
    want = tau_reference(d, q_pids, g_pids, q_cams, g_cams, sim, 0.5)
    for i, w in enumerate(want):
        assert bool(got.valid[i]) == (w is not None), i
        if w is not None:
            assert got.first_rank[i] == w[0] and abs(got.average_precision[i] - w[1]) < 1e-9, i


def test_map_tau_reads_the_reference_embeddings_as_cosines():
    """The frozen encoder's embeddings need not be unit vectors: scaling them changes nothing."""
    from core.interfaces import FeatureSet
    from core.records import Record

    def unit(*v):
        v = torch.tensor(v, dtype=torch.float32)
        return v / v.norm()

    def features(embeddings, pids, cams, instructions):
        return FeatureSet(embeddings=torch.as_tensor(embeddings, dtype=torch.float32), pids=np.asarray(pids),
                          camids=np.asarray(cams), records=[Record(path=None, pid=p, camid=c) for p, c in zip(pids, cams)],
                          extras={"reference_instruction_embedding": torch.stack(instructions)})

    sims = [0.9, 0.1, 0.3, 0.7, 0.1, 0.95]
    q = features([[0.0]], [1], [0], [3.0 * unit(1, 0)])
    g = features([[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]], [1, 2, 1, 1, 3, 1], [1, 1, 1, 2, 1, 0],
                 [0.25 * unit(c, math.sqrt(1 - c * c)) for c in sims])
    m = InstructReIDEvaluator(setting="task-free", tau=0.5, metric="euclidean", ranks=[1]).evaluate(q, g)
    assert math.isclose(m["free/mAP_tau"], 100 * (1 + 2 / 4) / 2, rel_tol=1e-9)


# ---------------------------------------------------------------- defaults (METHODS.md)
def test_defaults_are_those_of_methods_md():
    at = AdaptiveTripletLoss()
    assert (at.margin, at.l11_weight) == (0.3, 0.1)
    fn = inspect.signature(adaptive_triplet).parameters
    assert (fn["margin"].default, fn["l11_weight"].default) == (0.3, 0.1)
    mem = IRMMemoryLoss(BuildContext(num_identities=3, feature_dim=4), dim=4)
    assert (mem.temperature, mem.momentum, mem.soft_weight, mem.tau) == (0.05, 0.2, 0.4, 0.5)
    assert InstructReIDEvaluator().tau == 0.5


def test_memory_instruction_similarity_is_a_cosine(make_batch):
    """s(i, j) of the soft term is the cosine of the instruction embeddings: their scale
    must not move a pair across tau (|e| = 0.6 puts 0.6^2 * 1 = 0.36 below tau 0.5)."""
    ctx = BuildContext(num_identities=3, feature_dim=4)
    g = torch.Generator().manual_seed(2)
    emb = torch.randn(4, 4, generator=g)
    pids = [0, 0, 1, 2]
    instr = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # rows 0 and 1: cosine 1
    values = []
    for scale in (1.0, 0.6):
        loss = IRMMemoryLoss(ctx, dim=4)
        loss.memory.copy_(F.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(3)), dim=1))
        loss.filled.fill_(True)
        value, parts = loss({"embedding": emb, "instruction_embedding": scale * instr},
                            make_batch(["x"] * 4, pids=pids))
        values.append(float(parts["soft"]))
    assert values[0] == pytest.approx(values[1], rel=1e-6)

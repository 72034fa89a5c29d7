"""`ReIDEvaluator(exclude_same_clothes=True).ranked_gallery`: the clothes-changing protocol
of LTCC / PRCC (Gu et al. 2022; Yang et al. 2019): a gallery item of the query's identity
is left out when it is from the query's camera or in the query's clothes, so only the
person seen elsewhere in other clothes counts. `core search --worst` ranks this mask;
its per-query APs must average to the evaluator's own mAP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.evaluation.reid import ReIDEvaluator
from core.interfaces import FeatureSet
from core.records import Record


def features(labels: list[tuple[int, int, int]], emb: torch.Tensor) -> FeatureSet:
    """(pid, camid, clothes_id) per row."""
    records = [Record(None, pid=p, camid=c, extras={"clothes_id": k}) for p, c, k in labels]
    return FeatureSet(emb, np.asarray([p for p, _, _ in labels]), np.asarray([c for _, c, _ in labels]),
                      records=records)


QUERY = [(1, 0, 10), (2, 1, 20)]
GALLERY = [(1, 0, 11), (1, 1, 10), (1, 1, 11), (2, 0, 20), (2, 0, 21), (3, 1, 10)]


def by_hand(q, g) -> bool:
    """Ranked unless of the query's identity and from its camera or in its clothes."""
    return not (q[0] == g[0] and (q[1] == g[1] or q[2] == g[2]))


def test_the_clothes_rule_leaves_out_the_querys_identity_in_its_clothes_or_camera():
    query, gallery = features(QUERY, torch.zeros(2, 0)), features(GALLERY, torch.zeros(6, 0))
    ranked = ReIDEvaluator(exclude_same_clothes=True).ranked_gallery(query, gallery).ranked(np.array([0, 1]))
    assert ranked.tolist() == [[by_hand(q, g) for g in GALLERY] for q in QUERY]


def test_the_clothes_rules_masked_aps_average_to_the_evaluators_map():
    from tests.evaluation_helpers import masked_average_precision
    from core.tools.ranked_items import protocol_map

    rng = np.random.default_rng(3)
    q_labels = [(int(p), int(c), int(k)) for p, c, k in zip(rng.integers(0, 4, 12), rng.integers(0, 3, 12),
                                                             rng.integers(0, 2, 12))]
    g_labels = [(int(p), int(c), int(k)) for p, c, k in zip(rng.integers(0, 4, 40), rng.integers(0, 3, 40),
                                                             rng.integers(0, 2, 40))]
    q_emb, g_emb = torch.randn(12, 8, generator=torch.Generator().manual_seed(1)), \
        torch.randn(40, 8, generator=torch.Generator().manual_seed(2))
    query, gallery = features(q_labels, q_emb), features(g_labels, g_emb)
    evaluator = ReIDEvaluator(exclude_same_clothes=True, per_category=False)
    protocol = evaluator.ranked_gallery(query, gallery)
    d = 1 - torch.nn.functional.normalize(q_emb, dim=1) @ torch.nn.functional.normalize(g_emb, dim=1).T
    valid, ap, _ = masked_average_precision(d, protocol.ranked(np.arange(12)), query.pids, gallery.pids)
    value, _ = protocol_map(protocol, ap, valid)
    metrics = evaluator.evaluate(query, gallery)
    assert int(valid.sum()) == metrics["num_valid_queries"]
    assert 100 * value == pytest.approx(metrics["mAP"], abs=1e-4)

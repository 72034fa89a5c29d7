"""k-reciprocal re-ranking with the cosine metric (mutation review, branch mutation18),
against the authors' per-item algorithm (tests/test_reranking.py's transcription of
Zhong et al.'s code, which uses squared euclidean distances).

For unit vectors |a - b|^2 = 2 (1 - cos(a, b)): the squared euclidean distance is twice
the cosine distance, so after each row is divided by its maximum (step 1) the two are the
same matrix, with the same neighbours, weights and final distances. The cosine path must
therefore give the authors' result on the unit-normalised features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.evaluation.reranking import k_reciprocal_distances
from tests.test_reranking import per_item_re_ranking


@pytest.mark.parametrize("k1, k2", [(20, 6), (7, 1), (9, 3)])
def test_cosine_re_ranking_matches_the_authors_code_on_unit_features(k1, k2):
    g = torch.Generator().manual_seed(k1 + k2)
    q, gal = 3.0 * torch.randn(25, 8, generator=g), 3.0 * torch.randn(120, 8, generator=g)  # not unit length
    unit = lambda x: torch.nn.functional.normalize(x.double(), dim=1)  # noqa: E731
    cd = lambda a, b: torch.cdist(unit(a), unit(b)).numpy()  # noqa: E731
    expected = per_item_re_ranking(cd(q, gal), cd(q, q), cd(gal, gal), k1, k2, 0.3)
    ours = k_reciprocal_distances(q, gal, "cosine", k1, k2, 0.3).numpy()
    assert np.abs(ours - expected).max() < 1e-5

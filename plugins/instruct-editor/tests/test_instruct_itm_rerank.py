"""ITM re-ranking of text-to-image queries (the authors' evaluation, ALBEF / RaSa style):
the top-k by the contrastive distance are re-ordered by the ITM score, nothing outside
the top-k moves, and other queries are untouched. Hand cases with known orders."""

import numpy as np
import pytest
import torch

from core.interfaces import FeatureSet
from core.pipeline import ReIDModel
from core.records import Record
from reid_instruct_editor.evaluator import InstructReIDEvaluator
from reid_instruct_editor.head import InstructHead
from reid_instruct_editor.itm_rerank import ITMScorer, rerank_top_k
from reid_instruct_editor.t2i_matching import T2IMatchingLoss


def order(distances):
    return torch.argsort(distances, dim=1, stable=True).tolist()


def test_only_the_top_k_are_reordered_by_the_score():
    d = torch.tensor([[0.1, 0.5, 0.2, 0.9, 0.3],
                      [0.4, 0.3, 0.2, 0.1, 0.0]])
    table = torch.tensor([1.0, 5.0, 3.0, 9.0, 2.0])  # score of a gallery item (the same for both rows)

    def score(rows, top):
        return table[top]

    # row 0: top-3 {0, 2, 4} by distance -> by score 2 (3.0), 4 (2.0), 0 (1.0); 1, 3 after, by distance
    # item 3 has the highest score but is outside the top-3: it stays last
    assert order(rerank_top_k(d, 3, score)) == [[2, 4, 0, 1, 3], [3, 2, 4, 1, 0]]
    assert order(rerank_top_k(d, 0, score)) == order(d)  # off
    assert order(rerank_top_k(d, 5, score)) == [[3, 1, 2, 4, 0]] * 2  # k = all: the score alone
    assert order(rerank_top_k(d, 9, score)) == [[3, 1, 2, 4, 0]] * 2  # k beyond the gallery


def test_the_score_is_asked_for_each_row_and_its_own_top_k():
    d = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    seen = {}

    def score(rows, top):
        seen["rows"], seen["top"] = rows.tolist(), top.tolist()
        return -top.float()  # prefers low indices

    assert order(rerank_top_k(d, 2, score)) == [[0, 1, 2], [1, 2, 0]]
    assert seen["rows"] == [0, 1] and seen["top"] == [[0, 1], [2, 1]]


class StubMatching(torch.nn.Module):
    """match logits (0, image[:, 0, 0]): the ITM score of a gallery item is the first value
    of its token states, set by hand."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Linear(1, 1)

    def match_logits(self, text, valid, image):
        return torch.stack([torch.zeros(len(image)), image[:, 0, 0]], dim=1)


def feature_sets(itm_values):
    """Gallery g0..g3 (pids 0..3, camera 1); queries: a caption of pid 1 and an image of
    pid 2 (camera 0), both ranking g0, g1, g2, g3 by distance."""
    gallery_emb = torch.tensor([[1.0, 0.0], [0.9, 0.3], [0.7, 0.7], [0.0, 1.0]])
    query_emb = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    tokens = torch.zeros(4, 3, 4)
    tokens[:, 0, 0] = torch.tensor(itm_values)
    gallery = FeatureSet(embeddings=gallery_emb, pids=np.arange(4), camids=np.ones(4, dtype=np.int64),
                         extras={"image_tokens": tokens},
                         records=[Record(None, i, 1, extras={"task": "t", "instruction_id": "x"}) for i in range(4)])
    q_records = [Record(None, 1, 0, extras={"task": "t", "text_query": True, "instruction": "a man in a red coat",
                                             "instruction_id": "x"}),
                 Record(None, 2, 0, extras={"task": "t", "text_query": False, "instruction": "do not change clothes",
                                             "instruction_id": "x"})]
    query = FeatureSet(embeddings=query_emb, pids=np.array([1, 2]), camids=np.zeros(2, dtype=np.int64),
                       extras={"image_tokens": torch.zeros(2, 3, 4)}, records=q_records)
    return query, gallery


@pytest.fixture
def text_model(editor):
    backbone, ctx = editor
    return ReIDModel(backbone, InstructHead(ctx, classifier=False)).eval()


def per_query_ap(evaluator, query, gallery):
    """(caption AP, image-query AP) from the evaluator on each query alone."""
    out = []
    for i in range(2):
        q = FeatureSet(embeddings=query.embeddings[i:i + 1], pids=query.pids[i:i + 1], camids=query.camids[i:i + 1],
                       extras={k: v[i:i + 1] for k, v in query.extras.items()}, records=[query.records[i]])
        out.append(evaluator.evaluate(q, gallery)["mAP"])
    return out


def test_the_evaluator_reranks_caption_queries_by_the_itm_score(text_model):
    query, gallery = feature_sets([0.0, 5.0, 9.0, 100.0])  # g3 scores highest but is last by distance
    plain = InstructReIDEvaluator(setting="task-specific", ranks=[1])
    assert "image_tokens" not in plain.outputs
    assert per_query_ap(plain, query, gallery) == pytest.approx([50.0, 100 / 3])  # positives at rank 2 and 3
    # k=2: {g0, g1} -> g1 (5), g0, then g2, g3: the caption's positive g1 at rank 1
    # k=3: {g0, g1, g2} -> g2 (9), g1, g0, then g3: rank 2
    # k=4: g3 (100), g2, g1, g0: rank 3
    for k, expected in [(2, 100.0), (3, 50.0), (4, 100 / 3)]:
        ev = InstructReIDEvaluator(setting="task-specific", ranks=[1], itm_rerank=k)
        assert "image_tokens" in ev.outputs
        ev.bind(text_model, StubMatching())
        caption, image = per_query_ap(ev, query, gallery)
        assert caption == pytest.approx(expected), k
        assert image == pytest.approx(100 / 3), k  # an image query is never re-ranked
    # the two queries together (one evaluation): the image query, whose positive g2 the
    # ITM score would put first with k=3, keeps its rank 3
    both = InstructReIDEvaluator(setting="task-specific", ranks=[1], itm_rerank=3)
    both.bind(text_model, StubMatching())
    metrics = both.evaluate(query, gallery)
    assert metrics["mAP"] == pytest.approx((50.0 + 100 / 3) / 2)
    assert metrics["rank-1"] == pytest.approx(0.0)


class TwoLogitMatching(torch.nn.Module):
    """match logits (image[:, 0, 1], image[:, 0, 0]): both logits of the ITM head set by
    hand per gallery item, so the match logit and the match probability can disagree."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Linear(1, 1)

    def match_logits(self, text, valid, image):
        return torch.stack([image[:, 0, 1], image[:, 0, 0]], dim=1)


def test_the_logit_and_the_probability_rank_the_top_k_differently(text_model):
    """The score (itm_rerank.py, README "Evaluation"): `logit` = the match logit l1 (the
    authors' `itm_head(...)[:, 1]`, the default), `probability` = exp(l1) / (exp(l0) +
    exp(l1)), which orders as l1 - l0. Top 3 of the caption (pid 1) by distance: g0, g1, g2:

        item  (l0, l1)   l1   l1 - l0      by logit: g2 (6), g0 (4), g1 (2): positive g1 at rank 3
        g0    ( 0, 4)     4    4           by probability: g1 (7), g0 (4), g2 (3): g1 at rank 1
        g1    (-5, 2)     2    7
        g2    ( 3, 6)     6    3           without re-ranking g1 is at rank 2
    """
    query, gallery = feature_sets([4.0, 2.0, 6.0, 0.0])
    gallery.extras["image_tokens"][:, 0, 1] = torch.tensor([0.0, -5.0, 3.0, 0.0])
    caption = {}
    for score in (None, "logit", "probability"):
        ev = InstructReIDEvaluator(setting="task-specific", ranks=[1], itm_rerank=3,
                                   **({"itm_score": score} if score else {}))
        ev.bind(text_model, TwoLogitMatching())
        caption[score], _ = per_query_ap(ev, query, gallery)
    assert caption["logit"] == pytest.approx(100 / 3)
    assert caption["probability"] == pytest.approx(100.0)
    assert caption[None] == caption["logit"]  # the authors' score is the default


def test_itm_scores_are_the_matching_heads_in_evaluation_mode(editor, text_model):
    """Caption tokens through the model's text encoder and projection, the matching loss's
    fusion and head without dropout; `logit` = the match logit, `probability` its softmax."""
    backbone, ctx = editor
    torch.manual_seed(5)
    matching = T2IMatchingLoss(ctx, layers=1, heads=2, dropout=0.5).train()
    images = torch.randn(5, 9, ctx.feature_dim)
    top = torch.tensor([[4, 1, 2], [0, 3, 1]])
    captions = ["a man in a red coat", "a woman with a black bag"]
    enc = backbone.instruction
    with torch.no_grad():
        _, states, valid = enc.encode_text(enc.tokenize(captions, images.device))
        text = backbone.text_tokens(states)
        matching.eval()
        logits = torch.stack([matching.match_logits(text[i].expand(3, -1, -1), valid[i].expand(3, -1), images[top[i]])
                              for i in range(2)])
        matching.train()
    for kind, expect in [("logit", logits[..., 1]), ("probability", logits.softmax(-1)[..., 1])]:
        scorer = ITMScorer(text_model, matching, kind, batch=4)  # batches split across queries
        t, v = scorer.text_tokens(captions, images.device)
        got = scorer(t, v, images, top)
        torch.testing.assert_close(got, expect, atol=1e-5, rtol=1e-5)
    assert matching.training  # its mode is given back


def test_bad_settings_and_missing_parts_are_named(text_model):
    with pytest.raises(ValueError, match="itm_rerank"):
        InstructReIDEvaluator(itm_rerank=-1)
    with pytest.raises(ValueError, match="itm_score"):
        InstructReIDEvaluator(itm_rerank=4, itm_score="margin")
    query, gallery = feature_sets([0.0, 1.0, 2.0, 3.0])
    unbound = InstructReIDEvaluator(itm_rerank=2)
    with pytest.raises(ValueError, match="bind"):
        unbound.evaluate(query, gallery)

    class Trainer:
        model = type("M", (), {"losses": []})()

    with pytest.raises(ValueError, match="t2i_matching"):
        unbound.on_evaluate_start(trainer=Trainer())
    # a matching head that never trained (baseline evaluation, losses not restored): no
    # re-ranking, said by the result
    untrained = StubMatching()
    untrained.trained_steps = torch.zeros((), dtype=torch.long)
    Trainer.model = ReIDModel(text_model.backbone, text_model.head)
    Trainer.model.losses = [untrained]
    query, gallery = feature_sets([0.0, 5.0, 9.0, 100.0])
    unbound.on_evaluate_start(trainer=Trainer())
    skipped = unbound.evaluate(query, gallery)
    plain = InstructReIDEvaluator(ranks=[1]).evaluate(query, gallery)
    assert skipped["itm_reranked"] == 0.0 and skipped["mAP"] == pytest.approx(plain["mAP"])
    untrained.trained_steps += 1
    unbound.on_evaluate_start(trainer=Trainer())
    reranked = unbound.evaluate(query, gallery)  # k=2: the caption's positive moves to rank 1
    assert reranked["itm_reranked"] == 1.0 and reranked["mAP"] > plain["mAP"]

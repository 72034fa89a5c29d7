"""The tools rank a run's own splits as its evaluator ranks them (`Evaluator.ranked_gallery`,
core.tools.ranked_items): `core search --worst` computes each query's AP over the items
evaluation ranks, and `core search` / `core explain` never show an item evaluation does
not rank. Before the hook they ranked the whole gallery less the query's identity in its
camera whatever the evaluator did."""

import copy

import numpy as np
import pytest
import torch
import yaml

from core.cli import main
from core.interfaces import Evaluator, FeatureSet, RankedGallery
from core.testing import TINY_PIPELINE


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from core.runner import run

    folder = tmp_path_factory.mktemp("ranked-items-run")
    (folder / "tiny.yaml").write_text(yaml.safe_dump(copy.deepcopy(TINY_PIPELINE)))
    return run(folder / "tiny.yaml", run_dir=folder / "run").run_dir


def hidden(rows: np.ndarray, num_gallery: int) -> np.ndarray:
    """The toy evaluator's rule: item j is hidden from query i when (i + j) % 3 == 0."""
    return (np.asarray(rows)[:, None] + np.arange(num_gallery)[None, :]) % 3 == 0


class HidingEvaluator(Evaluator):
    """Ranks every gallery item but those `hidden` names (its identity and camera included)."""

    def evaluate(self, query, gallery):
        return {}

    def ranked_gallery(self, query, gallery):
        return RankedGallery(ranked=lambda rows: ~hidden(rows, len(gallery)), rule="every item not hidden")


@pytest.fixture
def hiding_runs(monkeypatch):
    """Runs loaded by the tools carry the HidingEvaluator in place of their own."""
    import core.tools.loading as loading

    real = loading.load_run

    def with_hiding_evaluator(*args, **kwargs):
        run = real(*args, **kwargs)
        run.pipeline.evaluator = HidingEvaluator()
        return run

    monkeypatch.setattr(loading, "load_run", with_hiding_evaluator)


def splits(run_dir):
    from core.tools.images import run_split
    from core.tools.loading import load_run

    run = load_run(run_dir, device="cpu")
    return run, run_split(run, "query"), run_split(run, "gallery")


def visible(query_row: int, num_gallery: int) -> list[int]:
    return np.flatnonzero(~hidden(np.asarray([query_row]), num_gallery)[0]).tolist()


def test_search_of_the_runs_own_splits_never_returns_what_the_evaluator_does_not_rank(trained_run, hiding_runs):
    from core.tools.search import search

    _, _, gallery = splits(trained_run)
    n = len(gallery)
    results = search(trained_run, "run:query", "run:gallery", top=n, device="cpu", progress=False,
                     echo=lambda text: None)
    assert results and all(sorted(r.gallery.tolist()) == visible(r.query, n) for r in results)


@pytest.mark.parametrize("half", [False, True])
def test_a_gallery_file_extracted_from_the_run_is_ranked_by_the_evaluators_rule(trained_run, hiding_runs, tmp_path,
                                                                                half):
    """In memory and memory-mapped (`--half`, ranked block by block): the same items."""
    from core.tools.search import search

    feats = tmp_path / "g.npz"
    assert main(["extract", str(trained_run), "--images", "run:gallery", "--out", str(feats),
                 *(["--half"] if half else [])]) == 0
    _, _, gallery = splits(trained_run)
    n = len(gallery)
    results = search(trained_run, "run:query", str(feats), top=n, device="cpu", progress=False,
                     echo=lambda text: None)
    assert results and all(sorted(r.gallery.tolist()) == visible(r.query, n) for r in results)


def test_worst_queries_rank_only_what_the_evaluator_ranks(trained_run, hiding_runs, tmp_path):
    from core.tools.search import worst_queries

    _, _, gallery = splits(trained_run)
    n = len(gallery)
    found = worst_queries(trained_run, count=5, top=n, out=tmp_path / "worst", device="cpu", progress=False,
                          echo=lambda text: None)
    results = found["synthetic"]
    assert len(results) == 5 and all(sorted(r.gallery.tolist()) == visible(r.query, n) for r in results)


def test_explain_ranks_only_what_the_evaluator_ranks(trained_run, hiding_runs, tmp_path, monkeypatch):
    from core.tools import search

    ranked, real_rank = [], search.rank

    def spy(*args, **kwargs):
        ranked.extend(real_rank(*args, **kwargs))
        return ranked

    monkeypatch.setattr(search, "rank", spy)
    _, _, gallery = splits(trained_run)
    n = len(gallery)
    assert main(["explain", str(trained_run), "--images", "run:query", "--out", str(tmp_path / "maps"),
                 "--method", "rollout", "--limit", "3", "--top", str(n)]) == 0
    assert len(ranked) == 3 and all(sorted(r.gallery.tolist()) == visible(r.query, n) for r in ranked)


def test_either_camera_flag_replaces_the_evaluators_rule_on_the_runs_own_splits(trained_run, hiding_runs):
    from core.tools.search import search

    _, query, gallery = splits(trained_run)
    n = len(gallery)
    results = search(trained_run, "run:query", "run:gallery", top=n, exclude_same_camera=False, device="cpu",
                     progress=False, echo=lambda text: None)
    assert [sorted(r.gallery.tolist()) for r in results] == [list(range(n))] * len(query)


def plain_average_precision(d: np.ndarray, ranked: np.ndarray, q_pid: int, g_pids: np.ndarray) -> float | None:
    """One query's AP by a loop: walk the items by (distance, index), skip those not ranked."""
    hits, total, kept = 0, 0.0, 0
    for j in sorted(range(len(d)), key=lambda j: (d[j], j)):
        if not ranked[j]:
            continue
        kept += 1
        if g_pids[j] == q_pid:
            hits += 1
            total += hits / kept
    return total / hits if hits else None


def test_masked_average_precision_is_the_plain_loops():
    from tests.evaluation_helpers import masked_average_precision

    rng = np.random.default_rng(0)
    d = rng.integers(0, 5, (7, 30)).astype(np.float32)  # many ties: broken by gallery index
    ranked = rng.random((7, 30)) > 0.3
    q_pids, g_pids = rng.integers(0, 3, 7), rng.integers(0, 3, 30)
    valid, ap, _ = masked_average_precision(torch.from_numpy(d), ranked, q_pids, g_pids)
    for i in range(7):
        want = plain_average_precision(d[i], ranked[i], q_pids[i], g_pids)
        assert valid[i] == (want is not None)
        assert ap[i] == pytest.approx(want or 0.0, abs=1e-12)


def plain_ranked_metrics(d: np.ndarray, ranked: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray):
    """(valid, AP, first rank) per query by `plain_average_precision`'s walk."""
    valid, ap, first = [], [], []
    for i in range(len(d)):
        order = [j for j in sorted(range(d.shape[1]), key=lambda j: (d[i, j], j)) if ranked[i, j]]
        hits = [k + 1 for k, j in enumerate(order) if g_pids[j] == q_pids[i]]
        want = plain_average_precision(d[i], ranked[i], q_pids[i], g_pids)
        valid.append(want is not None)
        ap.append(want or 0.0)
        first.append(hits[0] if hits else 0)
    return np.array(valid), np.array(ap), np.array(first)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spread", ["ties", "distinct", "negative"])
@pytest.mark.parametrize("chunk_size", [0, 3])
def test_the_evaluators_ranking_under_a_mask_is_the_plain_loops(dtype, spread, chunk_size):
    """`per_query_metrics(ranked=...)` (what `--worst` runs): an item the mask leaves out
    is neither a positive nor before one, whatever its identity; ties go by gallery index.
    Rows masked whole, rows without a positive and both of the ranking's paths (few
    items up to the hardest positive: listed; most: the whole chunk binned) included."""
    from core.evaluation.ranking import per_query_metrics

    rng = np.random.default_rng(7)
    q, g = 11, 200
    q_pids, g_pids = rng.integers(0, 4, q), rng.integers(0, 4, g)
    if spread == "ties":
        d = rng.integers(0, 6, (q, g)).astype(dtype)
    else:
        d = rng.random((q, g)).astype(dtype) - (0.5 if spread == "negative" else 0.0)
    near = g_pids[None, :] == q_pids[:, None]
    d[:5] = np.where(near[:5], d[:5] * 0.01, d[:5] + 10)  # rows 0-4: positives first (the listed path)
    ranked = rng.random((q, g)) > 0.4
    ranked[1] = False  # nothing ranked
    ranked[2] &= ~near[2]  # no positive ranked
    calls = []

    def mask(rows):
        calls.append(np.asarray(rows).tolist())
        return ranked[rows]

    got = per_query_metrics(torch.from_numpy(d), q_pids, g_pids, np.zeros(q), np.zeros(g), exclude_same_camera=False,
                            chunk_size=chunk_size, threads=1, ranked=mask)
    valid, ap, first = plain_ranked_metrics(d, ranked, q_pids, g_pids)
    assert got.valid.tolist() == valid.tolist() and not valid[1] and not valid[2] and valid.sum() >= 7
    np.testing.assert_allclose(got.average_precision, ap, rtol=0, atol=1e-12)
    assert got.first_rank.tolist() == first.tolist()
    assert sorted(sum(calls, [])) == list(range(q))  # every query's mask asked once


def test_a_mask_and_the_camera_rule_together_remove_both():
    """The evaluator's own removal (identity and camera) still applies under a mask."""
    from core.evaluation.ranking import per_query_metrics

    rng = np.random.default_rng(3)
    q, g = 9, 120
    d = rng.integers(0, 4, (q, g)).astype(np.float32)
    q_pids, g_pids, q_cams, g_cams = (rng.integers(0, 3, n) for n in (q, g, q, g))
    ranked = rng.random((q, g)) > 0.3
    got = per_query_metrics(d, q_pids, g_pids, q_cams, g_cams, threads=1, ranked=lambda rows: ranked[rows])
    both = ranked & ~((q_pids[:, None] == g_pids[None, :]) & (q_cams[:, None] == g_cams[None, :]))
    valid, ap, first = plain_ranked_metrics(d, both, q_pids, g_pids)
    assert got.valid.tolist() == valid.tolist()
    np.testing.assert_allclose(got.average_precision, ap, rtol=0, atol=1e-12)
    assert got.first_rank.tolist() == first.tolist()


def test_a_mask_of_the_wrong_shape_is_named():
    from core.evaluation.ranking import per_query_metrics

    with pytest.raises(ValueError, match=r"ranked\(rows\) for query rows \[0, 2\).*expected bool of shape \(2, 3\)"):
        per_query_metrics(np.zeros((2, 3)), [0, 1], [0, 1, 1], [0, 0], [1, 1, 1], threads=1,
                          ranked=lambda rows: np.ones((len(rows), 4), dtype=bool))


def test_worst_queries_aps_are_the_plain_loops_under_an_arbitrary_mask():
    """`protocol_average_precision` (the APs `--worst` sorts) on real distances with a
    mask that is no camera rule: each query's AP, validity and first rank as the loop
    walks the cosine distances."""
    from core.evaluation.distances import pairwise_distance
    from core.tools.search import protocol_average_precision

    rng = np.random.default_rng(5)
    q_emb, g_emb = rng.standard_normal((13, 8)).astype(np.float32), rng.standard_normal((90, 8)).astype(np.float32)
    g_emb[40:50] = g_emb[30:40]  # duplicate items: equal distances, ordered by index
    q_pids, g_pids = rng.integers(0, 5, 13), rng.integers(0, 5, 90)
    valid, ap, first = protocol_average_precision(q_emb, g_emb, "cosine", lambda rows: ~hidden(rows, 90), q_pids,
                                                  g_pids)
    d = pairwise_distance(torch.from_numpy(q_emb), torch.from_numpy(g_emb), "cosine").numpy()
    want = plain_ranked_metrics(d, ~hidden(np.arange(13), 90), q_pids, g_pids)
    assert valid.tolist() == want[0].tolist() and first.tolist() == want[2].tolist()
    np.testing.assert_allclose(ap, want[1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("kwargs", [{}, {"exclude_same_camera": False}])
def test_the_reid_evaluators_rule_gives_its_map(trained_run, kwargs):
    """`--worst`'s per-query APs over the `reid` evaluator's rule average to its mAP (the
    evaluator ranks positives without a sort; the tools sort: two computations)."""
    from core.evaluation.reid import ReIDEvaluator
    from core.tools.extract import embed
    from core.tools.ranked_items import evaluation_rule, protocol_map
    from core.tools.search import protocol_average_precision

    run, query, gallery = splits(trained_run)
    q_emb, g_emb = embed(run, query, progress=False), embed(run, gallery, progress=False)
    evaluator = ReIDEvaluator(**kwargs)
    rule = evaluation_rule(evaluator, query, gallery)
    valid, ap, _ = protocol_average_precision(q_emb, g_emb, "cosine", rule.ranked, query.table.pids,
                                              gallery.table.pids)
    value, _ = protocol_map(rule.protocol, ap, valid)

    def features(images, emb):
        t = images.table
        return FeatureSet(torch.from_numpy(emb), t.pids, t.camids, records=t.records)

    metrics = evaluator.evaluate(features(query, q_emb), features(gallery, g_emb))
    assert 100 * value == pytest.approx(metrics["mAP"], abs=1e-6)
    assert int(valid.sum()) == metrics["num_valid_queries"]


def test_worst_says_which_core_eval_number_its_map_is(trained_run, tmp_path):
    from core.runner import evaluate_run
    from core.tools.search import worst_queries

    printed = []
    worst_queries(trained_run, count=2, top=3, out=tmp_path / "worst", device="cpu", progress=False,
                  echo=printed.append)
    line = next(p for p in printed if p.startswith("synthetic: "))
    assert "= core eval's 'synthetic/mAP'" in line
    assert float(line.split("mAP ")[1].split("%")[0]) == round(evaluate_run(trained_run)["synthetic/mAP"], 1)


def test_a_gallery_file_whose_rows_are_not_the_runs_split_falls_back_to_the_camera_rule(trained_run, hiding_runs,
                                                                                       tmp_path, caplog):
    """A .npz from `run:gallery` with rows left out (`--skip-bad-images`) and no paths to
    match them by: the evaluator's rule cannot be read for its rows (a .npz keeps no record
    extras), so the file is ranked with the run evaluator's camera rule, and a warning says so."""
    from core.tools.extract import Features, load_features, save_features
    from core.tools.images import ImageSet
    from core.tools.search import search

    full = tmp_path / "g.npz"
    assert main(["extract", str(trained_run), "--images", "run:gallery", "--out", str(full)]) == 0
    features = load_features(full)
    rows = np.arange(1, len(features.embeddings))  # the first item left out
    images = features.images
    cut = tmp_path / "cut.npz"
    save_features(cut, Features(features.embeddings[rows], ImageSet(images.table.take(rows), images.datasets,
                                                                    images.source), features.meta))
    _, query, _ = splits(trained_run)
    g = load_features(cut).images.table
    with caplog.at_level("WARNING"):
        results = search(trained_run, "run:query", str(cut), top=len(rows), device="cpu", progress=False,
                         echo=lambda text: None)
    assert "not the run's split" in caplog.text
    q = query.table
    for r in results:
        kept = [j for j in range(len(rows)) if (g.pids[j], g.camids[j]) != (q.pids[r.query], q.camids[r.query])]
        assert sorted(r.gallery.tolist()) == kept


def test_worst_says_its_map_is_not_core_evals_when_evaluation_reranks():
    """k-reciprocal re-ranking (or faiss IVF's mAP@topk) is not what the tools compute:
    the line must not claim core eval's number."""
    from core.evaluation.reid import ReIDEvaluator
    from core.tools.search import summary_line

    query = FeatureSet(torch.zeros(2, 0), np.array([0, 1]), np.array([0, 0]))
    gallery = FeatureSet(torch.zeros(3, 0), np.array([0, 1, 1]), np.array([1, 1, 0]))
    ap, valid = np.array([0.5, 1.0]), np.array([True, True])
    plain = summary_line("s", ReIDEvaluator().ranked_gallery(query, gallery), ap, valid)
    assert plain.startswith("mAP 75.0% over 2 queries (= core eval's 's/mAP'")
    for evaluator in (ReIDEvaluator(rerank=True), ReIDEvaluator(search="faiss_ivf")):
        line = summary_line("s", evaluator.ranked_gallery(query, gallery), ap, valid)
        assert "not core eval's 's/mAP'" in line and "= core eval" not in line

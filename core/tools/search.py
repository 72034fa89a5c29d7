"""`core search`: rank a gallery for each query image under a trained model, print the
ranked lists and draw them (a PNG per query and an index.html).

Also the worst queries of an evaluation (`core search RUN --worst N`): each of the run's
test sets is ranked as its evaluator ranks it (`Evaluator.ranked_gallery`: the items it
ranks for each query, e.g. Instruct-ReID's task gallery), each query's average precision
over those items is computed by the evaluator's own ranking
(`core.evaluation.ranking.per_query_metrics`, the items left out as removed items), the
mAP is averaged as the evaluator averages it (per task, then over tasks, for
Instruct-ReID) and printed with the `core eval` key it equals, and the N queries with the
lowest AP are drawn into the run folder (`<run>/worst-queries/`).

Ranking is exact (one matrix product per chunk of queries, `core.evaluation.distances`),
ties broken by gallery order as in evaluation. Which gallery items are ranked for each
query is `core.tools.ranked_items`'s rule: on a run's own splits what its evaluator
ranks, so that `core search` and `core explain` rank the run's data as evaluation and
`--worst` do; never the query's own file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from core.evaluation.distances import blocked_rows, distance_to, pairwise_distance
from core.interfaces import RankedGallery
from core.tools.images import UNKNOWN, ImageSet
from core.tools.ranked_items import camera_rule, evaluation_rule, evaluator_protocol, protocol_map, search_rule
from core.tools.pictures import BLUE, GREEN, GREY, RED, RankedList, Tile, draw_ranked_list, write_index

log = logging.getLogger(__name__)


@dataclass
class QueryResult:
    query: int
    #: gallery indices, nearest first (fewer than top when items were excluded)
    gallery: np.ndarray
    distances: np.ndarray
    #: per result: same identity as the query (None when either identity is unknown)
    correct: list[bool | None]
    average_precision: float | None = None


def rank(query: np.ndarray | torch.Tensor, gallery: np.ndarray | torch.Tensor, metric: str, top: int,
         query_set: ImageSet, gallery_set: ImageSet, exclude_same_camera: bool = False,
         chunk: int = 512, ranked: Callable[[np.ndarray], np.ndarray] | None = None) -> list[QueryResult]:
    """Top `top` gallery items of every query among those `ranked(rows)` marks for query
    rows `rows` ((len(rows), G) bool, `core.tools.ranked_items`; default: the camera rule
    of `exclude_same_camera`), never the query's own file. A memory-mapped gallery (`core
    extract --half`) is searched block by block (`_rank_blocked`), never converted to
    float32 whole."""
    if ranked is None:
        ranked = camera_rule(query_set, gallery_set, exclude_same_camera).ranked
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query embeddings have dimension {query.shape[1]} but the gallery's have {gallery.shape[1]} "
                         "(were they extracted with another model?)")
    if isinstance(gallery, np.memmap):
        return _rank_blocked(query, gallery, metric, top, query_set, gallery_set, ranked, chunk)
    q = torch.as_tensor(query, dtype=torch.float32)
    g = torch.as_tensor(gallery, dtype=torch.float32).to(q.device)
    qt, gt = query_set.table, gallery_set.table
    kept = _Kept(ranked, qt, gt)
    top = min(top, len(gt))
    results = []
    for start in range(0, len(qt), chunk):
        rows = np.arange(start, min(start + chunk, len(qt)))
        d = pairwise_distance(q[start:rows[-1] + 1], g, metric).cpu()
        d[~torch.from_numpy(kept(rows))] = float("inf")
        values, order = torch.sort(d, dim=1, stable=True)
        results.extend(_results(rows, values[:, :top].numpy(), order[:, :top].numpy(), qt, gt))
    return results


class _Kept:
    """(c, G) bool of query rows: `ranked` and not the query's own file."""

    def __init__(self, ranked: Callable[[np.ndarray], np.ndarray], qt, gt):
        self.ranked, self.qt = ranked, qt
        self.g_paths = np.asarray([r.path or "" for r in gt.records])
        self.num_g = len(gt)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        keep = np.array(self.ranked(rows), dtype=bool)  # a copy: the own-file rule is written into it
        if keep.shape != (len(rows), self.num_g):
            raise ValueError(f"the ranked-items mask of {len(rows)} queries has shape {keep.shape}, expected "
                             f"{(len(rows), self.num_g)} (Evaluator.ranked_gallery)")
        for row, qi in enumerate(rows):
            path = self.qt.records[int(qi)].path
            if path:
                keep[row] &= self.g_paths != path
        return keep


def _results(rows: np.ndarray, values: np.ndarray, order: np.ndarray, qt, gt) -> list[QueryResult]:
    """One QueryResult per query row from its sorted top (infinite: not ranked, dropped)."""
    out = []
    for row, qi in enumerate(rows):
        keep = np.isfinite(values[row])
        idx = order[row][keep]
        pid = int(qt.pids[qi])
        correct = [None if pid == UNKNOWN or int(gt.pids[j]) == UNKNOWN else bool(int(gt.pids[j]) == pid)
                   for j in idx]
        out.append(QueryResult(int(qi), idx, values[row][keep], correct))
    return out


def _rank_blocked(query, gallery: np.memmap, metric: str, top: int, query_set: ImageSet, gallery_set: ImageSet,
                  ranked: Callable[[np.ndarray], np.ndarray], chunk: int) -> list[QueryResult]:
    """`rank` out of core: per chunk of queries, a running top `top` over the gallery's
    blocks (read and upcast one at a time, `core.evaluation.blocked`), the items not
    ranked set to infinity, merged in the (distance, index) order: the same lists as
    `rank`. Chunks hold at most 2^26 mask entries (the mask is over the whole gallery)."""
    from core.evaluation.blocked import DEFAULT_GALLERY_BLOCK, gallery_blocks, merge_block_topk, rows_as_float
    from core.evaluation.distances import distance_to
    from core.evaluation.protocol import chunk_rows

    qt, gt = query_set.table, gallery_set.table
    kept = _Kept(ranked, qt, gt)
    top = min(top, len(gt))
    step = min(chunk, chunk_rows(len(gt), 2**26))
    ranges = gallery_blocks(len(gt), DEFAULT_GALLERY_BLOCK)
    results = []
    for start in range(0, len(qt), step):
        rows = np.arange(start, min(start + step, len(qt)))
        keep = torch.from_numpy(kept(rows))
        q = rows_as_float(query, start, rows[-1] + 1)
        best = None
        for g0, g1 in ranges:
            d = distance_to(rows_as_float(gallery, g0, g1), metric)(q)
            d[~keep[:, g0:g1]] = float("inf")
            best = merge_block_topk(best, d, g0, top)
        best_d, best_i = best
        results.extend(_results(rows, best_d.numpy(), best_i.numpy(), qt, gt))
    return results


def _identity(table, index: int) -> str:
    pid = int(table.pids[index])
    return f"id {pid if pid != UNKNOWN else '?'} c{int(table.camids[index])}"


def ranked_picture(result: QueryResult, query_set: ImageSet, gallery_set: ImageSet, title: str = "",
                   height: int = 128):
    """The PIL picture of one query's ranked list."""
    query = Tile(_safe_image(query_set, result.query), caption=[_identity(query_set.table, result.query)],
                 border=BLUE, heading="query")
    tiles = []
    for rank_, (j, dist, ok) in enumerate(zip(result.gallery, result.distances, result.correct), start=1):
        border = GREY if ok is None else (GREEN if ok else RED)
        tiles.append(Tile(_safe_image(gallery_set, int(j)), caption=[f"{dist:.3f}", _identity(gallery_set.table, j)],
                          border=border, heading=f"{rank_}"))
    return draw_ranked_list(RankedList(query, tiles, title, note=_instruction_note(query_set, result.query)),
                            height=height)


def _instruction_note(images: ImageSet, index: int) -> str:
    """"instruction: <text>" when record `index` carries a text instruction (records'
    extras "instruction", the batch field instruction-conditioned models embed with: a
    text, or phrasings whose first is the evaluation one), else "" (none, or an image)."""
    value = images.table.records[int(index)].extras.get("instruction")
    if isinstance(value, (tuple, list)):
        value = value[0] if value else None
    return f"instruction: {value.strip()}" if isinstance(value, str) and value.strip() else ""


def _safe_image(images: ImageSet, index: int):
    """The image, or None (a placeholder is drawn) when it cannot be read, e.g. a
    features file whose images were rendered in memory."""
    try:
        return images.image(int(index))
    except (OSError, ValueError):
        return None


def format_results(results: list[QueryResult], query_set: ImageSet, gallery_set: ImageSet) -> str:
    lines = []
    for r in results:
        ap = f", AP {100 * r.average_precision:.1f}%" if r.average_precision is not None else ""
        lines.append(f"query {query_set.label(r.query)} ({_identity(query_set.table, r.query)}{ap})")
        for k, (j, dist, ok) in enumerate(zip(r.gallery, r.distances, r.correct), start=1):
            mark = {True: "match", False: "wrong", None: ""}[ok]
            lines.append(f"  {k:>3}. {dist:8.4f}  {_identity(gallery_set.table, j):<14} {mark:<6} "
                         f"{gallery_set.label(int(j))}")
    return "\n".join(lines)


def draw_results(results: list[QueryResult], query_set: ImageSet, gallery_set: ImageSet, out_dir: Path,
                 title: str, intro: str = "", height: int = 128) -> Path:
    """A PNG per query plus index.html in `out_dir`; returns the index path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for n, r in enumerate(results):
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(query_set.label(r.query)).stem)
        name = f"{n:04d}_{stem.strip('_') or 'query'}.png"
        ap = f"   AP {100 * r.average_precision:.1f}%" if r.average_precision is not None else ""
        caption = f"query {query_set.label(r.query)} ({_identity(query_set.table, r.query)}){ap}"
        ranked_picture(r, query_set, gallery_set, caption, height).save(out_dir / name)
        entries.append((name, caption))
    return write_index(out_dir, entries, title, intro)


def search(target: str | Path, query: str, gallery: str, top: int = 10, out: str | Path | None = None,
           device: str = "auto", metric: str | None = None, exclude_same_camera: bool | None = None,
           batch_size: int = 64, progress: bool = True, echo=print, image_check: str = "error",
           weights: str | Path | None = None, source: str = "auto", overrides: Sequence[str] = ()) -> list[QueryResult]:
    """What `core search` does: embed queries (and the gallery unless it is a .npz of
    `core extract`), rank, print, draw. `image_check`: the images to embed are checked
    first, as `core extract` checks them (`core.tools.images.screened`).
    `exclude_same_camera`: None follows `core.tools.ranked_items.search_rule` (on the run's
    own splits, what its evaluator ranks); True / False: the whole gallery with or without
    the query's identity in its camera."""
    from core.tools.extract import embed, load_features
    from core.tools.images import open_images, screened
    from core.tools.loading import load_run

    run = load_run(target, device=device, overrides=overrides, weights=weights, source=source)
    query_set = open_images(query, run, flag="--query", split="query")
    if str(gallery).endswith(".npz"):  # embedded already; a picture draws a placeholder for an image that won't read
        query_set, = screened([("--query", query_set)], image_check, "Nothing was searched")
        features = load_features(gallery)
        gallery_set, g_emb = features.images, features.embeddings
        if features.meta.get("run_dir") and Path(features.meta["run_dir"]) != run.run_dir.resolve():
            log.warning(f"{gallery} was extracted with the run {features.meta['run_dir']}, not {run.run_dir}; "
                        "distances across models mean nothing")
    else:
        query_set, gallery_set = screened([("--query", query_set),
                                           ("--gallery", open_images(gallery, run, "--gallery", "gallery"))],
                                          image_check, "Nothing was searched")
        g_emb = embed(run, gallery_set, batch_size=batch_size, progress=progress)
    rule = search_rule(run, query, gallery, query_set, gallery_set, exclude_same_camera)
    q_emb = embed(run, query_set, batch_size=batch_size, progress=progress)
    metric = metric or run.metric
    results = rank(q_emb, g_emb, metric, top, query_set, gallery_set, ranked=rule.ranked)
    echo(format_results(results, query_set, gallery_set))
    if out is not None:
        index = draw_results(results, query_set, gallery_set, Path(out),
                             title=f"search: {query} against {gallery}",
                             intro=f"run {run.run_dir}, {metric} distance, top {top}; ranked: {rule.text}")
        echo(f"pictures: {index}")
    return results


def worst_queries(target: str | Path, count: int = 10, top: int = 10, out: str | Path | None = None,
                  device: str = "auto", batch_size: int = 64, progress: bool = True,
                  echo=print, weights: str | Path | None = None, source: str = "auto",
                  overrides: Sequence[str] = ()) -> dict[str, list[QueryResult]]:
    """The `count` lowest-AP queries of each of the run's test sets, each query ranked
    against the items its evaluator ranks (module doc), drawn into `out` (default
    `<run>/worst-queries`), one subfolder per test set. Each set's line gives the mAP as
    the evaluator averages it and the `core eval` key it equals."""
    from core.tools.extract import embed
    from core.tools.images import run_split
    from core.tools.loading import load_run

    run = load_run(target, device=device, overrides=overrides, weights=weights, source=source)
    metric = run.metric
    out_dir = Path(out) if out is not None else run.run_dir / "worst-queries"
    found: dict[str, list[QueryResult]] = {}
    entries = []
    if not run.pipeline.test_sets:
        raise ValueError(f"{run.run_dir}: the pipeline has no test set with query and gallery")
    for test in run.pipeline.test_sets:
        q_set, g_set = run_split(run, f"query@{test.name}"), run_split(run, f"gallery@{test.name}")
        q_emb = embed(run, q_set, batch_size=batch_size, progress=progress)
        g_emb = embed(run, g_set, batch_size=batch_size, progress=progress)
        rule = evaluation_rule(run.pipeline.evaluator, q_set, g_set)
        valid, ap, first = protocol_average_precision(q_emb, g_emb, metric, rule.ranked, q_set.table.pids,
                                                      g_set.table.pids)
        rows = np.flatnonzero(valid)
        if not len(rows):
            raise ValueError(f"{test.name}: no query has a gallery item of its identity among those its evaluator "
                             f"ranks ({rule.protocol.rule})")
        # lowest AP first; among equal APs the later first match is worse
        order = rows[np.lexsort((-first[rows], ap[rows]))][:count]
        results = rank(q_emb[order], g_emb, metric, top, _subset(q_set, order), g_set,
                       ranked=lambda picked, order=order, rule=rule: rule.ranked(order[picked]))
        for r, qi in zip(results, order):
            r.average_precision = float(ap[qi])
            r.query = int(qi)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in test.name)
        draw_results(results, q_set, g_set, out_dir / safe,
                     title=f"worst {len(results)} queries of {test.name}",
                     intro=f"run {run.run_dir}, {metric} distance; ranked: {rule.text}; "
                           "lowest average precision first")
        entries.append((f"{safe}/index.html", test.name))
        echo(f"{test.name}: {summary_line(test.name, rule.protocol, ap, valid)}; worst {len(results)}:")
        echo(format_results(results, q_set, g_set))
        found[test.name] = results
    _write_sets_index(out_dir, entries, run.run_dir)
    echo(f"pictures: {out_dir / 'index.html'}")
    return found


def protocol_average_precision(q_emb, g_emb, metric: str, ranked: Callable[[np.ndarray], np.ndarray],
                               q_pids: np.ndarray, g_pids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(valid, AP, first rank) of every query over the items `ranked` marks: the
    evaluator's own ranking (`core.evaluation.ranking.per_query_metrics`, no sort) of the
    distances it computes (`blocked_rows`, the same products), with the mask as its
    removed items, so each AP is exactly the one `evaluate` averages."""
    from core.evaluation.ranking import per_query_metrics

    q, g = torch.as_tensor(q_emb, dtype=torch.float32), torch.as_tensor(g_emb, dtype=torch.float32)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    with torch.no_grad():
        per_query = per_query_metrics(blocked_rows(distance_to(g, metric), q, len(g)), q_pids, g_pids,
                                      np.zeros(len(q_pids), np.int64), np.zeros(len(g_pids), np.int64),
                                      exclude_same_camera=False, ranked=ranked)
    return per_query.valid, per_query.average_precision, per_query.first_rank


def summary_line(test: str, protocol: RankedGallery, ap: np.ndarray, valid: np.ndarray) -> str:
    """'mAP x% over n queries (= core eval's '<test>/mAP': how it averages)', or why it
    is not that key (`RankedGallery.differs`)."""
    value, how = protocol_map(protocol, ap, valid)
    key = f"{test}/{protocol.key}"
    said = (f"not core eval's '{key}': {protocol.differs}" if protocol.differs
            else f"= core eval's '{key}': {how}")
    return f"mAP {100 * value:.1f}% over {int(valid.sum())} queries ({said})"


def ranked_list_image(trainer, queries: int = 4, top: int = 8):
    """The ranked lists of the first `queries` queries of the trainer's first test set
    (features kept from its last evaluation), stacked into one PIL image; None without."""
    kept = getattr(trainer, "tracked_features", None)
    if kept is None:
        return None
    from PIL import Image

    test, query, gallery = kept
    q_set = ImageSet(test.query, test.datasets, f"query@{test.name}")
    g_set = ImageSet(test.gallery, test.datasets, f"gallery@{test.name}")
    count = min(queries, len(test.query))
    metric = str(getattr(trainer.p.evaluator, "metric", "cosine"))
    protocol = evaluator_protocol(trainer.p.evaluator, query, gallery)  # what evaluation ranks
    view = _subset(q_set, np.arange(count))
    results = rank(query.embeddings[:count].float().cpu(), gallery.embeddings.float().cpu(), metric, top,
                   view, g_set, ranked=protocol.ranked)
    pictures = [ranked_picture(r, view, g_set, height=96) for r in results]
    if not pictures:
        return None
    width = max(p.width for p in pictures)
    sheet = Image.new("RGB", (width, sum(p.height for p in pictures)), (255, 255, 255))
    y = 0
    for p in pictures:
        sheet.paste(p, (0, y))
        y += p.height
    return sheet


def _subset(images: ImageSet, rows: np.ndarray) -> ImageSet:
    """The rows of `images` as an ImageSet (same datasets)."""
    from core.data.table import RecordTable

    t = images.table
    table = RecordTable(records=[t.records[i] for i in rows], source_ids=t.source_ids[rows], sources=t.sources,
                        pids=t.pids[rows], camids=t.camids[rows], category_ids=t.category_ids[rows],
                        category_names=t.category_names, domain_ids=t.domain_ids[rows], domain_names=t.domain_names)
    return ImageSet(table, images.datasets, images.source)


def _write_sets_index(out_dir: Path, entries: list[tuple[str, str]], run_dir: Path) -> None:
    import html

    links = "\n".join(f'<li><a href="{html.escape(href)}">{html.escape(name)}</a></li>' for href, name in entries)
    (out_dir / "index.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>worst queries</title></head><body>"
        f"<h1>worst queries of {html.escape(str(run_dir))}</h1><ul>{links}</ul></body></html>\n", encoding="utf-8")

"""`core search`: rank a gallery for each query image under a trained model, print the
ranked lists and draw them (a PNG per query and an index.html).

Also the worst queries of an evaluation (`core search RUN --worst N`): the run's test
sets are ranked under the standard protocol of its evaluator (same identity and camera
dropped), each query's average precision is computed by `core.evaluation.ranking`, and
the N queries with the lowest AP are drawn into the run folder (`<run>/worst-queries/`).

Ranking is exact (one matrix product per chunk of queries, `core.evaluation.distances`),
ties broken by gallery order as in evaluation. A gallery item with the query's own file
path is never returned (searching a folder against itself), and with
`exclude_same_camera` neither is one with the query's identity and camera: by default
when query and gallery are both the run's own splits (a gallery .npz extracted from one
counts) and its evaluator leaves those out (`same_camera_excluded`), so that `core
search` and `core explain` rank the run's data as evaluation and `--worst` do.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.evaluation.distances import pairwise_distance
from core.tools.images import UNKNOWN, ImageSet
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
         chunk: int = 512) -> list[QueryResult]:
    """Top `top` gallery items of every query (see the module doc for what is excluded).
    A memory-mapped gallery (`core extract --half`) is searched block by block
    (`_rank_blocked`), never converted to float32 whole."""
    if isinstance(gallery, np.memmap):
        return _rank_blocked(query, gallery, metric, top, query_set, gallery_set, exclude_same_camera, chunk)
    q = torch.as_tensor(query, dtype=torch.float32)
    g = torch.as_tensor(gallery, dtype=torch.float32).to(q.device)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query embeddings have dimension {q.shape[1]} but the gallery's have {g.shape[1]} "
                         "(were they extracted with another model?)")
    qt, gt = query_set.table, gallery_set.table
    g_paths = np.asarray([r.path or "" for r in gt.records])
    g_pids, g_cams = torch.as_tensor(gt.pids), torch.as_tensor(gt.camids)
    top = min(top, len(gt))
    results = []
    for start in range(0, len(qt), chunk):
        stop = min(start + chunk, len(qt))
        d = pairwise_distance(q[start:stop], g, metric).cpu()
        for row, qi in enumerate(range(start, stop)):
            path = qt.records[qi].path
            if path:
                d[row, torch.from_numpy(g_paths == path)] = float("inf")
            pid, cam = int(qt.pids[qi]), int(qt.camids[qi])
            if exclude_same_camera and pid != UNKNOWN:
                d[row, (g_pids == pid) & (g_cams == cam)] = float("inf")
        values, order = torch.sort(d, dim=1, stable=True)
        for row, qi in enumerate(range(start, stop)):
            keep = torch.isfinite(values[row, :top])
            idx = order[row, :top][keep].numpy()
            pid = int(qt.pids[qi])
            correct = [None if pid == UNKNOWN or int(gt.pids[j]) == UNKNOWN else bool(int(gt.pids[j]) == pid)
                       for j in idx]
            results.append(QueryResult(qi, idx, values[row, :top][keep].numpy(), correct))
    return results


def _rank_blocked(query, gallery: np.memmap, metric: str, top: int, query_set: ImageSet, gallery_set: ImageSet,
                  exclude_same_camera: bool, chunk: int) -> list[QueryResult]:
    """`rank` out of core: each query's exact top (top + the most items any query has
    excluded) in the (distance, index) order (`core.evaluation.blocked.blocked_topk`),
    then the excluded items dropped, leaving the same lists as `rank`."""
    from core.evaluation.blocked import blocked_topk

    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query embeddings have dimension {query.shape[1]} but the gallery's have "
                         f"{gallery.shape[1]} (were they extracted with another model?)")
    qt, gt = query_set.table, gallery_set.table
    g_paths = np.asarray([r.path or "" for r in gt.records])
    q_paths = np.asarray([r.path or "" for r in qt.records])
    path_count = dict(zip(*np.unique(g_paths[g_paths != ""], return_counts=True)))
    excluded = np.asarray([path_count.get(p, 0) if p else 0 for p in q_paths], dtype=np.int64)
    if exclude_same_camera:
        pairs, counts = np.unique(np.stack([gt.pids, gt.camids], 1), axis=0, return_counts=True)
        pair = {(int(p), int(c)): int(n) for (p, c), n in zip(pairs, counts)}
        excluded += np.asarray([0 if pid == UNKNOWN else pair.get((int(pid), int(cam)), 0)
                                for pid, cam in zip(qt.pids, qt.camids)], dtype=np.int64)
    top = min(top, len(gt))
    values, order = blocked_topk(query, gallery, metric, top + int(excluded.max(initial=0)), query_block=chunk)
    results = []
    for qi in range(len(qt)):
        idx, d = order[qi], values[qi]
        keep = np.ones(len(idx), dtype=bool)
        if q_paths[qi]:
            keep &= g_paths[idx] != q_paths[qi]
        pid, cam = int(qt.pids[qi]), int(qt.camids[qi])
        if exclude_same_camera and pid != UNKNOWN:
            keep &= ~((gt.pids[idx] == pid) & (gt.camids[idx] == cam))
        idx, d = idx[keep][:top], d[keep][:top]
        correct = [None if pid == UNKNOWN or int(gt.pids[j]) == UNKNOWN else bool(int(gt.pids[j]) == pid)
                   for j in idx]
        results.append(QueryResult(qi, idx, d, correct))
    return results


def evaluator_excludes_same_camera(run) -> bool:
    """Whether the run's evaluator leaves out gallery items of the query's identity and
    camera (the standard protocol; `exclude_same_camera: false` for single-camera data)."""
    return bool(getattr(run.pipeline.evaluator, "exclude_same_camera", True))


def same_camera_excluded(run, query: str | Path, gallery: str | Path, asked: bool | None) -> bool:
    """`asked` (--exclude-same-camera / --no-exclude-same-camera) when given; otherwise as
    the run's evaluator when query and gallery are both the run's own splits (`run:...`),
    whose cameras are those of its protocol, and off for other sources, whose cameras may
    mean nothing (a folder without `c<N>` names reads every image as camera 0, and would
    lose every match of the query's identity)."""
    if asked is not None:
        return asked
    own = str(query).startswith("run:") and (str(gallery).startswith("run:") or _extracted_from_run(gallery, run))
    return own and evaluator_excludes_same_camera(run)


def _extracted_from_run(gallery: str | Path, run) -> bool:
    """Whether `gallery` is a .npz that `core extract` wrote from this run's own split
    (`--images run:gallery`): the same cameras as `run:gallery`. Only its small `meta`
    member is read; a file that does not read is left to `load_features` to name."""
    if not str(gallery).endswith(".npz") or not Path(gallery).is_file():
        return False
    try:
        with np.load(gallery, allow_pickle=False) as arrays:
            meta = json.loads(str(arrays["meta"])) if "meta" in arrays.files else {}
    except (OSError, ValueError, KeyError, EOFError):
        return False
    return (str(meta.get("source", "")).startswith("run:")
            and Path(str(meta.get("run_dir", ""))) == run.run_dir.resolve())


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
    return draw_ranked_list(RankedList(query, tiles, title), height=height)


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
           batch_size: int = 64, progress: bool = True, echo=print, image_check: str = "error") -> list[QueryResult]:
    """What `core search` does: embed queries (and the gallery unless it is a .npz of
    `core extract`), rank, print, draw. `image_check`: the images to embed are checked
    first, as `core extract` checks them (`core.tools.images.screened`).
    `exclude_same_camera`: None follows `same_camera_excluded`."""
    from core.tools.extract import embed, load_features
    from core.tools.images import open_images, screened
    from core.tools.loading import load_run

    run = load_run(target, device=device)
    exclude_same_camera = same_camera_excluded(run, query, gallery, exclude_same_camera)
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
    q_emb = embed(run, query_set, batch_size=batch_size, progress=progress)
    metric = metric or run.metric
    results = rank(q_emb, g_emb, metric, top, query_set, gallery_set, exclude_same_camera)
    echo(format_results(results, query_set, gallery_set))
    if out is not None:
        index = draw_results(results, query_set, gallery_set, Path(out),
                             title=f"search: {query} against {gallery}",
                             intro=f"run {run.run_dir}, {metric} distance, top {top}, same identity and camera "
                                   f"{'excluded' if exclude_same_camera else 'kept'}")
        echo(f"pictures: {index}")
    return results


def worst_queries(target: str | Path, count: int = 10, top: int = 10, out: str | Path | None = None,
                  device: str = "auto", batch_size: int = 64, progress: bool = True,
                  echo=print) -> dict[str, list[QueryResult]]:
    """The `count` lowest-AP queries of each of the run's test sets, drawn into
    `out` (default `<run>/worst-queries`), one subfolder per test set."""
    from core.evaluation.ranking import per_query_metrics
    from core.tools.extract import embed
    from core.tools.images import run_split
    from core.tools.loading import load_run

    run = load_run(target, device=device)
    metric = run.metric
    exclude = evaluator_excludes_same_camera(run)
    out_dir = Path(out) if out is not None else run.run_dir / "worst-queries"
    found: dict[str, list[QueryResult]] = {}
    entries = []
    if not run.pipeline.test_sets:
        raise ValueError(f"{run.run_dir}: the pipeline has no test set with query and gallery")
    for test in run.pipeline.test_sets:
        q_set, g_set = run_split(run, f"query@{test.name}"), run_split(run, f"gallery@{test.name}")
        q_emb = embed(run, q_set, batch_size=batch_size, progress=progress)
        g_emb = embed(run, g_set, batch_size=batch_size, progress=progress)
        distances = pairwise_distance(torch.from_numpy(q_emb), torch.from_numpy(g_emb), metric)
        per_query = per_query_metrics(distances, q_set.table.pids, g_set.table.pids, q_set.table.camids,
                                      g_set.table.camids, exclude_same_camera=exclude)
        valid = np.flatnonzero(per_query.valid)
        # lowest AP first; among equal APs the later first match is worse
        order = valid[np.lexsort((-per_query.first_rank[valid], per_query.average_precision[valid]))][:count]
        query_view = _subset(q_set, order)
        results = rank(q_emb[order], g_emb, metric, top, query_view, g_set, exclude_same_camera=exclude)
        for r, qi in zip(results, order):
            r.average_precision = float(per_query.average_precision[qi])
            r.query = int(qi)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in test.name)
        draw_results(results, q_set, g_set, out_dir / safe,
                     title=f"worst {len(results)} queries of {test.name}",
                     intro=f"run {run.run_dir}, {metric} distance, same identity and camera "
                           f"{'excluded' if exclude else 'kept'}; lowest average precision first")
        entries.append((f"{safe}/index.html", test.name))
        echo(f"{test.name}: mAP {100 * per_query.average_precision[valid].mean():.1f}% over {len(valid)} queries; "
             f"worst {len(results)}:")
        echo(format_results(results, q_set, g_set))
        found[test.name] = results
    _write_sets_index(out_dir, entries, run.run_dir)
    echo(f"pictures: {out_dir / 'index.html'}")
    return found


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
    exclude = bool(getattr(trainer.p.evaluator, "exclude_same_camera", True))
    view = _subset(q_set, np.arange(count))
    results = rank(query.embeddings[:count].float().cpu(), gallery.embeddings.float().cpu(), metric, top,
                   view, g_set, exclude_same_camera=exclude)
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

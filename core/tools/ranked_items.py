"""Which gallery items the tools rank for each query (`core search`, `--worst`, `core
explain`), so that a run's own data is ranked as its evaluation ranks it.

- Query and gallery both the run's own splits (`run:...`, or a gallery .npz that `core
  extract` wrote from one) and no flag given: what the run's evaluator ranks
  (`Evaluator.ranked_gallery`): the standard protocol's whole gallery less the query's
  identity in its camera for the `reid` evaluator, each query's task gallery with its
  clothes rule for Instruct-ReID's, ... The tools need not know any method's rule.
- Otherwise, or when `--exclude-same-camera` / `--no-exclude-same-camera` is given: the
  whole gallery, less (with --exclude-same-camera) the items of the query's identity and
  camera; a query of unknown identity loses none. A folder's cameras may mean nothing
  (without `c<N>` names every image is camera 0), so the default there is off.

A gallery item with the query's own file path is never ranked (`rank` drops it: a folder
searched against itself).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from core.interfaces import FeatureSet, RankedGallery
from core.tools.images import UNKNOWN, ImageSet

log = logging.getLogger(__name__)


@dataclass
class SearchRule:
    #: query rows (of the query set searched) -> (len(rows), G) bool, True where ranked
    ranked: Callable[[np.ndarray], np.ndarray]
    #: what is ranked, one phrase for the pictures' intro
    text: str
    #: the evaluator's protocol when the rule is its own (None: the tools' camera rule)
    protocol: RankedGallery | None = None


def table_features(images: ImageSet) -> FeatureSet:
    """The metadata of `images` as a FeatureSet with empty (N, 0) embeddings: what
    `Evaluator.ranked_gallery` reads (pids, camids, categories, records)."""
    t = images.table
    return FeatureSet(embeddings=torch.zeros(len(t), 0), pids=np.asarray(t.pids), camids=np.asarray(t.camids),
                      categories=np.asarray(t.category_ids), category_names=list(t.category_names),
                      records=t.records)


def evaluator_protocol(evaluator, query: FeatureSet, gallery: FeatureSet) -> RankedGallery:
    """`evaluator.ranked_gallery(query, gallery)`; where it gives None (the hook's default)
    or the evaluator has no hook (no `core.interfaces.Evaluator`), the standard protocol."""
    hook = getattr(evaluator, "ranked_gallery", None)
    protocol = hook(query, gallery) if hook is not None else None
    if protocol is not None:
        return protocol
    from core.evaluation.protocol import standard_ranked_gallery

    return standard_ranked_gallery(query, gallery, bool(getattr(evaluator, "exclude_same_camera", True)))


def evaluation_rule(evaluator, query_set: ImageSet, gallery_set: ImageSet) -> SearchRule:
    """The rule of `evaluator` for these sets (module doc)."""
    protocol = evaluator_protocol(evaluator, table_features(query_set), table_features(gallery_set))
    return SearchRule(protocol.ranked, f"as evaluation ranks: {protocol.rule}", protocol)


def camera_rule(query_set: ImageSet, gallery_set: ImageSet, exclude_same_camera: bool) -> SearchRule:
    """The whole gallery, less the query's identity and camera when `exclude_same_camera`
    (a query of unknown identity loses none)."""
    q_pids, q_cams = np.asarray(query_set.table.pids), np.asarray(query_set.table.camids)
    g_pids, g_cams = np.asarray(gallery_set.table.pids), np.asarray(gallery_set.table.camids)

    def ranked(rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if not exclude_same_camera:
            return np.ones((len(rows), len(g_pids)), dtype=bool)
        same = (q_pids[rows, None] == g_pids[None, :]) & (q_cams[rows, None] == g_cams[None, :])
        return ~(same & (q_pids[rows, None] != UNKNOWN))

    return SearchRule(ranked, f"same identity and camera {'excluded' if exclude_same_camera else 'kept'}")


def own_splits(run, query: str | Path, gallery: str | Path) -> bool:
    """Whether query and gallery are both the run's own splits (`run:...`, or a .npz that
    `core extract` wrote from one of this run's splits)."""
    return str(query).startswith("run:") and (str(gallery).startswith("run:") or _extracted_from_run(gallery, run))


def search_rule(run, query: str | Path, gallery: str | Path, query_set: ImageSet, gallery_set: ImageSet,
                asked: bool | None) -> SearchRule:
    """The rule for searching `query_set` against `gallery_set` (module doc); `asked`:
    --exclude-same-camera (True) / --no-exclude-same-camera (False) / neither (None)."""
    if asked is not None or not own_splits(run, query, gallery):
        return camera_rule(query_set, gallery_set, bool(asked))
    metadata = gallery_set if str(gallery).startswith("run:") else _run_rows(run, gallery, gallery_set)
    if metadata is None:
        exclude = bool(getattr(run.pipeline.evaluator, "exclude_same_camera", True))
        log.warning(f"{gallery}: its rows are not the run's split as extracted (images left out?), so its records "
                    f"lack what the evaluator may read; ranked with same identity and camera "
                    f"{'excluded' if exclude else 'kept'}")
        return camera_rule(query_set, gallery_set, exclude)
    return evaluation_rule(run.pipeline.evaluator, query_set, metadata)


def _run_rows(run, gallery: str | Path, gallery_set: ImageSet) -> ImageSet | None:
    """The run's own records of a .npz extracted from one of its splits, row for row (a
    .npz keeps pids, cameras and paths, not the records' extras such as a task): the
    split itself when its identities and cameras are the file's, else its rows found by
    path; None when they cannot be matched."""
    from core.tools.images import run_split

    with np.load(gallery, allow_pickle=False) as arrays:
        source = str(json.loads(str(arrays["meta"])).get("source", ""))
    split = run_split(run, source[len("run:"):])
    t, s = gallery_set.table, split.table
    if len(t) == len(s) and np.array_equal(t.pids, s.pids) and np.array_equal(t.camids, s.camids):
        return split
    paths = [r.path for r in s.records]
    at = {p: i for i, p in enumerate(paths) if p}
    wanted = [r.path for r in t.records]
    if len(at) != len(paths) or not all(p in at for p in wanted):
        return None
    return ImageSet(s.take([at[p] for p in wanted]), split.datasets, split.source)


def _extracted_from_run(gallery: str | Path, run) -> bool:
    """Whether `gallery` is a .npz that `core extract` wrote from this run's own split
    (`--images run:gallery`). Only its small `meta` member is read; a file that does not
    read is left to `load_features` to name."""
    if not str(gallery).endswith(".npz") or not Path(gallery).is_file():
        return False
    try:
        with np.load(gallery, allow_pickle=False) as arrays:
            meta = json.loads(str(arrays["meta"])) if "meta" in arrays.files else {}
    except (OSError, ValueError, KeyError, EOFError):
        return False
    return (str(meta.get("source", "")).startswith("run:")
            and Path(str(meta.get("run_dir", ""))) == run.run_dir.resolve())


def protocol_map(protocol: RankedGallery, average_precision: np.ndarray, valid: np.ndarray) -> tuple[float, str]:
    """(mAP as evaluation averages it, how): the mean AP of the valid queries, or with
    `protocol.groups` the mean over groups (those with a valid query) of each group's."""
    if protocol.groups is None:
        return float(average_precision[valid].mean()), f"the mean AP of the {int(valid.sum())} valid queries"
    groups = np.asarray(protocol.groups)
    means = {str(g): float(average_precision[valid & (groups == g)].mean())
             for g in sorted(set(groups[valid].tolist()))}
    parts = ", ".join(f"{g} {100 * m:.1f}%" for g, m in means.items())
    return (float(np.mean(list(means.values()))),
            f"the mean over {len(means)} {protocol.group_name} of each one's mAP: {parts}")

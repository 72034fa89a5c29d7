"""The tools' camera rule (`core search --exclude-same-camera` on images that are not a
run's own splits): the whole gallery less the items of the query's identity seen by its
camera. A query of unknown identity (a folder of images without identity folders) has no
identity to share: it loses none, even against gallery items of unknown identity from
its camera (the module doc of core.tools.ranked_items)."""

from __future__ import annotations

import numpy as np

from core.data.table import RecordTable
from core.records import Record
from core.tools.images import UNKNOWN, ImageSet


def image_set(labels: list[tuple[int, int]], source: str) -> ImageSet:
    records = [Record(f"/{source}/{i}.jpg", pid=p, camid=c) for i, (p, c) in enumerate(labels)]
    n = len(records)
    return ImageSet(RecordTable(records=records, source_ids=np.zeros(n, np.int64), sources=["toy"],
                                pids=np.asarray([p for p, _ in labels]), camids=np.asarray([c for _, c in labels]),
                                category_ids=np.zeros(n, np.int64), category_names=["object"],
                                domain_ids=np.zeros(n, np.int64), domain_names=["default"]), [], source)


def test_the_camera_rule_drops_only_a_known_identitys_own_camera_items():
    from core.tools.ranked_items import camera_rule

    query = image_set([(UNKNOWN, 1), (5, 1)], "q")
    gallery = image_set([(UNKNOWN, 1), (UNKNOWN, 2), (5, 1), (5, 2), (6, 1)], "g")
    ranked = camera_rule(query, gallery, exclude_same_camera=True).ranked(np.array([0, 1]))
    assert ranked.tolist() == [[True, True, True, True, True],   # unknown identity: nothing removed
                               [True, True, False, True, True]]  # pid 5 in camera 1 removed
    kept = camera_rule(query, gallery, exclude_same_camera=False).ranked(np.array([0, 1]))
    assert kept.all()

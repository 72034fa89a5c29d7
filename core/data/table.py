"""A record table: records plus the metadata arrays that samplers and evaluators read
without decoding a single image (DESIGN.md "dataset" contract).

Training tables relabel identities to 0..N-1 across every source dataset, keyed by
(source, pid), so several train sets share one classifier without collisions; category
and domain are kept per record (MGOR and the DG protocols need both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from core.records import Record


@dataclass
class RecordTable:
    records: list[Record]
    #: Source dataset of each record (index into `sources`).
    source_ids: np.ndarray
    sources: list[str]
    #: Identity labels: relabelled 0..N-1 for training tables, the dataset's own otherwise.
    pids: np.ndarray
    camids: np.ndarray
    category_ids: np.ndarray
    category_names: list[str]
    domain_ids: np.ndarray
    domain_names: list[str]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_identities(self) -> int:
        return int(np.unique(self.pids).size)

    def identity_categories(self) -> np.ndarray:
        """Category id of each identity label 0..max(pid) (training tables)."""
        out = np.full(int(self.pids.max()) + 1 if len(self) else 0, -1, dtype=np.int64)
        out[self.pids] = self.category_ids
        return out

    def identities_per_category(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for cid, name in enumerate(self.category_names):
            counts[name] = int(np.unique(self.pids[self.category_ids == cid]).size)
        return counts

    @classmethod
    def build(
        cls,
        sources: Sequence[tuple[str, Sequence[Record]]],
        relabel: bool,
        category_names: Sequence[str] | None = None,
        domain_names: Sequence[str] | None = None,
    ) -> "RecordTable":
        """Concatenate the records of several sources.

        With `relabel`, identities become 0..N-1 in order of first appearance of
        (source, pid). Category and domain names get ids in sorted order unless given
        (test tables reuse the training table's names so ids agree).
        """
        records: list[Record] = []
        source_ids: list[int] = []
        for sid, (_, recs) in enumerate(sources):
            records.extend(recs)
            source_ids.extend([sid] * len(recs))
        cats = list(category_names) if category_names is not None else sorted({r.category for r in records})
        doms = list(domain_names) if domain_names is not None else sorted({r.domain for r in records})
        cat_index = {c: i for i, c in enumerate(cats)}
        dom_index = {d: i for i, d in enumerate(doms)}
        for name, index in (("category", cat_index), ("domain", dom_index)):
            for r in records:
                if getattr(r, name) not in index:
                    index[getattr(r, name)] = len(index)
                    (cats if name == "category" else doms).append(getattr(r, name))
        if relabel:
            labels: dict[tuple[int, int], int] = {}
            pids = [labels.setdefault((s, r.pid), len(labels)) for s, r in zip(source_ids, records)]
        else:
            pids = [r.pid for r in records]
        return cls(
            records=records,
            source_ids=np.asarray(source_ids, dtype=np.int64),
            sources=[name for name, _ in sources],
            pids=np.asarray(pids, dtype=np.int64),
            camids=np.asarray([r.camid for r in records], dtype=np.int64),
            category_ids=np.asarray([cat_index[r.category] for r in records], dtype=np.int64),
            category_names=cats,
            domain_ids=np.asarray([dom_index[r.domain] for r in records], dtype=np.int64),
            domain_names=doms,
        )

"""A record table: records plus the metadata arrays that samplers and evaluators read
without decoding a single image (DESIGN.md "dataset" contract).

Training tables relabel identities to 0..N-1 across every source dataset, keyed by
(source, pid), so several train sets share one classifier without collisions; category
and domain are kept per record (MGOR and the DG protocols need both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from core.data.columns import RecordColumns, as_columns
from core.records import Record


@dataclass
class RecordTable:
    """`records` is a `RecordColumns` (columns, a Sequence of Record views built on
    access) for tables made by `build`; a plain list still works where code builds a
    small table by hand."""

    records: "RecordColumns | list[Record]"
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

    def column(self, name: str) -> Any:
        """A field of every record as an array (core.data.columns.RecordColumns.column);
        the relabelled `pids` and the ids of this table for "pid"/"category_id"/...."""
        own = {"pid": self.pids, "camid": self.camids, "source_id": self.source_ids,
               "category_id": self.category_ids, "domain_id": self.domain_ids}
        if name in own:
            return own[name]
        return as_columns(self.records).column(name)

    def take(self, rows: Sequence[int] | np.ndarray) -> "RecordTable":
        """The table of `rows` (positions, in that order); labels and names as they are."""
        rows = np.asarray(rows, dtype=np.int64)
        records = (self.records.take(rows) if isinstance(self.records, RecordColumns)
                   else [self.records[i] for i in rows.tolist()])
        return RecordTable(records=records, source_ids=self.source_ids[rows], sources=list(self.sources),
                           pids=self.pids[rows], camids=np.asarray(self.camids)[rows],
                           category_ids=self.category_ids[rows], category_names=list(self.category_names),
                           domain_ids=self.domain_ids[rows], domain_names=list(self.domain_names))

    @classmethod
    def build(
        cls,
        sources: Sequence[tuple[str, Sequence[Record]]],
        relabel: bool,
        category_names: Sequence[str] | None = None,
        domain_names: Sequence[str] | None = None,
    ) -> "RecordTable":
        """Concatenate the records of several sources into one columnar table.

        With `relabel`, identities become 0..N-1 in order of first appearance of
        (source, pid). Category and domain names get ids in sorted order unless given
        (test tables reuse the training table's names so ids agree); names not given
        are appended in order of first appearance. Lists of Records are converted to
        columns (core.data.columns), so the table holds no Python object per image.
        """
        parts = [as_columns(recs) for _, recs in sources]
        columns = RecordColumns.concat(parts) if parts else RecordColumns.empty()
        sizes = [len(p) for p in parts]
        source_ids = np.repeat(np.arange(len(parts), dtype=np.int64), sizes)

        def ids(field: str, given: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
            codes, names = columns.codes(field)
            if given is not None:
                out = list(given)
            else:
                out = sorted(names[c] for c in np.unique(codes).tolist())
            index = {n: i for i, n in enumerate(out)}
            # names the given list lacks: appended in order of first appearance
            used, first = np.unique(codes, return_index=True)
            for code in used[np.argsort(first)].tolist():
                if names[code] not in index:
                    index[names[code]] = len(out)
                    out.append(names[code])
            remap = np.asarray([index.get(n, -1) for n in names] or [0], dtype=np.int64)
            return remap[codes], out

        category_ids, cats = ids("category", category_names)
        domain_ids, doms = ids("domain", domain_names)
        pids = columns.pid.astype(np.int64, copy=True)
        if relabel and len(pids):
            key = source_ids * (int(pids.max()) - int(pids.min()) + 1) + (pids - int(pids.min()))
            _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
            rank = np.empty(first.size, dtype=np.int64)
            rank[np.argsort(first, kind="stable")] = np.arange(first.size)
            pids = rank[inverse.reshape(-1)]
        return cls(
            records=columns,
            source_ids=source_ids,
            sources=[name for name, _ in sources],
            pids=pids,
            camids=columns.camid,  # int64 already; shared with the columns (no copy per table)
            category_ids=category_ids,
            category_names=cats,
            domain_ids=domain_ids,
            domain_names=doms,
        )

"""Ways a test set flatters every metric without a word, warned about at build and by
`core validate --data` (the seen identities also counted by `core data stats`):

- identities seen in training: the ReID protocol measures how well the model finds
  individuals it has never seen (Market-1501's and MSMT17's test identities are disjoint
  from their training ones). A user's own folder tree or manifest can hold one identity
  in train/ and in query/ or gallery/; the model was trained on it, and rank-1 and mAP
  rise with every such identity.
- a query image that is also in the gallery (the same path): a distance of zero, a
  trivially correct match unless the same-camera exclusion happens to drop it.

Identities are comparable only where the reader keeps one pid namespace across its
splits: a reader says so with `Dataset.identity_namespace()` (None: not comparable, e.g.
the Market-style readers, whose pids come from file names that an export may number per
split). Two datasets with the same namespace (the same object, or the same folder or
manifest read twice) are compared by (category, pid).
"""

from __future__ import annotations

import os
from typing import Any, Hashable, Sequence

import numpy as np

from core.data.columns import as_columns

#: how many examples a warning names
EXAMPLES = 3
#: the data.train / data.test entry key that says a test set queries training identities on purpose
SEEN_IDENTITIES_KEY = "seen_identities"


def identity_namespace(dataset: Any) -> Hashable | None:
    """The dataset's pid namespace (see the module docstring), or None."""
    method = getattr(dataset, "identity_namespace", None)
    return method() if callable(method) else None


def identities(records: Sequence[Any]) -> dict[str, np.ndarray]:
    """{category: its sorted unique pids}, read from the columns (no Record objects: a
    5M-row manifest takes about a second)."""
    cols = as_columns(records)
    if not len(cols):
        return {}
    codes, names = cols.codes("category")
    codes = np.asarray(codes)
    return {names[int(c)]: np.unique(cols.pid[codes == c]) for c in np.unique(codes)}


def seen_identities(train: Sequence[Any], query: Sequence[Any], gallery: Sequence[Any]
                    ) -> tuple[list[tuple[str, int]], int]:
    """(the test identities that are also training identities as sorted (category, pid); the
    number of test identities)."""
    q, g, t = identities(query), identities(gallery), identities(train)
    test = {c: np.union1d(q.get(c, np.zeros(0, np.int64)), g.get(c, np.zeros(0, np.int64))) for c in {*q, *g}}
    shared = [(c, int(p)) for c in sorted(test) if c in t for p in np.intersect1d(test[c], t[c])]
    return shared, sum(len(p) for p in test.values())


def describe_seen(shared: list[tuple[str, int]], total: int, train: str = "train") -> str:
    """'3 of 40 test identities (query/gallery) are also training identities of train (e.g. person pid 3, ...)'."""
    examples = ", ".join(f"{c} pid {p}" for c, p in shared[:EXAMPLES]) + (", ..." if len(shared) > EXAMPLES else "")
    return (f"{len(shared)} of {total} test identities (query/gallery) are also training identities of {train} "
            f"(e.g. {examples})")


def query_paths_in_gallery(query: Sequence[Any], gallery: Sequence[Any]) -> list[str]:
    """The query images whose path (normalised, not resolved: no file is opened) is also a
    gallery image's path, sorted. Rendered images (no path) are not compared."""
    if os.sep != "/":  # the string rules of `_normalised` are POSIX's
        return sorted(set(_normalised_one_by_one(query)) & set(_normalised_one_by_one(gallery)))
    import pyarrow.compute as pc

    small, large = sorted((_normalised(query), _normalised(gallery)), key=len)  # hash the smaller side
    return sorted(pc.unique(large.filter(pc.is_in(large, value_set=small))).to_pylist())


#: A POSIX path that os.path.normpath would rewrite: a doubled or trailing `/`, or a `.` or
#: `..` segment. Every other path is normalised already (and, relative, by the working folder
#: put before it), so only these go through os.path one by one.
_UNNORMALISED = r"//|/$|(?:^|/)\.\.?(?:/|$)"


def _normalised(records: Sequence[Any]) -> Any:
    """`os.path.normpath(os.path.abspath(p))` of every record's path (rendered images and
    empty paths left out), in any order, as an Arrow string array: the paths that need no
    rewriting (all of them, as readers write them) are taken as they are, the relative ones
    get the working folder in front, and only those normalisation rewrites go through
    os.path one by one (a test set of millions is checked at every build: issue 24)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = as_columns(records)
    paths = cols.path.to_arrow()
    keep = pc.greater(pc.binary_length(paths), 0)
    if cols.path_valid is not None:
        keep = pc.and_(keep, pa.array(np.asarray(cols.path_valid, dtype=bool)))
    if not pc.all(keep).as_py():
        paths = paths.filter(keep)
    parts = []
    odd = pc.match_substring_regex(paths, _UNNORMALISED)
    if pc.any(odd).as_py():
        parts.append(pa.array([os.path.normpath(os.path.abspath(p)) for p in paths.filter(odd).to_pylist()],
                              pa.large_string()))
        paths = paths.filter(pc.invert(odd))
    relative = pc.invert(pc.starts_with(paths, "/"))
    if pc.any(relative).as_py():
        text = paths.type
        working_folder = pa.scalar(os.path.join(os.getcwd(), ""), text)  # "/x/", or "/" at the root
        parts.append(pc.binary_join_element_wise(working_folder, paths.filter(relative), pa.scalar("", text))
                     .cast(pa.large_string()))
        paths = paths.filter(pc.invert(relative))
    return pa.concat_arrays([paths.cast(pa.large_string()), *parts])


def _normalised_one_by_one(records: Sequence[Any]) -> list[str]:
    """`_normalised` path by path (what it computes, and the way where `/` is not the separator)."""
    cols = as_columns(records)
    valid = cols.path_valid
    return [os.path.normpath(os.path.abspath(p)) for i, p in enumerate(cols.path)
            if p and (valid is None or valid[i])]


def describe_query_in_gallery(paths: list[str], queries: int) -> str:
    """'2 of 10 query images are also in the gallery (the same path: ...)'."""
    examples = ", ".join(paths[:EXAMPLES]) + (", ..." if len(paths) > EXAMPLES else "")
    return (f"{len(paths)} of {queries} query images are also in the gallery (the same path: {examples}); each "
            "is its own distance-0 match, a trivially correct rank-1 unless the same-camera exclusion drops it")

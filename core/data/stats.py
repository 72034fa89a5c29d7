"""`core data stats PIPELINE|MANIFEST|FOLDER`: the dataset statistics table that
torchreid and fast-reid print at start (images, identities, cameras per split, and per
category), for any reader. It reads only the record table (core.data.columns) -- no
image is opened -- so it is also the quickest way to time a load.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.data.columns import as_columns

SPLITS = ("train", "query", "gallery")
MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq", ".jsonl", ".ndjson", ".json")


def split_stats(records: Sequence[Any]) -> dict[str, Any]:
    """{"images", "identities", "cameras", "categories": {name: {images, identities, cameras}}}."""
    cols = as_columns(records)
    out = _counts(cols.pid, cols.camid)
    codes, names = cols.codes("category")
    out["categories"] = {names[c]: _counts(cols.pid[codes == c], cols.camid[codes == c])
                         for c in np.unique(codes).tolist()} if len(cols) else {}
    return out


def _counts(pids: np.ndarray, camids: np.ndarray) -> dict[str, int]:
    return {"images": int(pids.size), "identities": int(np.unique(pids).size), "cameras": int(np.unique(camids).size)}


def dataset_stats(dataset: Any, splits: Sequence[str] = SPLITS) -> dict[str, dict[str, Any]]:
    out = {}
    for split in splits:
        if split not in getattr(dataset, "splits", SPLITS):  # a reader without this split
            continue
        out[split] = split_stats(dataset.records(split))  # its errors (a name that does not parse) stop here
    return out


def seen_identity_stats(dataset: Any) -> dict[str, Any] | None:
    """{"identities", "of", "examples"}: the test identities that are also training identities
    (core.data.protocol_checks), or None where the reader's splits do not share one pid
    namespace or it lacks a train or test split."""
    from core.data.protocol_checks import EXAMPLES, identity_namespace, seen_identities

    splits = getattr(dataset, "splits", SPLITS)
    if identity_namespace(dataset) is None or "train" not in splits or not {"query", "gallery"} & set(splits):
        return None
    test = [dataset.records(s) if s in splits else [] for s in ("query", "gallery")]
    shared, total = seen_identities(dataset.records("train"), *test)
    return {"identities": len(shared), "of": total, "examples": [f"{c} pid {p}" for c, p in shared[:EXAMPLES]]}


def format_seen(seen: dict[str, Any] | None) -> str | None:
    """The line under the table; None when there is nothing to say."""
    if not seen or not seen["of"]:
        return None
    if not seen["identities"]:
        return f"  test identities seen in training: none of {seen['of']:,}"
    return (f"  warning: test identities seen in training: {seen['identities']:,} of {seen['of']:,} (e.g. "
            f"{', '.join(seen['examples'])}): the ReID protocol tests unseen identities")


def open_target(target: str, dataset: str | None = None, params: dict[str, Any] | None = None,
                overrides: Sequence[str] = ()) -> list[tuple[str, Any]]:
    """(label, a function returning the Dataset) pairs for a pipeline YAML (its train and test datasets), a
    manifest file, or a folder (read by `dataset`, a registered reader name, or guessed:
    Market-1501 folders -> market1501, train/query/gallery sub-folders -> folder)."""
    path = Path(target)
    if not path.exists():
        raise FileNotFoundError(f"no such pipeline, manifest or folder: {path}")
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        from core.config.loading import load_pipeline
        from core.pipeline import build_data_sources

        sources = build_data_sources(load_pipeline(str(path), list(overrides)))
        pairs = [(f"data.train.{i} ({n})", (lambda d=d: d)) for i, (n, d) in enumerate(zip(sources.train_names,
                                                                              sources.train_datasets))]
        seen = {id(d) for d in sources.train_datasets}
        pairs += [(f"test ({n})", (lambda d=d: d)) for n, d in sources.test_pairs if id(d) not in seen]
        return pairs
    from core.registry import build_registry

    if path.is_file():
        if dataset is None and path.suffix.lower() not in MANIFEST_SUFFIXES:
            raise ValueError(f"{path}: not a pipeline (.yaml) nor a manifest ({', '.join(MANIFEST_SUFFIXES)}); "
                             "name its reader with --dataset")
        name = dataset or "manifest"
        registry = build_registry()
        _check_params(name, registry.get("dataset", name).load(), {"path": str(path), **(params or {})})
        return [(f"{path.name} ({name})", lambda: registry.build("dataset", name, path=str(path), **(params or {})))]
    if dataset is None:
        market = any((path / w / "bounding_box_train").is_dir() for w in (".", "Market-1501-v15.09.15"))
        dataset = "market1501" if market else "folder"
    registry = build_registry()
    _check_params(dataset, registry.get("dataset", dataset).load(), {"root": str(path), **(params or {})})
    return [(f"{path.name} ({dataset})", lambda: registry.build("dataset", dataset, root=str(path), **(params or {})))]


def _check_params(name: str, reader: Any, params: dict[str, Any]) -> None:
    """The reader's --param keys and types, as a pipeline's are checked: an unknown one was a
    raw TypeError ('__init__() got an unexpected keyword argument'), exit 1. Also imports the
    reader (imports are not the load time)."""
    from core.config.loading import LoadedConfig
    from core.config.validation import validate_params

    validate_params(reader, params, LoadedConfig({}, Path("--param")), "", f"dataset '{name}'")


def format_table(label: str, stats: dict[str, dict[str, Any]], seconds: float | None = None) -> str:
    """torchreid's box: one row per split, then one per (split, category) when there are
    several categories."""
    rows = [("subset", "# ids", "# images", "# cameras")]
    for split, s in stats.items():
        rows.append((split, f"{s['identities']:,}", f"{s['images']:,}", f"{s['cameras']:,}"))
    if any(len(s["categories"]) > 1 for s in stats.values()):
        for split, s in stats.items():
            for cat, c in s["categories"].items():
                rows.append((f"{split}/{cat}", f"{c['identities']:,}", f"{c['images']:,}", f"{c['cameras']:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    line = "  " + "-" * (sum(widths) + 9)
    text = [f"=> {label}" + (f" (loaded in {seconds:.2f} s)" if seconds is not None else ""), "  Dataset statistics:",
            line]
    for j, row in enumerate(rows):
        text.append("  " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                                      enumerate(zip(row, widths))))
        if j == 0 or j == len(stats):
            text.append(line)
    if text[-1] != line:
        text.append(line)
    return "\n".join(text)


def stats_command(target: str, dataset: str | None = None, params: dict[str, Any] | None = None,
                  overrides: Sequence[str] = (), as_json: bool = False) -> int:
    import json

    results = []
    for label, make in open_target(target, dataset, params, overrides):
        start = time.perf_counter()  # the reader and its table: what a training start pays
        reader = make()
        stats = dataset_stats(reader)
        results.append((label, stats, time.perf_counter() - start, seen_identity_stats(reader)))
    if as_json:
        print(json.dumps({label: {"load_s": round(t, 4), **s, **({"seen_identities": seen} if seen else {})}
                          for label, s, t, seen in results}, indent=2))
    else:
        print("\n".join(format_table(label, s, t) + (f"\n{line}" if (line := format_seen(seen)) else "")
                        for label, s, t, seen in results))
    return 0

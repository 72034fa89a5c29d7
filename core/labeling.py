"""Running a labeler over a dataset's training images: what `core label` and a
pipeline's `prepare` step do.

Resumable: raw results are saved in chunks under `<out>.partial/` as they come, so an
interrupted run (a grounding model over 30,000 images takes hours) continues where it
stopped. Skipped when `<out>` exists and its fingerprint (labeler, parameters, dataset
specs, patch grid) matches and it annotates every record. The file is written
atomically; the partial folder is removed once it is.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from core.data.annotations import Annotations, read_arrays
from core.interfaces import Dataset, Labeler, Labels
from core.log_setup import bar_disabled, echo_to
from core.records import Record

_echo = echo_to(logging.getLogger(__name__))


@dataclass
class LabelItem:
    dataset: Dataset
    record: Record
    key: str  # qualified: "<dataset name>:<record key>"


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def is_up_to_date(out: Path, fingerprint: dict[str, Any], keys: Sequence[str]) -> bool:
    if not out.is_file():
        return False
    try:
        existing = Annotations.load(out)
    except (ValueError, FileNotFoundError):  # not a disk fault (FileReadFault): that stops, the file kept
        return False
    have = set(existing.keys)
    return canonical(existing.meta.get("fingerprint")) == canonical(fingerprint) and all(k in have for k in keys)


def run_labeler(labeler: Labeler, items: Sequence[LabelItem], out: str | Path, *, fingerprint: dict[str, Any],
                ctx: Any, name: str, provider: str | None = None, version: str | None = None,
                force: bool = False, progress: bool = True, save_every: int = 512,
                echo: Callable[[str], None] = _echo) -> Annotations:
    """Label `items` with `labeler` into the annotation file `out` (or reuse it when it
    is up to date and `force` is off). Returns the annotations."""
    out = Path(out)
    keys = [item.key for item in items]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"labeler '{name}': two records share the key {dup!r}; the dataset's record_key() "
                         "must name each image once")
    if not force and is_up_to_date(out, fingerprint, keys):
        echo(f"labeler '{name}': {out} is up to date ({len(keys)} images); skipped")
        return Annotations.load(out)
    partial = out.with_name(out.name + ".partial")
    done = _load_partial(partial, fingerprint, force)
    todo = [item for item in items if item.key not in done]
    if done:
        echo(f"labeler '{name}': resuming, {len(items) - len(todo)} of {len(items)} images already labelled")

    from tqdm.auto import tqdm

    pending: dict[str, dict[str, np.ndarray]] = {}
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=f"label {name}", unit="img",
               disable=bar_disabled(progress), dynamic_ncols=True)
    step = max(1, int(getattr(labeler, "batch_size", 16)))
    wants_keys = "keys" in inspect.signature(labeler.label_batch).parameters
    try:
        for start in range(0, len(todo), step):
            chunk = todo[start:start + step]
            images = [item.dataset.load_image(item.record) for item in chunk]
            records = [item.record for item in chunk]
            if wants_keys:  # a labeler matching another tool's output by the file's keys
                raw = labeler.label_batch(images, records, keys=[item.key for item in chunk])
            else:
                raw = labeler.label_batch(images, records)
            for field_name, values in raw.items():
                if len(values) != len(chunk):
                    raise ValueError(f"labeler '{name}': label_batch returned {len(values)} rows of "
                                     f"'{field_name}' for {len(chunk)} images; one row per image is expected")
            for i, item in enumerate(chunk):
                pending[item.key] = {k: np.asarray(v[i]) for k, v in raw.items()}
            bar.update(len(chunk))
            if len(pending) >= save_every:
                _save_chunk(partial, fingerprint, pending)
                done.update(pending)
                pending = {}
    finally:
        bar.close()
        if pending:  # an interruption keeps what was computed
            _save_chunk(partial, fingerprint, pending)
            done.update(pending)
    raw_fields = _stack([done[k] for k in keys], name) if keys else {}
    labels = labeler.finalize(raw_fields, [item.record for item in items], ctx)
    if not isinstance(labels, Labels):
        raise TypeError(f"labeler '{name}': finalize must return core.interfaces.Labels, got {type(labels).__name__}")
    annotations = Annotations(keys=keys, fields=labels.fields, attach=labels.attach, meta={
        **labels.meta, "labeler": name, "plugin": provider, "version": version, "fingerprint": fingerprint,
        "report": labels.report, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "images": len(keys)})
    annotations.save(out)
    shutil.rmtree(partial, ignore_errors=True)
    echo(f"labeler '{name}': wrote {out} ({len(keys)} images)")
    for line in format_report(labels.report):
        echo(f"  {line}")
    return annotations


def format_report(report: dict[str, Any], prefix: str = "") -> list[str]:
    lines = []
    for k, v in report.items():
        if isinstance(v, dict):
            lines += format_report(v, f"{prefix}{k}.")
        else:
            lines.append(f"{prefix}{k}: {v:.4g}" if isinstance(v, float) else f"{prefix}{k}: {v}")
    return lines


def _stack(rows: list[dict[str, np.ndarray]], name: str) -> dict[str, np.ndarray]:
    fields = list(rows[0])
    out = {}
    for f in fields:
        try:
            out[f] = np.stack([r[f] for r in rows])
        except (KeyError, ValueError) as exc:
            raise ValueError(f"labeler '{name}': raw field '{f}' differs in presence or shape between images "
                             f"({exc}); label_batch must return the same fields and shapes for every image") from None
    return out


def _load_partial(partial: Path, fingerprint: dict[str, Any], force: bool) -> dict[str, dict[str, np.ndarray]]:
    stamp = partial / "fingerprint.json"
    if partial.is_dir() and (force or not stamp.is_file() or stamp.read_text() != canonical(fingerprint)):
        shutil.rmtree(partial)
    done: dict[str, dict[str, np.ndarray]] = {}
    for chunk in sorted(partial.glob("chunk-*.npz")) if partial.is_dir() else []:
        try:
            arrays = read_arrays(chunk, "labelling chunk")
        except ValueError:
            continue  # a chunk cut short is relabelled
        for i, key in enumerate(arrays.pop("keys")):
            done[str(key)] = {k: v[i] for k, v in arrays.items()}
    return done


def _save_chunk(partial: Path, fingerprint: dict[str, Any], rows: dict[str, dict[str, np.ndarray]]) -> None:
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "fingerprint.json").write_text(canonical(fingerprint))
    number = len(list(partial.glob("chunk-*.npz")))
    keys = list(rows)
    fields = _stack([rows[k] for k in keys], "partial")
    tmp = partial / f".chunk-{number:05d}.tmp.npz"
    with open(tmp, "wb") as f:
        np.savez(f, keys=np.asarray(keys, dtype=str), **fields)
    tmp.replace(partial / f"chunk-{number:05d}.npz")

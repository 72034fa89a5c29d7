"""Task records from any registered dataset (`instruct` with `source:` and `task:`): how
the paper's sets enter training and testing one per entry, each with its task
(`pipelines/irm.yaml`), read by the core's readers (`omnireid` for the authors'
OmniReID++ datalists, `ltcc`, `prcc`, `vc_clothes`, `market1501`, ...).

What a source record must carry per task:

    traditional, clothes-changing, visible-infrared   nothing (the task's fixed phrase);
                                                       clothes-changing keeps "clothes_id"
    clothes-template      extras "instruction_image": the clothes image, relative to the
                          source's root (or absolute)
    language-instructed   extras "caption": the attribute sentences
    text-to-image         extras "caption"; train: the image (fixed phrase) and the
                          caption alone; query: the caption alone; gallery: the image

The ground-truth instruction id (mAP-tau's `reference: labels`) is the source's
"instruction_ref" (its list's instruction field: one key per described outfit or clothes
image) when it has one, else the text or the image path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.records import Record
from reid_instruct_editor.tasks import CLOTHES_TEMPLATE, LANGUAGE_INSTRUCTED, TEXT_TO_IMAGE, normalize_text


def build_source(spec: dict[str, Any], where: str):
    """The dataset a `source:` mapping names (`dataset` plus its keys), from the registry."""
    if not isinstance(spec, dict) or "dataset" not in spec:
        raise ValueError(f"{where}: source must be a mapping with a `dataset` name and its keys, e.g. "
                         "{dataset: omnireid, root: data/ltcc, train: datalist/train.txt}; got " + repr(spec))
    from core.registry import build_registry

    keys = dict(spec)
    name = keys.pop("dataset")
    return build_registry().build("dataset", name, **keys)


def source_records(data, split: str) -> list[Record]:
    """The `instruct` records of `data.source`'s `split` for its one task."""
    task = data.tasks[0]
    out: list[Record] = []
    for r in data.source.records(split):
        out.extend(_task_records(data, task, r, split))
    return out


def _ref(r: Record) -> dict[str, str]:
    ref = r.extras.get("instruction_ref")
    return {"instruction_id": f"ref:{ref}"} if ref not in (None, "") else {}


def _caption(data, r: Record, task: str) -> str:
    text = r.extras.get("caption")
    if text in (None, ""):
        raise ValueError(f"{data_name(data)}: record {r.path} ({task}) has no extras 'caption' (its description); "
                         "the source must give one (omnireid: instruction: text with `texts`)")
    return normalize_text(str(text), data.max_words)


def data_name(data) -> str:
    return f"dataset 'instruct' (source {type(data.source).__name__})"


def _task_records(data, task: str, r: Record, split: str) -> list[Record]:
    if task == CLOTHES_TEMPLATE:
        path = r.extras.get("instruction_image")
        if path in (None, ""):
            raise ValueError(f"{data_name(data)}: record {r.path} (clothes-template) has no extras "
                             "'instruction_image' (the clothes image); omnireid: instruction: image")
        root = Path(getattr(data.source, "root", "."))
        full = str(path) if Path(str(path)).is_absolute() else str(root / str(path))
        extra = {"_instruction_path": full, **_ref(r)}
        return [data._make(r, task, "", extra=extra)]
    if task == LANGUAGE_INSTRUCTED:
        return [data._make(r, task, _caption(data, r, task), extra=_ref(r))]
    if task == TEXT_TO_IMAGE:
        image_row = data._make(r, task, data._fixed(task, split))
        if split == "gallery":
            return [image_row]
        text = data._make(r, task, _caption(data, r, task), text_query=True)
        return [text] if split == "query" else [image_row, text]
    return [data._make(r, task, data._fixed(task, split))]


def check_sources(sources: Any, where: str) -> list[dict[str, Any]]:
    """`sources`: a non-empty list of {task, source} mappings."""
    if not isinstance(sources, list) or not sources:
        raise ValueError(f"{where}: sources must be a non-empty list of {{task: ..., source: {{dataset: ...}}}}")
    for i, entry in enumerate(sources):
        if not isinstance(entry, dict) or set(entry) != {"task", "source"}:
            raise ValueError(f"{where}: sources.{i} must have exactly the keys task and source, got {entry!r}")
    return sources


def joined_records(parts: list, split: str) -> list[Record]:
    """The records of several `instruct` datasets as one test set (the task-free gallery):
    identities made distinct by an offset per part (part k's pids + the sum of the
    earlier parts' largest pid + 1), the part's task and domain kept."""
    out: list[Record] = []
    offset = 0
    for part in parts:
        records = [r for s in ("train", "query", "gallery") for r in part.records(s)]
        for r in part.records(split):
            out.append(Record(path=r.path, pid=r.pid + offset, camid=r.camid, category=r.category,
                              domain=r.domain, split=r.split, extras=dict(r.extras)))
        offset += max((r.pid for r in records), default=-1) + 1
    return out

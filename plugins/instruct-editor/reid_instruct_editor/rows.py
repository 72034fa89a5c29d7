"""Reading model outputs row-selected: some outputs exist for image samples only (the
"global" branch has nothing to say about a text-only query), so the losses read them
through a mask output (`has_image`) named in their `row_masks` key. Which rows have an
image is known on the host (the batch extra `text_query`, kept by `collate`): the backbone
records its `has_image` output's host copy on the batch, and selections of those rows (the
image path, the head's branches, the text-to-image losses' rows) read it there
(`host_image_rows`), so they make no host sync (issue 19, item 9)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from core.interfaces import read_output
from core.records import Batch
from core.training import distributed as D


def host_has_image(batch: Batch) -> np.ndarray:
    """(B,) bool on the host: the rows with an image (not a text-only query, batch extra
    `text_query`), read from the batch's host copy (`Batch.host`): what the backbone's
    `has_image` output holds."""
    if batch.extras.get("text_query") is None:
        return np.ones(len(batch), dtype=bool)
    return ~np.asarray(batch.host("text_query"), dtype=bool)


def host_image_rows(outputs: dict[str, torch.Tensor], batch: Batch, n: int) -> np.ndarray:
    """(n,) bool on the host: the `has_image` output (all rows without one), read from the
    copy the backbone recorded (`Batch.host_output`): no host sync."""
    rows = batch.host_output(outputs, "has_image")
    return np.ones(n, dtype=bool) if rows is None else np.asarray(rows, dtype=bool)


@D.eager_under_ddp
def whole_batch_rows(batch: Batch, images: np.ndarray, task: str | None = None) -> dict[str, np.ndarray] | None:
    """In a DDP training step: {"images", "texts"} (bool) over every process's rows of the
    batch, in rank order: the rows with an image and the text queries, of `task` only when
    given. Read from the records (`text_query` and `task`, through the trainer's plans:
    `D.batch_column`), so nothing is exchanged; this process's part is checked against
    its own `images` (its `has_image` host copy) and batch. None outside a DDP step."""
    flags, tasks = D.batch_column("text_query"), D.batch_column("task")
    if flags is None or tasks is None:
        return None
    (text_query, mine), (names, _) = flags, tasks
    total = sum(D.batch_row_counts())
    has_image = np.ones(total, dtype=bool) if text_query is None else ~np.asarray(
        [bool(v) for v in text_query], dtype=bool)
    chosen, own = _of_task(names, task, total), _of_task(batch.extras.get("task"), task, len(images))
    if not (np.array_equal(has_image[mine], images) and np.array_equal(chosen[mine], own)):
        raise ValueError("instruct-editor: this process's image rows or tasks differ from its records' "
                         "`text_query` / `task` (the whole batch's rows are read from the records under DDP)")
    return {"images": chosen & has_image, "texts": chosen & ~has_image}


def _of_task(names: Any, task: str | None, n: int) -> np.ndarray:
    """(n,) bool: the rows whose task is `task` (all rows without a task or task names)."""
    if task is None or names is None:
        return np.ones(n, dtype=bool)
    return np.asarray([str(name) == task for name in names], dtype=bool)


def read_rows(outputs: dict[str, torch.Tensor], key: str, row_masks: dict[str, str], component: str,
              hint: str = "") -> tuple[torch.Tensor, torch.Tensor | None]:
    """(outputs[key], the rows to use: a bool mask, or None for all rows)."""
    value = read_output(outputs, key, component, hint)
    mask_key = row_masks.get(key)
    if mask_key is None or mask_key not in outputs:
        return value, None
    mask = torch.as_tensor(outputs[mask_key], device=value.device).bool()
    if mask.shape != value.shape[:1]:
        raise ValueError(f"{component}: row mask '{mask_key}' has shape {tuple(mask.shape)} but output '{key}' "
                         f"has {value.shape[0]} rows")
    return value, mask


def check_weights(keys: list[str], weights: list[float], key_name: str, component: str) -> list[float]:
    """One non-negative weight per key."""
    if isinstance(keys, str) or not keys:
        raise ValueError(f"{component}: {key_name} must be a non-empty list of output names, got {keys!r}")
    if len(weights) != len(keys):
        raise ValueError(f"{component}: weights has {len(weights)} entries but {key_name} has {len(keys)} "
                         f"({', '.join(keys)}); give one weight per {key_name[:-1]}")
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
            raise ValueError(f"{component}: weights must be numbers >= 0, got {list(weights)!r}")
    return [float(w) for w in weights]

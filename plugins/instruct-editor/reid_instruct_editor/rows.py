"""Reading model outputs row-selected: some outputs exist for image samples only (the
"global" branch has nothing to say about a text-only query), so the losses read them
through a mask output (`has_image`) named in their `row_masks` key."""

from __future__ import annotations

import torch

from core.interfaces import read_output


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

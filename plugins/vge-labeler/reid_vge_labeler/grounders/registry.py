"""Grounders by name, and building one from its YAML mapping.

`grounder: {name: owlvit, threshold: 0.2}` or `grounder: stripes`. A name may also be a
"module:Class" path to a user's own `Grounder` subclass. Keys are validated against the
grounder's constructor signature by the core's own validation (unknown keys, wrong
types, missing values: errors naming the key and the valid keys); `parts` is injected.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Sequence

from core.config.validation import describe, validate_params
from reid_vge_labeler.grounders.base import Grounder

GROUNDERS: dict[str, str] = {
    "cogvlm": "reid_vge_labeler.grounders.cogvlm:CogVLMGrounder",
    "owlvit": "reid_vge_labeler.grounders.owlvit:OwlViTGrounder",
    "boxes": "reid_vge_labeler.grounders.box_file:BoxFileGrounder",
    "record_boxes": "reid_vge_labeler.grounders.record_boxes:RecordBoxGrounder",
    "stripes": "reid_vge_labeler.grounders.stripes:StripeGrounder",
}


class _Where:
    """Stands for the core's LoadedConfig in `validate_params`: errors name the key path
    under `grounder`; the core adds the pipeline file and the labeler's key."""

    #: where each key came from (the core's LoadedConfig has it); a grounder's keys come
    #: from its labeler's mapping, never from `--set`
    origins: dict[str, str] = {}

    def error(self, key: str, message: str) -> ValueError:
        return ValueError(f"{key}: {message}")


def grounder_class(name: str) -> type[Grounder]:
    target = GROUNDERS.get(name)
    if target is None and ":" not in name:
        close = difflib.get_close_matches(name, list(GROUNDERS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"grounder.name: unknown grounder '{name}'.{hint} Valid grounders: {', '.join(GROUNDERS)} "
                         "(or 'module:Class' of your own Grounder subclass)")
    module_name, _, attr = (target or name).partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"grounder.name: cannot import '{target or name}': {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Grounder)):
        raise ValueError(f"grounder.name: '{name}' is {describe(cls)}, not a reid_vge_labeler Grounder subclass")
    return cls


def build_grounder(spec: str | dict[str, Any], parts: Sequence[str]) -> Grounder:
    """A grounder from `name` or `{name: ..., **keys}`, for `parts`."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ValueError(f"grounder: expected a name or a mapping with 'name' (one of {', '.join(GROUNDERS)}), "
                         f"got {describe(spec)}")
    name = spec["name"]
    params = {k: v for k, v in spec.items() if k != "name"}
    cls = grounder_class(name)
    params = validate_params(cls, params, _Where(), "grounder", f"grounder '{name}'", injected=("parts",))
    grounder = cls(parts=list(parts), **params)
    grounder.name = name
    return grounder

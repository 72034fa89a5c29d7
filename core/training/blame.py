"""Naming the component behind an exception raised while training.

A plugin's loss that fails deep inside the trainer gave a 40-line traceback through
DDP, autocast and the trainer. `blame` walks the traceback for the deepest frame whose
`self` is one of the pipeline's components (sampler, backbone, head, a loss) and builds
one line: the component, its plugin, the shapes of what it was given, and the error's
last line. No cost on the normal path: nothing is wrapped, the traceback is read only
after a failure.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch


class ComponentError(RuntimeError):
    """An exception raised inside a pipeline component, with the component named."""

    def __init__(self, message: str, component: str) -> None:
        super().__init__(message)
        self.component = component


def describe_tensors(values: dict[str, Any], limit: int = 8) -> str:
    """`name (32, 96) float32, ...` for the tensors of a mapping (the first `limit`)."""
    parts = [f"{k} {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}"
             for k, v in values.items() if torch.is_tensor(v)]
    more = f", ... ({len(parts) - limit} more)" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


def last_line(exc: BaseException) -> str:
    """'Type: the message's last line'; for an exception a DataLoader worker raised, its
    type and its own message (not torch's 'Caught ...' text around them)."""
    original = worker_original(exc)
    if original is not None:
        return f"{original[0]}: {original[1]}".rstrip(": ")
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}".rstrip(": ")


def worker_original(exc: BaseException) -> tuple[str, str] | None:
    """(type name, message) of an exception raised in a DataLoader worker, else None. torch
    raises it again in the main process as the same type (RuntimeError when that type cannot
    be built from one message), with 'Caught X in DataLoader worker process N.' (or 'in pin
    memory thread for device N.', the pin-memory thread's) and the
    worker's traceback as its text; the original message is the traceback's last line, after
    'X: ' (or 'module.X: '), or '' where that line is 'X' alone (a bare `assert`, `raise
    X()`): its message is empty, not that of an exception it was raised while handling."""
    import re

    text = str(exc)
    caught = re.match(r"Caught (\w+) in (?:DataLoader worker|pin memory thread)", text)
    if caught is None:
        return None
    name = caught.group(1)
    found = re.findall(rf"^(?:[\w.]+\.)?{re.escape(name)}(?:: (.*))?$", text, re.M)
    return (name, found[-1].strip()) if found else None


def describe_arguments(frame) -> str:
    """The shapes of a call's arguments, read from its frame: tensors, mappings of
    tensors (model outputs, features) and batches (their tensor fields)."""
    code = frame.f_code
    names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    parts = []
    for name in names:
        if name == "self":
            continue
        value = frame.f_locals.get(name)
        if torch.is_tensor(value):
            parts.append(f"{name} {describe_tensors({'': value}).strip()}")
        elif isinstance(value, dict):
            parts.append(f"{name} {{{describe_tensors(value)}}}")
        elif hasattr(value, "images") and hasattr(value, "pids"):  # a Batch
            fields = {"images": value.images, "pids": value.pids, **(getattr(value, "extras", None) or {})}
            parts.append(f"{name} {{{describe_tensors(fields)}}}")
    return "; ".join(parts)


def blame(exc: BaseException, components: Iterable[tuple[Any, str, str, str]]) -> ComponentError | None:
    """The `ComponentError` for `exc`, or None when no component's code is on its stack.

    `components`: (object, kind, name, plugin). The deepest frame whose `self` is a
    component names it; that frame's arguments give the shapes."""
    known = {id(obj): (kind, name, plugin) for obj, kind, name, plugin in components}
    culprit, frame = None, None
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if owner is not None and id(owner) in known:
            culprit, frame = known[id(owner)], tb.tb_frame
        tb = tb.tb_next
    if culprit is None:
        return None
    kind, name, plugin = culprit
    given = describe_arguments(frame)
    return ComponentError(f"{kind} '{name}' (plugin {plugin}) failed"
                          + (f" on {given}" if given else "") + f": {last_line(exc)}", component=f"{kind} '{name}'")

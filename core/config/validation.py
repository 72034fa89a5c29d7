"""Validating YAML keys against a component's constructor signature.

A component's parameters ARE its schema: no separate schema to drift (fast-reid's closed
config schema broke across versions). Unknown keys, wrong types and missing values are
errors naming the file, the key path and the valid keys, with a did-you-mean.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Union

from core.config.loading import LoadedConfig

#: Constructor parameters filled by the core, never from YAML.
INJECTED = ("ctx",)


def parameters(target: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The YAML-settable parameters of a class or factory."""
    sig = inspect.signature(target)
    return {n: p for n, p in sig.parameters.items()
            if n not in INJECTED and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def accepts_extra_keys(target: Callable[..., Any]) -> bool:
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(target).parameters.values())


def _hints(target: Callable[..., Any]) -> dict[str, Any]:
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations: skip type checks, keep key checks
        return {}


def type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(hint) if a is not Ellipsis)
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(hint, "__name__", str(hint))


def check_type(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a type hint (ints are accepted for floats, not bools)."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(check_type(value, a) for a in args)
    if origin is Literal:
        return value in args
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str or hint is Path:
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if not args:
            return True
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(check_type(v, a) for v, a in zip(value, args))
        return all(check_type(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            return False
        return not args or all(check_type(k, args[0]) and check_type(v, args[1]) for k, v in value.items())
    if inspect.isclass(hint):
        return isinstance(value, hint)
    return True


def describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def validate_params(target: Callable[..., Any], params: dict[str, Any], cfg: LoadedConfig,
                    key: str, what: str, injected: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check `params` (the YAML mapping at `key`) against `target`'s signature.

    `what` names the component in messages ("loss 'triplet'"); `injected` are parameters
    the core fills itself besides `ctx`. Returns the parameters to call `target` with.
    """
    accepted = {n: p for n, p in parameters(target).items() if n not in injected}
    hints = _hints(target)
    valid = ", ".join(accepted) or "(none)"
    if not accepts_extra_keys(target):
        for name in params:
            if name not in accepted:
                close = difflib.get_close_matches(str(name), list(accepted), n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise cfg.error(f"{key}.{name}" if key else str(name),
                                f"unknown key '{name}' for {what}.{hint} Valid keys: {valid}.")
    for name, param in accepted.items():
        path = f"{key}.{name}" if key else name
        if name not in params:
            if param.default is inspect.Parameter.empty:
                raise cfg.error(path, f"missing value: {what} needs '{name}'"
                                + (f" ({type_name(hints[name])})" if name in hints else "")
                                + f". Valid keys: {valid}.")
            continue
        hint = hints.get(name, inspect.Parameter.empty)
        if not check_type(params[name], hint):
            raise cfg.error(path, f"wrong type for {what}: expected {type_name(hint)}, "
                                  f"got {describe(params[name])}.")
    return dict(params)


def build_dataclass(cls: type, params: Any, cfg: LoadedConfig, key: str, what: str):
    """Validate a mapping against a config dataclass and instantiate it."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise cfg.error(key, f"{what} must be a mapping, got {describe(params)}")
    assert dataclasses.is_dataclass(cls)
    return cls(**validate_params(cls, params, cfg, key, what))

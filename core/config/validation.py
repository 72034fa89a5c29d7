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
                                f"unknown key '{name}' for {what}.{hint} Valid keys: {valid}."
                                + swap_hint(cfg, key, params, accepted, what))
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


def _lookup(data: Any, key: str) -> Any:
    for part in key.split("."):
        if isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        elif isinstance(data, dict):
            data = data.get(part)
        else:
            return None
    return data


def swap_hint(cfg: LoadedConfig, key: str, params: dict[str, Any], accepted: dict[str, inspect.Parameter],
              what: str) -> str:
    """When `--set`/`--grid key.name=...` swapped a component but the other keys of its
    mapping still come from the file (written for the component it replaced): which of
    them the new one does not accept, which it needs, and the whole mapping to give
    instead (a mapping given by --set / --grid replaces the file's rather than merging)."""
    if not key or cfg.origins.get(f"{key}.name") != "--set":
        return ""
    stale = [k for k in params if k not in accepted and cfg.origin(f"{key}.{k}") != "--set"]
    if not stale:
        return ""
    import yaml

    name = _lookup(cfg.data, f"{key}.name")
    needs = [n for n, p in accepted.items() if p.default is inspect.Parameter.empty and n not in params]
    kept = {k: v for k, v in params.items() if k in accepted}
    mapping = yaml.safe_dump({"name": name, **kept}, default_flow_style=True, sort_keys=False, width=10**6).strip()
    return (f" '{key}.name' was set to {name!r} by --set/--grid, but {', '.join(repr(k) for k in stale)} "
            f"{'comes' if len(stale) == 1 else 'come'} from {cfg.origin(f'{key}.{stale[0]}')}, written for the "
            f"component it replaced: {what} does not accept {', '.join(stale)}"
            + (f" and needs {', '.join(needs)}" if needs else "")
            + f". Give the whole mapping instead (a mapping given by --set or --grid replaces the file's): "
            f"--set '{key}={mapping}', or in a grid one mapping per variant: "
            f"--grid '{key}={{name: a, ...}},{{name: b, ...}}'.")


def build_dataclass(cls: type, params: Any, cfg: LoadedConfig, key: str, what: str):
    """Validate a mapping against a config dataclass and instantiate it."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise cfg.error(key, f"{what} must be a mapping, got {describe(params)}")
    assert dataclasses.is_dataclass(cls)
    return cls(**validate_params(cls, params, cfg, key, what))


# --- parameter-name patterns (stages' trainable / frozen / param_groups) ---------------

def _pattern_candidates(names: list[str]) -> list[str]:
    """What a pattern could have meant: every name and every dotted prefix as `prefix.*`."""
    out: dict[str, None] = {}
    for name in names:
        parts = name.split(".")
        for n in range(1, len(parts)):
            out.setdefault(".".join(parts[:n]) + ".*", None)
        out.setdefault(name, None)
    return list(out)


def close_patterns(pattern: str, names: list[str], n: int = 3) -> list[str]:
    """Patterns close to a pattern that matched nothing (did-you-mean)."""
    return difflib.get_close_matches(pattern, _pattern_candidates(names), n=n, cutoff=0.6)


def name_examples(names: list[str]) -> list[str]:
    """What parameter names look like: one per module prefix (three segments), and every
    trainable loss parameter (`losses.<i>.<param>`, e.g. a center loss's table), which
    come last in the model and would otherwise be cut off."""
    seen: dict[str, str] = {}
    for name in names:
        if not name.startswith("losses."):
            seen.setdefault(".".join(name.split(".")[:3]), name)
    examples = list(seen.values())[:6] + (["..."] if len(seen) > 6 else [])
    losses = [n for n in names if n.startswith("losses.")]
    return examples + losses[:8] + (["..."] if len(losses) > 8 else [])


def pattern_miss(pattern: str, names: list[str], among: str = "parameter") -> str:
    """`pattern '...' matches no <among>` with a did-you-mean and what names look like."""
    close = close_patterns(pattern, names)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return (f"pattern '{pattern}' matches no {among}; names look like {', '.join(name_examples(names))}.{hint} "
            "(A loss's own parameters are `losses.<i>.<param>`, <i> counting the pipeline's losses, then "
            "those only a stage lists.)")

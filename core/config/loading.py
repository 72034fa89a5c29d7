"""Reading pipeline YAML: `_base_` inheritance, `--set` overrides, and where each key came from.

Merge rules (documented in the README, printed by `core run --print-config`):
- mappings merge key by key, recursively;
- lists and scalars are replaced whole (a child's `losses:` replaces the base's);
- a mapping with `_delete_: true` replaces the base's mapping instead of merging;
- `_base_` is a path (or a list of paths, merged in order) relative to the file.

`--set a.b.0.c=VALUE` parses VALUE as YAML; integer segments index lists. Every leaf
remembers its origin (a file or `--set`) so errors name the file that set the key.
"""

from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class PipelineLoader(yaml.SafeLoader):
    """yaml's safe loader with YAML 1.2's numbers: `1e6`, `1e-4` and `.5` are floats.

    PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent, so
    `lr: 1e-4` was the string '1e-4' and `--set stages.0.optimizer.lr=1e6` was refused
    as a string. Everything else (tags, no Python objects) is the safe loader's.
    """


PipelineLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
PipelineLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?
                |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def safe_load(text: str) -> Any:
    """Parse YAML text as pipeline files and `--set` values are parsed (`PipelineLoader`)."""
    return yaml.load(text, Loader=PipelineLoader)


class ConfigError(ValueError):
    """A pipeline error that names the file, the key path, and what would be valid."""

    def __init__(self, message: str, file: str | None = None, key: str | None = None) -> None:
        self.file, self.key, self.message = file, key, message
        where = ": ".join(x for x in (file, key) if x)
        super().__init__(f"{where}: {message}" if where else message)


@dataclass
class LoadedConfig:
    data: dict[str, Any]
    file: Path
    #: dotted key path -> the file (or "--set") that last set it
    origins: dict[str, str] = field(default_factory=dict)

    def origin(self, key: str) -> str:
        """The file that set `key` or its nearest enclosing key."""
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            found = self.origins.get(".".join(parts[:n]))
            if found:
                return found
        return str(self.file)

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, file=self.origin(key), key=key)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """The parser's problem and where it is, on one line (its own text spans several, and
    the CLI shows one: the position was cut off)."""
    mark = getattr(exc, "problem_mark", None)
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    context = getattr(exc, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}" + (f" ({' '.join(str(context).split())})" if context else "")


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError("pipeline file not found", file=str(path))
    try:
        data = safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {_yaml_problem(exc)}", file=str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"a pipeline must be a mapping of keys, got {type(data).__name__}", file=str(path))
    return data


def _record_origins(value: Any, prefix: str, file: str, origins: dict[str, str]) -> None:
    origins[prefix] = file
    if isinstance(value, dict):
        for k, v in value.items():
            _record_origins(v, f"{prefix}.{k}" if prefix else str(k), file, origins)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _record_origins(v, f"{prefix}.{i}", file, origins)


def _forget_origins(prefix: str, origins: dict[str, str]) -> None:
    for key in [k for k in origins if k == prefix or k.startswith(prefix + ".")]:
        del origins[key]


def merge(base: dict, child: dict, file: str, origins: dict[str, str], prefix: str = "") -> dict:
    """Merge `child` onto `base` by the rules above (returns a new mapping)."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value.get("_delete_"):
            value = {k: v for k, v in value.items() if k != "_delete_"}
            _forget_origins(path, origins)
            out[key] = copy.deepcopy(value)
            _record_origins(value, path, file, origins)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            origins[path] = file
            out[key] = merge(out[key], value, file, origins, path)
        else:
            _forget_origins(path, origins)
            out[key] = copy.deepcopy(value)
            _record_origins(value, path, file, origins)
    return out


def _load_with_bases(path: Path, origins: dict[str, str], chain: tuple[Path, ...]) -> dict:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"`_base_` inheritance forms a cycle: {cycle}", file=str(path), key="_base_")
    data = _read_yaml(path)
    bases = data.pop("_base_", None)
    merged: dict[str, Any] = {}
    if bases is not None:
        if isinstance(bases, str):
            bases = [bases]
        if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            raise ConfigError("`_base_` must be a path or a list of paths", file=str(path), key="_base_")
        for base in bases:
            base_path = (path.parent / base)
            if not base_path.is_file():
                raise ConfigError(f"base pipeline '{base}' not found (looked at {base_path}; "
                                  "paths are relative to this file)", file=str(path), key="_base_")
            merged = merge(merged, _load_with_bases(base_path, origins, (*chain, path)), str(base_path.resolve()), {})
            # origins of the base were recorded by its own load; keep them
    return merge(merged, data, str(path), origins)


def parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"expects key.path=value, got '{text}'", file="--set")
    try:
        value = safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"the value is not valid YAML: {_yaml_problem(exc)}", file="--set", key=key.strip()) from None
    return key.strip().split("."), value


def apply_override(data: dict, parts: list[str], value: Any, origins: dict[str, str]) -> None:
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        here = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                problem = "is out of range" if part.lstrip("-").isdigit() else "is not a list index"
                raise ConfigError(f"'{part}' {problem}: '{'.'.join(parts[:i]) or '(top)'}' is a list of "
                                  f"{len(node)} items (0..{len(node) - 1})", file="--set", key=here)
            index: Any = int(part)
        elif isinstance(node, dict):
            index = part
            if not last and index not in node:
                if parts[i + 1].lstrip("-").isdigit():  # an index into a list the pipeline has not
                    lists = [k for k, v in node.items() if isinstance(v, list)]
                    close = difflib.get_close_matches(part, lists, n=1, cutoff=0.6)
                    if close:  # a misspelt name of a list it has: setting a new list would be refused later
                        meant = ".".join([*parts[:i], close[0], *parts[i + 1:]])
                        raise ConfigError(f"'{here}' is not in the pipeline, so it has no item {parts[i + 1]}. "
                                          f"Did you mean '{meant}'? (the pipeline's keys here: "
                                          f"{', '.join(sorted(node))})", file="--set", key=here)
                    raise ConfigError(f"'{here}' is not in the pipeline, so it has no item {parts[i + 1]}; "
                                      f"set the whole list, e.g. --set '{here}=[...]'", file="--set", key=here)
                node[index] = {}
        else:
            raise ConfigError(f"cannot set '{here}': '{'.'.join(parts[:i])}' is a {type(node).__name__}, "
                              "not a mapping or list", file="--set", key=here)
        if last:
            _forget_origins(here, origins)
            node[index] = value
            _record_origins(value, here, "--set", origins)
        else:
            node = node[index]


def load_pipeline(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LoadedConfig:
    """Read a pipeline file with its bases and apply `--set` overrides."""
    file = Path(path)
    origins: dict[str, str] = {}
    data = _load_with_bases(file, origins, ())
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(data, parts, value, origins)
    return LoadedConfig(data=data, file=file.resolve(), origins=origins)


def dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)

"""The registry: one table of named components per kind, filled by the plugins' hooks.

This file is the one place that lists the kinds (mmengine's lesson). The core owns the
names: two plugins registering one name in one kind is an error naming both; a name
nobody registered gets a did-you-mean and, when the first-party catalogue
(registry.yaml) knows a plugin that provides it, the command that installs it.
Entries are lazy ("module:attribute"), so listing them never imports torch.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Callable

#: kind -> the hook that registers it. The order is the pipeline's build order.
KIND_HOOKS: dict[str, str] = {
    "dataset": "register_datasets",
    "sampler": "register_samplers",
    "backbone": "register_backbones",
    "head": "register_heads",
    "loss": "register_losses",
    "evaluator": "register_evaluators",
    "labeler": "register_labelers",
}
KINDS = tuple(KIND_HOOKS)


class RegistryError(Exception):
    """A registration conflict or a component that cannot be found or imported."""


class DuplicateComponentError(RegistryError):
    pass


class UnknownComponentError(RegistryError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    target: Any  # a class/factory, or a lazy "module:attribute" string
    provider: str  # the plugin that registered it
    aliases: tuple[str, ...] = ()

    def load(self) -> Callable[..., Any]:
        """Import (if lazy) and return the component's class or factory."""
        if not isinstance(self.target, str):
            return self.target
        module_name, _, attr = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
            return getattr(module, attr) if attr else module
        except (ImportError, AttributeError) as exc:
            raise RegistryError(
                f"{self.kind} '{self.name}' (from plugin '{self.provider}') points to "
                f"'{self.target}', which cannot be imported: {type(exc).__name__}: {exc}"
            ) from exc


@dataclass
class Registry:
    tables: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})

    def add(self, kind: str, name: str, target: Any, provider: str, aliases=()) -> None:
        if kind not in self.tables:
            raise RegistryError(f"unknown kind '{kind}'; kinds are: {', '.join(KINDS)}")
        if not isinstance(name, str) or not name:
            raise RegistryError(f"plugin '{provider}' registered a {kind} with an invalid name {name!r}")
        if isinstance(target, str) and ":" not in target:
            raise RegistryError(f"plugin '{provider}' registered {kind} '{name}' with target "
                                f"'{target}'; a lazy target is 'module:attribute'")
        entry = Entry(kind, name, target, provider, tuple(aliases))
        for key in (name, *aliases):
            other = self.tables[kind].get(key)
            if other is not None:
                raise DuplicateComponentError(
                    f"{kind} '{key}' is registered twice: by plugin '{other.provider}' and by "
                    f"plugin '{provider}'. Uninstall or disable one (CORE_DISABLE_PLUGINS={provider})."
                )
            self.tables[kind][key] = entry

    def names(self, kind: str) -> list[str]:
        return sorted(self.tables[kind])

    def entries(self, kind: str) -> list[Entry]:
        """Unique entries of a kind (aliases folded)."""
        seen: dict[int, Entry] = {}
        for entry in self.tables[kind].values():
            seen.setdefault(id(entry), entry)
        return sorted(seen.values(), key=lambda e: e.name)

    def get(self, kind: str, name: str) -> Entry:
        try:
            return self.tables[kind][name]
        except KeyError:
            raise UnknownComponentError(self.explain_unknown(kind, name)) from None

    def explain_unknown(self, kind: str, name: str) -> str:
        known = self.names(kind)
        lines = [f"unknown {kind} '{name}'."]
        provider = catalogue_provider(kind, name)
        if provider is not None:
            from core.plugins import get_plugin_manager

            info = get_plugin_manager().infos.get(provider["name"])
            if info is not None and info.error:
                lines.append(f"It is provided by plugin '{provider['name']}', which is installed but "
                             f"failed to load: {info.error.splitlines()[-1]}")
            else:
                lines.append(
                    f"It is provided by plugin '{provider['name']}' ({provider['paper']}), which is not "
                    f"installed. Install it with: pip install -e {provider['path']}  "
                    f"(from a reid-core checkout; or: pip install {provider['distribution']})"
                )
        else:
            candidates = known + sorted(catalogue_names(kind) - set(known))
            close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
            if close:
                lines.append(f"Did you mean {' or '.join(repr(c) for c in close)}?")
        lines.append(f"Installed {kind} components: {', '.join(known) or 'none'}.")
        return " ".join(lines)

    def build(self, kind: str, name: str, **kwargs: Any) -> Any:
        return self.get(kind, name).load()(**kwargs)


def build_registry(pm=None) -> Registry:
    """Call every plugin's registration hooks, attributing each name to its plugin."""
    from core.plugins import get_plugin_manager

    pm = pm or get_plugin_manager()
    trace = bool(os.environ.get("CORE_TRACE_PLUGINS"))
    registry = Registry()
    for kind, hook_name in KIND_HOOKS.items():
        # each implementation is called on its own so every name is attributed to its plugin
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            def register(name, target, aliases=(), _kind=kind, _provider=impl.plugin_name):
                registry.add(_kind, name, target, _provider, aliases)
                if trace:
                    print(f"[trace] {hook_name}: plugin '{_provider}' registered {_kind} '{name}' -> {target}",
                          file=sys.stderr)

            impl.function(register)
    return registry


@lru_cache(maxsize=1)
def catalogue() -> list[dict[str, Any]]:
    """The first-party plugin catalogue (registry.yaml shipped with the core)."""
    import yaml

    text = resources.files("core").joinpath("registry.yaml").read_text(encoding="utf-8")
    return list(yaml.safe_load(text)["plugins"])


def catalogue_provider(kind: str, name: str) -> dict[str, Any] | None:
    for plugin in catalogue():
        if name in (plugin.get("provides", {}).get(kind) or []):
            return plugin
    return None


def catalogue_names(kind: str) -> set[str]:
    return {n for p in catalogue() for n in (p.get("provides", {}).get(kind) or [])}

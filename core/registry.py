"""The registry: one table of named components per kind, filled by the plugins' hooks.

This file is the one place that lists the kinds (mmengine's lesson). The core owns the
names: two plugins may register one name in one kind, and asking for it bare is then an
error naming both, while `plugin:name` picks one (a plugin registering one name twice is
an error at once); a name nobody registered gets a did-you-mean and, when the first-party catalogue
(registry.yaml) knows a plugin that provides it, the command that installs it.
Entries are lazy ("module:attribute"), so listing them never imports torch.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
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
    "logger": "register_loggers",
}
KINDS = tuple(KIND_HOOKS)
#: separates a plugin and a component name: `example:center` is plugin example's `center`
SEPARATOR = ":"


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
    """kind -> name -> the entries registered under that name (one per plugin).

    A name registered by one plugin is found by its bare name; a name registered by two
    plugins is ambiguous: asking for it bare is an error naming both, and
    `plugin:name` (e.g. `example:center`) picks one. The names stay installable side by
    side, so `core plugins` and every pipeline that does not use the name keep working.
    """

    tables: dict[str, dict[str, list[Entry]]] = field(default_factory=lambda: {k: {} for k in KINDS})

    def add(self, kind: str, name: str, target: Any, provider: str, aliases=()) -> None:
        if kind not in self.tables:
            raise RegistryError(f"unknown kind '{kind}'; kinds are: {', '.join(KINDS)}")
        for key in (name, *aliases):
            if not isinstance(key, str) or not key or SEPARATOR in key:
                raise RegistryError(f"plugin '{provider}' registered a {kind} with an invalid name {key!r} "
                                    f"(a non-empty string without '{SEPARATOR}', which separates "
                                    "plugin and name in `plugin:name`)")
        if isinstance(target, str) and ":" not in target:
            raise RegistryError(f"plugin '{provider}' registered {kind} '{name}' with target "
                                f"'{target}'; a lazy target is 'module:attribute'")
        entry = Entry(kind, name, target, provider, tuple(aliases))
        for key in (name, *aliases):
            same = [e for e in self.tables[kind].get(key, []) if e.provider == provider]
            if same:
                raise DuplicateComponentError(
                    f"plugin '{provider}' registers {kind} '{key}' twice ({same[0].target} and {target}); "
                    "give each component its own name")
            self.tables[kind].setdefault(key, []).append(entry)

    def names(self, kind: str) -> list[str]:
        """The bare names (and aliases) of a kind."""
        return sorted(self.tables[kind])

    def entries(self, kind: str) -> list[Entry]:
        """Unique entries of a kind (aliases folded), by name then plugin."""
        seen: dict[int, Entry] = {}
        for found in self.tables[kind].values():
            for entry in found:
                seen.setdefault(id(entry), entry)
        return sorted(seen.values(), key=lambda e: (e.name, e.provider))

    def ambiguous(self, kind: str) -> dict[str, list[str]]:
        """Names of a kind registered by more than one plugin -> those plugins."""
        return {name: [e.provider for e in found] for name, found in sorted(self.tables[kind].items())
                if len(found) > 1}

    def get(self, kind: str, name: str) -> Entry:
        """The entry named `name` (bare, or `plugin:name` to pick one of several)."""
        provider, sep, bare = name.rpartition(SEPARATOR) if isinstance(name, str) else ("", "", name)
        found = self.tables[kind].get(bare, []) if isinstance(bare, str) else []
        if sep:
            chosen = [e for e in found if e.provider == provider]
            if chosen:
                return chosen[0]
            raise UnknownComponentError(self.explain_unknown_qualified(kind, provider, bare))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise DuplicateComponentError(self.explain_ambiguous(kind, bare, found))
        raise UnknownComponentError(self.explain_unknown(kind, name))

    @staticmethod
    def explain_ambiguous(kind: str, name: str, found: list[Entry]) -> str:
        plugins = " and ".join(f"plugin '{e.provider}' ({e.target if isinstance(e.target, str) else e.target.__name__})"
                               for e in found)
        choices = " or ".join(f"'{e.provider}{SEPARATOR}{name}'" for e in found)
        return (f"{kind} '{name}' is registered by {len(found)} plugins: {plugins}. Name the one you mean as "
                f"{choices} (or disable one: CORE_DISABLE_PLUGINS={found[-1].provider}).")

    def explain_unknown_qualified(self, kind: str, provider: str, name: str) -> str:
        providers = sorted({e.provider for entries in self.tables[kind].values() for e in entries})
        failed = failed_plugins()
        if provider in failed:
            return f"unknown {kind} '{provider}{SEPARATOR}{name}': {failed[provider]}."
        if provider not in providers:
            owners = [e.provider for e in self.tables[kind].get(name, [])] or providers
            close = difflib.get_close_matches(provider, owners, n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}{SEPARATOR}{name}'?" if close else ""
            return (f"unknown {kind} '{provider}{SEPARATOR}{name}': no installed plugin '{provider}' provides a "
                    f"{kind}.{hint} Plugins providing a {kind}: {', '.join(providers) or 'none'}.")
        own = sorted({e.name for entries in self.tables[kind].values() for e in entries if e.provider == provider})
        close = difflib.get_close_matches(name, own, n=1, cutoff=0.6)
        hint = f" Did you mean '{provider}{SEPARATOR}{close[0]}'?" if close else ""
        others = [e.provider for e in self.tables[kind].get(name, [])]
        elsewhere = f" '{name}' is provided by plugin {', '.join(others)}." if others else ""
        return (f"unknown {kind} '{provider}{SEPARATOR}{name}': plugin '{provider}' provides no {kind} '{name}'."
                f"{hint}{elsewhere} Its {kind} components: {', '.join(own)}.")

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
            # a third-party plugin that failed to load may be the one meant to provide it
            lines += [f"Note: {failure}." for failure in failed_plugins().values()]
        lines.append(f"Installed {kind} components: {', '.join(known) or 'none'}.")
        return " ".join(lines)

    def build(self, kind: str, name: str, /, **kwargs: Any) -> Any:
        return self.get(kind, name).load()(**kwargs)


def failed_plugins() -> dict[str, str]:
    """Entry-point plugins that failed to load -> one line saying so and why."""
    from core.plugins import get_plugin_manager

    return {name: info.failure() for name, info in get_plugin_manager().infos.items() if info.error}


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
                    logging.getLogger("core.plugins").info(
                        f"[trace] {hook_name}: plugin '{_provider}' registered {_kind} '{name}' -> {target}")

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

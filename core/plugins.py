"""Loading plugins: the core's built-ins, installed entry points, and local files.

The built-ins are a default plugin registered through the same hooks as everyone else
(datasette's model). A plugin that fails to import is reported and skipped, never a crash
of `core --help` (llm's lesson); `CORE_STRICT_PLUGINS=1` turns that into an error for
plugin authors and CI. Environment variables:

- `CORE_LOAD_PLUGINS=a,b`  load only these entry-point plugins (empty: none);
- `CORE_DISABLE_PLUGINS=a,b`  skip these;
- `CORE_STRICT_PLUGINS=1`  a plugin that fails to load is an error;
- `CORE_TRACE_PLUGINS=1`  print every hook call and its results to stderr.

Nothing here imports torch.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import importlib.util
import logging
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pluggy

from core import hookspecs

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "reid_core"
BUILTIN_PLUGIN = "core"


class PluginLoadError(RuntimeError):
    """A plugin failed to load under CORE_STRICT_PLUGINS=1, or a local plugin file is bad."""


@dataclass
class PluginInfo:
    """What `core plugins` reports about one plugin."""

    name: str
    source: str  # "builtin", "entry point", "local file"
    distribution: str | None = None
    version: str | None = None
    module: str | None = None
    hooks: list[str] = field(default_factory=list)
    error: str | None = None
    reason: str | None = None  # the error in one line, with what to fix where it is known

    def failure(self) -> str:
        """`plugin 'x' (dist) is installed but failed to load: <reason>` for messages."""
        last = self.error.splitlines()[-1] if self.error else ""
        return (f"plugin '{self.name}' ({self.distribution or self.module}) is installed but failed to load, "
                f"so nothing it registers is available: {self.reason or last}")


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def strict() -> bool:
    return os.environ.get("CORE_STRICT_PLUGINS", "") not in ("", "0", "false", "no")


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus the record of what was loaded and what failed."""

    def __init__(self) -> None:
        super().__init__(ENTRY_POINT_GROUP)
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}

    def add(self, module: object, info: PluginInfo) -> None:
        self.register(module, name=info.name)
        self.check_pending()  # a misspelt hook implementation is an error, not a silent no-op
        info.hooks = sorted(h.name for h in self.get_hookcallers(module) or [])
        self.infos[info.name] = info

    def failed(self, info: PluginInfo) -> None:
        self.infos[info.name] = info
        last = info.error.splitlines()[-1] if info.error else ""
        if strict():  # one line (the CLI prints it as is): the plugin, its entry point, the error
            raise PluginLoadError(f"plugin '{info.name}' ({info.distribution or info.module}) failed to load "
                                  f"(CORE_STRICT_PLUGINS=1 makes that an error): entry point "
                                  f"`{info.name} = {info.module}`: {' '.join((info.reason or last).split())}")
        log.warning(f"plugin '{info.name}' ({info.distribution or info.module}) failed to load "
                    f"and was skipped: {info.reason or last} "
                    "(set CORE_STRICT_PLUGINS=1 to make this an error)")

    def load_entry_points(self) -> None:
        only = _env_list("CORE_LOAD_PLUGINS")
        disabled = set(_env_list("CORE_DISABLE_PLUGINS") or [])
        entry_points = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
        installed = sorted({ep.name for ep in entry_points})
        for variable, named in (("CORE_LOAD_PLUGINS", only or []), ("CORE_DISABLE_PLUGINS", sorted(disabled))):
            unknown = [n for n in named if n not in installed]  # a typo loaded or disabled nothing, silently
            if unknown:
                log.warning(f"{variable} names {', '.join(repr(n) for n in unknown)}, which no installed plugin "
                            f"is called; installed plugins: {', '.join(installed) or 'none'}")
        for ep in entry_points:
            if ep.name in disabled or (only is not None and ep.name not in only):
                continue
            if ep.name in self.infos:  # the same distribution seen twice on sys.path
                continue
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                name=ep.name, source="entry point", module=ep.value,
                distribution=dist.metadata["Name"] if dist else None,
                version=dist.version if dist else None,
            )
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure of a third-party plugin
                info.error = traceback.format_exc(limit=3).strip()
                info.reason = entry_point_problem(ep.name, ep.value, exc)
                self.failed(info)
                continue
            try:
                self.add(module, info)
            except (ValueError, pluggy.PluginValidationError) as exc:
                self.unregister(module)
                info.error = f"{type(exc).__name__}: {exc}"
                self.failed(info)

    def drop_local(self, keep: set[str] = frozenset()) -> None:
        """Unregister local plugin files not in `keep`: a local plugin belongs to the
        pipeline that names it, not to the pipelines built after it in this process."""
        for name, info in list(self.infos.items()):
            if info.source == "local file" and name not in keep:
                self.unregister(name=name)
                del self.infos[name]

    def load_file(self, path: str | Path, base_dir: str | Path | None = None) -> str:
        """Register a one-off local plugin module named in a pipeline (`plugins: [./x.py]`)."""
        file = Path(path)
        if not file.is_absolute() and base_dir is not None:
            file = Path(base_dir) / file
        file = file.resolve()
        if not file.is_file():
            raise PluginLoadError(f"local plugin file not found: {file} (named in `plugins:`; "
                                  "paths are relative to the pipeline file)")
        name = local_plugin_name(file)
        if name in self.infos:
            return name
        # said before it runs: a pipeline received from someone else names code to import
        log.info("importing local plugin file %s (Python code named in the pipeline's `plugins:`)", file)
        spec = importlib.util.spec_from_file_location(f"reid_core_local_{abs(hash(str(file)))}", file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise PluginLoadError(f"local plugin {file} failed to import: {type(exc).__name__}: {exc}") from exc
        self.add(module, PluginInfo(name=name, source="local file", module=str(file)))
        return name


def entry_point_problem(name: str, value: str, exc: BaseException) -> str:
    """The import error in one line; when the module the entry point names (or its package)
    does not exist, say that the entry point is the line to fix (a typo there is the
    usual cause, and the author otherwise looks for a bug in their code)."""
    text = f"{type(exc).__name__}: {exc}"
    module = value.split(":")[0].strip()
    parents = {".".join(module.split(".")[: i + 1]) for i in range(module.count(".") + 1)}
    if isinstance(exc, ModuleNotFoundError) and exc.name in parents:
        return (f"{text}; its entry point `{name} = {value}` names a module that does not exist: check "
                "[project.entry-points.reid_core] in the plugin's pyproject.toml (the module holding its "
                "@hookimpl functions), then reinstall it (pip install -e DIR)")
    return text


def local_plugin_name(file: Path) -> str:
    return f"local:{file}"


def _trace(pm: PluginManager) -> None:
    def before(hook_name, hook_impls, kwargs):
        log.info(f"[trace] {hook_name} -> {[i.plugin_name for i in hook_impls]}")

    def after(outcome, hook_name, hook_impls, kwargs):
        log.info(f"[trace] {hook_name} done")

    pm.add_hookcall_monitoring(before, after)


_manager: PluginManager | None = None


def get_plugin_manager(refresh: bool = False) -> PluginManager:
    """The process-wide plugin manager: built-ins first, then installed entry points."""
    global _manager
    if _manager is None or refresh:
        pm = PluginManager()
        from core import builtins

        pm.add(builtins, PluginInfo(name=BUILTIN_PLUGIN, source="builtin", distribution="reid-core",
                                    version=_version("reid-core"), module="core.builtins"))
        pm.load_entry_points()
        if os.environ.get("CORE_TRACE_PLUGINS"):
            _trace(pm)
        _manager = pm
    return _manager


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None

"""The pipeline's `loggers:` list, checked and built at pipeline build time.

    loggers: [tensorboard]                               # names ...
    loggers: [tensorboard, {name: wandb, project: reid, mode: offline}]   # ... or mappings

Each name is a registered `logger` (built-ins: tensorboard, wandb, mlflow; plugins add
more with `register_loggers`); an unknown name, an unknown key or a missing package is
one error line naming `loggers.<i>`.
"""

from __future__ import annotations

from typing import Any

from core.registry import Registry, RegistryError

KEY = "loggers"


def build_loggers(cfg: Any, registry: Registry) -> list[Any]:
    """The logger objects of `cfg`'s `loggers:` list (empty when absent)."""
    from core.config.validation import describe, validate_params

    specs = cfg.data.get(KEY)
    if specs is None:
        return []
    if isinstance(specs, str):
        specs = [specs]
    if not isinstance(specs, list):
        raise cfg.error(KEY, f"expected a list of logger names, e.g. [tensorboard, wandb, mlflow]; got {describe(specs)}")
    loggers, seen = [], set()
    for i, spec in enumerate(specs):
        key = f"{KEY}.{i}"
        name_key = key if isinstance(spec, str) else f"{key}.name"
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise cfg.error(key, f"expected a logger name or a mapping with 'name'; got {describe(spec)}. "
                                 f"Valid names: {', '.join(registry.names('logger'))}")
        name = spec["name"]
        if name in seen:
            raise cfg.error(key, f"logger '{name}' is listed twice")
        seen.add(name)
        try:
            target = registry.get("logger", name).load()
        except RegistryError as exc:
            raise cfg.error(name_key, str(exc)) from None
        params = validate_params(target, {k: v for k, v in spec.items() if k != "name"}, cfg, key,
                                 f"logger '{name}'")
        try:
            loggers.append(target(**params))
        except (ValueError, TypeError) as exc:
            raise cfg.error(key, str(exc)) from None
    return loggers

"""`core new-plugin NAME --loss circle --sampler cam_pk ...`: the skeleton of an installable
reid-core plugin.

Writes `<out>/reid-NAME/`: pyproject.toml (the `reid_core` entry point naming the hooks
module, and a `test` extra with pytest), the package with one working minimal component
per requested name (`--loss circle` -> loss `circle`, class `CircleLoss` in
`reid_NAME/circle_loss.py`; several per kind allowed), registered lazily as
"module:Class" strings, one test file per component (its contract on a hand-made case,
and its registration), a test that trains the tiny pipeline of `core.testing` with all
of them, and a README. It installs (`pip install -e "reid-NAME[test]"`) and passes its
tests as generated; docs/writing-plugins.md walks through every file.

`--kinds loss,sampler` (the older form) names each component after the plugin.
The templates are strings with `{{placeholders}}` in `core.tools.scaffold_templates`.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from core.log_setup import echo_to
from core.tools.scaffold_templates import TEMPLATES

_echo = echo_to(logging.getLogger(__name__))

#: kind -> (template name, class suffix, hook name), in the pipeline's build order
KINDS: dict[str, tuple[str, str, str]] = {
    "dataset": ("dataset", "Dataset", "register_datasets"),
    "sampler": ("sampler", "Sampler", "register_samplers"),
    "backbone": ("backbone", "Backbone", "register_backbones"),
    "head": ("head", "Head", "register_heads"),
    "loss": ("loss", "Loss", "register_losses"),
    "evaluator": ("evaluator", "Evaluator", "register_evaluators"),
}
NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
#: a component's registered name: lower case, digits, single '-' or '_' between them
COMPONENT = re.compile(r"^[a-z][a-z0-9]*([-_][a-z0-9]+)*$")


class ScaffoldError(ValueError):
    pass


@dataclass(frozen=True)
class Component:
    kind: str
    name: str  # as registered and written in YAML
    module: str  # module file stem inside the package
    cls: str

    @classmethod
    def of(cls, kind: str, name: str) -> "Component":
        if not COMPONENT.match(name):
            raise ScaffoldError(f"{kind} name {name!r}: use lower-case letters, digits and single '-' or '_' "
                                "(e.g. circle, cam_pk)")
        ident = name.replace("-", "_")
        camel = "".join(part.capitalize() for part in re.split(r"[-_]", name))
        return cls(kind, name, f"{ident}_{KINDS[kind][0]}", camel + KINDS[kind][1])


def names(name: str) -> dict[str, str]:
    """The plugin's names: `reid-circle` / `circle` -> distribution reid-circle, package
    reid_circle, entry point (plugin name) circle, class prefix Circle."""
    if not NAME.match(name):
        raise ScaffoldError(f"plugin name {name!r}: use lower-case letters, digits and single '-' "
                            "(e.g. my-method)")
    short = name[5:] if name.startswith("reid-") else name
    if not short:
        raise ScaffoldError("plugin name 'reid-': give the method's name, e.g. reid-circle")
    dist = f"reid-{short}"
    return {"name": short, "dist": dist, "package": dist.replace("-", "_"),
            "cls": "".join(part.capitalize() for part in short.split("-")), "entry": short.replace("-", "_")}


def _render(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    left = re.findall(r"\{\{\w+\}\}", text)
    if left:  # pragma: no cover - a template bug
        raise ScaffoldError(f"template placeholders left unfilled: {', '.join(sorted(set(left)))}")
    return text


def check_kinds(kinds: Sequence[str]) -> list[str]:
    if not kinds:
        raise ScaffoldError(f"no kind given; kinds: {', '.join(KINDS)}")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ScaffoldError(f"unknown kind(s) {', '.join(unknown)}; kinds: {', '.join(KINDS)}")
    return [k for k in KINDS if k in kinds]  # canonical order, no duplicates


def plan_components(plugin: str, requested: Mapping[str, Sequence[str]] | Sequence[str]) -> list[Component]:
    """The components to write: `{"loss": ["circle", "center"], "sampler": ["cam_pk"]}`, or
    a list of kinds, each named after the plugin (`["loss"]` -> loss `circle` of reid-circle)."""
    if not isinstance(requested, Mapping):
        requested = {kind: [plugin] for kind in check_kinds(list(requested))}
    check_kinds([k for k, v in requested.items() if v] or [])
    out: list[Component] = []
    for kind in KINDS:
        for name in requested.get(kind) or []:
            component = Component.of(kind, name)
            if component in out:
                raise ScaffoldError(f"{kind} '{name}' is asked for twice")
            out.append(component)
    return out


def taken(components: Sequence[Component]) -> list[str]:
    """`kind 'name' (plugin p)` for each requested component whose name an installed plugin
    already registers in that kind (users would have to write `plugin:name` for both)."""
    from core.registry import build_registry

    registry = build_registry()
    clashes = []
    for component in components:
        for entry in registry.entries(component.kind):
            if entry.name == component.name or component.name in entry.aliases:
                clashes.append(f"{component.kind} '{component.name}' (plugin {entry.provider})")
    return clashes


def new_plugin(name: str, kinds: Mapping[str, Sequence[str]] | Sequence[str], out: str | Path = ".",
               force: bool = False, check_installed: bool = True, taken_names: str = "warn",
               echo: Callable[[str], None] = _echo) -> Path:
    """Write the plugin; returns its folder. `kinds`: kind -> component names, or a list of
    kinds whose components take the plugin's name. A name an installed plugin registers
    too (`taken_names`): "warn" says that pipelines must then name this one `plugin:name`
    (the generated tests and README do), "error" refuses."""
    values = names(name)
    components = plan_components(values["name"], kinds)
    clashes = taken(components) if check_installed else []
    if clashes:
        message = (f"the name is taken: {'; '.join(clashes)}. Both stay usable, but a pipeline must then "
                   f"write `{values['entry']}:NAME` for this plugin's (and `PLUGIN:NAME` for the other's)")
        if taken_names == "error":
            raise ScaffoldError(message + "; choose another name")
        echo(f"note: {message}; the generated README and tests do.")
    shared = {c.name for c in components if any(f"'{c.name}'" in x for x in clashes)}
    folder = Path(out) / values["dist"]
    if folder.exists():
        if not force:
            raise ScaffoldError(f"{folder} exists; choose another --out or pass --force to overwrite")
        shutil.rmtree(folder)
    package = folder / values["package"]
    (folder / "tests").mkdir(parents=True)
    package.mkdir()
    hooks: dict[str, list[str]] = {}
    listing = []
    for c in components:
        own = {**values, "class": c.cls, "name": c.name, "module": c.module, "kind": c.kind,
               "plugin": values["name"]}
        template = KINDS[c.kind][0]
        (package / f"{c.module}.py").write_text(_render(TEMPLATES[f"{template}.py"], own), encoding="utf-8")
        (folder / "tests" / f"test_{c.module}.py").write_text(_render(TEMPLATES[f"test_{template}.py"], own),
                                                              encoding="utf-8")
        hooks.setdefault(KINDS[c.kind][2], []).append(
            f"    register(\"{c.name}\", \"{values['package']}.{c.module}:{c.cls}\")")
        listing.append(f"- {c.kind} `{c.name}`: class `{c.cls}` in `{values['package']}/{c.module}.py`, "
                       f"tested by `tests/test_{c.module}.py`")
    registrations = [f"@hookimpl\ndef {hook}(register):\n" + "\n".join(lines) + "\n" for hook, lines in hooks.items()]
    summary = ", ".join(f"{c.kind} '{c.name}'" for c in components)
    values = {**values, "summary": summary, "kind_list": "\n".join(listing),
              "registrations": "\n\n".join(registrations), "configure": _configure(values["entry"], components),
              "yaml": _yaml(components, values["entry"], shared), "grid": _grid(components, values["entry"])}
    files = {"pyproject.toml": "pyproject.toml", "README.md": "README.md",
             f"{values['package']}/__init__.py": "__init__.py", f"{values['package']}/hooks.py": "hooks.py",
             "tests/test_pipeline.py": "test_pipeline.py"}
    for target, template in files.items():
        (folder / target).write_text(_render(TEMPLATES[template], values), encoding="utf-8")
    return folder


def _configure(entry: str, components: Sequence[Component]) -> str:
    """The lines of the generated pipeline test that put the components into the tiny
    pipeline: every loss next to `ce`, the first component of each other kind. Names are
    written `plugin:name`, which stays right if another plugin registers the name later."""
    lines = []
    for kind in KINDS:
        chosen = [c for c in components if c.kind == kind]
        if not chosen:
            continue
        if kind == "loss":
            losses = ", ".join(f'{{"name": "{entry}:{c.name}", "weight": 1.0}}' for c in chosen)
            lines.append(f'    config["losses"] = [{{"name": "ce"}}, {losses}]')
        else:
            lines.append("    " + _CONFIGURE[kind].replace("NAME", f"{entry}:{chosen[0].name}"))
    return "\n".join(lines)


def _yaml(components: Sequence[Component], entry: str, shared: set[str]) -> str:
    """The README's pipeline lines: every loss next to `ce`, the first component of each
    other kind (the rest as comments); names another plugin registers too as `plugin:name`."""
    named = lambda c: f"{entry}:{c.name}" if c.name in shared else c.name  # noqa: E731
    lines, seen = [], set()
    for c in components:
        if c.kind != "loss":
            lines.append(("# or " if c.kind in seen else "") + _YAML[c.kind].replace("NAME", named(c)))
            seen.add(c.kind)
    losses = [named(c) for c in components if c.kind == "loss"]
    if losses:
        lines.append("losses: [{name: ce}, " + ", ".join(f"{{name: {n}, weight: 1.0}}" for n in losses) + "]")
    return "\n".join(lines)


def _grid(components: Sequence[Component], entry: str) -> str:
    """A README command comparing a component with reid-core's own in one table."""
    first = {c.kind: c for c in reversed(components)}
    if "loss" in first:
        return (f"core run pipelines/quickstart.yaml --grid 'losses=[{{name: ce}}, {{name: triplet}}],"
                f"[{{name: ce}}, {{name: {entry}:{first['loss'].name}}}]'")
    if "sampler" in first:
        return (f"core run pipelines/quickstart.yaml --grid 'sampler={{name: pk, batch_size: 32, k: 4}},"
                f"{{name: {entry}:{first['sampler'].name}, batch_size: 32, k: 4}}'")
    kind = next(iter(first))
    return f"core run pipelines/quickstart.yaml --grid '{kind}.name=...,{entry}:{first[kind].name}'"


#: how the generated pipeline test puts each kind into the tiny pipeline config
_CONFIGURE = {
    "dataset": 'config["data"] = {"train": [{"dataset": "NAME", "identities": 8}], "transform": {"size": [32, 16]}}',
    "sampler": 'config["sampler"] = {"name": "NAME", "batch_size": 16, "k": 4}',
    "backbone": 'config["backbone"] = {"name": "NAME", "dim": 32}',
    "head": 'config["head"] = {"name": "NAME"}',
    "evaluator": 'config["evaluator"] = {"name": "NAME"}',
}

#: the README's YAML example per kind
_YAML = {
    "dataset": "data: {train: [{dataset: NAME, identities: 8}]}",
    "sampler": "sampler: {name: NAME, batch_size: 32, k: 4}",
    "backbone": "backbone: {name: NAME, dim: 64}",
    "head": "head: {name: NAME}",
    "evaluator": "evaluator: {name: NAME}",
}

"""`core new-plugin NAME`: the skeleton of an installable reid-core plugin.

Writes `<out>/reid-NAME/`: pyproject.toml (the `reid_core` entry point naming the hooks
module), the package with one working minimal component per requested kind, each
registered under NAME (lazily, as "module:Class" strings), a test that trains the tiny
pipeline of `core.testing` with all of them, and a README. It installs and passes its
test as generated; docs/writing-plugins.md explains every file.

The templates are strings with `{{placeholders}}` in `core.tools.scaffold_templates`.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Sequence

from core.tools.scaffold_templates import TEMPLATES
#: kind -> (module name, class suffix, hook name)
KINDS: dict[str, tuple[str, str, str]] = {
    "dataset": ("dataset", "Dataset", "register_datasets"),
    "sampler": ("sampler", "Sampler", "register_samplers"),
    "backbone": ("backbone", "Backbone", "register_backbones"),
    "head": ("head", "Head", "register_heads"),
    "loss": ("loss", "Loss", "register_losses"),
    "evaluator": ("evaluator", "Evaluator", "register_evaluators"),
}
NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class ScaffoldError(ValueError):
    pass


def names(name: str) -> dict[str, str]:
    """The plugin's names: `reid-circle` / `circle` -> distribution reid-circle, package
    reid_circle, component name circle, class prefix Circle."""
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


def taken(kinds: Sequence[str], name: str) -> list[str]:
    """`kind 'name' (plugin p)` for each requested kind where an installed plugin already
    registers `name` (the new plugin would collide with it)."""
    from core.registry import build_registry

    registry = build_registry()
    clashes = []
    for kind in kinds:
        for entry in registry.entries(kind):
            if entry.name == name or name in getattr(entry, "aliases", ()):
                clashes.append(f"{kind} '{name}' (plugin {entry.provider})")
    return clashes


def new_plugin(name: str, kinds: Sequence[str], out: str | Path = ".", force: bool = False,
               check_installed: bool = True) -> Path:
    """Write the plugin; returns its folder."""
    values = names(name)
    kinds = check_kinds(kinds)
    if check_installed:
        clashes = taken(kinds, values["name"])
        if clashes:
            raise ScaffoldError(f"the name '{values['name']}' is taken: {'; '.join(clashes)}; choose another name")
    folder = Path(out) / values["dist"]
    if folder.exists():
        if not force:
            raise ScaffoldError(f"{folder} exists; choose another --out or pass --force to overwrite")
        shutil.rmtree(folder)
    package = folder / values["package"]
    (folder / "tests").mkdir(parents=True)
    package.mkdir()
    registrations, kind_list, configure, yaml_lines = [], [], [], []
    for kind in kinds:
        module, suffix, hook = KINDS[kind]
        cls = values["cls"] + suffix
        text = _render(TEMPLATES[f"{module}.py"], {**values, "class": cls})
        (package / f"{module}.py").write_text(text, encoding="utf-8")
        registrations.append(f"@hookimpl\ndef {hook}(register):\n"
                             f"    register(\"{values['name']}\", \"{values['package']}.{module}:{cls}\")\n")
        kind_list.append(f"- {kind} `{values['name']}` ({values['package']}/{module}.py, class `{cls}`)")
        configure.append(_CONFIGURE[kind].replace("NAME", values["name"]))
        yaml_lines.append(_YAML[kind].replace("NAME", values["name"]))
    values = {**values, "kinds": ", ".join(kinds), "kind_list": "\n".join(kind_list),
              "registrations": "\n\n".join(registrations), "configure": "\n".join(configure),
              "kinds_repr": repr(list(kinds)), "yaml": "\n".join(yaml_lines)}
    files = {"pyproject.toml": "pyproject.toml", "README.md": "README.md",
             f"{values['package']}/__init__.py": "__init__.py", f"{values['package']}/hooks.py": "hooks.py",
             f"tests/test_{values['package']}.py": "test_plugin.py"}
    for target, template in files.items():
        (folder / target).write_text(_render(TEMPLATES[template], values),
                                     encoding="utf-8")
    return folder


#: how the generated test puts each kind into the tiny pipeline config
_CONFIGURE = {
    "dataset": '    config["data"] = {"train": [{"dataset": "NAME", "identities": 8}], "transform": {"size": [32, 16]}}',
    "sampler": '    config["sampler"] = {"name": "NAME", "batch_size": 16, "k": 4}',
    "backbone": '    config["backbone"] = {"name": "NAME", "dim": 32}',
    "head": '    config["head"] = {"name": "NAME"}',
    "loss": '    config["losses"] = [{"name": "ce"}, {"name": "NAME", "weight": 1.0}]',
    "evaluator": '    config["evaluator"] = {"name": "NAME"}',
}

#: the README's YAML example per kind
_YAML = {
    "dataset": "data: {train: [{dataset: NAME, identities: 8}]}",
    "sampler": "sampler: {name: NAME, batch_size: 32, k: 4}",
    "backbone": "backbone: {name: NAME, dim: 64}",
    "head": "head: {name: NAME}",
    "loss": "losses: [{name: ce}, {name: NAME, weight: 1.0}]",
    "evaluator": "evaluator: {name: NAME}",
}

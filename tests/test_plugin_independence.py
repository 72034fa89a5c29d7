"""Plugins are independent (DESIGN.md): no first-party plugin imports another's package,
and every plugin folder is a complete distribution listed in registry.yaml."""

import ast
from pathlib import Path

import tomllib

from core.registry import catalogue

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
PACKAGES = {p["name"]: "reid_" + p["name"].replace("-", "_") for p in catalogue()}


def imported_top_level(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def plugin_folders():
    return sorted(p.parent for p in PLUGINS.glob("*/pyproject.toml"))


def test_no_plugin_imports_another_plugins_package():
    for folder in plugin_folders():
        own = PACKAGES.get(folder.name)
        others = set(PACKAGES.values()) - {own}
        for source in folder.rglob("*.py"):
            bad = imported_top_level(source) & others
            assert not bad, f"{source} imports {sorted(bad)}: plugins meet through core contracts only"


def test_every_plugin_folder_is_a_catalogued_distribution_with_tests_and_readme():
    for folder in plugin_folders():
        entry = next((p for p in catalogue() if p["path"] == f"plugins/{folder.name}"), None)
        assert entry is not None, f"{folder} is not in registry.yaml"
        project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
        assert project["name"] == entry["distribution"]
        assert "reid-core" in " ".join(project["dependencies"])
        assert folder.name.replace("-", "_") in str(project["entry-points"]["reid_core"])
        assert (folder / "README.md").is_file() and list((folder / "tests").glob("test_*.py"))

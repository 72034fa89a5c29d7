"""The registry and plugin loading: entry points, duplicates, did-you-mean, install hints,
broken plugins, strict mode, and a start-up that never imports torch."""

import json
import os
import subprocess
import sys
import textwrap
import types

import pytest
import yaml

from core.hookspecs import hookimpl
from core.plugins import PluginInfo, PluginLoadError, PluginManager, get_plugin_manager
from core.registry import (DuplicateComponentError, KIND_HOOKS, RegistryError, UnknownComponentError, build_registry,
                           catalogue)


def plugin_module(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookimpl(fn))
    return module


def run_core(args, env=None, cwd=None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "core", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=120)


def test_example_plugin_registers_through_its_entry_point():
    pm = get_plugin_manager()
    info = pm.infos["example"]
    assert info.source == "entry point" and info.distribution == "reid-example-plugin"
    assert info.version == "0.3.0"
    entry = build_registry(pm).get("loss", "center")
    assert entry.provider == "example"
    assert entry.load().__name__ == "CenterLoss"


def test_builtins_are_a_default_plugin_registered_through_the_same_hooks():
    registry = build_registry()
    assert {e.provider for e in registry.entries("loss") if e.name in ("ce", "triplet")} == {"core"}
    assert {"pk", "random"} <= {e.name for e in registry.entries("sampler") if e.provider == "core"}


def two_plugins_registering(name_a, name_b, aliases_a=()):
    pm = PluginManager()
    pm.add(plugin_module("a", register_losses=lambda register: register(name_a, "x.y:A", aliases=aliases_a)),
           PluginInfo("plugin-a", "test"))
    pm.add(plugin_module("b", register_losses=lambda register: register(name_b, "x.z:B")), PluginInfo("plugin-b", "test"))
    return build_registry(pm)


def test_a_name_registered_by_two_plugins_is_an_error_naming_both():
    registry = two_plugins_registering("arc", "arc")  # building the registry itself does not fail
    with pytest.raises(DuplicateComponentError) as err:
        registry.get("loss", "arc")
    message = str(err.value)
    assert "loss 'arc' is registered by 2 plugins" in message
    assert "plugin 'plugin-a' (x.y:A)" in message and "plugin 'plugin-b' (x.z:B)" in message
    assert "'plugin-a:arc' or 'plugin-b:arc'" in message


def test_plugin_colon_name_picks_one_of_two():
    registry = two_plugins_registering("arc", "arc")
    assert registry.get("loss", "plugin-a:arc").target == "x.y:A"
    assert registry.get("loss", "plugin-b:arc").target == "x.z:B"
    assert registry.ambiguous("loss") == {"arc": ["plugin-a", "plugin-b"]}
    assert [(e.provider, e.name) for e in registry.entries("loss")] == [("plugin-a", "arc"), ("plugin-b", "arc")]


def test_plugin_colon_name_also_picks_an_unambiguous_name():
    registry = two_plugins_registering("arc", "cos")
    assert registry.get("loss", "plugin-b:cos").target == registry.get("loss", "cos").target == "x.z:B"


def test_a_qualified_name_the_plugin_does_not_provide_says_who_does():
    registry = two_plugins_registering("arc", "cos")
    with pytest.raises(UnknownComponentError, match="plugin 'plugin-a' provides no loss 'cos'.*provided by "
                                                   "plugin plugin-b"):
        registry.get("loss", "plugin-a:cos")
    with pytest.raises(UnknownComponentError, match="Did you mean 'plugin-a:arc'"):
        registry.get("loss", "plugin-a:ark")
    with pytest.raises(UnknownComponentError, match="no installed plugin 'plugin-c'.*Did you mean 'plugin-a:arc'"):
        registry.get("loss", "plugin-c:arc")


def test_alias_collision_is_ambiguous_too():
    registry = two_plugins_registering("ce2", "xent", aliases_a=("xent",))
    with pytest.raises(DuplicateComponentError, match="loss 'xent' is registered by 2 plugins"):
        registry.get("loss", "xent")
    assert registry.get("loss", "plugin-b:xent").target == "x.z:B"
    assert registry.get("loss", "ce2").target == "x.y:A"


def test_one_plugin_registering_a_name_twice_is_an_error_at_once():
    pm = PluginManager()

    def hook(register):
        register("arc", "x:A")
        register("arc", "x:B")

    pm.add(plugin_module("a", register_losses=hook), PluginInfo("plugin-a", "test"))
    with pytest.raises(DuplicateComponentError, match="plugin 'plugin-a' registers loss 'arc' twice"):
        build_registry(pm)


def test_a_name_with_the_plugin_separator_is_refused():
    pm = PluginManager()
    pm.add(plugin_module("a", register_losses=lambda register: register("a:b", "x:A")), PluginInfo("plugin-a", "test"))
    with pytest.raises(RegistryError, match="invalid name 'a:b'"):
        build_registry(pm)


def test_a_pipeline_picks_one_of_two_components_by_plugin_name(register_component, tiny_pipeline_config, tmp_path):
    """Two plugins register `center`: the bare name is a config error naming both, the
    qualified one builds (and the run records the plugin behind it)."""
    from core.config.loading import ConfigError, load_pipeline
    from core.pipeline import build_pipeline

    from reid_example_plugin.center import CenterLoss

    class OtherCenter(CenterLoss):
        pass

    register_component("loss", "center", OtherCenter)
    path = tmp_path / "p.yaml"
    tiny_pipeline_config["losses"] = [{"name": "ce"}, {"name": "center", "weight": 0.01}]
    path.write_text(yaml.safe_dump(tiny_pipeline_config))
    with pytest.raises(ConfigError) as err:
        build_pipeline(load_pipeline(path))
    assert "losses.1.name" in str(err.value) and "'example:center' or 'test:loss:center:center'" in str(err.value)
    p = build_pipeline(load_pipeline(path, ["losses.1.name=example:center"]))
    assert type(p.stage_losses[0][1].module) is CenterLoss
    assert p.provenance["losses.1"]["plugin"] == "example"
    assert p.stage_losses[0][1].name == "center"  # metric keys carry the component's name


def test_misspelt_name_gets_did_you_mean():
    with pytest.raises(UnknownComponentError) as err:
        build_registry().get("loss", "tripplet")
    assert "Did you mean 'triplet'?" in str(err.value)
    installed = str(err.value).split("Installed loss components: ")[1].rstrip(".").split(", ")
    assert {"ce", "center", "cross_entropy", "triplet"} <= set(installed)


def test_component_of_an_uninstalled_first_party_plugin_names_the_install_command(tmp_path):
    """With only the built-ins loaded (as if no plugin were installed)."""
    code = textwrap.dedent("""
        from core.registry import build_registry
        try:
            build_registry().get("sampler", "edps")
        except Exception as exc:
            print(exc)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CORE_LOAD_PLUGINS": ""})
    msg = proc.stdout
    assert "plugin 'edps'" in msg and "pip install -e plugins/edps" in msg and "pip install reid-edps" in msg


def test_misspelt_hook_implementation_is_rejected():
    pm = PluginManager()
    bad = plugin_module("bad", register_loses=lambda register: None)
    with pytest.raises(Exception, match="register_loses"):
        pm.add(bad, PluginInfo("bad", "test"))


def test_lazy_target_that_cannot_be_imported_names_plugin_and_target():
    pm = PluginManager()
    pm.add(plugin_module("a", register_heads=lambda register: register("ghost", "no_such_module:Head")),
           PluginInfo("plugin-a", "test"))
    with pytest.raises(Exception, match="plugin 'plugin-a'.*no_such_module:Head"):
        build_registry(pm).get("head", "ghost").load()


def test_register_component_fixture_registers_for_one_test(register_component):
    class MyLoss:
        pass

    register_component("loss", "my_loss", MyLoss)
    assert build_registry().get("loss", "my_loss").load() is MyLoss


def test_register_component_fixture_cleans_up():
    assert "my_loss" not in build_registry().names("loss")


def _dist_info(root, name: str, entry_point: str) -> None:
    """An installed distribution `name` 1.0 on `root` (a dist-info folder, as pip writes one)
    with one `reid_core` entry point line."""
    dist = root / f"{name.replace('-', '_')}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[reid_core]\n{entry_point}\n")


@pytest.fixture
def broken_plugin_path(tmp_path):
    """A real entry point (a dist-info on sys.path) whose module fails to import."""
    (tmp_path / "broken_plugin.py").write_text("import not_a_real_dependency_xyz\n")
    _dist_info(tmp_path, "reid-broken", "broken = broken_plugin")
    return str(tmp_path)


def test_broken_plugin_is_reported_and_skipped(broken_plugin_path):
    proc = run_core(["plugins"], env={"PYTHONPATH": broken_plugin_path})
    assert proc.returncode == 0, proc.stderr
    assert "plugin 'broken' (reid-broken) failed to load and was skipped" in proc.stderr
    assert "not_a_real_dependency_xyz" in proc.stdout + proc.stderr
    loss_line = next(line for line in proc.stdout.splitlines() if line.startswith("  loss:"))
    assert {"ce", "triplet"} <= set(loss_line.split(":", 1)[1].replace(",", " ").split())  # the rest still works


@pytest.mark.parametrize("argv", [["plugins"], ["--help"]])
def test_broken_plugin_is_a_one_line_error_in_strict_mode(broken_plugin_path, argv):
    """Raised while the parser is built (plugins add commands), before the CLI's error
    handler: it was a raw nested traceback, exit 1. Now one line naming the plugin, its
    entry point and the import error, exit 2 (bad input: the installed plugin)."""
    proc = run_core(argv, env={"PYTHONPATH": broken_plugin_path, "CORE_STRICT_PLUGINS": "1"})
    assert proc.returncode == 2, proc.stderr
    line, = proc.stderr.strip().splitlines()
    assert line.startswith("error: plugin 'broken' (reid-broken) failed to load"), line
    assert "entry point `broken = broken_plugin`" in line
    assert "ModuleNotFoundError: No module named 'not_a_real_dependency_xyz'" in line
    assert "CORE_STRICT_PLUGINS=1" in line and "Traceback" not in proc.stderr


@pytest.fixture
def misnamed_entry_point_path(tmp_path):
    """A plugin whose pyproject names its hooks module `reid_typo.hook` (the module is `hooks`)."""
    (tmp_path / "reid_typo").mkdir()
    (tmp_path / "reid_typo" / "__init__.py").write_text("")
    (tmp_path / "reid_typo" / "hooks.py").write_text(
        "from core.hookspecs import hookimpl\n\n@hookimpl\ndef register_losses(register):\n"
        "    register('typo_ring', 'reid_typo.hooks:Nothing')\n")
    _dist_info(tmp_path, "reid-typo", "typo = reid_typo.hook")
    return str(tmp_path)


def test_an_entry_point_naming_a_missing_module_says_which_line_to_fix(misnamed_entry_point_path):
    proc = run_core(["plugins"], env={"PYTHONPATH": misnamed_entry_point_path + os.pathsep
                                      + os.environ.get("PYTHONPATH", "")})
    assert "its entry point `typo = reid_typo.hook` names a module that does not exist" in proc.stderr
    assert "[project.entry-points.reid_core]" in proc.stderr and "reinstall" in proc.stderr


@pytest.mark.parametrize("name", ["typo_ring", "typo:typo_ring"])
def test_an_unknown_component_names_the_plugins_that_failed_to_load(misnamed_entry_point_path, tmp_path, name):
    """`unknown loss 'typo_ring'. Did you mean ...?` (or 'no installed plugin typo') sent the
    author looking for a misspelt YAML name, when their plugin had failed to load."""
    code = textwrap.dedent(f"""
        from core.registry import build_registry
        try:
            build_registry().get("loss", {name!r})
        except Exception as exc:
            print(exc)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": misnamed_entry_point_path + os.pathsep
                               + os.environ.get("PYTHONPATH", "")})
    assert "plugin 'typo' (reid-typo) is installed but failed to load" in proc.stdout, proc.stdout + proc.stderr
    assert "No module named 'reid_typo.hook'" in proc.stdout


def test_load_and_disable_narrow_the_plugin_set():
    listed = lambda env: {r["name"] for r in json.loads(run_core(["plugins", "--json"], env=env).stdout)}  # noqa: E731
    assert listed({"CORE_LOAD_PLUGINS": ""}) == {"core"}
    assert listed({"CORE_LOAD_PLUGINS": "example"}) == {"core", "example"}
    assert "example" not in listed({"CORE_DISABLE_PLUGINS": "example"})


def test_trace_prints_hook_calls():
    proc = run_core(["plugins"], env={"CORE_TRACE_PLUGINS": "1"})
    assert "[trace] register_losses" in proc.stderr


@pytest.mark.parametrize("args", [["--help"], ["plugins"], ["run", "--help"], ["validate", "--help"]])
def test_startup_does_not_import_torch(args):
    code = textwrap.dedent(f"""
        import sys
        from core.cli import main
        try:
            main({args!r})
        except SystemExit:
            pass
        assert 'torch' not in sys.modules, 'torch was imported'
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_local_plugin_file_named_in_the_pipeline(tmp_path, tiny_pipeline_config, run_tiny_pipeline):
    (tmp_path / "my_loss.py").write_text(textwrap.dedent("""
        import torch
        from core.hookspecs import hookimpl
        from core.interfaces import Loss

        class Norm(Loss):
            def forward(self, outputs, batch):
                return outputs["features"].norm(dim=1).mean() * 0.0

        @hookimpl
        def register_losses(register):
            register("local_norm", Norm)
    """))
    config = tiny_pipeline_config
    config["plugins"] = ["./my_loss.py"]
    config["losses"].append({"name": "local_norm", "weight": 0.1})
    config["trainer"]["eval_before"] = False
    result = run_tiny_pipeline(config)
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("local_norm" in line for line in lines if line["event"] == "train")


def test_catalogue_lists_every_first_party_plugin_with_its_install_path():
    names = {p["name"] for p in catalogue()}
    assert names == {"edps", "moil", "hse", "amsa", "vge-labeler", "instruct-editor"}
    for plugin in catalogue():
        assert set(plugin["provides"]) <= set(KIND_HOOKS)
        assert plugin["path"] == f"plugins/{plugin['name']}"
        assert plugin["distribution"] == f"reid-{plugin['name']}"


def test_catalogue_matches_installed_first_party_plugins():
    """For every catalogued plugin that is installed, what it registers is what the catalogue says."""
    pm = get_plugin_manager()
    registry = build_registry(pm)
    for plugin in catalogue():
        if plugin["name"] not in pm.infos:
            continue
        provided = {}
        for kind in KIND_HOOKS:
            names = sorted(e.name for e in registry.entries(kind) if e.provider == plugin["name"])
            if names:
                provided[kind] = names
        assert provided == {k: sorted(v) for k, v in plugin["provides"].items()}, plugin["name"]


def test_catalogue_shipped_in_the_package_is_the_top_level_file():
    from pathlib import Path

    top = Path(__file__).resolve().parents[1] / "registry.yaml"
    if top.exists():  # running from a checkout
        from importlib import resources

        shipped = resources.files("core").joinpath("registry.yaml").read_text()
        assert yaml.safe_load(shipped) == yaml.safe_load(top.read_text())


def test_a_plugin_name_no_installed_plugin_has_is_warned_about(monkeypatch, caplog):
    """CORE_LOAD_PLUGINS / CORE_DISABLE_PLUGINS naming a plugin that is not installed (a
    typo) loaded or disabled nothing without a word; now one warning each, with the names
    that would do."""
    import logging

    from core.plugins import PluginManager

    monkeypatch.setenv("CORE_LOAD_PLUGINS", "exampel")
    monkeypatch.setenv("CORE_DISABLE_PLUGINS", "ghost")
    with caplog.at_level(logging.WARNING, logger="core.plugins"):
        PluginManager().load_entry_points()
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("CORE_LOAD_PLUGINS names 'exampel', which no installed plugin is called; "
                            "installed plugins: ") and "example" in m for m in lines), lines
    assert any(m.startswith("CORE_DISABLE_PLUGINS names 'ghost'") for m in lines), lines

"""`core new-plugin`: the scaffold installs and passes its own test as generated; the
worked example of docs/writing-plugins.md installs and passes its tests too.

Each plugin is installed with pip (no dependencies, no build isolation: reid-core and
setuptools are already here) into a temporary target folder and its tests run in a
subprocess with that folder on PYTHONPATH, so the entry point is found exactly as after
a `pip install`. Everything lives under pytest's tmp_path and is removed with it.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.cli import main
from core.tools.scaffold import ScaffoldError, new_plugin

DOCS_EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "reid-contrastive"


def install_and_test(plugin: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(target), str(plugin)],
                   check=True, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]),
           "CORE_STRICT_PLUGINS": "1", "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "2"}
    # run from tmp_path, not the plugin folder: the package must come from the installation
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--basetemp", str(tmp_path / "pytest"), "--rootdir", str(plugin), str(plugin / "tests")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)


def test_a_generated_plugin_of_every_kind_installs_and_passes_its_test(tmp_path, capsys):
    assert main(["new-plugin", "circle", "--kinds", "dataset,sampler,backbone,head,loss,evaluator",
                 "--out", str(tmp_path / "src")]) == 0
    plugin = tmp_path / "src" / "reid-circle"
    assert "pip install -e" in capsys.readouterr().out
    files = {p.relative_to(plugin).as_posix() for p in plugin.rglob("*") if p.is_file()}
    assert {"pyproject.toml", "README.md", "reid_circle/hooks.py", "reid_circle/loss.py",
            "reid_circle/sampler.py", "tests/test_reid_circle.py"} <= files
    assert 'circle = "reid_circle.hooks"' in (plugin / "pyproject.toml").read_text()
    result = install_and_test(plugin, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 passed" in result.stdout


def test_the_worked_example_of_the_guide_installs_and_passes_its_tests(tmp_path):
    # a copy: building in place would leave build/ and *.egg-info in docs/
    plugin = shutil.copytree(DOCS_EXAMPLE, tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "build",
                                                                                          "*.egg-info"))
    result = install_and_test(plugin, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "4 passed" in result.stdout


def test_a_name_that_is_taken_is_refused(tmp_path):
    with pytest.raises(ScaffoldError, match="the name 'triplet' is taken: loss 'triplet' \\(plugin core\\)"):
        new_plugin("triplet", ["loss"], tmp_path)


@pytest.mark.parametrize("name, kinds, message", [
    ("My_Loss", ["loss"], "use lower-case letters"),
    ("circle", ["optimizer"], "unknown kind\\(s\\) optimizer; kinds: dataset, sampler"),
])
def test_bad_names_and_kinds_are_errors(name, kinds, message, tmp_path):
    with pytest.raises(ScaffoldError, match=message):
        new_plugin(name, kinds, tmp_path)


def test_an_existing_folder_is_kept_unless_forced(tmp_path, capsys):
    assert main(["new-plugin", "circle", "--out", str(tmp_path)]) == 0
    assert main(["new-plugin", "circle", "--out", str(tmp_path)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["new-plugin", "circle", "--out", str(tmp_path), "--force"]) == 0


def test_the_tool_commands_are_listed_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("extract", "search", "explain", "export", "curves", "new-plugin"):
        assert command in out


def test_the_guide_shows_the_example_code_as_it_is():
    guide = (DOCS_EXAMPLE.parents[1] / "writing-plugins.md").read_text()
    for name in ("loss.py", "sampler.py"):
        assert (DOCS_EXAMPLE / "reid_contrastive" / name).read_text() in guide, name
    assert (DOCS_EXAMPLE / "tests" / "test_reid_contrastive.py").read_text() in guide

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


def test_a_generated_plugin_with_named_components_of_every_kind_installs_and_passes_its_tests(tmp_path, capsys):
    assert main(["new-plugin", "my-method", "--loss", "circle", "--loss", "ring", "--sampler", "cam_pk",
                 "--dataset", "blobs", "--backbone", "small_cnn", "--head", "lin", "--evaluator", "r1",
                 "--out", str(tmp_path / "src")]) == 0
    plugin = tmp_path / "src" / "reid-my-method"
    captured = capsys.readouterr()
    assert f'pip install -e "{plugin}[test]"' in captured.out
    assert "loss 'circle' (plugin core)" in captured.err  # the name is shared with the core's circle loss
    files = {p.relative_to(plugin).as_posix() for p in plugin.rglob("*") if p.is_file()}
    components = ["circle_loss", "ring_loss", "cam_pk_sampler", "blobs_dataset", "small_cnn_backbone", "lin_head",
                  "r1_evaluator"]
    assert {f"reid_my_method/{c}.py" for c in components} <= files
    assert {f"tests/test_{c}.py" for c in components} | {"tests/test_pipeline.py"} <= files  # a test each
    hooks = (plugin / "reid_my_method" / "hooks.py").read_text()
    assert 'register("cam_pk", "reid_my_method.cam_pk_sampler:CamPkSampler")' in hooks
    assert 'register("ring", "reid_my_method.ring_loss:RingLoss")' in hooks
    assert 'my_method = "reid_my_method.hooks"' in (plugin / "pyproject.toml").read_text()
    result = install_and_test(plugin, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # 7 components x (registration + contract tests), the evaluator's ranked_gallery and the pipeline test
    assert "23 passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


def test_a_generated_loss_test_passes_without_warnings(tmp_path):
    """The first `pytest reid-NAME` of a new author passed with torch's UserWarning
    'Converting a tensor with requires_grad=True to a scalar' from the loss test's own
    float(loss). Its warnings summary names none of the generated files."""
    plugin = new_plugin("my-method", {"loss": ["ring"]}, tmp_path / "src")
    result = install_and_test(plugin, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = result.stdout.partition("warnings summary")[2]
    assert "tests/test_ring_loss.py" not in summary and "requires_grad=True" not in summary, summary[:2000]


def test_the_documented_install_installs_the_test_runner(tmp_path):
    """The README's install line installs the `test` extra, and the extra holds pytest
    (read from the installed distribution's metadata, as pip resolves it)."""
    plugin = new_plugin("my-method", {"loss": ["ring"]}, tmp_path / "src")
    readme = (plugin / "README.md").read_text()
    assert 'pip install -e ".[test]"' in readme
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(target), str(plugin)],
                   check=True, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    from importlib.metadata import PathDistribution

    dist = PathDistribution(next(target.glob("reid_my_method-*.dist-info")))
    assert "test" in dist.metadata.get_all("Provides-Extra")
    assert any(r.startswith("pytest") and 'extra == "test"' in r for r in dist.requires)
    guide = (DOCS_EXAMPLE.parents[1] / "writing-plugins.md").read_text()
    assert "[test]" in guide.split("## 1.")[0]  # the guide's first install line too


def test_kinds_name_their_components_after_the_plugin(tmp_path):
    plugin = new_plugin("circle-x", ["loss", "sampler"], tmp_path)
    hooks = (plugin / "reid_circle_x" / "hooks.py").read_text()
    assert 'register("circle-x", "reid_circle_x.circle_x_loss:CircleXLoss")' in hooks
    assert 'register("circle-x", "reid_circle_x.circle_x_sampler:CircleXSampler")' in hooks


def test_a_generated_evaluator_shows_the_ranked_gallery_hook_and_when_to_implement_it(tmp_path, monkeypatch):
    """The optional hook (core.interfaces.Evaluator.ranked_gallery) sits in the generated
    class, returning None (the standard protocol, which the template's evaluate ranks), with
    a docstring saying when an evaluator must implement it; the generated tests check it."""
    import importlib

    import numpy as np
    import torch

    from core.interfaces import FeatureSet

    plugin = new_plugin("rk", ["evaluator"], tmp_path)
    monkeypatch.syspath_prepend(str(plugin))
    cls = importlib.import_module("reid_rk.rk_evaluator").RkEvaluator
    assert "ranked_gallery" in vars(cls)
    doc = " ".join(cls.ranked_gallery.__doc__.split())
    assert "standard" in doc and "RankedGallery" in doc and "core search --worst" in doc and "core explain" in doc
    assert "Implement it when `evaluate` ranks" in doc
    sets = FeatureSet(torch.zeros(2, 0), np.array([0, 1]), np.array([0, 1]))
    assert cls().ranked_gallery(sets, sets) is None
    assert "def test_the_tools_rank_what_evaluate_ranks" in (plugin / "tests" / "test_rk_evaluator.py").read_text()


def test_a_generated_loss_test_names_a_loss_that_returns_a_python_float(tmp_path):
    """A new loss written with float(...) (or .item()) returns a number without a gradient;
    `core run` then stops with \"AttributeError: 'float' object has no attribute 'float'\",
    naming neither the loss nor the contract. The generated tests must say it, in a test that
    stays when the author replaces the formula and its hand-computed case."""
    plugin = new_plugin("my-method", {"loss": ["ring"]}, tmp_path / "src")
    module = plugin / "reid_my_method" / "ring_loss.py"
    code = module.read_text()
    assert "        return loss, {" in code
    module.write_text(code.replace("        return loss, {", "        return float(loss), {"))
    result = install_and_test(plugin, tmp_path)
    assert result.returncode != 0
    assert "forward must return a 0-dim torch tensor (or (tensor, parts)), not float" in result.stdout, \
        result.stdout[-3000:]


def test_the_worked_example_of_the_guide_installs_and_passes_its_tests(tmp_path):
    # a copy: building in place would leave build/ and *.egg-info in docs/
    plugin = shutil.copytree(DOCS_EXAMPLE, tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "build",
                                                                                          "*.egg-info"))
    result = install_and_test(plugin, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "4 passed" in result.stdout


def test_a_name_that_is_taken_is_said_and_the_plugin_names_its_own_qualified(tmp_path):
    notes = []
    plugin = new_plugin("my-method", {"loss": ["triplet"]}, tmp_path, echo=notes.append)
    assert "loss 'triplet' (plugin core)" in notes[0] and "my_method:NAME" in notes[0]
    assert "{name: my_method:triplet, weight: 1.0}" in (plugin / "README.md").read_text()
    assert '"my_method:triplet"' in (plugin / "tests" / "test_pipeline.py").read_text()
    with pytest.raises(ScaffoldError, match="the name is taken: loss 'triplet' \\(plugin core\\)"):
        new_plugin("my-method", {"loss": ["triplet"]}, tmp_path, force=True, taken_names="error")


@pytest.mark.parametrize("name, kinds, message", [
    ("My_Loss", ["loss"], "use lower-case letters"),
    ("circle", ["optimizer"], "unknown kind\\(s\\) optimizer; kinds: dataset, sampler"),
    ("my-method", {"loss": ["Circle"]}, "loss name 'Circle': use lower-case"),
    ("my-method", {"loss": ["ring", "ring"]}, "loss 'ring' is asked for twice"),
    ("my-method", {"loss": []}, "no kind given"),
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

"""docs/writing-plugins.md is run, not only read: the walk-through's commands (section 0)
run in order on the tiny synthetic pipeline, and the contract example (section 3)
executes.

The walk-through runs as documented with three substitutions, each to keep the test
fast and the venv untouched: `pipelines/quickstart.yaml` -> the tiny pipeline of
`core.testing` (1 epoch, CPU), `pip install -e X` -> `pip install --no-deps --target`
a temporary folder put on PYTHONPATH (the entry point is found exactly as after an
install), and `core` / `pytest` -> `python -m core` / `python -m pytest`.
"""

import copy
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.testing import TINY_PIPELINE

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "writing-plugins.md"


def block_after(marker: str, language: str) -> str:
    text = GUIDE.read_text(encoding="utf-8")
    found = re.search(re.escape(marker) + r"[^\n]*\n```" + language + r"\n(.*?)\n```", text, re.S)
    assert found, f"no ```{language} block after '{marker}' in {GUIDE}"
    return found.group(1)


def walkthrough_commands() -> list[list[str]]:
    text = block_after("<!-- walkthrough", "bash").replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in text.splitlines() if line.strip()]


def test_the_walkthrough_commands_run_on_the_tiny_pipeline(tmp_path):
    tiny = copy.deepcopy(TINY_PIPELINE)
    tiny["name"] = "quickstart"
    tiny["trainer"]["eval_before"] = False
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "quickstart.yaml").write_text(yaml.safe_dump(tiny))
    site = tmp_path / "site"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "CORE_STRICT_PLUGINS": "1", "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "2"}
    outputs = []
    for args in walkthrough_commands():
        if args[:3] == ["pip", "install", "-e"]:
            folder = re.sub(r"\[.*\]$", "", args[3])
            args = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(site), folder]
        elif args[0] == "core":
            args = [sys.executable, "-m", "core", *args[1:]]
        elif args[0] == "pytest":
            args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
                    str(tmp_path / "pytest"), "--rootdir", args[1], f"{args[1]}/tests"]
        elif args[0] == "cat":
            outputs.append((args, (tmp_path / args[1]).read_text()))
            continue
        proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        outputs.append((args, proc.stdout))
    by_command = {" ".join(a[:4]): out for a, out in outputs}
    plugins = next(out for a, out in outputs if a[-1] == "plugins")
    assert "my_method" in plugins and "ring" in plugins and "cam_pk" in plugins
    tests = next(out for a, out in outputs if "pytest" in a)
    assert re.search(r"\d+ passed", tests) and "failed" not in tests
    validate = next(out for a, out in outputs if "validate" in a)
    assert "ring <- bn_features" in validate and "sampler           cam_pk  (plugin my_method)" in validate
    table = outputs[-1][1]
    summary = table.split("## Against the baseline")[0]  # the first table: one row per variant
    rows = [line for line in summary.splitlines() if line.startswith("| quickstart")]
    assert len(rows) == 2 and all(row.endswith("| ok |") and "| 2 |" in row for row in rows), table
    assert "{name: ring}" in rows[1] and " ± " in rows[1]
    assert by_command  # every command ran


def test_the_contract_example_runs():
    code = block_after("<!-- runnable", "python")
    exec(compile(code, f"{GUIDE}:runnable", "exec"), {"__name__": "guide_example"})


def test_the_reader_example_lists_its_own_layout():
    code = block_after("<!-- reader example", "python")
    exec(compile(code, f"{GUIDE}:reader example", "exec"), {"__name__": "guide_reader_example"})

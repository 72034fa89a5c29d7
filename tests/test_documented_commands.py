"""Every `core ...` command line shown in the README, the docs, the plugins' READMEs and
the commands' own `--help` examples parses: its subcommand and flags exist and the
pipeline files it names are shipped. A flag renamed or removed in the code while the docs
still show it is what a user copies first and meets as `unrecognized arguments`."""

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from core.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "plugins").glob("*/README.md"))]


def _command_lines(lines: list[str], where: str) -> list[tuple[str, str]]:
    """(where:line, command) of each `core ...` line; continuations joined, comments and
    a `$ ` prompt dropped; synopsis lines (`[--flag ...]`, `a | b`, PLACEHOLDER words)
    are forms, not commands, and are left out."""
    out = []
    i = 0
    while i < len(lines):
        number, line = i + 1, lines[i].strip()
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1].rstrip() + " " + lines[i].strip()
        i += 1
        for part in line.split("&&"):  # `pip install ... && core run ...`
            part = part.strip().removeprefix("$ ")
            if not part.startswith("core "):
                continue
            part = re.split(r"\s#\s|\s{3,}", part)[0].strip()  # a trailing comment or explanation
            if re.search(r" \[-|\s\|\s|\b[A-Z][A-Z_]{2,}\b(?!=)", part):
                continue
            out.append((f"{where}:{number}", re.sub(r"<[^>]*>", "x", part)))
    return out


def _in_code(path: Path) -> list[tuple[str, str]]:
    """The command lines of a markdown file's code: fenced blocks and indented ones."""
    lines, kept, inside = path.read_text(encoding="utf-8").splitlines(), [], False
    for line in lines:
        if line.lstrip().startswith("```"):
            inside = not inside
            kept.append("")
            continue
        kept.append(line if inside or line.startswith("    ") else "")
    return _command_lines(kept, str(path.relative_to(ROOT)))


def _epilogs(parser: argparse.ArgumentParser, name: str = "core") -> list[tuple[str, str]]:
    found = _command_lines((parser.epilog or "").splitlines(), f"`{name} --help`") if parser.epilog else []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, child in action.choices.items():
                found += _epilogs(child, f"{name} {sub}")
    return found


PARSER = build_parser()
COMMANDS = [c for path in DOCS for c in _in_code(path)] + _epilogs(PARSER)


def test_the_docs_show_commands_of_every_kind():
    shown = {shlex.split(c)[1] for _, c in COMMANDS}
    assert {"run", "eval", "validate", "label", "data", "extract", "search", "explain", "export", "curves",
            "new-plugin", "plugins"} <= shown, shown


@pytest.mark.parametrize("where,command", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_a_documented_command_parses(where, command):
    argv = shlex.split(command)[1:]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            PARSER.parse_args(argv)
        except SystemExit as exc:
            assert not exc.code, f"{where}: {command}\n{err.getvalue().strip().splitlines()[-1]}"
    for arg in argv:
        if arg.startswith("pipelines/") and arg.endswith(".yaml"):
            assert (ROOT / arg).is_file(), f"{where}: {command}: {arg} is not shipped"

"""Meta-tests (datasette's habit): every hook is documented in its spec and in the README,
and every kind has a registration hook."""

import inspect
from pathlib import Path

from core import hookspecs
from core.registry import KIND_HOOKS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
         if hasattr(fn, "reid_core_spec")]


def test_there_are_hooks():
    assert len(HOOKS) >= 15


def test_every_hook_has_a_docstring():
    for name in HOOKS:
        assert (getattr(hookspecs, name).__doc__ or "").strip(), name


def test_every_hook_is_in_the_readme():
    for name in HOOKS:
        stem = name.rsplit("_", 1)[0] if name.endswith(("_start", "_end")) else name
        assert stem in README, name


def test_every_kind_has_a_registration_hook():
    for kind, hook in KIND_HOOKS.items():
        assert hook in HOOKS, kind

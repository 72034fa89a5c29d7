"""pytest fixtures for plugin authors (entry point `pytest11`, active wherever reid-core is
installed). Importing this module is cheap; fixtures import torch only when used.

- `tiny_pipeline_config`: a dict for a small, fast CPU pipeline on the synthetic world;
  change any section and pass it to `run_tiny_pipeline`.
- `run_tiny_pipeline(config, **kwargs)`: write the config to a temp file, train and
  evaluate it, return a `core.runner.RunResult`.
- `tiny_world`: a small `SyntheticWorld` dataset.
- `register_component(kind, name, target)`: register a component for one test only.
- `cuda_autocast`: `with cuda_autocast(torch.bfloat16): ...` applies CUDA autocast's rules
  to CPU tensors (`core.cuda_autocast`): a component that would fail its first CUDA
  mixed-precision step (an `index_copy` of a bf16 source into fp32, ...) fails here.
- `separate_device`: `with separate_device() as device: model.to(device) ...` gives a device
  that keeps its tensors apart from the host's as CUDA does, on the CPU
  (`core.separate_device`): a host tensor stacked with device losses, a host index for a
  device tensor, numpy of a device tensor fail here as on a first GPU step.
- `one_torch_thread`: run the test with one torch thread (tiny models on a busy shared
  CPU: more threads only wait for each other; request it, or make it autouse in a
  conftest).
- `torchrun(script, *args, nproc=2, timeout=600)`: run `python -m torch.distributed.run
  --standalone --nproc-per-node 2 script args` on the CPU (gloo, one OpenMP thread a
  process), assert it exited 0 (the end of its stderr if not); returns the process. The
  multi-process (DDP) tests of the core and the plugins launch with it; outside pytest
  it is `core.testing.run_torchrun`.
- `terminal_stderr`: `stream = terminal_stderr()` in the test's body replaces `sys.stderr`,
  for the rest of the test, by a text buffer that says it is a terminal, the only place
  progress bars are drawn (`core.log_setup.bar_disabled`); `stream.getvalue()` is what was
  written. (Called in the body: pytest's capture sets `sys.stderr` again after set-up.)
- `private_core_cache` (automatic): `$CORE_CACHE_DIR` points to a temporary folder, so
  tests never write reid-core's caches into the user's home.
"""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

TINY_PIPELINE: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "data": {
        "train": [{"dataset": "synthetic", "identities": 8, "test_identities": 4, "images_per_identity": 4,
                   "cameras": 2, "render_size": [32, 16]}],
        "transform": {"size": [32, 16], "pad": 2},
    },
    "sampler": {"name": "pk", "batch_size": 16, "k": 4},
    "backbone": {"name": "timm", "arch": "vit_tiny_patch16_224",
                 "model_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}},
    "head": {"name": "bnneck"},
    "losses": [{"name": "ce"}, {"name": "triplet"}],
    "evaluator": {"name": "reid"},
    "stages": [{"name": "main", "epochs": 1, "optimizer": {"name": "adam", "lr": 1.0e-3}}],
    "trainer": {"device": "cpu", "num_workers": 0, "progress": False, "eval_before": True},
}


@pytest.fixture
def tiny_pipeline_config() -> dict[str, Any]:
    return copy.deepcopy(TINY_PIPELINE)


@pytest.fixture
def run_tiny_pipeline(tmp_path: Path):
    import yaml

    from core.runner import run

    def _run(config: dict[str, Any], overrides=(), name: str = "pipeline.yaml", **kwargs):
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        kwargs.setdefault("run_dir", tmp_path / f"run-{path.stem}")
        return run(path, list(overrides), **kwargs)

    return _run


@pytest.fixture
def tiny_world():
    from core.data.synthetic import SyntheticWorld

    return SyntheticWorld(identities=6, test_identities=3, images_per_identity=4, cameras=2, render_size=[32, 16])


@pytest.fixture
def register_component():
    """Register components for one test: `register_component("loss", "mine", MyLoss)`."""
    from core.hookspecs import hookimpl
    from core.plugins import PluginInfo, get_plugin_manager
    from core.registry import KIND_HOOKS

    pm = get_plugin_manager()
    added: list[str] = []

    def _register(kind: str, name: str, target: Any) -> None:
        if kind not in KIND_HOOKS:
            raise ValueError(f"unknown kind '{kind}'; kinds are: {', '.join(KIND_HOOKS)}")

        class OneOff:
            pass

        def hook(register):
            register(name, target)

        setattr(OneOff, KIND_HOOKS[kind], staticmethod(hookimpl(hook)))
        plugin_name = f"test:{kind}:{name}"
        pm.add(OneOff, PluginInfo(name=plugin_name, source="test"))
        added.append(plugin_name)

    yield _register
    for plugin_name in added:
        pm.unregister(name=plugin_name)
        pm.infos.pop(plugin_name, None)


@pytest.fixture
def cuda_autocast():
    """`emulate_cuda_autocast(dtype)`: CUDA autocast's op lists on the CPU, no promotion of
    mixed-dtype ops (CPU autocast promotes them); `mode.disabled()` leaves it for a region."""
    from core.cuda_autocast import emulate_cuda_autocast

    return emulate_cuda_autocast


@pytest.fixture
def separate_device():
    """`emulate_separate_device()`: a device (`meta`, CPU data inside) whose tensors refuse
    to meet host tensors where CUDA refuses (`core.separate_device`)."""
    from core.separate_device import emulate_separate_device

    return emulate_separate_device


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test, the previous count restored after it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_torchrun(*args, rendezvous=("--standalone",), nproc: int = 2, cwd=None, timeout: float = 600):
    """`python -m torch.distributed.run <rendezvous> --nproc-per-node <nproc> <args>` on the
    CPU (gloo, one OpenMP thread a process: the machine is shared); asserts it exited 0
    and shows the end of its stderr if not. `args`: what follows torchrun's own flags
    (a script and its arguments, or "-m", "core", "run", ...)."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", *rendezvous, "--nproc-per-node", str(nproc),
                           *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture
def torchrun():
    """The launcher of the multi-process tests: see run_torchrun."""
    return run_torchrun


class TerminalStream(io.StringIO):
    """A text buffer that says it is a terminal (`isatty`), as tqdm asks before drawing."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal_stderr(monkeypatch):
    def install() -> TerminalStream:
        stream = TerminalStream()
        monkeypatch.setattr(sys, "stderr", stream)
        return stream

    return install


@pytest.fixture(autouse=True, scope="session")
def private_core_cache(tmp_path_factory):
    """reid-core's caches (the image check's verdicts, core.data.image_check) go to a
    temporary folder during tests, never into the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CORE_CACHE_DIR", str(tmp_path_factory.mktemp("core-cache")))
        yield

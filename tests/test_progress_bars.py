"""Progress bars: shown on a terminal, not under `--quiet` (the README: only warnings on
the console), and not into a file or pipe, where tqdm writes a new frame at every update
(a SLURM or nohup log of one 185-step run held 27 KB of bar frames)."""

import io
import sys

import pytest

from core import log_setup
from core.cli import main
from core.testing import TerminalStream


def bars(text):
    return [frame for frame in text.replace("\r", "\n").splitlines() if "it/s]" in frame or "img/s]" in frame
            or "s/it]" in frame or "s/img]" in frame]


@pytest.fixture
def trained(tiny_pipeline_config, run_tiny_pipeline):
    tiny_pipeline_config["trainer"].update(eval_before=False)
    return run_tiny_pipeline(tiny_pipeline_config).run_dir


@pytest.mark.parametrize("stream, quiet, shown", [(TerminalStream, False, True),
                                                  (TerminalStream, True, False), (io.StringIO, False, False)])
def test_extract_shows_its_bar_on_a_terminal_only_and_not_under_quiet(trained, tmp_path, monkeypatch, stream, quiet,
                                                                        shown):
    err = stream()
    monkeypatch.setattr(sys, "stderr", err)
    argv = ["extract", str(trained), "--images", "run:query", "--out", str(tmp_path / "f.npz")]
    assert main([*argv, *(["-q"] if quiet else [])]) == 0
    frames = [f for f in bars(err.getvalue()) if f.lstrip().startswith("extract")]
    assert bool(frames) is shown, err.getvalue()


@pytest.mark.parametrize("level, stream, shown", [(log_setup.NORMAL, TerminalStream, True),
                                                  (log_setup.QUIET, TerminalStream, False),
                                                  (log_setup.NORMAL, io.StringIO, False)])
def test_the_training_bar_follows_the_same_rule(tiny_pipeline_config, run_tiny_pipeline, monkeypatch, level, stream,
                                                 shown):
    err = stream()
    monkeypatch.setattr(sys, "stderr", err)
    tiny_pipeline_config["stages"][0]["epochs"] = 1
    tiny_pipeline_config["trainer"].update(eval_before=False, progress=True)
    with log_setup.console(level):
        run_tiny_pipeline(tiny_pipeline_config)
    assert bool(bars(err.getvalue())) is shown, err.getvalue()[-2000:]


@pytest.mark.parametrize("is_main, shown", [(True, True), (False, False)])
def test_under_torchrun_only_rank_0_draws_the_training_bar(terminal_stderr, is_main, shown):
    """Every rank's stderr is often the same terminal: a bar per process would interleave
    frames (the README: under torchrun, ranks other than 0 show warnings and errors only)."""
    from types import SimpleNamespace

    from core.training.trainer import Trainer

    terminal_stderr()
    trainer = SimpleNamespace(cfg=SimpleNamespace(progress=True), dist=SimpleNamespace(is_main=is_main))
    with log_setup.console(log_setup.NORMAL, rank=0):
        bar = Trainer._progress(trainer, 4, "main")
        drawn = not bar.disable
        bar.close()
    assert drawn is shown

"""Issue #26: the `logging` module instead of print. A run's messages go to the run
folder's log.txt (time stamped, whatever the console shows); `--quiet` keeps only
warnings on the console, `--verbose` adds debug messages; plugins' loggers (`reid_*`) are
captured, other libraries' chatter is not; a command's result stays on stdout."""

from __future__ import annotations

import copy
import json
import logging
import re
import textwrap

import pytest
import yaml

from core import log_setup
from core.cli import main
from core.testing import TINY_PIPELINE

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"

PLUGIN = textwrap.dedent("""
    import logging
    from core.hookspecs import hookimpl

    @hookimpl
    def on_stage_start(trainer, stage):
        logging.getLogger("reid_logdemo.hooks").info("reid_logdemo saw stage %s", stage.name)
        logging.getLogger("reid_logdemo.hooks").debug("reid_logdemo debug detail")
        logging.getLogger("some_library").info("some_library chatter")
        logging.getLogger("some_library").warning("some_library warns")
""")


@pytest.fixture
def tiny(tmp_path):
    config = copy.deepcopy(TINY_PIPELINE)
    config["plugins"] = ["./logdemo.py"]
    (tmp_path / "logdemo.py").write_text(PLUGIN)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _log(run_dir) -> str:
    return (run_dir / "log.txt").read_text(encoding="utf-8")


def test_the_run_folder_log_holds_the_training_messages(tiny, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", str(tiny), "--run-dir", str(run_dir)]) == 0
    captured = capsys.readouterr()
    log = _log(run_dir)
    # every line: time stamp, level, logger
    assert all(re.match(rf"{STAMP} (INFO|WARNING|DEBUG|ERROR)\s+\S+: ", line) for line in log.splitlines()), log
    assert re.search(rf"{STAMP} INFO +core.training.trainer: tiny: training on cpu", log)
    assert "stage main: 1 epoch(s)" in log
    # the step line carries the logged loss of metrics.jsonl (the independent record)
    train = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in train if r["event"] == "train"][-1]
    assert f"step 4/4: loss {last['loss']:.4f}" in log
    final = [r for r in train if r["event"] == "eval"][-1]
    assert f"evaluation 'final' at step 4: synthetic/rank-1 {final['synthetic/rank-1']:.2f}, " \
           f"synthetic/mAP {final['synthetic/mAP']:.2f}" in log
    # the console shows the same messages (without stamps) on stderr; the result is on stdout
    assert "tiny: training on cpu" in captured.err and "step 4/4: loss" in captured.err
    assert "training on" not in captured.out and f"run folder: {run_dir}" in captured.out
    assert "| final |" in captured.out


def test_a_plugins_logger_is_captured_and_other_libraries_only_warn(tiny, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", str(tiny), "--run-dir", str(run_dir)]) == 0
    err, log = capsys.readouterr().err, _log(run_dir)
    assert re.search(rf"{STAMP} INFO +reid_logdemo.hooks: reid_logdemo saw stage main", log)
    assert "reid_logdemo saw stage main" in err
    assert "some_library chatter" not in log and "some_library chatter" not in err
    assert re.search(r"WARNING +some_library: some_library warns", log)
    assert "warning: some_library warns" in err  # the console marks warnings as it always did
    assert "reid_logdemo debug detail" not in log + err  # DEBUG only with --verbose


def test_quiet_silences_info_on_the_console_but_the_log_file_keeps_it(tiny, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", str(tiny), "--run-dir", str(run_dir), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "training on" not in captured.err and "reid_logdemo saw stage" not in captured.err
    assert captured.err.strip() == "warning: some_library warns"  # warnings still show
    log = _log(run_dir)
    assert "tiny: training on cpu" in log and "reid_logdemo saw stage main" in log and "step 4/4: loss" in log
    # the command's result is not a log message: --quiet never hides it
    assert "| final |" in captured.out and f"run folder: {run_dir}" in captured.out


def test_verbose_shows_debug_messages_on_the_console_and_in_the_log(tiny, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", str(tiny), "--run-dir", str(run_dir), "--verbose"]) == 0
    err, log = capsys.readouterr().err, _log(run_dir)
    checkpoint = run_dir / "checkpoints" / "last.pt"
    assert f"checkpoint written: {checkpoint}" in err and "reid_logdemo debug detail" in err
    assert re.search(rf"{STAMP} DEBUG +core.training.trainer: checkpoint written: ", log)
    assert re.search(r"DEBUG +reid_logdemo.hooks: reid_logdemo debug detail", log)
    assert "some_library chatter" not in log + err  # --verbose is about our loggers


def test_a_run_started_from_python_writes_its_log_too(tiny, tmp_path):
    """`core.runner.run` without the CLI (scripts, the pytest fixture): no console was
    set up, yet the log file gets the INFO messages; the logging state is restored."""
    from core.runner import run

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    run(tiny, run_dir=tmp_path / "run")
    assert "tiny: training on cpu" in _log(tmp_path / "run")
    assert root.level == level and root.handlers == handlers


def test_messages_before_the_run_folder_is_known_reach_its_log(tmp_path):
    """The pipeline's build (labelers, image checks) logs before the run folder exists."""
    with log_setup.run_log() as handler:
        logging.getLogger("core.pipeline").warning("before the folder")
        handler.attach(tmp_path / "run" / "log.txt")
        logging.getLogger("core.trainer").info("after the folder")
    lines = (tmp_path / "run" / "log.txt").read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == ["WARNING core.pipeline: before the folder",
                                                        "INFO    core.trainer: after the folder"]


def test_other_ranks_log_warnings_only_marked_with_their_rank(tmp_path, capsys):
    with log_setup.console(log_setup.NORMAL, rank=1):
        with log_setup.run_log(rank=1, world_size=2) as handler:
            handler.attach(tmp_path / "log.txt")
            logging.getLogger("core.x").info("rank one's progress")
            logging.getLogger("core.x").warning("rank one's warning")
    assert capsys.readouterr().err == "[rank 1] warning: rank one's warning\n"
    line, = (tmp_path / "log.txt").read_text().splitlines()
    assert line.endswith("WARNING [rank 1] core.x: rank one's warning")


def test_console_writes_to_the_current_stderr_through_tqdm_while_a_bar_is_open(capsys, monkeypatch):
    from tqdm import tqdm

    written = []
    monkeypatch.setattr(tqdm, "write", classmethod(lambda cls, text, file=None, **kw: written.append(text)))
    with log_setup.console(log_setup.NORMAL, rank=0):
        logging.getLogger("core.a").info("no bar")
        bar = tqdm(total=3, file=None)
        try:
            logging.getLogger("core.a").info("with a bar")
        finally:
            bar.close()
    assert "no bar\n" in capsys.readouterr().err
    assert written == ["with a bar"]


def test_echo_to_logs_warning_lines_as_warnings(caplog):
    caplog.set_level(logging.INFO, logger="core.e")
    echo = log_setup.echo_to(logging.getLogger("core.e"))
    echo("warning: left out 2 unreadable image files")
    echo("labeler 'x': wrote parts.npz")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "left out 2 unreadable image files"), ("INFO", "labeler 'x': wrote parts.npz")]


def test_python_warnings_reach_the_log_under_the_cli(tmp_path, capsys):
    import warnings

    with log_setup.console(log_setup.QUIET, rank=0), log_setup.run_log() as handler:
        handler.attach(tmp_path / "log.txt")
        warnings.warn("a sampler's warning", UserWarning, stacklevel=1)
    assert "a sampler's warning" in (tmp_path / "log.txt").read_text()
    assert "a sampler's warning" in capsys.readouterr().err


def test_result_output_stays_on_stdout_under_quiet(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_PIPELINE))
    assert main(["validate", str(path), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{path}: OK") and captured.err == ""


def test_the_flags_are_on_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    assert "--quiet" in out and "--verbose" in out

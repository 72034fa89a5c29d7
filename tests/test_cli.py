"""The `core` command line: help, run, validate, print-config, errors, several pipelines."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.cli import main
from core.testing import TINY_PIPELINE


def core(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "core", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.fixture
def tiny_yaml(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_PIPELINE))
    return path


@pytest.mark.parametrize("command", ["run", "validate", "plugins"])
def test_each_subcommand_has_complete_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: core {command}" in out and "options:" in out


def test_top_level_help_lists_commands_and_examples(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for text in ("run", "validate", "plugins", "examples:", "--set key.path=value", "_base_"):
        assert text in out


def test_print_config_shows_the_resolved_pipeline(tiny_yaml, capsys):
    assert main(["run", str(tiny_yaml), "--print-config", "--set", "sampler.k=2"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["sampler"] == {"name": "pk", "batch_size": 16, "k": 2}


def test_validate_builds_and_runs_one_step(tiny_yaml, capsys):
    assert main(["validate", str(tiny_yaml)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "backbone          timm  (plugin core)" in out
    assert "train: 64 images, 16 identities" in out and "one step: ce=" in out


def test_config_error_exits_2_naming_file_key_and_valid_keys(tiny_yaml, capsys):
    assert main(["validate", str(tiny_yaml), "--set", "sampler.kk=2"]) == 2
    err = capsys.readouterr().err
    assert "--set: sampler.kk: unknown key 'kk' for sampler 'pk'. Did you mean 'k'?" in err
    assert "Valid keys: batch_size, k, drop_last, seed" in err


def test_unknown_component_error_names_the_file_and_key(tiny_yaml, capsys):
    data = yaml.safe_load(tiny_yaml.read_text())
    data["losses"][1]["name"] = "tripet"
    tiny_yaml.write_text(yaml.safe_dump(data))
    assert main(["validate", str(tiny_yaml)]) == 2
    err = capsys.readouterr().err
    assert f"{tiny_yaml}: losses.1.name: unknown loss 'tripet'. Did you mean 'triplet'?" in err


def test_wrong_type_in_the_trainer_section(tiny_yaml, capsys):
    assert main(["validate", str(tiny_yaml), "--set", "trainer.precision=fp8"]) == 2
    assert ("trainer.precision: wrong type for the trainer: expected one of 'fp32', 'bf16', 'fp16' or null, "
            "got 'fp8'") in capsys.readouterr().err


def test_unknown_top_level_key(tiny_yaml, capsys):
    assert main(["validate", str(tiny_yaml), "--set", "sampeler.k=2"]) == 2
    assert "unknown top-level key 'sampeler'. Did you mean 'sampler'?" in capsys.readouterr().err


def test_run_several_pipelines_prints_one_comparison_table(tiny_yaml, tmp_path):
    data = yaml.safe_load(tiny_yaml.read_text())
    data.update(name="variant-b")
    data["trainer"]["output_dir"] = str(tmp_path / "runs")
    data["trainer"]["eval_before"] = False
    b = tmp_path / "b.yaml"
    b.write_text(yaml.safe_dump(data))
    data.update(name="variant-a")
    a = tmp_path / "a.yaml"
    a.write_text(yaml.safe_dump(data))
    proc = core("run", str(a), str(b))
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout[proc.stdout.rindex("| variant | n | steps | images seen | synthetic/mAP"):]
    assert "| variant-a | 1 | 4 | 64 |" in table and "| variant-b | 1 | 4 | 64 |" in table
    (sweep,) = (tmp_path / "runs").iterdir()
    assert sorted(p.name for p in sweep.iterdir()) == ["comparison.csv", "comparison.md", "comparison.png", "variant-a",
                                                       "variant-b"]


def test_plugins_can_add_subcommands(capsys):
    from core.hookspecs import hookimpl
    from core.plugins import PluginInfo, get_plugin_manager

    class Commands:
        @staticmethod
        @hookimpl
        def register_commands(subparsers):
            p = subparsers.add_parser("hello", help="say hello")
            p.set_defaults(func=lambda args: print("hello from a plugin") or 0)

    pm = get_plugin_manager()
    pm.add(Commands, PluginInfo("test:commands", "test"))
    try:
        assert main(["hello"]) == 0
    finally:
        pm.unregister(name="test:commands")
        pm.infos.pop("test:commands")
    assert "hello from a plugin" in capsys.readouterr().out


@pytest.mark.parametrize("failure, line, code", [(KeyboardInterrupt(), "interrupted", 130),
                                                 (ValueError("x"), "error: ValueError: x", 1)])
def test_a_failure_under_an_open_progress_bar_prints_its_line_on_a_line_of_its_own(capsys, failure, line, code):
    import argparse

    from tqdm.auto import tqdm

    from core.cli import _run_command

    def command(args):
        bar = tqdm(total=3, desc="work")
        bar.update(1)
        raise failure  # the bar is left open, as a failed loop leaves it

    assert _run_command(argparse.Namespace(func=command, debug=False)) == code
    err = capsys.readouterr().err
    assert "work:" in err and any(text.startswith(line) for text in err.split("\n"))


@pytest.mark.parametrize("output_dir", ["a_file", "a_file/runs"])
def test_an_output_dir_that_is_a_file_is_refused_before_the_build(tiny_yaml, tmp_path, capsys, monkeypatch,
                                                                   output_dir):
    """trainer.output_dir a file (or under one): one line naming the key, exit 2, before the
    build (it was '[Errno 20] Not a directory', exit 1, once the build was done)."""
    import core.pipeline

    (tmp_path / "a_file").write_text("")
    monkeypatch.setattr(core.pipeline, "build_pipeline", lambda *a, **k: pytest.fail("the build started"))
    assert main(["run", str(tiny_yaml), "--set", f"trainer.output_dir={tmp_path / output_dir}"]) == 2
    err = capsys.readouterr().err
    assert f"--set: trainer.output_dir: {tmp_path / 'a_file'} is a file, not a folder" in err, err
    assert err.count("\n") == 1, err


@pytest.mark.parametrize("flags, said", [
    (["--seeds", "0,1"], "{yaml}: trainer.output_dir: {file} is a file, not a folder; trainer.output_dir is the "
                         "folder the sweep folder is made in (give another, or --sweep-dir)"),
    (["--seeds", "0,1", "--sweep-dir", "{file}/sweep"],
     "--sweep-dir: cannot make the sweep folder {file}/sweep: {file} is a file, not a folder"),
    (["--run-dir", "{file}/run"], "--run-dir: cannot write the run folder {file}/run: {file} is a file, not a folder")])
def test_a_sweep_or_run_folder_under_a_file_is_one_line_naming_its_key_or_flag(tmp_path, capsys, monkeypatch, flags,
                                                                                said):
    """trainer.output_dir (in the YAML) under a file was checked for one run, not for a sweep,
    whose folder it holds; --sweep-dir and --run-dir under a file were not checked at all:
    '[Errno 20] Not a directory: ...', exit 1, naming no key or flag (--run-dir's after the
    build). One line, exit 2, before any run or build."""
    import core.pipeline
    import core.runner

    (tmp_path / "a_file").write_text("")
    config = copy.deepcopy(TINY_PIPELINE)
    config["trainer"]["output_dir"] = str(tmp_path / "a_file" / "runs")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setattr(core.pipeline, "build_pipeline", lambda *a, **k: pytest.fail("the build started"))
    if "--run-dir" not in flags:
        monkeypatch.setattr(core.runner, "run", lambda *a, **k: pytest.fail("a run started"))
    names = {"file": tmp_path / "a_file", "yaml": tmp_path / "p.yaml"}
    assert main(["run", str(tmp_path / "p.yaml"), *(f.format(**names) for f in flags)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {said.format(**names)}") and err.count("\n") == 1, err


@pytest.mark.parametrize("flags", [[], ["--seeds", "0,1"]])
def test_an_output_dir_that_is_not_a_path_is_one_line_for_a_run_and_a_sweep(tiny_yaml, capsys, flags):
    """A sweep made its folder's name from trainer.output_dir: 5 gave 'TypeError: expected str,
    bytes or os.PathLike object, not int', exit 1, naming no key."""
    assert main(["run", str(tiny_yaml), "--set", "trainer.output_dir=5", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --set: trainer.output_dir: expected the folder run folders are made in (a path), "
                          "got 5 (int)") and err.count("\n") == 1, err


@pytest.mark.parametrize("argv, worker", [
    (["export", "RUN", "--format", "safetensors"], "core.tools.export.export"),
    (["search", "RUN", "--query", "q", "--gallery", "g"], "core.tools.search.search"),
    (["explain", "RUN", "--images", "q"], "core.tools.overlays.explain"),
    (["new-plugin", "my-method"], "core.tools.scaffold.new_plugin")])
@pytest.mark.parametrize("out", ["a_file", "a_file/sub"])
def test_an_out_folder_that_is_a_file_is_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, worker, out):
    """--out DIR a file (or under one): one line naming --out, exit 2, before the command's
    work (search wrote its ranked lists' folder last: '[Errno 17] File exists', exit 1)."""
    import importlib

    module, name = worker.rsplit(".", 1)
    monkeypatch.setattr(importlib.import_module(module), name, lambda *a, **k: pytest.fail("the work started"))
    (tmp_path / "a_file").write_text("")
    assert main([*argv, "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err
    assert f"--out: {tmp_path / 'a_file'} is a file; --out names a folder" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("argv, worker, example", [
    (["extract", "RUN", "--images", "q"], "core.tools.extract.extract_to_file", "feats.npz"),
    (["curves", "RUN"], "core.tools.curves.write_curves", "curves.png")])
def test_an_out_file_that_is_a_folder_or_under_a_file_is_refused_before_any_work(tmp_path, capsys, monkeypatch,
                                                                                 argv, worker, example):
    """extract embedded every image, then failed to write ('[Errno 17] File exists', exit 1);
    curves gave '[Errno 21] Is a directory: 'x.tmp' -> 'x''; a folder as extract's --out wrote
    <folder>.npz instead. One line naming --out, exit 2, before the work."""
    import importlib

    module, name = worker.rsplit(".", 1)
    monkeypatch.setattr(importlib.import_module(module), name, lambda *a, **k: pytest.fail("the work started"))
    (tmp_path / "a_file").write_text("")
    (tmp_path / "a_folder").mkdir()
    assert main([*argv, "--out", str(tmp_path / "a_file" / "x")]) == 2
    err = capsys.readouterr().err
    assert f"--out: cannot write {tmp_path / 'a_file' / 'x'}: {tmp_path / 'a_file'} is a file" in err, err
    assert main([*argv, "--out", str(tmp_path / "a_folder")]) == 2
    err = capsys.readouterr().err
    assert f"--out: {tmp_path / 'a_folder'} is a folder; --out names the file to write, e.g. " in err, err
    assert example in err and err.count("\n") == 1




@pytest.mark.parametrize("argv, worker, kind", [
    (["search", "RUN", "--query", "q", "--gallery", "g", "--out", "{dir}/lists"], "core.tools.search.search", "dir"),
    (["extract", "RUN", "--images", "q", "--out", "{dir}/feats.npz"], "core.tools.extract.extract_to_file", "file")])
def test_an_out_in_a_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys, monkeypatch,
                                                                              argv, worker, kind):
    """A folder the user cannot write (a shared read-only mount; os.access can say yes there):
    one line naming --out and the OS reason, exit 2, before the images are embedded (it was
    '[Errno 13] Permission denied', exit 1, after the work)."""
    import errno
    import importlib
    import tempfile

    module, name = worker.rsplit(".", 1)
    monkeypatch.setattr(importlib.import_module(module), name, lambda *a, **k: pytest.fail("the work started"))
    real = tempfile.TemporaryFile
    locked = tmp_path / "locked"
    locked.mkdir()

    def temporary_file(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == locked:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", temporary_file)
    assert main([a.replace("{dir}", str(locked)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert f"{locked} cannot be written (Permission denied)" in err and "--out" in err, err
    assert err.count("\n") == 1, err

@pytest.mark.parametrize("argv, earlier, said", [
    (["extract", "RUN", "--images", "q", "--out", "{tmp}/feats.npz"], "feats.npz", "{tmp}/feats.npz already exists"),
    (["extract", "RUN", "--images", "q", "--out", "{tmp}/feats", "--half"], "feats.f16.npy",
     "{tmp}/feats.f16.npy already exists"),
    (["export", "RUN", "--out", "{tmp}", "--format", "safetensors"], "export.json", "{tmp} already holds export.json"),
    (["export", "RUN", "--out", "{tmp}"], "model.onnx", "{tmp} already holds model.onnx")])
def test_an_earlier_extract_or_export_at_out_is_refused_before_any_work(tmp_path, capsys, monkeypatch, argv,
                                                                         earlier, said):
    """Both replaced the earlier file without a word (the embeddings or exported model lost).
    One line naming --out, the file and --overwrite, exit 2, before the run is loaded."""
    import core.tools.loading

    monkeypatch.setattr(core.tools.loading, "load_run", lambda *a, **k: pytest.fail("the work started"))
    (tmp_path / earlier).write_bytes(b"earlier")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out: {said.format(tmp=tmp_path)}"), err
    assert "pass --overwrite" in err and "choose another --out" in err and err.count("\n") == 1, err
    assert (tmp_path / earlier).read_bytes() == b"earlier"


def test_output_into_a_closed_pipe_ends_quietly_as_head_expects():
    """`core search ... | head` printed 'error: [Errno 32] Broken pipe' once head had read
    its lines (and exited 1). A reader that went away is no failure of the command: no
    line, Python's "Exception ignored" neither, and the shell's code for SIGPIPE, 141."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    try:
        done = subprocess.run([sys.executable, "-m", "core", "plugins"], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert done.stderr == "", done.stderr


def test_a_broken_pipe_that_is_not_stdout_is_a_failure_like_any_other(capsys):
    """A tracker's socket closing under a run is no reader of the output going away."""
    import argparse

    from core.cli import _run_command

    def command(args):
        raise BrokenPipeError(32, "Broken pipe")

    assert _run_command(argparse.Namespace(func=command, debug=False)) == 1
    assert capsys.readouterr().err.startswith("error: ")

"""Issue #18: nothing runs that the user did not ask for, nothing is lost, every fault
ends in one clear line. Each test provokes the fault the way a user would meet it."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from core.cli import main
from core.config.loading import load_pipeline, parse_override
from core.runner import run
from core.testing import TINY_PIPELINE
from core.training.checkpoint import (CheckpointError, WriteError, atomic_write_bytes, load_checkpoint,
                                      save_checkpoint)
from core.training.run_folder import RunFolderError, RunLock

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def pipeline_file(tmp_path, test_components):
    """A tiny pipeline beside the test-components plugin file (losses that fail on cue)."""

    def _write(extra_losses=(), name="p.yaml", **trainer):
        config = copy.deepcopy(TINY_PIPELINE)
        config["plugins"] = ["./test_components.py"]
        config["losses"] += list(extra_losses)
        config["trainer"].update(eval_before=False, **trainer)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config))
        return path

    return _write


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ foreign code


class _Marker:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_a_checkpoint_that_needs_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Marker(marker)}, evil)
    with pytest.raises(CheckpointError, match=r"evil.pt: refused: this file needs pickle.*--trust-checkpoint"):
        load_checkpoint(evil)
    assert not marker.exists()
    load_checkpoint(evil, trust=True)  # the explicit flag: the user's decision
    assert marker.exists()


def test_a_truncated_or_empty_checkpoint_says_so_and_to_copy_it_again(tmp_path):
    """Review 15, C4: the zip reader's internal error ('failed finding central directory ...
    internal miniz error') became: the file is cut short (read from its own structure), copy
    it again; an empty file (a bare EOFError from torch) too."""
    whole = tmp_path / "whole.pt"
    save_checkpoint(whole, {"model": {"w": torch.zeros(64)}})
    cut, empty = tmp_path / "cut.pt", tmp_path / "empty.pt"
    cut.write_bytes(whole.read_bytes()[:-30])
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"cut.pt: not a readable checkpoint \(truncated.*copy it again"):
        load_checkpoint(cut)
    with pytest.raises(CheckpointError, match=r"empty.pt: not a readable checkpoint \(the file is empty"):
        load_checkpoint(empty)


def test_core_eval_refuses_a_pickled_checkpoint_in_a_run_folder(tmp_path, run_tiny_pipeline, capsys):
    result = run_tiny_pipeline(copy.deepcopy(TINY_PIPELINE))
    marker = tmp_path / "PWNED"
    state = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)
    state["payload"] = _Marker(marker)
    torch.save(state, result.run_dir / "checkpoints" / "last.pt")
    for command in (["eval", str(result.run_dir)],
                    ["extract", str(result.run_dir), "--images", "run:query", "--out", str(tmp_path / "f.npz")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "refused" in err and "--trust-checkpoint" in err and len(err.strip().splitlines()) == 1
        assert not marker.exists()


def test_our_checkpoints_load_with_weights_only_and_resume_exactly(run_tiny_pipeline):
    config = copy.deepcopy(TINY_PIPELINE)
    config["trainer"]["eval_before"] = False
    result = run_tiny_pipeline(config)
    state = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)  # raises if pickle needed
    assert set(state["rng"]) >= {"python", "numpy", "torch"} and len(state["rng_per_rank"]) == 1


def test_eval_refuses_a_run_folder_whose_pipeline_imports_local_plugin_files(tmp_path, pipeline_file, capsys):
    path = pipeline_file()
    result = run(path, run_dir=tmp_path / "run")
    marker = tmp_path / "IMPORTED"
    (tmp_path / "test_components.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                                 + (tmp_path / "test_components.py").read_text())
    for command in ("eval", "export"):
        extra = ["--out", str(tmp_path / "exp")] if command == "export" else []
        assert main([command, str(result.run_dir), *extra]) == 2
        err = capsys.readouterr().err
        assert "imports local plugin files" in err and "test_components.py" in err and "--allow-plugin-files" in err
        assert not marker.exists()
    # allowed: imported (in a fresh process; this one has the module cached already)
    done = subprocess.run([sys.executable, "-m", "core", "eval", str(result.run_dir), "--allow-plugin-files",
                           "--json"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert marker.exists()


def test_resume_refuses_a_run_folder_whose_pipeline_imports_local_plugin_files(tmp_path, pipeline_file, capsys):
    """`core run --resume RUN` (and so a sweep's --continue) reads the run folder's pipeline:
    its local plugin files are code from whoever made the folder, imported only when allowed
    (review 15: resume imported them and ran on)."""
    config = pipeline_file()
    result = run(config, run_dir=tmp_path / "run", overrides=["trainer.stop_after_steps=1"])
    marker = tmp_path / "IMPORTED"
    (tmp_path / "test_components.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                                 + (tmp_path / "test_components.py").read_text())
    assert main(["run", "--resume", str(result.run_dir)]) == 2
    err = capsys.readouterr().err
    assert "imports local plugin files" in err and "test_components.py" in err and "--allow-plugin-files" in err
    assert not marker.exists()
    # allowed: imported and resumed (in a fresh process; this one has the module cached already)
    done = subprocess.run([sys.executable, "-m", "core", "run", "--resume", str(result.run_dir),
                           "--allow-plugin-files"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert marker.exists()


def test_validate_says_it_imports_a_local_plugin_file_before_its_code_runs(tmp_path, pipeline_file):
    """A pipeline's own `plugins: [./x.py]` is imported by validate and run (documented), but
    not silently: the console names the file as Python code before the file's first line runs."""
    path = pipeline_file()
    plugin = tmp_path / "test_components.py"
    plugin.write_text("import sys; print('PLUGIN CODE RUNS', file=sys.stderr)\n" + plugin.read_text())
    done = subprocess.run([sys.executable, "-m", "core", "validate", str(path)], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    notice = f"importing local plugin file {plugin.resolve()} (Python code"
    assert notice in done.stderr, done.stderr
    assert done.stderr.index(notice) < done.stderr.index("PLUGIN CODE RUNS")


# ------------------------------------------------------------------ nothing lost


def test_a_second_run_into_the_same_folder_is_refused_and_leaves_the_first_intact(tmp_path, pipeline_file, capsys):
    path = pipeline_file()
    run(path, run_dir=tmp_path / "run")
    before = _tree_bytes(tmp_path / "run")
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert _tree_bytes(tmp_path / "run") == before


def test_overwrite_replaces_the_run_outputs_and_keeps_other_files(tmp_path, pipeline_file):
    path = pipeline_file()
    run(path, run_dir=tmp_path / "run")
    (tmp_path / "run" / "notes.txt").write_text("mine")
    run(path, run_dir=tmp_path / "run", overwrite=True)
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_a_run_folder_in_use_by_a_live_process_is_refused_naming_its_pid(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / ".lock").write_text(f"{sleeper.pid}\n")
        with pytest.raises(RunFolderError, match=f"in use by process {sleeper.pid}"):
            RunLock(tmp_path / "run").acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    lock = RunLock(tmp_path / "run").acquire()  # the owner is gone: a stale lock is taken over
    assert (tmp_path / "run" / ".lock").read_text().strip() == str(os.getpid())
    lock.release()
    assert not (tmp_path / "run" / ".lock").exists()


def test_a_diverging_run_names_a_checkpoint_with_finite_weights_from_before(tmp_path, pipeline_file):
    """The loss stays finite but its gradient is NaN at step 3: the update would make every
    weight NaN. The guard stops before that update; the checkpoint it names is step 2's."""
    path = pipeline_file([{"name": "inf_grad_at_step", "step": 3}], checkpoint_every_steps=1)
    with pytest.raises(FloatingPointError, match="at optimisation step 3") as err:
        run(path, run_dir=tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    assert str(checkpoint) in str(err.value)
    state = load_checkpoint(checkpoint)
    assert state["position"]["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_a_failed_write_names_the_path_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    save_checkpoint(target, {"x": torch.ones(2)})
    before = target.read_bytes()

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(WriteError, match=r"cannot write .*last.pt: No space left on device; the previous file is kept"):
        save_checkpoint(target, {"x": torch.zeros(2)})
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_disk_full_during_training_is_one_line_naming_the_checkpoint(tmp_path, pipeline_file, monkeypatch, capsys):
    import core.training.checkpoint as C

    path = pipeline_file()
    real = torch.save

    def disk_full(obj, f, *args, **kwargs):  # the checkpoint's write fails as on a full disk
        if isinstance(obj, dict) and "position" in obj:
            raise OSError(28, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full)
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: cannot write {tmp_path / 'run' / 'checkpoints' / 'last.pt'}: No space left on device"


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.txt", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_a_file_written_at_a_path_is_renamed_into_place_only_when_complete(tmp_path):
    """atomic_replace (what atomic_write_bytes and extract's --half memory map use): the old
    file stays through an interruption and the temp file goes; a clean exit replaces it."""
    from core.training.checkpoint import atomic_replace

    target = tmp_path / "feats.f16.npy"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_replace(target) as partial:
            assert partial.parent == tmp_path and partial != target
            partial.write_bytes(b"half")
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["feats.f16.npy"] and target.read_bytes() == b"old"
    with atomic_replace(target) as partial:
        partial.write_bytes(b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["feats.f16.npy"] and target.read_bytes() == b"new"


def test_a_killed_writers_temp_files_are_removed_when_the_run_folder_opens(tmp_path):
    from core.training.run_folder import RunFolder

    (tmp_path / "checkpoints").mkdir()
    orphan = tmp_path / "checkpoints" / ".last.pt.abc123.tmp"
    orphan.write_bytes(b"half")
    RunFolder(tmp_path)
    assert not orphan.exists()


# ------------------------------------------------------------------ one clear line


@pytest.mark.parametrize("value,expected", [("1e6", 1e6), ("1e-4", 1e-4), ("-2.5E3", -2500.0), (".5", 0.5),
                                            ("3", 3), ("1e", "1e"), ("0x10", 16)])
def test_set_and_pipeline_files_read_exponents_as_numbers(tmp_path, value, expected):
    assert parse_override(f"stages.0.optimizer.lr={value}")[1] == expected
    (tmp_path / "p.yaml").write_text(f"lr: {value}\n")
    assert load_pipeline(tmp_path / "p.yaml").data["lr"] == expected


def test_a_failing_plugin_loss_is_one_line_naming_it_its_plugin_and_shapes(tmp_path, pipeline_file, capsys):
    path = pipeline_file([{"name": "broken_test"}])
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    # the run's progress messages (#26) may precede it; the failure itself is one line, no traceback
    assert not any("Traceback" in e for e in err), err
    line = err[-1]
    assert [e for e in err if e.startswith("error:")] == [line], err
    assert line.startswith("error: loss 'broken_test' (plugin local:") and "test_components.py)" in line
    assert "outputs {" in line and "features (16, 32) float32" in line and "images (16, 3, 32, 16)" in line
    assert "RuntimeError: mat1 and mat2 shapes cannot be multiplied (16x32 and 16x32)" in line
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "Traceback (most recent call last)" in log and "outputs[\"features\"] @ outputs[\"features\"]" in log


def test_debug_prints_the_traceback(tmp_path, pipeline_file, capsys):
    path = pipeline_file([{"name": "broken_test"}])
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run"), "--debug"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def _start_run(tmp_path: Path, pipeline: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "core", "run", str(pipeline), "--run-dir", str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_at_the_next_step_and_says_how_to_resume(tmp_path, test_components, signum, code):
    config = copy.deepcopy(TINY_PIPELINE)
    config["plugins"] = ["./test_components.py"]
    config["stages"][0]["epochs"] = 200  # long enough to be interrupted
    config["trainer"].update(eval_before=False, num_workers=1, log_every=1)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = _start_run(tmp_path, path)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.2)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    last = err.strip().splitlines()[-1]
    # its pipeline imports a local plugin file: resuming needs them allowed, and the line says so
    assert last.startswith("interrupted at epoch ") and last.endswith(
        f"; resume with: core run --resume {tmp_path / 'run'} --allow-plugin-files")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["position"]["global_step"] >= 3
    assert not list((tmp_path / "run").rglob("*.tmp")) and not (tmp_path / "run" / ".lock").exists()


# ------------------------------------------------------------------ shareable weights


def test_a_safetensors_export_evaluates_and_extracts_like_the_run(tmp_path, run_tiny_pipeline, capsys):
    import json

    from safetensors import safe_open

    config = copy.deepcopy(TINY_PIPELINE)
    config["trainer"]["eval_before"] = False
    result = run_tiny_pipeline(config)
    assert main(["export", str(result.run_dir), "--out", str(tmp_path / "shared"), "--format", "safetensors"]) == 0
    capsys.readouterr()
    weights = tmp_path / "shared" / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:  # only tensors and strings inside
        meta = f.metadata()
        assert all(k.startswith(("backbone.", "head.")) for k in f.keys())
        classes = f.get_tensor("head.classifier.weight").shape[0]
    assert json.loads(meta["reid_core.context"])["num_identities"] == classes == 16  # 8 per category
    # the training data is not needed: the file alone rebuilds the model
    test = "data.test=[{dataset: synthetic, identities: 8, test_identities: 4, images_per_identity: 4, " \
           "cameras: 2, render_size: [32, 16]}]"
    assert main(["eval", str(weights), "--json", "--set", test, "--set", "data.train=[]"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert main(["eval", str(result.run_dir), "--json"]) == 0
    from_run = json.loads(capsys.readouterr().out)
    for key, value in from_run.items():
        assert from_file[key] == pytest.approx(value, abs=1e-6), key
    import numpy as np
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 16, 3), dtype=np.uint8)).save(
            folder / f"000{i + 1}_c1s1_000000_00.jpg")
    assert main(["extract", str(weights), "--images", str(folder), "--out", str(tmp_path / "q.npz")]) == 0
    assert np.load(tmp_path / "q.npz")["embeddings"].shape[0] == 3


def test_a_safetensors_file_naming_plugin_files_is_refused(tmp_path, pipeline_file, capsys):
    path = pipeline_file()
    result = run(path, run_dir=tmp_path / "run")
    assert main(["export", str(result.run_dir), "--out", str(tmp_path / "shared"), "--format", "safetensors",
                 "--allow-plugin-files"]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "shared" / "model.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "imports local plugin files" in err and "--allow-plugin-files" in err


def _one_short_line(err: str, *names: str) -> str:
    """The CLI's error output: one line of at most 600 characters naming `names` (torch's own
    message listed every key: ~6 KB)."""
    assert len(err.strip().splitlines()) == 1 and len(err) < 600, err
    assert "Error(s) in loading state_dict" not in err and "RuntimeError" not in err, err
    for name in names:
        assert name in err, (name, err)
    return err


def test_a_weights_file_whose_tensors_do_not_fit_its_pipeline_is_one_line_exit_2(tmp_path, run_tiny_pipeline,
                                                                                   capsys):
    """Review 15, C7: a .safetensors with reid-core's metadata but another architecture's
    tensors, or with the pipeline's embed_dim edited, gave torch's raw `size mismatch` or a
    ~6 KB `Unexpected key(s)` line, exit 1."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    config = copy.deepcopy(TINY_PIPELINE)
    config["trainer"]["eval_before"] = False
    result = run_tiny_pipeline(config, overrides=["trainer.stop_after_steps=1"])
    assert main(["export", str(result.run_dir), "--out", str(tmp_path / "shared"), "--format", "safetensors"]) == 0
    capsys.readouterr()
    with safe_open(str(tmp_path / "shared" / "model.safetensors"), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    # the pipeline edited: embed_dim 32 -> 48 (every backbone tensor and the head change shape)
    edited = tmp_path / "edited.safetensors"
    save_file(tensors, str(edited), metadata={**meta, "reid_core.pipeline": meta["reid_core.pipeline"].replace(
        "embed_dim: 32", "embed_dim: 48")})
    # another architecture's tensors under the backbone (ResNet names), the head kept
    foreign = tmp_path / "foreign.safetensors"
    other = {k: v for k, v in tensors.items() if not k.startswith("backbone.")}
    other.update({"backbone.model.conv1.weight": torch.zeros(8, 3, 7, 7), "backbone.model.bn1.weight": torch.ones(8),
                  "backbone.model.fc.weight": torch.zeros(4, 8)})
    save_file(other, str(foreign), metadata=meta)
    assert main(["eval", str(edited)]) == 2
    err = _one_short_line(capsys.readouterr().err, "edited.safetensors", "do not fit", "another shape", "[32]",
                          "[48]", "edited")
    assert main(["eval", str(foreign)]) == 2
    err = _one_short_line(capsys.readouterr().err, "foreign.safetensors", "do not fit", "backbone.model.bn1.weight",
                          "3 unexpected tensors", "missing")
    n_model = sum(1 for k in tensors if k.startswith("backbone."))
    assert f"{n_model} of the model's tensors missing" in err


def test_a_run_folder_checkpoint_from_another_pipeline_is_one_line_for_eval_and_resume(tmp_path, run_tiny_pipeline,
                                                                                        capsys):
    """Review 15, C8: a run folder whose checkpoints/last.pt comes from another pipeline
    (here embed_dim 48 in a 32 run) gave torch's raw `size mismatch`, exit 1, for `core
    eval RUN` and `core run --resume RUN`. Now one line naming the checkpoint and the
    pipeline it does not fit, exit 2; the resume changes nothing in the folder."""
    config = copy.deepcopy(TINY_PIPELINE)
    config["trainer"]["eval_before"] = False
    ours = run_tiny_pipeline(config, overrides=["trainer.stop_after_steps=1"], name="ours.yaml")
    other = run_tiny_pipeline(config, overrides=["trainer.stop_after_steps=1", "backbone.model_kwargs.embed_dim=48"],
                              name="other.yaml")
    checkpoint = ours.run_dir / "checkpoints" / "last.pt"
    checkpoint.write_bytes((other.run_dir / "checkpoints" / "last.pt").read_bytes())
    assert main(["eval", str(ours.run_dir)]) == 2
    _one_short_line(capsys.readouterr().err, str(checkpoint), "do not fit", str(ours.run_dir / "pipeline.yaml"),
                    "another shape", "[48]", "[32]", "another pipeline")
    before = _tree_bytes(ours.run_dir)
    assert main(["run", "--resume", str(ours.run_dir)]) == 2
    _one_short_line(capsys.readouterr().err, str(checkpoint), "do not fit", "another pipeline")
    assert _tree_bytes(ours.run_dir) == before


def test_a_bare_state_dict_in_a_run_folder_is_refused_as_what_it_is(tmp_path, run_tiny_pipeline, capsys):
    """Released weights (a bare state dict, names -> tensors) copied over a run's
    checkpoints/last.pt were told as 'no model tensors in it (found NoneType, ...); the
    checkpoint comes from another pipeline'. Now one line saying it is a bare state dict,
    not a reid-core checkpoint, pointing at the model zoo's page; exit 2; resume changes
    nothing."""
    config = copy.deepcopy(TINY_PIPELINE)
    config["trainer"]["eval_before"] = False
    ours = run_tiny_pipeline(config, overrides=["trainer.stop_after_steps=1"])
    checkpoint = ours.run_dir / "checkpoints" / "last.pt"
    bare = torch.load(checkpoint, weights_only=True)["model"]
    torch.save(bare, checkpoint)
    assert main(["eval", str(ours.run_dir)]) == 2
    _one_short_line(capsys.readouterr().err, str(checkpoint), "a bare state dict", f"{len(bare)} tensors",
                    "not a reid-core checkpoint", "docs/model-zoo.md")
    before = _tree_bytes(ours.run_dir)
    assert main(["run", "--resume", str(ours.run_dir)]) == 2
    _one_short_line(capsys.readouterr().err, str(checkpoint), "a bare state dict")
    assert _tree_bytes(ours.run_dir) == before

@pytest.mark.parametrize("cut", ["tensors", "header", "empty"])
def test_a_cut_weights_file_is_the_shared_copy_it_again_line_exit_2(tmp_path, capsys, cut):
    """`core eval X.safetensors` on a file cut short in transfer says what every weights
    reader says (truncated, where, copy it again), not safetensors' 'Error while
    deserializing header: incomplete metadata, file not fully covered'."""
    from safetensors.torch import save

    whole = save({"backbone.w": torch.zeros(64, 64)}, metadata={"format": "pt", "reid_core.pipeline": "{}",
                                                               "reid_core.context": "{}"})
    path = tmp_path / "model.safetensors"
    path.write_bytes({"tensors": whole[:len(whole) // 2], "header": whole[:20], "empty": b""}[cut])
    assert main(["eval", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "deserializing" not in err, err
    assert err.startswith(f"error: {path}: not a readable safetensors file (") and "copy it again" in err, err
    assert ("empty" if cut == "empty" else "truncated") in err, err


@pytest.mark.parametrize("case", ["cut", "objects"])
def test_a_features_file_cut_short_or_holding_objects_is_one_line_naming_it(tmp_path, case):
    """`core search --gallery G.npz` on a features file cut in transfer raised numpy's bare
    'BadZipFile: File is not a zip file' (exit 1, no file named); one holding Python objects
    is refused without unpickling them."""
    import numpy as np

    from core.tools.extract import load_features

    path = tmp_path / "gallery.npz"
    columns = {"paths": np.array(["a.jpg", "b.jpg"]), "pids": np.arange(2), "camids": np.arange(2)}
    if case == "cut":
        np.savez(path, embeddings=np.zeros((2, 64), np.float32), **columns)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        np.savez(path, embeddings=np.array([{"x": 1}, None], dtype=object), **columns)
    with pytest.raises(ValueError) as caught:
        load_features(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not a readable features file (.npz): ") and "\n" not in message, message


def test_a_weights_file_without_batchnorm_counters_still_loads(tmp_path, run_tiny_pipeline, capsys):
    """BatchNorm's num_batches_tracked, absent from files other exporters write, is
    supplied by torch (no version metadata in a .safetensors): not a misfit."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    config = copy.deepcopy(TINY_PIPELINE)
    config["trainer"]["eval_before"] = False
    result = run_tiny_pipeline(config, overrides=["trainer.stop_after_steps=1"])
    assert main(["export", str(result.run_dir), "--out", str(tmp_path / "shared"), "--format", "safetensors"]) == 0
    with safe_open(str(tmp_path / "shared" / "model.safetensors"), framework="pt") as f:
        meta, names = f.metadata(), list(f.keys())
        tensors = {k: f.get_tensor(k) for k in names if not k.endswith("num_batches_tracked")}
    assert len(tensors) < len(names)
    path = tmp_path / "no_counters.safetensors"
    save_file(tensors, str(path), metadata=meta)
    capsys.readouterr()
    test = "data.test=[{dataset: synthetic, identities: 8, test_identities: 4, images_per_identity: 4, " \
           "cameras: 2, render_size: [32, 16]}]"
    assert main(["eval", str(path), "--json", "--set", test]) == 0
    assert "synthetic/mAP" in json.loads(capsys.readouterr().out)


def test_labelling_is_refused_under_torchrun_with_a_pointer_to_core_label(tmp_path, tiny_pipeline_config):
    import importlib.util

    from core.config.loading import ConfigError

    spec = importlib.util.spec_from_file_location("annotation_tests", Path(__file__).with_name("test_annotations.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    LABELER_PLUGIN = module.LABELER_PLUGIN
    from core.pipeline import build_pipeline

    (tmp_path / "labelers.py").write_text(LABELER_PLUGIN)
    config = {**tiny_pipeline_config, "plugins": ["./labelers.py"],
              "prepare": [{"name": "truth_test", "out": str(tmp_path / "parts.npz")}]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"does not run under torchrun.*core label .*p.yaml"):
        build_pipeline(load_pipeline(tmp_path / "p.yaml"), rank=0, world_size=2, echo=lambda *_: None)
    assert not (tmp_path / "parts.npz").exists()


CROPPED_WORLD_PLUGIN = '''
from core.data.synthetic import SyntheticWorld
from core.hookspecs import hookimpl


class CroppedWorld(SyntheticWorld):
    """A plugin dataset whose image preparation fails, as a plugin transform's would."""

    def load_image(self, record):
        raise ValueError("crop box (4, 4, 2, 2) is empty: right must exceed left")


@hookimpl
def register_datasets(register):
    register("cropped_world", CroppedWorld)
'''


def test_a_plugin_error_in_a_data_loader_worker_is_one_line_with_its_type_once(tmp_path, capsys):
    (tmp_path / "cropped_world.py").write_text(CROPPED_WORLD_PLUGIN)
    config = {**TINY_PIPELINE, "plugins": ["./cropped_world.py"],
              "data": {**TINY_PIPELINE["data"], "train": [{**TINY_PIPELINE["data"]["train"][0],
                                                           "dataset": "cropped_world"}]},
              "trainer": {**TINY_PIPELINE["trainer"], "num_workers": 1}}  # a real worker process
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run")]) == 1  # a crash of the plugin, not bad input
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("error: ValueError: crop box (4, 4, 2, 2) is empty: right must exceed left "
                       "(run with --debug for the traceback)")
    assert not any("Caught ValueError" in line or "Traceback" in line for line in err)


def _refuse_writes_in(monkeypatch, folder: Path) -> None:
    """A folder where making a file fails (EACCES) though os.access says it is writable: root
    on an NFS share with root squashing, an ACL, a FUSE mount (os.access asks the mode bits)."""
    import errno
    import tempfile

    real = tempfile.TemporaryFile

    def refused(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(folder))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", refused)
    assert os.access(folder, os.W_OK | os.X_OK)


def test_a_folder_where_writing_fails_is_refused_though_os_access_says_writable(tmp_path, monkeypatch):
    """folder_problem asked os.access, which says yes where a write fails; it tries a write.
    Seen failing before the change: folder_problem returned None for the locked folder."""
    from core.training.run_folder import folder_problem

    locked = tmp_path / "locked"
    locked.mkdir()
    _refuse_writes_in(monkeypatch, locked)
    assert folder_problem(locked / "run" / "deeper") == f"{locked} cannot be written (Permission denied)"
    assert folder_problem(tmp_path / "elsewhere") is None
    assert list(tmp_path.iterdir()) == [locked] and not list(locked.iterdir())  # the probe leaves nothing


def test_a_run_dir_and_a_label_file_in_a_folder_where_writing_fails_are_refused_alike(tmp_path, monkeypatch,
                                                                                     pipeline_file, capsys):
    """The label file's `out:` check (core.prepare) and --run-dir's answer with the same probe
    and name the folder, before any work."""
    from core.config.loading import ConfigError
    from core.prepare import _check_out

    locked = tmp_path / "locked"
    locked.mkdir()
    _refuse_writes_in(monkeypatch, locked)
    assert main(["run", str(pipeline_file()), "--run-dir", str(locked / "run")]) == 2
    err = capsys.readouterr().err
    assert f"--run-dir: cannot write the run folder {locked / 'run'}: {locked} cannot be written" in err, err
    cfg = load_pipeline(pipeline_file())
    with pytest.raises(ConfigError, match=f"cannot write {locked / 'labels' / 'parts.npz'}: {locked} cannot be "
                                          r"written \(Permission denied\); give a path in a folder you can write"):
        _check_out(cfg, "prepare.0.out", locked / "labels" / "parts.npz")
    assert not list(locked.iterdir())

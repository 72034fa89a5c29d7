"""`core export`: TorchScript and ONNX files that give the PyTorch model's embeddings."""

import json

import pytest
import torch

from core.cli import main


@pytest.fixture
def trained_run(tiny_pipeline_config, run_tiny_pipeline):
    tiny_pipeline_config["trainer"].update(eval_before=False, eval_flip=True)
    return run_tiny_pipeline(tiny_pipeline_config).run_dir


def test_torchscript_export_gives_the_same_embeddings(trained_run, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(trained_run), "--out", str(out), "--format", "torchscript"]) == 0
    assert "torchscript" in capsys.readouterr().out
    report = json.loads((out / "export.json").read_text())
    info = report["formats"]["torchscript"]
    assert info["ok"] and info["max_abs_diff"] <= 1e-4 and report["flip"] is True
    from core.tools.export import run_torchscript  # torch.jit.load, without torch's deprecation warning

    h, w = report["input"]["height"], report["input"]["width"]
    embeddings = run_torchscript(out / "model.torchscript.pt", torch.randn(5, 3, h, w))
    assert embeddings.shape == (5, report["embedding_dim"])  # any batch size


def test_onnx_export_gives_the_same_embeddings(trained_run, tmp_path):
    """Needs the `export` extra (onnx, onnxscript, onnxruntime): tox's `all` env has it."""
    from core.tools.export import export

    report = export(trained_run, tmp_path / "onnx", formats=["onnx"])
    info = report["formats"]["onnx"]
    assert info["ok"], info
    assert 0 <= info["max_abs_diff"] <= 1e-4


def test_a_difference_above_the_tolerance_fails(trained_run, tmp_path, capsys):
    assert main(["export", str(trained_run), "--out", str(tmp_path), "--format", "torchscript",
                 "--tolerance", "-1"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_an_earlier_export_is_kept_unless_overwrite_which_replaces_only_its_files(trained_run, tmp_path, capsys):
    """A second export into the same folder replaced the first without a word. Now it is
    refused (exit 2, nothing touched); --overwrite rewrites the files this export writes
    and keeps every other one; a folder holding only other files is written into."""
    out = tmp_path / "exported"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = ["export", str(trained_run), "--out", str(out), "--format", "torchscript"]
    assert main(argv) == 0
    (out / "model.onnx").write_bytes(b"an earlier onnx export")  # a format not asked for this time
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--out: {out} already holds export.json, model.torchscript.pt" in err and "--overwrite" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (out / "export.json").write_text("{}")
    assert main([*argv, "--overwrite"]) == 0
    assert json.loads((out / "export.json").read_text())["formats"]["torchscript"]["ok"]
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.onnx").read_bytes() == before["model.onnx"]
    assert sorted(p.name for p in out.iterdir()) == sorted(before)


def test_overwrite_replaces_the_earlier_export_as_a_whole_and_a_stopped_export_leaves_it(trained_run, tmp_path,
                                                                                          monkeypatch):
    """--overwrite with other formats left the earlier export's model files beside the new
    export.json, which did not list them (another checkpoint's TorchScript passing for part
    of this export); and the files were written in place, so an export stopped half-way
    (an error, Ctrl-C) had already replaced some of the earlier ones. The earlier export's
    listed files now go with it, other files stay, and nothing changes until every format
    is written and checked."""
    import core.tools.export as E

    out = tmp_path / "exported"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    both = ["--format", "torchscript", "--format", "safetensors"]
    assert main(["export", str(trained_run), "--out", str(out), *both]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"notes.txt", "export.json", "model.torchscript.pt", "model.safetensors"}

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(E, "export_safetensors", stopped)
        with pytest.raises(KeyboardInterrupt):
            E.export(trained_run, out, formats=["torchscript", "safetensors"], overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no partial folder either

    assert main(["export", str(trained_run), "--out", str(out), "--format", "safetensors", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.safetensors", "notes.txt"]
    report = json.loads((out / "export.json").read_text())
    assert list(report["formats"]) == ["safetensors"] and report["formats"]["safetensors"]["ok"]
    assert report["formats"]["safetensors"]["file"] == str(out / "model.safetensors")
    assert (out / "notes.txt").read_text() == "mine"


def test_a_torchscript_export_shows_none_of_torchs_tracing_noise(trained_run, tmp_path, recwarn):
    """`core export` printed torch's TracerWarning (the trace "might not generalize": the
    export's own check at another batch size is what tells) and its FutureWarnings that
    torch.jit.trace / torch.jit.load are deprecated, none of which the user can act on."""
    from core.tools.export import export

    report = export(trained_run, tmp_path / "ts", formats=["torchscript"])
    assert report["formats"]["torchscript"]["ok"]
    noise = [w for w in recwarn if issubclass(w.category, torch.jit.TracerWarning) or "torch.jit" in str(w.message)]
    assert noise == [], [f"{w.category.__name__}: {w.message}" for w in noise]


def test_overwrite_removes_only_model_files_of_the_out_folder_whatever_export_json_names(trained_run, tmp_path):
    """--overwrite deletes the earlier export's files that its export.json lists. That file may
    come from anyone (a received or hand-edited folder): of a name it lists, only a model file
    name of an export, in --out, is ever removed; other names, paths above --out and absolute
    paths remove nothing."""
    out = tmp_path / "exported"
    assert main(["export", str(trained_run), "--out", str(out), "--format", "safetensors"]) == 0
    mine = {out / "notes.txt": "mine", tmp_path / "notes.txt": "above", tmp_path / "model.onnx": "outside"}
    for path, text in mine.items():
        path.write_text(text)
    (out / "model.onnx").write_text("an earlier onnx export")
    report = json.loads((out / "export.json").read_text())
    report["formats"].update(a={"file": "notes.txt"}, b={"file": "../notes.txt"}, e={"file": str(out)},
                             c={"file": str(tmp_path / "notes.txt")}, d={"file": str(tmp_path / "model.onnx")},
                             f={"file": ".."})
    (out / "export.json").write_text(json.dumps(report))
    assert main(["export", str(trained_run), "--out", str(out), "--format", "safetensors", "--overwrite"]) == 0
    assert {path: path.read_text() for path in mine} == mine
    assert not (out / "model.onnx").exists()  # listed by name (as model.onnx in another folder): the earlier export's
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.safetensors", "notes.txt"]


def test_files_left_in_the_stage_by_a_killed_export_are_not_moved_in(trained_run, tmp_path):
    """An export killed outright (SIGKILL, power) leaves its hidden stage folder behind; its
    files are not this export's and must not land in --out beside the new export.json."""
    from core.tools.export import STAGE

    out = tmp_path / "exported"
    (out / STAGE).mkdir(parents=True)
    (out / STAGE / "model.onnx").write_bytes(b"half an onnx export")
    (out / STAGE / "export.json").write_text("{}")
    assert main(["export", str(trained_run), "--out", str(out), "--format", "safetensors"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.safetensors"]
    assert list(json.loads((out / "export.json").read_text())["formats"]) == ["safetensors"]


@pytest.mark.parametrize("kind", ["file", "link"])
def test_a_file_or_link_where_the_stage_goes_is_refused_before_any_work_and_kept(trained_run, tmp_path, capsys,
                                                                                   kind):
    """A file or a link named .export-partial in --out: the export loaded the run, embedded its
    check images and then failed on '[Errno 17] File exists' (exit 1). It is one line naming
    it, exit 2, before any work; the link's target and its files are left alone."""
    from core.tools.export import STAGE

    out, elsewhere = tmp_path / "exported", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    (out / STAGE).write_text("mine") if kind == "file" else (out / STAGE).symlink_to(elsewhere)
    assert main(["export", str(trained_run), "--out", str(out), "--format", "safetensors"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out: {out / STAGE} is in the way") and err.count("\n") == 1, err
    assert [p.name for p in out.iterdir()] == [STAGE] and (elsewhere / "keep.txt").read_text() == "mine"


def test_a_model_reading_a_batch_field_besides_the_images_is_refused_before_any_work(trained_run, tmp_path,
                                                                                      instruction_conditioned_runs,
                                                                                      capsys):
    """An Instruct-ReID model embeds an image under an instruction (batch field 'instruction');
    the exported model takes images alone. Its export ended in a raw KeyError saying 'this
    pipeline does not provide' the field (exit 1); it is refused: exit 2, one line naming
    the field, nothing written."""
    out = tmp_path / "exported"
    for fmt in ("torchscript", "safetensors"):
        assert main(["export", str(trained_run), "--out", str(out), "--format", fmt]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "'instruction'" in err and "images alone" in err, err
        assert not out.exists()

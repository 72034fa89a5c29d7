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
    module = torch.jit.load(str(out / "model.torchscript.pt"))
    h, w = report["input"]["height"], report["input"]["width"]
    assert module(torch.randn(5, 3, h, w)).shape == (5, report["embedding_dim"])  # any batch size


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

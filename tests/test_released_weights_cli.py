"""`core eval PIPELINE --weights FILE`: fast-reid's weights evaluated end to end under our
evaluator, on a Market-1501 folder whose training folder is empty (only the test split is read)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from layout_fixtures import images

from core.cli import main

KEYS = json.loads((Path(__file__).parent / "fixtures" / "released_weights" / "fastreid_keys.json").read_text())
PIPELINE = str(Path(__file__).resolve().parents[1] / "pipelines" / "bot_market1501.yaml")


def fastreid_bot_file(path: Path) -> Path:
    """A file as fast-reid's Checkpointer writes it ({"model": ...}), random weights of a
    sane scale: convs He-normal, BN near identity."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in KEYS["bot"].items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(10)
        elif name.endswith("running_var") or name.endswith(".weight") and len(shape) == 1:
            state[name] = 1 + 0.1 * torch.rand(shape, generator=g)
        elif len(shape) == 4:
            state[name] = torch.randn(shape, generator=g) * (2.0 / (shape[0] * shape[2] * shape[3])) ** 0.5
        else:
            state[name] = 0.01 * torch.randn(shape, generator=g)
    torch.save({"model": state, "iteration": 1000}, path)
    return path


def market_test_split(root: Path) -> Path:
    """4 identities in 2 cameras; the training folder is there (the Market-1501 reader checks
    the release's layout) but empty: no training image is read."""
    (root / "bounding_box_train").mkdir(parents=True)
    images(root / "query", *(f"{pid:04d}_c1s1_000{pid}01_00.jpg" for pid in (1, 2, 3, 4)))
    images(root / "bounding_box_test", *(f"{pid:04d}_c2s1_000{pid}0{k}_00.jpg" for pid in (1, 2, 3, 4) for k in (1, 2)))
    return root


def test_core_eval_reads_fastreid_weights_into_the_pipeline_and_evaluates(tmp_path, caplog, capsys):
    weights = fastreid_bot_file(tmp_path / "market_bot_R50.pth")
    root = market_test_split(tmp_path / "Market-1501")
    with caplog.at_level(logging.INFO, logger="core"):
        code = main(["eval", PIPELINE, "--weights", str(weights), "--json",
                     "--set", f"data.train.0.root={root}", "--set", "data.transform.size=[64, 32]",
                     "--set", "backbone.pretrained=false", "--set", "backbone.stem_maxpool=ceil",
                     "--set", "backbone.stem_relu=true",
                     "--set", "trainer.device=cpu", "--set", "trainer.num_workers=0"])
    out = capsys.readouterr().out
    assert code == 0, caplog.text
    metrics = json.loads(out)
    assert any(k.endswith("mAP") for k in metrics), metrics
    assert "left out: heads.weight: the classifier (751 training identities)" in caplog.text
    assert "fast-reid (JDAI-CV/fast-reid) loaded" in caplog.text


def test_core_eval_refuses_todays_fastreid_file_under_a_padded_stem_in_one_line(tmp_path, capsys):
    weights = fastreid_bot_file(tmp_path / "market_bot_R50.pth")
    root = market_test_split(tmp_path / "Market-1501")
    common = ["--set", f"data.train.0.root={root}", "--set", "backbone.pretrained=false", "--set", "trainer.device=cpu"]
    assert main(["eval", PIPELINE, "--weights", str(weights), *common]) == 2
    assert "--set backbone.stem_relu=true" in capsys.readouterr().err  # fast-reid's ResNet has one, BoT's code none
    assert main(["eval", PIPELINE, "--weights", str(weights), *common, "--set", "backbone.stem_relu=true"]) == 2
    assert "--set backbone.stem_maxpool=ceil" in capsys.readouterr().err


def test_core_eval_with_weights_of_no_known_code_base_lists_the_readers(tmp_path, capsys):
    weights = tmp_path / "other.pth"
    torch.save({"state_dict": {"base.conv1.weight": torch.zeros(1)}}, weights)
    code = main(["eval", PIPELINE, "--weights", str(weights), "--set", "backbone.pretrained=false"])
    err = capsys.readouterr().err
    assert code != 0
    assert "no reader recognises" in err and "fastreid (fast-reid" in err


def test_core_extract_takes_the_same_pipeline_and_weights_pair(tmp_path, capsys):
    weights = fastreid_bot_file(tmp_path / "market_bot_R50.pth")
    root = market_test_split(tmp_path / "Market-1501")
    out = tmp_path / "query.npz"
    code = main(["extract", PIPELINE, "--weights", str(weights), "--images", str(root / "query"), "--out", str(out),
                 "--device", "cpu", "--set", f"data.train.0.root={root}", "--set", "data.transform.size=[64, 32]",
                 "--set", "backbone.pretrained=false", "--set", "backbone.stem_maxpool=ceil",
                 "--set", "backbone.stem_relu=true"])
    assert code == 0, capsys.readouterr().err
    assert "4 embeddings of dimension 2048" in capsys.readouterr().out


def shaped_file(path: Path, fixture: str, wrap: bool = False) -> Path:
    """A state dict with the names and shapes of a fixture generated from the authors' own
    model (tests/fixtures/released_weights), random weights of a sane scale."""
    tensors = json.loads((Path(__file__).parent / "fixtures" / "released_weights" / f"{fixture}.json").read_text())
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in tensors["tensors"].items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(10)
        elif name.endswith("running_var") or name.endswith(".weight") and len(shape) == 1:
            state[name] = 1 + 0.1 * torch.rand(shape, generator=g)
        else:
            state[name] = 0.02 * torch.randn(shape, generator=g)
    torch.save({"model": state} if wrap else state, path)
    return path


def test_core_eval_reads_reid_strong_baseline_weights_with_their_stemless_relu(tmp_path, caplog, capsys):
    weights = shaped_file(tmp_path / "resnet50_state.pth", "strong_baseline_market_resnet50")
    root = market_test_split(tmp_path / "Market-1501")
    common = ["--set", f"data.train.0.root={root}", "--set", "data.transform.size=[64, 32]",
              "--set", "backbone.pretrained=false", "--set", "trainer.device=cpu", "--set", "trainer.num_workers=0"]
    assert main(["eval", PIPELINE, "--weights", str(weights), *common,  # their ResNet has no stem ReLU
                 "--set", "backbone.stem_relu=true"]) == 2
    assert "--set backbone.stem_relu=false" in capsys.readouterr().err
    with caplog.at_level(logging.INFO, logger="core"):  # bot_market1501 follows their code: no --set needed
        code = main(["eval", PIPELINE, "--weights", str(weights), "--json", *common])
    assert code == 0, caplog.text
    assert any(k.endswith("mAP") for k in json.loads(capsys.readouterr().out))
    assert "reid-strong-baseline" in caplog.text


def test_core_eval_reads_transreid_weights(tmp_path, caplog, capsys):
    weights = shaped_file(tmp_path / "transformer_120.pth", "transreid_market_jpm")
    root = market_test_split(tmp_path / "Market-1501")
    transreid = str(Path(PIPELINE).with_name("transreid_market1501.yaml"))
    with caplog.at_level(logging.INFO, logger="core"):
        code = main(["eval", transreid, "--weights", str(weights), "--json", "--set", f"data.train.0.root={root}",
                     "--set", "backbone.pretrained=false", "--set", "trainer.device=cpu",
                     "--set", "trainer.num_workers=0"])
    assert code == 0, caplog.text + capsys.readouterr().err
    assert any(k.endswith("mAP") for k in json.loads(capsys.readouterr().out))
    assert "TransReID" in caplog.text


def test_from_without_weights_is_refused_not_ignored(tmp_path, capsys):
    """--from names the code base of --weights; given alone it used to be ignored silently."""
    assert main(["eval", PIPELINE, "--from", "fastreid"]) == 2
    err = capsys.readouterr().err
    assert "--from fastreid" in err and "--weights FILE" in err and len(err.strip().splitlines()) == 1, err

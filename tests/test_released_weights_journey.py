"""A newcomer's path through `core eval / extract PIPELINE --weights FILE` (docs/model-zoo.md,
'Evaluating released weights'): what each step prints when a flag, the pipeline or the
file is not the one expected. Files in the authors' real tensor names and shapes
(tests/fixtures/released_weights), random weights; a Market-1501 folder of tiny images."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from layout_fixtures import images

from core.cli import main

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "released_weights"
BOT = str(ROOT / "pipelines" / "bot_market1501.yaml")
TRANSREID = str(ROOT / "pipelines" / "transreid_market1501.yaml")


def journey_file(path: Path, names_and_shapes: dict[str, list[int]], wrap: bool) -> Path:
    """Random weights of a sane scale under the authors' names and shapes; `wrap`: fast-reid's
    Checkpointer layout ({"model": ...}), else torch.save(model.state_dict())."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in names_and_shapes.items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(10)
        elif name.endswith("running_var") or name.endswith(".weight") and len(shape) == 1:
            state[name] = 1 + 0.1 * torch.rand(shape, generator=g)
        elif len(shape) == 4:
            state[name] = torch.randn(shape, generator=g) * (2.0 / (shape[0] * shape[2] * shape[3])) ** 0.5
        else:
            state[name] = 0.01 * torch.randn(shape, generator=g)
    torch.save({"model": state, "iteration": 1000} if wrap else state, path)
    return path


def journey_market(root: Path) -> Path:
    """Market-1501's layout, test split only (the training folder empty, as the reader checks it exists)."""
    (root / "bounding_box_train").mkdir(parents=True)
    images(root / "query", *(f"{pid:04d}_c1s1_000{pid}01_00.jpg" for pid in (1, 2, 3)))
    images(root / "bounding_box_test", *(f"{pid:04d}_c2s1_000{pid}0{k}_00.jpg" for pid in (1, 2, 3) for k in (1, 2)))
    return root


def fastreid_bot(tmp_path: Path) -> Path:
    keys = json.loads((FIXTURES / "fastreid_keys.json").read_text())["bot"]
    return journey_file(tmp_path / "market_bot_R50.pth", keys, wrap=True)


def small(root: Path) -> list[str]:
    return ["--set", f"data.train.0.root={root}", "--set", "data.transform.size=[64, 32]",
            "--set", "backbone.pretrained=false", "--set", "trainer.device=cpu", "--set", "trainer.num_workers=0"]


def test_a_pipeline_yaml_given_without_weights_says_to_add_weights(tmp_path, capsys):
    root = journey_market(tmp_path / "Market-1501")
    for command in (["eval", BOT, *small(root)],
                    ["extract", BOT, "--images", str(root / "query"), "--out", str(tmp_path / "q.npz"),
                     *small(root)]):
        assert main(command) != 0
        err = capsys.readouterr().err
        assert "--weights FILE" in err, err
        assert "core run" in err, err  # the other thing one can do with a pipeline YAML


def test_a_file_whose_pipeline_cannot_be_built_names_the_reader_that_recognised_it(tmp_path, capsys):
    tensors = json.loads((FIXTURES / "strong_baseline_market_resnet50.json").read_text())["tensors"]
    weights = journey_file(tmp_path / "resnet50_model_120.pth", tensors, wrap=False)
    root = journey_market(tmp_path / "Market-1501")
    assert main(["eval", TRANSREID, "--weights", str(weights), *small(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "reid-strong-baseline" in err, err  # what the file is, not only what failed to build
    assert "strong_baseline" in err and "pipelines/bot_" in err, err


def test_eval_json_and_table_name_the_weights_file_and_what_was_loaded(tmp_path, capsys):
    weights = fastreid_bot(tmp_path)
    root = journey_market(tmp_path / "Market-1501")
    args = ["eval", BOT, "--weights", str(weights), *small(root), "--set", "backbone.stem_maxpool=ceil",
            "--set", "backbone.stem_relu=true"]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    released = out["released"]
    assert released["weights"] == str(weights)
    assert released["reader"] == "fastreid"
    # the fixture's 324 tensors: the classifier left out, the other 323 loaded
    assert released["loaded"] == 323
    assert list(released["left_out"]) == ["heads.weight"]
    assert any("bicubic" in note for note in released["notes"])  # bot_market1501 resizes bilinearly
    assert all(isinstance(v, float) for k, v in out.items() if k != "released")
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "market_bot_R50.pth" in table.splitlines()[0]  # the title names the file
    assert "| market_bot_R50.pth |" in table  # and so does the row, to paste beside one's own runs


def test_search_worst_with_weights_needs_out_instead_of_writing_beside_the_weights(tmp_path, capsys):
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    weights = fastreid_bot(weights_dir)
    root = journey_market(tmp_path / "Market-1501")
    code = main(["search", BOT, "--weights", str(weights), "--worst", "2", "--device", "cpu", *small(root),
                 "--set", "backbone.stem_maxpool=ceil"])
    assert code == 2
    assert "--out" in capsys.readouterr().err
    assert sorted(p.name for p in weights_dir.iterdir()) == ["market_bot_R50.pth"]  # nothing written beside it


def test_an_sbs_file_under_the_bot_pipeline_is_pointed_at_the_sbs_pipeline(tmp_path, capsys):
    keys = json.loads((FIXTURES / "fastreid_keys.json").read_text())["sbs"]
    weights = journey_file(tmp_path / "market_sbs_R50-ibn.pth", keys, wrap=True)
    root = journey_market(tmp_path / "Market-1501")
    code = main(["eval", BOT, "--weights", str(weights), *small(root), "--set", "backbone.stem_maxpool=ceil"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "backbone.ibn=true" in err, err  # the reader's own line stays
    assert "sbs_<set>.yaml" in err, err  # and the pipeline made for the file is named, not only one key to set


def test_a_wrong_from_says_the_file_is_not_that_code_base_s_and_which_reader_recognises_it(tmp_path, capsys):
    weights = fastreid_bot(tmp_path)
    root = journey_market(tmp_path / "Market-1501")
    code = main(["eval", BOT, "--weights", str(weights), "--from", "transreid", *small(root)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "not TransReID" in err and "fastreid reads it" in err, err


def test_a_misfit_under_the_pipeline_made_for_the_file_does_not_repeat_the_pipeline_list(tmp_path, capsys):
    tensors = json.loads((FIXTURES / "transreid_market_jpm.json").read_text())["tensors"]
    weights = journey_file(tmp_path / "transformer_120.pth", tensors, wrap=False)
    root = journey_market(tmp_path / "Market-1501")
    assert main(["eval", TRANSREID, "--weights", str(weights), *small(root)]) == 2  # 64x32: another pos_embed grid
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "data.transform.size" in err and "fit pipelines/transreid_" not in err, err


def test_core_eval_of_ones_own_run_names_the_run_in_its_row(tmp_path, capsys):
    """Rows to paste beside released files' (each named by its file): 'checkpoint' said nothing."""
    import copy

    import yaml

    from core.runner import run
    from core.testing import TINY_PIPELINE

    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(copy.deepcopy(TINY_PIPELINE)))
    folder = run(tmp_path / "tiny.yaml", run_dir=tmp_path / "my-bot-run").run_dir
    capsys.readouterr()
    assert main(["eval", str(folder)]) == 0
    assert "| my-bot-run |" in capsys.readouterr().out
    assert main(["eval", str(folder / "checkpoints" / "last.pt")]) == 0
    assert "| my-bot-run/last.pt |" in capsys.readouterr().out

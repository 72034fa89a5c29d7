"""`core search PIPELINE --weights FILE`: the ranked lists and the worst queries of released
weights. Review 19: search() and worst_queries() not passing --weights on to load_run passed every
test (none ran core search with --weights)."""

from __future__ import annotations

from tests.test_released_weights_cli import PIPELINE, fastreid_bot_file, market_test_split

from core.cli import main

SEARCH19 = ["--device", "cpu", "--set", "data.transform.size=[64, 32]", "--set", "backbone.pretrained=false",
            "--set", "backbone.stem_maxpool=ceil", "--set", "backbone.stem_relu=true", "--set", "trainer.num_workers=0"]


def test_core_search_ranks_under_released_weights(tmp_path, capsys):
    weights = fastreid_bot_file(tmp_path / "market_bot_R50.pth")
    root = market_test_split(tmp_path / "Market-1501")
    code = main(["search", PIPELINE, "--weights", str(weights), "--query", str(root / "query"),
                 "--gallery", str(root / "bounding_box_test"), "--top", "3", *SEARCH19,
                 "--set", f"data.train.0.root={root}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "0001_c1s1_000101_00.jpg" in captured.out, captured.out


def test_core_search_worst_queries_under_released_weights(tmp_path, capsys):
    weights = fastreid_bot_file(tmp_path / "market_bot_R50.pth")
    root = market_test_split(tmp_path / "Market-1501")
    out = tmp_path / "worst"
    code = main(["search", PIPELINE, "--weights", str(weights), "--worst", "2", "--out", str(out), *SEARCH19,
                 "--set", f"data.train.0.root={root}"])
    assert code == 0, capsys.readouterr().err
    assert (out / "index.html").is_file()

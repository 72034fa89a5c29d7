"""reid-strong-baseline's reader does not claim ReID-Survey's AGW files (mangye16/ReID-Survey,
modeling/baseline.py): their Baseline has the same `base.*` / `bottleneck` / `classifier` names plus
non-local blocks `base.NL_<stage>.<j>.*` (modeling/backbones/resnet_nl.py) and GeM's learnt
`global_pool.p` (GeneralizedMeanPoolingP), which the strong_baseline reader has no place for: claimed,
such a file was refused tensor by tensor ('a model variant this reader does not know'), or first told to
set backbone.stem_relu=false, and `--from auto` could not tell it from a BoT file."""

import json
from pathlib import Path

import torch

from core.released_weights import strong_baseline

BOT19 = json.loads((Path(__file__).parent / "fixtures" / "released_weights" /
                    "strong_baseline_market_resnet50.json").read_text())["tensors"]


def test_a_reid_survey_agw_file_is_not_reid_strong_baselines():
    bot = {name: torch.zeros(shape) for name, shape in BOT19.items()}
    assert strong_baseline.recognise(bot)
    non_local = {f"base.NL_2.0.{part}.weight": torch.zeros(1, 512, 1, 1) for part in ("g", "theta", "phi")}
    assert not strong_baseline.recognise({**bot, **non_local})
    assert not strong_baseline.recognise({**bot, "global_pool.p": torch.full((1,), 3.0)})
    assert not strong_baseline.recognise({"module." + k: v for k, v in {**bot, **non_local}.items()})

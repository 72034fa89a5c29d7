"""The same pipeline and seed train bit-identically on the CPU (issue 20): two runs in
separate processes (with different Python hash seeds, so nothing may depend on the
order of a set of strings) write the same metrics.jsonl, timing fields aside."""

import copy
import json
import os
import subprocess
import sys

import torch
import yaml

from core.testing import TINY_PIPELINE
from core.training.determinism import set_deterministic

#: what may differ between two identical runs: wall-clock measurements
TIMING = ("seconds", "images_per_s")


def records(run_dir):
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def run_in_process(path, run_dir, hash_seed):
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    subprocess.run([sys.executable, "-m", "core", "run", str(path), "--run-dir", str(run_dir)],
                   check=True, env=env, timeout=900, capture_output=True)
    return records(run_dir)


def test_two_cpu_runs_write_identical_metrics(tmp_path):
    config = copy.deepcopy(TINY_PIPELINE)
    config["stages"][0]["epochs"] = 2
    config["trainer"].update(num_workers=1, eval_every=1, log_every=1)  # a loader worker and a mid-run evaluation
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    first = run_in_process(path, tmp_path / "a", 1)
    second = run_in_process(path, tmp_path / "b", 2)
    assert [r["event"] for r in first].count("train") >= 4 and [r["event"] for r in first].count("eval") >= 3
    assert first == second  # every loss, learning rate, step, image count and metric, bit for bit


def test_the_deterministic_switch_sets_torch_and_is_undone_by_the_next_run():
    before = torch.are_deterministic_algorithms_enabled()
    try:
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")
        set_deterministic(False)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        set_deterministic(before)


def test_a_deterministic_cpu_run_matches_the_default_one(run_tiny_pipeline, tiny_pipeline_config):
    tiny_pipeline_config["trainer"]["eval_before"] = False
    plain = run_tiny_pipeline(tiny_pipeline_config, name="plain.yaml")
    strict = run_tiny_pipeline(tiny_pipeline_config, ["trainer.deterministic=true"], name="strict.yaml")
    try:
        assert torch.are_deterministic_algorithms_enabled()  # the strict run turned it on
        assert records(plain.run_dir) == records(strict.run_dir)  # CPU kernels were deterministic already
    finally:
        set_deterministic(False)

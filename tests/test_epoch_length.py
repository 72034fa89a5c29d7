"""One epoch length for every sampler (issue 20, core/samplers/epoch.py): as many batches
as the PK sampler (K = 4, drop_last) makes on the same training table and batch size,
or `sampler.epoch_batches`; steps and images seen are logged so a comparison can check."""

import copy
from pathlib import Path
import warnings

import numpy as np
import pytest

from core.config.loading import ConfigError, LoadedConfig
from core.context import BuildContext
from core.data.table import RecordTable
from core.interfaces import Sampler
from core.pipeline import build_pipeline
from core.records import Record
from core.registry import build_registry
from core.samplers.epoch import FixedEpochLength, pk_epoch_batches
from core.samplers.identity import PKSampler
from core.testing import TINY_PIPELINE
from core.training.run_folder import read_metrics

#: every sampler the installed plugins register: a new plugin's sampler is covered here
SAMPLERS = sorted(entry.name for entry in build_registry().entries("sampler"))
FIRST_PARTY = {"core", "edps", "moil", "hse", "amsa", "vge-labeler", "instruct-editor"}
BATCH = 16


def config(sampler: dict) -> dict:
    """The tiny pipeline on 2 categories x 8 identities x 9 images (144 records): PK with
    K = 4 makes G = 16 x 2 groups, 32 / (16 / 4) = 8 batches of 16; `random` alone would
    make ceil(144 / 16) = 9, EDPS identities // P = 4."""
    cfg = copy.deepcopy(TINY_PIPELINE)
    cfg["data"]["train"][0].update(identities=8, images_per_identity=9, categories=["person", "vehicle"])
    cfg["sampler"] = sampler
    return cfg


def build(cfg: dict):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipeline = build_pipeline(LoadedConfig(data=cfg, file=Path("test.yaml")), prepare="skip")
    return pipeline, caught


def yielded(sampler: Sampler, epoch: int) -> list:
    sampler.set_epoch(epoch)
    return list(sampler)


def pk_reference(pipeline) -> int:
    """PK's own count on the pipeline's table, from a PK sampler built outside a pipeline."""
    return len(PKSampler(BuildContext.from_table(pipeline.train), batch_size=BATCH, k=4))


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_registered_sampler_plans_as_many_batches_as_pk(name):
    pipeline, _ = build(config({"name": name, "batch_size": BATCH}))
    expected = pk_reference(pipeline)
    assert expected == 8
    assert pipeline.ctx.epoch_batches == expected
    assert len(pipeline.sampler) == expected
    for epoch in (0, 1):
        assert len(yielded(pipeline.sampler, epoch)) == expected
    provider = pipeline.provenance["sampler"]["plugin"]
    if provider in FIRST_PARTY:  # first-party samplers read ctx.epoch_batches themselves
        assert not isinstance(pipeline.sampler, FixedEpochLength), provider


@pytest.mark.parametrize("name", SAMPLERS)
def test_epoch_batches_overrides_the_rule_for_every_sampler(name):
    pipeline, _ = build(config({"name": name, "batch_size": BATCH, "epoch_batches": 13}))
    assert len(pipeline.sampler) == 13
    assert len(yielded(pipeline.sampler, 0)) == 13


def test_the_rule_is_pk_count_on_a_hand_worked_table():
    # identities with 1, 4, 5, 9, 12 images: groups max(n // 4, 1) = 1, 1, 1, 2, 3 = 8,
    # i.e. 32 images a PK epoch; batch 8 -> 4 batches, 16 -> 2, 12 -> 2 (32 // 12)
    pids = np.repeat(np.arange(5), [1, 4, 5, 9, 12])
    assert [pk_epoch_batches(pids, b) for b in (8, 16, 12)] == [4, 2, 2]
    records = [Record(path=None, pid=int(p), camid=0) for p in pids]
    ctx = BuildContext.from_table(RecordTable.build([("s", records)], relabel=True))
    assert [len(PKSampler(ctx, batch_size=b, k=4)) for b in (8, 16)] == [4, 2]
    assert pk_epoch_batches(pids, 64) == 1  # never an empty epoch


class ThreeBatches(Sampler):
    """A sampler that ignores ctx.epoch_batches: always 3 batches, the plan from the epoch."""

    def __init__(self, ctx, batch_size: int = 16) -> None:
        self.n, self.b = len(ctx.train), batch_size

    def __iter__(self):
        rng = np.random.default_rng(self.epoch)
        for _ in range(3):
            yield rng.choice(self.n, self.b, replace=False).tolist()

    def __len__(self):
        return 3


def test_a_sampler_ignoring_the_rule_is_continued_to_the_epoch_length(register_component):
    register_component("sampler", "three", ThreeBatches)
    pipeline, caught = build(config({"name": "three", "batch_size": BATCH}))
    assert any("plans 3 batches per epoch, but the epoch has 8" in str(w.message) for w in caught)
    assert len(pipeline.sampler) == 8
    first = yielded(pipeline.sampler, 0)
    assert len(first) == 8 and first == yielded(pipeline.sampler, 0)  # the plan depends on the epoch only
    assert first != yielded(pipeline.sampler, 1)
    short, _ = build(config({"name": "three", "batch_size": BATCH, "epoch_batches": 2}))
    assert len(yielded(short.sampler, 0)) == 2


@pytest.mark.parametrize("value", [0, -3, 2.5, "ten", True])
def test_a_bad_epoch_batches_names_the_key(value):
    with pytest.raises(ConfigError, match=r"sampler\.epoch_batches.*positive integer or null"):
        build(config({"name": "pk", "batch_size": BATCH, "epoch_batches": value}))


def test_runs_with_different_samplers_log_the_same_steps_and_images(run_tiny_pipeline):
    steps = {}
    for name in ("pk", "random"):
        cfg = config({"name": name, "batch_size": BATCH})
        cfg["trainer"]["eval_before"] = False
        result = run_tiny_pipeline(cfg, name=f"{name}.yaml")
        final = [r for r in read_metrics(result.run_dir) if r["event"] == "eval"][-1]
        train = [r for r in read_metrics(result.run_dir) if r["event"] == "train"][-1]
        assert train["images_seen"] == final["images_seen"]
        steps[name] = (final["global_step"], final["images_seen"])
        report = (result.run_dir / "report.md").read_text()
        assert f"Training budget: {final['global_step']:,} optimisation steps, {final['images_seen']:,}" in report
    assert steps["pk"] == steps["random"] == (8, 8 * BATCH)

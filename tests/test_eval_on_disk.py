"""The trainer's evaluation with features on disk (issue 24, `trainer.eval_features`):
embeddings written batch by batch to a memory-mapped file and searched out of core give
the metrics of the in-memory path, on the synthetic world. References: the in-memory
path itself (today's behaviour) and numpy's float16 rounding."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import yaml

from core.config.loading import load_pipeline
from core.evaluation import ReIDEvaluator
from core.evaluation.features import FeatureWriter, features_tensor, open_features
from core.interfaces import FeatureSet
from core.pipeline import build_pipeline
from core.separate_device import DeviceTensor, emulate_separate_device, host
from core.testing import TINY_PIPELINE
from core.training.distributed import Dist
from core.training.run_folder import RunFolder
from core.training.trainer import Trainer, _shard_path
from tests.evaluation_helpers import assert_metrics_equal


@pytest.fixture(scope="module")
def world_pipeline(tmp_path_factory):
    """The tiny pipeline on a synthetic world with enough test images (6 identities x 8
    images, 3 cameras) for the metrics to tell ranked lists apart."""
    config = copy.deepcopy(TINY_PIPELINE)
    config["data"]["train"][0].update(test_identities=6, images_per_identity=8, cameras=3)
    path = tmp_path_factory.mktemp("pipeline") / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    return build_pipeline(load_pipeline(path), echo=lambda *_: None)


class Spy:
    """Records the feature sets the evaluator is given (the sets, their files and a copy of
    the embeddings), then evaluates like the wrapped evaluator."""

    def __init__(self, evaluator, out_of_core=True):
        self.evaluator, self.out_of_core, self.seen, self.devices, self.sets = evaluator, out_of_core, [], [], []

    def evaluate(self, query: FeatureSet, gallery: FeatureSet):
        self.sets.append((query, gallery))
        self.seen.append([(fs.embeddings_file, fs.embeddings.clone()) for fs in (query, gallery)])
        self.devices.append((query.compute_device, gallery.compute_device))
        return self.evaluator.evaluate(query, gallery)


def evaluate_with(trainer, monkeypatch, evaluator=None, **settings):
    for key, value in settings.items():
        monkeypatch.setattr(trainer.cfg, key, value)
    if evaluator is not None:
        monkeypatch.setattr(trainer.p, "evaluator", evaluator)
    return trainer.evaluate("test")


@pytest.fixture
def trainer(world_pipeline, tmp_path):
    return Trainer(world_pipeline, RunFolder(tmp_path / "run"))


@pytest.mark.parametrize("flip", [False, True])
def test_float32_features_on_disk_give_the_in_memory_metrics(trainer, monkeypatch, flip):
    spy = Spy(trainer.p.evaluator)
    in_memory = evaluate_with(trainer, monkeypatch, spy, eval_features="memory", eval_flip=flip)
    on_disk = evaluate_with(trainer, monkeypatch, eval_features="disk", eval_features_dtype="float32")
    assert_metrics_equal(on_disk, in_memory, tol=1e-9)
    (memory_query, memory_gallery), (disk_query, disk_gallery) = spy.seen
    assert memory_query[0] is None and memory_gallery[0] is None
    assert disk_gallery[0] == trainer.run.path / "eval-features" / "synthetic-gallery.npy"
    assert torch.equal(disk_query[1], memory_query[1]) and torch.equal(disk_gallery[1], memory_gallery[1])
    assert not list((trainer.run.path / "eval-features").iterdir())  # removed after the evaluation


def test_float16_features_on_disk_rank_the_rounded_embeddings(trainer, monkeypatch):
    """float16 storage ranks the embeddings rounded to float16 (the file holds exactly
    numpy's rounding of the in-memory float32 embeddings), with the in-memory protocol."""
    spy = Spy(trainer.p.evaluator)
    evaluate_with(trainer, monkeypatch, spy, eval_features="memory")
    on_disk = evaluate_with(trainer, monkeypatch, eval_features="disk", eval_features_dtype="float16")
    (memory_query, memory_gallery), (disk_query, disk_gallery) = spy.seen
    for memory, disk in ((memory_query[1], disk_query[1]), (memory_gallery[1], disk_gallery[1])):
        assert disk.dtype == torch.float16
        assert np.array_equal(disk.numpy(), memory.numpy().astype(np.float16))
    test = trainer.p.test_sets[0]
    rounded = [FeatureSet(m[1].half().float(), t.pids, t.camids, categories=t.category_ids,
                          category_names=list(t.category_names))
               for m, t in ((memory_query, test.query), (memory_gallery, test.gallery))]
    expected = trainer.p.evaluator.evaluate(*rounded)
    assert_metrics_equal(on_disk, {f"synthetic/{k}": v for k, v in expected.items()}, tol=1e-9)


def test_auto_goes_to_disk_above_the_size_and_only_for_out_of_core_evaluators(trainer, monkeypatch):
    test = trainer.p.test_sets[0]
    n_query, n_gallery = len(test.query), len(test.gallery)
    assert n_query < n_gallery
    for above, out_of_core, expected in [(n_gallery, True, (False, False)), (n_query, True, (False, True)),
                                         (0, True, (True, True)), (0, False, (False, False))]:
        spy = Spy(trainer.p.evaluator, out_of_core)
        evaluate_with(trainer, monkeypatch, spy, eval_features="auto", eval_features_disk_above=above)
        assert tuple(file is not None for file, _ in spy.seen[0]) == expected, (above, out_of_core)
    spy = Spy(trainer.p.evaluator, out_of_core=False)  # asked for: on disk for any evaluator
    evaluate_with(trainer, monkeypatch, spy, eval_features="disk")
    assert all(file is not None for file, _ in spy.seen[0])


def test_the_default_keeps_small_sets_in_memory(trainer):
    assert (trainer.cfg.eval_features, trainer.cfg.eval_features_disk_above) == ("auto", 1_000_000)
    spy = Spy(trainer.p.evaluator)
    trainer.p.evaluator, evaluator = spy, trainer.p.evaluator
    try:
        trainer.evaluate("test")
    finally:
        trainer.p.evaluator = evaluator
    assert [file for file, _ in spy.seen[0]] == [None, None]


def test_a_bad_disk_threshold_is_named(trainer, monkeypatch):
    with pytest.raises(ValueError, match=r"trainer.eval_features_disk_above must be an integer >= 0 \(items\), got -1"):
        evaluate_with(trainer, monkeypatch, eval_features="auto", eval_features_disk_above=-1)


def test_the_reid_evaluator_searches_memory_mapped_features_out_of_core(tmp_path, monkeypatch):
    """search: exact on a FeatureSet with `embeddings_file` runs the blocked search (a
    spy on it), with the exact path's metrics; re-ranking is refused with the way out."""
    import core.evaluation.blocked as blocked
    from tests.evaluation_helpers import feature_sets

    query, gallery = feature_sets(categories=True)
    writer = FeatureWriter(tmp_path / "g.npy", len(gallery), gallery.embeddings.shape[1], "float32")
    writer.write(gallery.embeddings.numpy())
    writer.close()
    mapped = FeatureSet(features_tensor(tmp_path / "g.npy"), gallery.pids, gallery.camids,
                        embeddings_file=tmp_path / "g.npy")
    calls = []
    real = blocked.blocked_per_query_metrics
    monkeypatch.setattr(blocked, "blocked_per_query_metrics", lambda *a, **k: calls.append(1) or real(*a, **k))
    for search in ("exact", "faiss_flat"):
        if search == "faiss_flat":
            pytest.importorskip("faiss")
        assert ReIDEvaluator(search=search).evaluate(query, mapped) == ReIDEvaluator().evaluate(query, gallery)
    assert len(calls) == 2
    with pytest.raises(ValueError, match="rerank: true needs every distance in memory.*eval_features: memory"):
        ReIDEvaluator(rerank=True).evaluate(query, mapped)


def test_features_on_disk_are_searched_on_the_gpu_they_were_computed_on(trainer, monkeypatch):
    """The trainer's on-disk features are a host memory map; `search: blocked` computes on
    the device the trainer embedded them on (`FeatureSet.compute_device`), not on the CPU
    where the map lives, when this process can use that device (core.separate_device
    stands for the GPU here). The blocked search is spied (its device argument), and the
    trainer's own features name its device."""
    import core.evaluation.blocked as blocked
    from core.evaluation.reid import search_device

    def features(**kwargs):
        return FeatureSet(torch.zeros(3, 2), np.arange(3), np.zeros(3, np.int64), **kwargs)

    assert search_device(features(compute_device="cuda:1")) == torch.device("cpu")  # no GPU here: the CPU
    assert search_device(features(compute_device="meta")) == torch.device("cpu")  # torch's, without data
    assert search_device(features()) == search_device(features(compute_device="cpu")) == torch.device("cpu")
    with emulate_separate_device() as device:
        assert search_device(features(compute_device=str(device))) == device

    devices = []
    real = blocked.blocked_per_query_metrics

    def spy(*args, **kwargs):  # records the `device` argument, searches on this machine's CPU
        devices.append(args[10])
        return real(*args[:10], torch.device("cpu"), *args[11:], **kwargs)

    monkeypatch.setattr(blocked, "blocked_per_query_metrics", spy)
    seen = Spy(trainer.p.evaluator)
    evaluate_with(trainer, monkeypatch, seen, eval_features="disk", eval_features_dtype="float32")
    assert devices == [trainer.device]
    assert seen.devices == [(str(trainer.device), str(trainer.device))]
    monkeypatch.setattr("core.evaluation.reid.search_device", lambda query: torch.device("cuda", 3))
    evaluate_with(trainer, monkeypatch, seen, eval_features="disk", eval_features_dtype="float32")
    assert devices[-1] == torch.device("cuda", 3)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_trainer_on_a_separate_device_searches_its_features_on_disk_there(world_pipeline, tmp_path, monkeypatch,
                                                                            dtype):
    """The whole out-of-core path with the model on the emulated separate device: features
    embedded there, written to the host memory map, read back block by block onto the
    device and searched there (no host/device mixing on the way), with the metrics of the
    same features evaluated in memory on the CPU."""
    import core.evaluation.blocked as blocked

    devices = []
    real = blocked.blocked_per_query_metrics

    def spy(*args, **kwargs):
        devices.append(args[10])
        return real(*args, **kwargs)

    monkeypatch.setattr(blocked, "blocked_per_query_metrics", spy)
    path = tmp_path / "p.yaml"
    config = copy.deepcopy(TINY_PIPELINE)  # world_pipeline's, on the emulated device
    config["data"]["train"][0].update(test_identities=6, images_per_identity=8, cameras=3)
    config["trainer"]["device"] = "meta"
    path.write_text(yaml.safe_dump(config))

    with emulate_separate_device() as device:
        trainer = Trainer(build_pipeline(load_pipeline(path), echo=lambda *_: None), RunFolder(tmp_path / "run"))
        on_disk = evaluate_with(trainer, monkeypatch, eval_features="disk", eval_features_dtype=dtype)
        kept = Spy(trainer.p.evaluator, out_of_core=False)
        evaluate_with(trainer, monkeypatch, kept, eval_features="memory")
    assert devices == [device]
    query, gallery = kept.sets[0]
    assert isinstance(query.embeddings, DeviceTensor) and query.embeddings_file is None
    cast = (lambda e: e.half().float()) if dtype == "float16" else (lambda e: e)
    reference = kept.evaluator.evaluate(*(dataclasses.replace(fs, embeddings=cast(host(fs.embeddings)).clone(),
                                                               compute_device=None) for fs in (query, gallery)))
    assert_metrics_equal(on_disk, {f"synthetic/{k}": v for k, v in reference.items()})


def test_shards_are_joined_in_rank_order(world_pipeline, tmp_path, monkeypatch):
    """Under DDP each rank writes its contiguous shard; the main process joins them in
    rank order into the file, in blocks, and removes the shards (a rank without rows
    wrote none)."""
    import core.training.distributed as D

    monkeypatch.setattr(D, "barrier", lambda: None)
    trainer = Trainer(world_pipeline, RunFolder(tmp_path / "run"), dist=Dist(rank=0, world_size=3))
    monkeypatch.setattr(trainer.cfg, "eval_features_dtype", "float32")
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((70_000, 3)).astype(np.float32)  # more than one copy block
    target = tmp_path / "f.npy"
    for rank, (start, stop) in enumerate([(0, 40_000), (40_000, 70_000)]):  # rank 2: no rows
        writer = FeatureWriter(_shard_path(target, rank), stop - start, 3, "float32")
        writer.write(rows[start:stop])
        writer.close()
    trainer._join_shards(target, len(rows))
    assert np.array_equal(open_features(target), rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npy", "run"]


def test_a_rewritten_feature_file_leaves_earlier_maps_intact(tmp_path):
    """Each evaluation writes a new file at the same path: a map of the previous one (the
    trackers' features) must keep its values, not see the new file's (or fault)."""
    first = FeatureWriter(tmp_path / "f.npy", 4, 2, "float32")
    first.write(np.ones((4, 2), np.float32))
    old = features_tensor(first.close().filename)
    second = FeatureWriter(tmp_path / "f.npy", 2, 2, "float32")
    second.write(np.zeros((2, 2), np.float32))
    second.close()
    assert torch.equal(old, torch.ones(4, 2)) and torch.equal(features_tensor(tmp_path / "f.npy"), torch.zeros(2, 2))


def test_float32_feature_files_refuse_non_finite_rows(tmp_path):
    writer = FeatureWriter(tmp_path / "f.npy", 3, 2, "float32")
    writer.write(np.full((1, 2), 1e30, np.float32))  # beyond float16, fine as float32
    with pytest.raises(ValueError, match="row 2 has a NaN or infinite value"):
        writer.write(np.array([[0, 0], [0, np.inf]], np.float32))
    with pytest.raises(ValueError, match="dtype must be one of float16, float32, got 'int8'"):
        FeatureWriter(tmp_path / "g.npy", 3, 2, "int8")

"""Transforms, seeded samples and collation into a Batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.data.loading import ImageSamples, collate, collate_extras
from core.data.synthetic import SyntheticWorld
from core.data.table import RecordTable
from core.data.transforms import NORMS, build_transform
from core.records import Batch

SIZE = [64, 32]


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld(identities=4, test_identities=2, cameras=3, images_per_identity=4, render_size=[64, 32])


@pytest.fixture(scope="module")
def samples(world) -> ImageSamples:
    table = RecordTable.build([("synthetic", world.records("train"))], relabel=True)
    return ImageSamples(table, [world], build_transform(True, size=SIZE, pad=4, erasing=0.5))


# -- transforms

@pytest.mark.parametrize("train", [True, False])
def test_transform_gives_a_float_tensor_of_the_requested_size(train):
    out = build_transform(train, size=[48, 24], erasing=0.5)(Image.new("RGB", (40, 90)))
    assert out.shape == (3, 48, 24) and out.dtype == torch.float32


@pytest.mark.parametrize("norm", list(NORMS))
def test_test_transform_normalises_with_the_named_statistics(norm):
    mean, std = NORMS[norm]
    out = build_transform(False, size=[8, 8], norm=norm)(Image.new("RGB", (8, 8), (255, 0, 128)))
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 0, 128), mean, std)]
    assert torch.allclose(out[:, 0, 0], torch.tensor(expected), atol=1e-4)


def test_test_transform_is_deterministic_without_a_seed():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 20, 3), dtype=np.uint8))
    tf = build_transform(False, size=[32, 16])
    assert torch.equal(tf(img), tf(img))


@pytest.mark.parametrize("key, value, valid", [
    ("norm", "imagnet", "imagenet, clip, half"),
    ("interpolation", "cubic", "nearest, bilinear, bicubic"),
])
def test_unknown_transform_names_list_the_valid_values(key, value, valid):
    with pytest.raises(ValueError, match=f"'{value}'; valid values: {valid}"):
        build_transform(True, **{key: value})


def test_bad_probability_is_an_error():
    with pytest.raises(ValueError, match="'flip'"):
        build_transform(True, flip=1.5)


# -- samples

def test_seeded_sample_is_deterministic_and_seed_dependent(samples):
    a, b, c = samples[(3, 11, 1)], samples[(3, 11, 1)], samples[(3, 12, 1)]
    assert torch.equal(a["image"], b["image"])
    assert not torch.equal(a["image"], c["image"])
    assert a["role"] == 1 and a["index"] == 3


def test_seeded_sample_leaves_the_global_rng_alone(samples):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    samples[(0, 1)]
    assert torch.equal(torch.rand(3), expected)


def test_sample_carries_the_table_metadata_and_public_extras(samples):
    s = samples[5]
    t = samples.table
    assert (s["pid"], s["camid"], s["category"], s["domain"]) == (
        t.pids[5], t.camids[5], t.category_ids[5], t.domain_ids[5])
    assert s["role"] == 0 and s["index"] == 5
    assert set(s["extras"]) == {"part_boxes"}  # render_key is internal


def test_mismatched_datasets_are_an_error(world):
    table = RecordTable.build([("a", world.records("train")), ("b", world.records("query"))], relabel=True)
    with pytest.raises(ValueError, match="2 sources"):
        ImageSamples(table, [world], None)


# -- collate

def test_collate_builds_a_batch_of_int64_metadata(samples):
    batch = collate([samples[i] for i in range(4)])
    assert isinstance(batch, Batch) and len(batch) == 4
    assert batch.images.shape == (4, 3, *SIZE)
    for name in ("pids", "camids", "categories", "domains", "roles", "indices"):
        value = getattr(batch, name)
        assert value.dtype == torch.int64 and value.shape == (4,)
    assert batch.extras["part_boxes"].shape == (4, 3, 4) and batch.extras["part_boxes"].dtype == torch.float32


def test_label_fields_from_the_table_are_the_fields_collate_gives(world):
    """The whole batch's labels under DDP come from the table (`label_fields`), not from
    the processes' batches: they must be what collate makes of the same samples, field by
    field (categories and domains made distinct here, so a swap shows)."""
    import dataclasses

    from core.data.loading import label_fields

    table = RecordTable.build([("synthetic", world.records("train"))], relabel=True)
    n = len(table)
    table = dataclasses.replace(table, category_ids=np.arange(n) % 3, domain_ids=(np.arange(n) * 7) % 5)
    samples = ImageSamples(table, [world], None)
    keys = [(5, 0, 1), (2, 0, 0), (5, 0, 1), (n - 1, 0, 2)]  # (index, seed, role), a repeated record
    batch = collate([samples[k] for k in keys])
    fields = label_fields(table, np.array([k[0] for k in keys]), np.array([k[2] for k in keys]))
    assert sorted(fields) == sorted(("pids", "camids", "categories", "domains", "roles", "indices"))
    for name, array in fields.items():
        assert array.dtype == np.int64 and array.tolist() == getattr(batch, name).tolist(), name


def test_record_values_from_the_table_are_the_extras_the_samples_carry(world):
    """A record field of the whole batch under DDP (`record_values`, e.g. instruct-editor's
    `text_query` and `task`) is read from the table: it must be what each sample carries
    in its extras, None where a record lacks it; a field no record has gives None."""
    import dataclasses

    from core.data.loading import record_values

    records = world.records("train")
    marked = [dataclasses.replace(r, extras={**r.extras, "text_query": i % 3 == 0, "task": f"t{i % 2}"})
              if i != 4 else r for i, r in enumerate(records)]
    table = RecordTable.build([("synthetic", marked)], relabel=True)
    samples = ImageSamples(table, [world], None)
    indices = np.array([0, 4, 3, 3, 7])
    for name in ("text_query", "task", "pid"):
        got = record_values(table, name, indices)
        want = [samples[int(i)]["extras"].get(name) for i in indices] if name != "pid" else \
            [samples[int(i)]["pid"] for i in indices]
        assert got == want, name
    assert record_values(table, "no_such_field", indices) is None


def test_collate_extras_by_kind_of_value():
    out = collate_extras([
        {"clothes": 1, "score": 0.5, "caption": "a", "mask": np.zeros((2, 2)), "ragged": np.zeros(2), "only": 1},
        {"clothes": 2, "score": 1.0, "caption": "b", "mask": np.ones((2, 2)), "ragged": np.zeros(3)},
    ])
    assert out["clothes"].dtype == torch.int64 and out["clothes"].tolist() == [1, 2]
    assert out["score"].dtype == torch.float32
    assert out["caption"] == ["a", "b"]
    assert out["mask"].shape == (2, 2, 2)
    assert isinstance(out["ragged"], list) and len(out["ragged"]) == 2
    assert out["only"] == [1, None]


def test_dataloader_workers_give_the_same_batch_as_the_main_process(samples):
    keys = [(i, 100 + i, i % 2) for i in range(8)]

    def images(workers: int) -> torch.Tensor:
        loader = torch.utils.data.DataLoader(samples, batch_size=2, sampler=keys, num_workers=workers,
                                             collate_fn=collate)
        batches = list(loader)
        assert all(isinstance(b, Batch) for b in batches)
        return torch.cat([b.images for b in batches]), torch.cat([b.roles for b in batches])

    (a, roles_a), (b, roles_b) = images(0), images(2)  # batches alternate between the 2 workers
    assert torch.equal(a, b) and torch.equal(roles_a, roles_b)

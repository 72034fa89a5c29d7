"""The Batch contract: one object to the device, sub-batches by role, and a clear error
when a component needs a field the pipeline does not provide."""

import pytest
import torch

from core.records import Batch


def make_batch(n=4):
    return Batch(images=torch.zeros(n, 3, 8, 4), pids=torch.arange(n), camids=torch.zeros(n, dtype=torch.long),
                 categories=torch.zeros(n, dtype=torch.long), domains=torch.zeros(n, dtype=torch.long),
                 roles=torch.tensor([0, 1, 0, 1]), indices=torch.arange(n),
                 extras={"parts": torch.rand(n, 3, 4), "caption": ["a", "b", "c", "d"], "scale": 2.0})


def test_require_names_the_field_its_provider_and_what_is_present():
    with pytest.raises(KeyError) as err:
        make_batch().require("part_masks", "loss 'muva_mask'")
    msg = str(err.value)
    assert "loss 'muva_mask' needs the batch field 'part_masks'" in msg
    assert "vge-labeler" in msg and "Extras present: caption, parts, scale" in msg


def test_require_returns_the_field():
    batch = make_batch()
    assert batch.require("caption", "x") == ["a", "b", "c", "d"]


def test_select_takes_per_sample_tensors_and_lists():
    batch = make_batch()
    meta_test = batch.select(batch.roles == 1)
    assert meta_test.pids.tolist() == [1, 3]
    assert meta_test.extras["caption"] == ["b", "d"]
    assert meta_test.extras["parts"].shape == (2, 3, 4)
    assert meta_test.extras["scale"] == 2.0
    assert len(meta_test) == 2


def test_to_moves_every_tensor_including_extras():
    batch = make_batch().to("meta")
    assert batch.extras["parts"].device.type == "meta" and batch.images.device.type == "meta"
    assert batch.extras["caption"] == ["a", "b", "c", "d"]


def test_batch_pin_memory_pins_every_tensor_and_keeps_the_rest(monkeypatch):
    """The DataLoader's pin_memory=True calls Batch.pin_memory(); without it a custom batch
    type stays in pageable memory and non_blocking copies are synchronous (issue 19).
    Pinning needs a CUDA runtime: here Tensor.pin_memory records what it is called on."""
    import torch

    from core.records import Batch

    pinned_ids = set()

    def fake_pin(self):
        out = self.clone()
        pinned_ids.add(id(out))
        return out

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    n = 2
    zeros = torch.zeros(n, dtype=torch.long)
    batch = Batch(images=torch.rand(n, 3, 4, 4), pids=zeros, camids=zeros, categories=zeros, domains=zeros,
                  roles=zeros, indices=torch.arange(n), extras={"masks": torch.ones(n, 3), "caption": ["a", "b"]})
    pinned = batch.pin_memory()
    tensors = [pinned.images, pinned.pids, pinned.camids, pinned.categories, pinned.domains, pinned.roles,
               pinned.indices, pinned.extras["masks"]]
    assert all(id(t) in pinned_ids for t in tensors)
    assert pinned.extras["caption"] == ["a", "b"]
    assert torch.equal(pinned.images, batch.images)


def _collated(n=4):
    """A batch as `collate` makes it: host copies of the labels and per-sample flags."""
    batch = make_batch(n)
    batch.extras["text_query"] = torch.tensor([False, True, False, True])
    return batch.keep_host_copies()


def test_host_copies_hold_the_labels_and_per_sample_flags_and_outlive_the_move():
    """The metadata is on the host before the batch goes to the device (issue 19, item 9):
    after `to`, `host` reads the copy, not the device tensor (on the meta device a read
    of the tensor would fail)."""
    batch = _collated().to("meta")
    assert batch.pids.device.type == "meta"
    assert batch.host("pids").tolist() == [0, 1, 2, 3] and batch.host("roles").tolist() == [0, 1, 0, 1]
    assert batch.host("text_query").tolist() == [False, True, False, True]
    assert batch.host("caption").tolist() == ["a", "b", "c", "d"]  # a list extra is on the host already
    assert "parts" not in batch.host_copies and "scale" not in batch.host_copies  # not per-sample labels


def _share_and_reuse_freed_memory(batch):
    """What a DataLoader worker does to the batch it sends: `share_memory_()` on every
    tensor (the storage moves to shared memory and the old one is freed); then fresh
    tensors of the same sizes take the freed memory."""
    for name in ("pids", "camids", "categories", "domains", "roles", "indices"):
        getattr(batch, name).share_memory_()
    batch.extras["text_query"].share_memory_()
    return [torch.full((len(batch),), -7, dtype=dtype) for _ in range(256) for dtype in (torch.long, torch.bool)]


def test_host_copies_survive_the_worker_moving_the_tensors_to_shared_memory():
    """A host copy is a copy, not a view of the tensor's storage: a view read freed memory
    once a worker had moved the storage (CI read a camera id of 94245762545962)."""
    batch = _collated()
    before = {name: batch.host(name).tolist() for name in ("pids", "camids", "roles", "indices", "text_query")}
    junk = _share_and_reuse_freed_memory(batch)
    assert {name: batch.host(name).tolist() for name in before} == before
    assert len(junk) == 512


def test_host_copies_match_the_tensors_after_a_worker_process_sent_the_batch():
    """The real path: batches collated in a DataLoader worker and received by the main
    process keep host copies equal to their tensors."""
    from torch.utils.data import DataLoader

    loader = DataLoader(range(12), batch_size=None, num_workers=1, collate_fn=lambda i: _worker_batch(i))
    for batch in loader:
        for name in ("pids", "camids", "roles", "indices", "text_query"):
            value = batch.pids if name == "pids" else batch._value(name)
            assert batch.host(name).tolist() == value.tolist(), name


def _worker_batch(i):
    batch = make_batch(8)
    batch.pids = torch.arange(8) + 100 * i
    batch.camids = torch.arange(8) % 3
    batch.indices = torch.arange(8) + 1000 * i
    batch.extras["text_query"] = torch.arange(8) % 2 == 0
    return batch.keep_host_copies()


def test_an_in_place_change_after_collate_does_not_reach_the_host_copy():
    """The documented contract (`Batch.host`): replace a field, do not change it in place."""
    batch = _collated()
    batch.roles[0] = 2
    assert batch.host("roles").tolist() == [0, 1, 0, 1]


def test_host_copies_follow_select_and_pin_memory(monkeypatch):
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: self.clone())
    batch = _collated().pin_memory()
    assert batch.host("roles").tolist() == [0, 1, 0, 1]
    meta_test = batch.select(batch.host("roles") == 1)  # a host mask: rows taken by index
    assert meta_test.pids.tolist() == [1, 3] and meta_test.extras["caption"] == ["b", "d"]
    assert meta_test.host("pids").tolist() == [1, 3] and meta_test.host("text_query").tolist() == [True, True]
    assert meta_test.to("meta").host("indices").tolist() == [1, 3]
    assert batch.select(batch.roles == 0).host("pids").tolist() == [0, 2]  # a device mask too


def test_a_replaced_field_is_read_from_its_new_value_not_a_stale_copy():
    batch = _collated()
    batch.roles = torch.ones(4, dtype=torch.long)
    batch.extras["text_query"] = torch.zeros(4, dtype=torch.bool)
    assert batch.host("roles").tolist() == [1, 1, 1, 1]
    assert batch.host("text_query").tolist() == [False] * 4
    assert batch.to("cpu").host("roles").tolist() == [1, 1, 1, 1]


def test_host_of_a_hand_built_batch_reads_the_tensor_and_a_missing_field_is_named():
    batch = make_batch()
    assert batch.host_copies == {} and batch.host("camids").tolist() == [0, 0, 0, 0]
    with pytest.raises(KeyError, match="Batch.host needs the batch field 'text_query'"):
        batch.host("text_query")


def test_collate_keeps_host_copies():
    from core.data.loading import collate

    samples = [{"image": torch.zeros(3, 2, 2), "pid": p, "camid": 1, "category": 0, "domain": 0, "role": p % 2,
                "index": 10 + p, "extras": {"text_query": p == 2, "task": "t2i"}} for p in range(3)]
    batch = collate(samples)
    assert batch.host("pids").tolist() == [0, 1, 2] and batch.host("indices").tolist() == [10, 11, 12]
    assert batch.host_copies["roles"][0] is batch.roles
    assert batch.host("text_query").tolist() == [False, False, True]

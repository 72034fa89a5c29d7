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

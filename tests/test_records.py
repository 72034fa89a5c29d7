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

"""core.released_weights.conversion.place_all: two of their tensors mapped onto one of ours is a
reader's fault that must not pass silently (the later one would overwrite the earlier, e.g.
TransReID's unused base.blocks.11 over b1's copy that their forward runs)."""

import pytest
import torch

from core.released_weights import WeightsMismatch
from core.released_weights.conversion import place_all


def test_two_of_their_tensors_onto_one_of_ours_are_refused_naming_both():
    theirs = {"base.blocks.11.norm1.weight": torch.zeros(4), "b1.0.norm1.weight": torch.ones(4)}
    mapping = {name: "backbone.model.blocks.11.norm1.weight" for name in theirs}
    own = {"backbone.model.blocks.11.norm1.weight": torch.empty(4)}
    with pytest.raises(WeightsMismatch) as exc:
        place_all(theirs, mapping, {}, own, {}, "TransReID")
    text = str(exc.value)
    assert "\n" not in text and all(n in text for n in (*theirs, "backbone.model.blocks.11.norm1.weight")), text


def test_one_to_one_placement_is_unchanged():
    theirs = {"a": torch.ones(2), "b": torch.zeros(3)}
    own = {"x": torch.empty(2), "y": torch.empty(3)}
    out = place_all(theirs, {"a": "x", "b": "y"}, {}, own, {}, "T")
    assert torch.equal(out["x"], theirs["a"]) and torch.equal(out["y"], theirs["b"])

"""`--from NAME` with a file whose tensor names are not NAME's: one line saying so and which reader
does read it, before anything is built (it used to go on and fail at the head's build, 'classifier
is true but the training table has no identities', which says nothing of the file)."""

import json
from pathlib import Path

import pytest
import torch

from core.released_weights import WeightsMismatch, pick_reader

KEYS19 = json.loads((Path(__file__).parent / "fixtures" / "released_weights" / "fastreid_keys.json").read_text())


def fastreid_state19() -> dict[str, torch.Tensor]:
    return {name: torch.zeros(shape) for name, shape in KEYS19["bot"].items()}


@pytest.mark.parametrize("source", ["strong_baseline", "transreid"])
def test_from_a_reader_that_does_not_recognise_the_file_names_the_one_that_does(source):
    with pytest.raises(WeightsMismatch) as exc:
        pick_reader(fastreid_state19(), source, "market_bot_R50.pth")
    text = str(exc.value)
    assert "\n" not in text and f"--from {source}" in text and "market_bot_R50.pth" in text, text
    assert "fastreid" in text and "backbone." in text, text


def test_from_the_reader_that_recognises_the_file_picks_it():
    from core.released_weights import fastreid

    assert pick_reader(fastreid_state19(), "fastreid", "x.pth") is fastreid


def test_a_file_no_reader_recognises_is_refused_under_from_too():
    state = {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 2048)}  # torchvision's
    with pytest.raises(WeightsMismatch, match="no reader recognises"):
        pick_reader(state, "fastreid", "resnet50.pth")


def test_a_safetensors_file_of_fp16_tensors_with_module_prefixes_is_read(tmp_path):
    """No test read a .safetensors file through read_weights. A DataParallel-saved file (`module.`
    on some names) in float16 reads back as the same tensors under the unprefixed names. (Review 19:
    fails with the prefix stripping of unwrap_checkpoint removed; ignoring the .safetensors suffix
    is no mutation under torch 2.14, whose torch.load reads such files itself.)"""
    from safetensors.torch import save_file

    from core.released_weights import read_weights

    g = torch.Generator().manual_seed(19)
    state = {name: torch.randn(shape, generator=g).half() for name, shape in list(KEYS19["bot"].items())[:6]}
    mixed = {("module." + k if i % 2 else k): v for i, (k, v) in enumerate(state.items())}
    save_file(mixed, str(tmp_path / "bot.safetensors"))
    read = read_weights(tmp_path / "bot.safetensors")
    assert set(read) == set(state) and all(torch.equal(read[k], v) for k, v in state.items())

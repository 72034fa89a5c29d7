"""The trainer's collate (collate + the components' batch preparers, `Pipeline.collate`)
changes nothing the training step computes (issue 19): instruct-editor's instructions
tokenized in the loader give every loss term, logged part and gradient of the irm and
irm++ twins' first six batches (one per task: traditional ... text-to-image with its
momentum captions, p-ITM and MLM) bit for bit as a batch collated by hand, which the step
tokenizes itself. One thread: the same sums in the same order."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from step_fingerprint import fingerprint  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name", ["irm_synthetic", "irm++_synthetic"])
def test_loader_tokens_give_the_step_of_tokens_made_in_the_step(name, tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    prepared = fingerprint(name, tmp_path / "a", batches=6)
    plain = fingerprint(name, tmp_path / "b", batches=6, plain=True)
    assert sorted(prepared) == sorted(plain)
    assert any("/grad/" in k for k in prepared) and any(k.endswith("/mlm") for k in prepared)  # T2I branch ran
    differ = [k for k in prepared if not torch.equal(prepared[k], plain[k])]
    assert not differ, differ[:8]

"""Batch preparers (issue 19): a component's host work on each batch (instruct-editor
tokenizes its instructions) runs in the data loader's workers after collate, through the
trainer's `collate_fn` (`Pipeline.collate`), with host copies of what it adds."""

import pickle

import numpy as np
import pytest
import torch
from torch import nn

from core.config.loading import load_pipeline
from core.data.loading import PreparedCollate, batch_preparers
from core.pipeline import build_pipeline
from core.records import Batch
from core.training.run_folder import RunFolder
from core.training.trainer import Trainer
from pipeline_twins import twin_config


def _batch(n=4):
    zeros = torch.zeros(n, dtype=torch.long)
    return Batch(images=torch.zeros(n, 3, 8, 4), pids=torch.arange(n), camids=zeros.clone(),
                 categories=zeros.clone(), domains=zeros.clone(), roles=zeros.clone(), indices=torch.arange(n),
                 extras={"word": ["a", "bb", "ccc", "dddd"][:n]})


def _sample(i):
    return {"image": torch.zeros(3, 8, 4), "pid": i, "camid": 0, "category": 0, "domain": 0, "role": 0, "index": i,
            "extras": {"word": "x" * (i + 1)}}


class Lengths:
    """A picklable preparer: each word's letter codes, padded (B, 4), with a host copy."""

    def __call__(self, batch):
        codes = torch.zeros(len(batch), 4, dtype=torch.long)
        for r, word in enumerate(batch.extras["word"]):
            codes[r, :len(word)] = torch.tensor([ord(c) for c in word])
        batch.extras["codes"] = codes
        batch.keep_host_copy("codes")


class Doubler:
    def __call__(self, batch):
        batch.extras["codes"] = batch.extras["codes"] * 2


def test_keep_host_copy_copies_a_per_sample_field_of_any_shape():
    batch = _batch()
    batch.extras["codes"] = torch.arange(8).view(4, 2)
    batch.keep_host_copy("codes")
    batch.extras["codes"].add_(100)  # in place after the copy: the copy does not see it
    assert batch.host_copies["codes"][1].tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    moved = batch.to("cpu").select(np.array([False, True, True, False]))
    assert moved.host("codes").tolist() == [[2, 3], [4, 5]]  # carried by to() and select()


@pytest.mark.parametrize("value, why", [(torch.rand(4, 2), "float"), (torch.zeros(3, 2, dtype=torch.long), "rows")])
def test_keep_host_copy_refuses_what_is_not_per_sample_integers(value, why):
    batch = _batch()
    batch.extras["codes"] = value
    with pytest.raises(ValueError, match="field 'codes' must be an integer or bool CPU tensor with 4 rows"):
        batch.keep_host_copy("codes")
    with pytest.raises(KeyError, match="'absent'"):
        batch.keep_host_copy("absent")


def test_prepared_collate_runs_the_preparers_in_order_after_collate_and_pickles():
    make = PreparedCollate([Lengths(), Doubler()])
    batch = pickle.loads(pickle.dumps(make))([_sample(i) for i in range(3)])
    assert batch.extras["word"] == ["x", "xx", "xxx"]
    assert batch.extras["codes"].tolist() == [[240, 0, 0, 0], [240, 240, 0, 0], [240, 240, 240, 0]]
    assert batch.host("pids").tolist() == [0, 1, 2]  # collate's host copies are kept


def test_batch_preparers_are_collected_from_every_component_that_has_one():
    class With(nn.Module):
        def __init__(self, preparer):
            super().__init__()
            self.preparer = preparer

        def batch_preparer(self):
            return self.preparer

    a, b = Lengths(), Doubler()
    assert batch_preparers([With(a), nn.Linear(1, 1), With(None), With(b)]) == [a, b]


def test_the_trainers_loaders_prepare_batches_in_their_workers(tmp_path, monkeypatch):
    """irm twin, one loader worker: a training batch arrives with its instructions
    tokenized (and host copies), and evaluation embeds a split without a tokenizer call
    in the forward: its loader prepares the batches too."""
    from reid_instruct_editor.instruction_encoder import InstructionEncoder
    from reid_instruct_editor.instruction_text import COUNTS, TOKENS

    path = twin_config("irm_synthetic", tmp_path, ["trainer.num_workers=1"])
    p = build_pipeline(load_pipeline(path), echo=lambda *a, **k: None)
    trainer = Trainer(p, RunFolder(tmp_path / "run", enabled=False))
    assert trainer.loader.collate_fn is trainer.collate
    assert [type(f).__name__ for f in trainer.collate.preparers] == ["InstructionTokens"]
    loader = torch.utils.data.DataLoader(trainer.train_samples, batch_sampler=[list(range(8))],
                                         collate_fn=trainer.loader.collate_fn, num_workers=1)
    batch = next(iter(loader))
    tokens, counts = batch.extras[TOKENS], batch.extras[COUNTS]
    assert tokens.shape[:2] == (8, int(counts.max())) and (counts >= 1).all()
    assert np.array_equal(batch.host(TOKENS), tokens.numpy()) and np.array_equal(batch.host(COUNTS), counts.numpy())
    tokenizer = p.model.backbone.instruction.tokenizer
    for r, value in enumerate(batch.extras["instruction"]):
        texts = list(value) if isinstance(value, tuple) else [value]
        assert torch.equal(tokens[r, :len(texts)], tokenizer(texts)), r

    def no_tokenizer(*args, **kwargs):
        raise AssertionError("evaluation tokenized in the forward")

    monkeypatch.setattr(InstructionEncoder, "tokenize", no_tokenizer)
    features = trainer.extract(p.train, p.train_datasets)
    assert features.embeddings.shape[0] == len(p.train)

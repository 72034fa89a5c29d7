"""Instructions tokenized in the data loader (issue 19): the backbone's batch preparer
gives, for every phrasing of every text row, exactly the tokenizer's tokens of that text
(checked one text at a time), and a prepared batch gives the forward, the phrasing draw
and the momentum model's captions of a batch that was not prepared."""

import pickle

import numpy as np
import pytest
import torch

from core.records import Batch
from reid_instruct_editor.instruction_text import COUNTS, TOKENS, InstructionTokens, is_prepared, prepared_tokens

PHRASINGS = ("do not change clothes", "the person wears the same clothes", "same outfit as before")


def _batch(make_batch, n_image_rows=1):
    """Rows: three phrasings, one text, an image instruction, two phrasings, a text query."""
    instructions = [PHRASINGS, "a woman in a long red coat", "", PHRASINGS[:2], "a man with a green backpack"]
    images = [None, None, torch.rand(3, 32, 16, generator=torch.Generator().manual_seed(1)), None, None]
    batch = make_batch(instructions, text_query=[False, False, False, False, True], instruction_images=images,
                       pids=[0, 1, 2, 3, 1], seed=3)
    batch.indices = torch.tensor([17, 4, 250, 9, 31])
    return batch


def _prepared(backbone, batch):
    """A copy of `batch` prepared by the backbone's preparer (the original untouched)."""
    copy = Batch(**{**batch.__dict__, "extras": dict(batch.extras), "host_copies": {}})
    backbone.batch_preparer()(copy)
    return copy


def test_every_phrasing_is_tokenized_as_the_tokenizer_tokenizes_it_alone(editor, make_batch):
    backbone, _ = editor
    batch = _batch(make_batch)
    prepared = _prepared(backbone, batch)
    tokens, counts = prepared.extras[TOKENS], prepared.extras[COUNTS]
    assert counts.tolist() == [3, 1, 0, 2, 1]  # 0: the image instruction
    tokenizer = backbone.instruction.tokenizer
    expected = [list(PHRASINGS), ["a woman in a long red coat"], [], list(PHRASINGS[:2]), ["a man with a green backpack"]]
    assert tokens.shape == (5, 3, tokenizer(["x"]).shape[1]) and tokens.dtype == torch.long
    for row, texts in enumerate(expected):
        for k in range(3):
            want = tokenizer([texts[k]])[0] if k < len(texts) else torch.zeros(tokens.shape[2], dtype=torch.long)
            assert torch.equal(tokens[row, k], want), (row, k)
    # host copies for the steps' host reads, equal to the tensors
    assert np.array_equal(prepared.host(TOKENS), tokens.numpy()) and np.array_equal(prepared.host(COUNTS), counts.numpy())
    assert not is_prepared(batch) and is_prepared(prepared)


def test_prepared_tokens_pick_the_phrasing_asked_and_refuse_image_rows(editor, make_batch):
    backbone, _ = editor
    prepared = _prepared(backbone, _batch(make_batch))
    tok = backbone.instruction.tokenizer
    first = prepared_tokens(prepared, [0, 1, 3, 4])
    assert torch.equal(first, tok([PHRASINGS[0], "a woman in a long red coat", PHRASINGS[0], "a man with a green backpack"]))
    # choice % count: row 0 has 3 phrasings, row 3 has 2
    for choice in (np.array([5, 7]), torch.tensor([5, 7])):
        assert torch.equal(prepared_tokens(prepared, [0, 3], choice), tok([PHRASINGS[2], PHRASINGS[1]]))
    assert torch.equal(prepared_tokens(prepared, [0, 3], np.array([5, 7]), host=True), tok([PHRASINGS[2], PHRASINGS[1]]))
    with pytest.raises(ValueError, match="row 2 has an image instruction"):
        prepared_tokens(prepared, [1, 2])


def test_a_prepared_batch_gives_the_forward_of_one_that_was_not(editor, make_batch):
    """Training (a phrasing drawn per sample) and evaluation (the first phrasing, the
    reference embeddings): every output equal, bit for bit."""
    backbone, _ = editor
    batch = _batch(make_batch)
    prepared = _prepared(backbone, batch)
    for training in (True, False):
        backbone.train(training)
        with torch.no_grad():
            plain = backbone(batch)
            if training:  # the same draw again: the counter as before the first forward
                backbone.phrase_draws -= 1
                backbone._host_draws -= 1
            fast = backbone(prepared)
        assert sorted(plain) == sorted(fast)
        for key in plain:
            assert torch.equal(plain[key], fast[key]), (training, key)
    backbone.eval()


def test_drawn_tokens_are_the_tokens_of_the_drawn_texts(editor, make_batch):
    """The momentum model's captions (t2i_contrastive) read the phrasing the live forward
    drew: from a prepared batch, the tokens of `drawn_texts` without a tokenizer call."""
    backbone, _ = editor
    phrasings = tuple(f"phrasing number {k}" for k in range(4))
    batch = make_batch([phrasings] * 12, seed=0)
    batch.indices = torch.arange(300, 312)
    prepared = _prepared(backbone, batch)
    backbone.train()
    seen = set()
    for _ in range(3):  # three training forwards: three draws
        with torch.no_grad():
            backbone(prepared)
        texts = backbone.drawn_texts(prepared, list(range(12)))
        seen.update(texts)
        tokens = backbone.drawn_tokens(prepared, list(range(12)))
        assert torch.equal(tokens, backbone.instruction.tokenizer(texts))
        backbone.phrase_draws -= 1  # what that forward drew (its device draw), read again
        assert torch.equal(tokens, backbone._draw_phrasings(prepared, list(range(12))))
        backbone.phrase_draws += 1
        assert torch.equal(tokens, backbone.drawn_tokens(batch, list(range(12))))  # the unprepared path
    assert len(seen) > 1  # the draw moved between forwards
    backbone.eval()


def test_the_preparer_pickles_for_spawned_loader_workers(editor, make_batch):
    backbone, _ = editor
    batch = _batch(make_batch)
    clone = pickle.loads(pickle.dumps(backbone.batch_preparer()))
    assert isinstance(clone, InstructionTokens)
    a, b = _prepared(backbone, batch), Batch(**{**batch.__dict__, "extras": dict(batch.extras), "host_copies": {}})
    clone(b)
    assert torch.equal(a.extras[TOKENS], b.extras[TOKENS])


def test_a_text_row_without_an_instruction_is_named(editor, make_batch):
    backbone, _ = editor
    batch = make_batch(["a person in blue", None], seed=0)
    with pytest.raises(ValueError, match="sample 1 has neither a text instruction nor an instruction_image"):
        backbone.batch_preparer()(batch)


def test_a_training_forward_under_compile_does_not_recompile_every_step(editor, make_batch):
    """The host mirror of the draw counter changes every training forward: as an int
    attribute of the module torch.compile would take it for a constant and recompile the
    forward each step (until its recompile limit, then run it eagerly). Three steps on
    batches of one shape compile once."""
    from torch._dynamo.utils import counters

    backbone, _ = editor

    def batch():  # a new batch each step, as the loader gives
        return _prepared(backbone, make_batch([PHRASINGS] * 4, seed=0))

    backbone.train()
    torch._dynamo.reset()
    compiled = torch.compile(backbone, backend="aot_eager")
    with torch.no_grad():
        compiled(batch())
        counters.clear()
        compiled(batch())
        compiled(batch())
    assert counters["stats"].get("unique_graphs", 0) == 0, dict(counters["stats"])
    assert int(backbone._host_draws) == int(backbone.phrase_draws) == 3  # the mirror follows the buffer
    backbone.eval()
    torch._dynamo.reset()

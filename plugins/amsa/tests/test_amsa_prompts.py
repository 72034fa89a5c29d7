"""Multi-grained prompts (MUVA Sec. 3.1.1): learnable words in four templates, through
CLIP's frozen text encoder, concatenated into the textual token."""

import pytest
import torch

from reid_amsa.clip_model import build_clip
from reid_amsa.prompts import PAPER_TEMPLATES, MultiGrainedText


@pytest.fixture
def clip_and_text(tiny_clip):
    torch.manual_seed(0)
    clip, tokenizer = build_clip("", tiny_clip, False, None, (32, 16))
    return clip, tokenizer, MultiGrainedText(clip, tokenizer, num_identities=3, prompt_tokens=4)


def test_prompts_set_to_a_words_embedding_give_clips_own_text_feature_of_that_sentence(clip_and_text):
    clip, tokenizer, text = clip_and_text
    word = int(tokenizer(["tall"])[0][1])
    with torch.no_grad():
        text.prompts[1] = clip.token_embedding.weight[word]  # every vector of identity 1 = "tall"
        sentences = [t.replace("{prompt}", "tall tall tall tall") for t in PAPER_TEMPLATES]
        expected = clip.encode_text(tokenizer(sentences))  # (4, 16): open_clip's own path
        got = text(torch.tensor([1]))
    assert got.shape == (1, 4 * 16)
    assert torch.allclose(got.reshape(4, 16), expected, atol=1e-5)


def test_placeholders_sit_where_the_templates_say(clip_and_text):
    _, tokenizer, text = clip_and_text
    marker = int(tokenizer(["X"])[0][1])
    for t in range(4):
        assert (text.template_ids[t, text.slots[t]] == marker).all()
    # "A photo of a X X X X person" -> [SOT, a, photo, of, a, X, X, X, X, person, EOT]
    assert text.slots[0].tolist() == [5, 6, 7, 8] and int(text.eot[0]) == 10
    assert text.slots[3].tolist() == [4, 5, 6, 7]  # "A photo of X X X X legs of a person"


def test_the_templates_are_the_papers_words_without_a_closing_full_stop(clip_and_text):
    _, tokenizer, text = clip_and_text
    assert PAPER_TEMPLATES == ("A photo of a {prompt} person", "A photo of a {prompt} head of a person",
                               "A photo of a {prompt} upper body of a person", "A photo of {prompt} legs of a person")
    full_stop = int(tokenizer(["."])[0][1])
    assert not (text.template_ids == full_stop).any()
    words = [len(t.replace("{prompt}", "X X X X").split()) for t in PAPER_TEMPLATES]
    assert text.eot.tolist() == [n + 1 for n in words]  # SOT, one token per word, then EOT


def test_an_identitys_token_depends_on_its_own_prompts_only_and_only_prompts_get_gradients(clip_and_text):
    _, _, text = clip_and_text
    before = text(torch.tensor([0, 2])).detach()
    with torch.no_grad():
        text.prompts[1] += 1.0
    assert torch.allclose(text(torch.tensor([0, 2])), before)
    text(torch.tensor([0])).sum().backward()
    assert text.prompts.grad[0].abs().sum() > 0 and text.prompts.grad[1:].abs().sum() == 0
    assert all(p.grad is None for n, p in text.named_parameters() if n != "prompts")


def test_prompts_start_small_as_the_paper_says(clip_and_text):
    _, _, text = clip_and_text
    assert text.prompts.shape == (3, 4, 4, 16)
    assert 0.001 < float(text.prompts.detach().std()) < 0.003  # N(0, 0.002)


def test_templates_without_one_placeholder_are_refused(tiny_clip):
    clip, tokenizer = build_clip("", tiny_clip, False, None, (32, 16))
    with pytest.raises(ValueError, match="exactly once"):
        MultiGrainedText(clip, tokenizer, 2, templates=["A photo of a person."])
    with pytest.raises(ValueError, match="'x' must not appear"):
        MultiGrainedText(clip, tokenizer, 2, templates=["A photo of a {prompt} x-ray."])
    with pytest.raises(ValueError, match="context length"):
        MultiGrainedText(clip, tokenizer, 2, templates=["A very long photo of a {prompt} person " + "ok " * 12])

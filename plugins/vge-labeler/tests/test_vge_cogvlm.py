"""The `cogvlm` grounder's batching and answer handling with an injected fake CogVLM (no
weights here): the paper's query per part, one `generate` call per part for the whole
batch, left padding when prompts differ in length, answers routed back to their image
and part, parsed and picked; a clear error when the weights are absent."""

import numpy as np
import pytest
import torch
from PIL import Image

# the grounder checks for transformers when it is built (the `cogvlm` extra); the
# per-plugin tox env installs the plugin's `test` extra, a bare install has none
pytest.importorskip("transformers")

from reid_vge_labeler.grounders.cogvlm import PAPER_QUERY, CogVLMGrounder  # noqa: E402
from reid_vge_labeler.labeler import VGELabeler  # noqa: E402

PARTS = ["head", "upper body", "legs"]
BOS, PAD, EOS = 1, 0, 2


class FakeTokenizer:
    """Characters as token ids."""

    bos_token_id, pad_token_id, eos_token_id = BOS, PAD, EOS

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(int(i)) for i in ids if not (skip_special_tokens and int(i) in (BOS, PAD, EOS)))


class FakeCogVLM:
    """Builds prompts as CogVLM's remote code does (BOS, vision tokens, the query; token
    types 0 language / 1 vision); `generate` answers from a table keyed by (image id,
    query), reading the image id from the image tensor and the query from the prompt's
    attended language tokens. Wide images get more vision tokens, so prompts differ."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def build_conversation_input_ids(self, tokenizer, *, query, history=None, images=None, template_version=None):
        image = images[0]
        vision = 4 if image.width <= 32 else 6
        ids = [BOS] + [PAD] * vision + tokenizer.encode(query)
        types = [0] + [1] * vision + [0] * len(query)
        pixel = torch.full((3, 2, 2), float(image.getpixel((0, 0))[0]))
        return {"input_ids": torch.tensor(ids), "token_type_ids": torch.tensor(types),
                "attention_mask": torch.ones(len(ids), dtype=torch.long), "images": [pixel]}

    def generate(self, input_ids, token_type_ids, attention_mask, images, max_new_tokens, do_sample):
        self.calls.append({"batch": len(input_ids), "length": input_ids.shape[1]})
        assert not do_sample and len(images) == len(input_ids)
        rows = []
        for b in range(len(input_ids)):
            mask = attention_mask[b].bool()
            assert mask[-1] and (mask.int().diff() >= 0).all(), "padding must be on the left"
            language = input_ids[b][mask & (token_type_ids[b] == 0)][1:]  # drop BOS
            query = FakeTokenizer().decode(language)
            answer = self.answers[(int(images[b][0][0, 0, 0]), query)]
            rows.append(FakeTokenizer().encode(answer)[:max_new_tokens] + [EOS])
        width = max(len(r) for r in rows)
        new = torch.tensor([r + [PAD] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, new], dim=1)


def query(part):
    return f"Guide me to the location of the {part} of the person within the image by providing its bounding boxes"


def images_with_ids(ids, widths):
    return [Image.new("RGB", (w, 64), (i, 0, 0)) for i, w in zip(ids, widths)]


def test_the_paper_query_per_part():
    grounder = CogVLMGrounder.from_components(PARTS, FakeCogVLM({}), FakeTokenizer())
    assert grounder.queries == [query(p) for p in PARTS]
    assert PAPER_QUERY.format(part="legs") == ("Guide me to the location of the legs of the person within the image "
                                               "by providing its bounding boxes")


def test_a_batch_is_one_generate_call_per_part_and_answers_return_to_their_image_and_part():
    answers = {
        (10, query("head")): "the head of the person[[312,045,602,201]]",
        (10, query("upper body")): "[[120,180,880,590]]",
        (10, query("legs")): "the legs of the person[[081,505,460,962;511,501,918,958]]",
        (20, query("head")): "[[400,100,600,250]]",
        (20, query("upper body")): "I cannot see the upper body of the person.",
        (20, query("legs")): "[[150,500,850,990]]",
        (30, query("head")): "The head is at [8, 4, 24, 14].",  # plain pixels of a 32 x 64 image
        (30, query("upper body")): "[[100,200,900,600]]",
        (30, query("legs")): "[[200,550,800,1000]]",
    }
    model = FakeCogVLM(answers)
    grounder = CogVLMGrounder.from_components(PARTS, model, FakeTokenizer(), device="cpu", pick="largest")
    labeler = VGELabeler(grounder="stripes", grid=[4, 2])
    labeler.grounder = grounder
    raw = labeler.label_batch(images_with_ids([10, 20, 30], [32, 48, 32]), [None] * 3)

    assert [c["batch"] for c in model.calls] == [3, 3, 3]  # one call per part, the whole batch
    boxes, found = raw["part_boxes_raw"], raw["part_found"]
    np.testing.assert_allclose(boxes[0, 0], [0.312, 0.045, 0.602, 0.201], atol=1e-6)
    np.testing.assert_allclose(boxes[0, 2], [0.511, 0.501, 0.918, 0.958], atol=1e-6)  # the larger leg
    np.testing.assert_allclose(boxes[1, 0], [0.4, 0.1, 0.6, 0.25], atol=1e-6)
    np.testing.assert_allclose(boxes[2, 0], [8 / 32, 4 / 64, 24 / 32, 14 / 64], atol=1e-6)
    np.testing.assert_array_equal(found, [[1, 1, 1], [1, 0, 1], [1, 1, 1]])
    np.testing.assert_array_equal(raw["part_box_count"], [[1, 1, 2], [1, 0, 1], [1, 1, 1]])
    assert raw["part_answers"][1, 1] == "I cannot see the upper body of the person."
    assert raw["part_answers"][0, 2] == answers[(10, query("legs"))]


def test_prompts_of_equal_length_need_no_padding():
    answers = {(i, query(p)): "[[000,000,1000,1000]]" for i in (1, 2) for p in PARTS}
    model = FakeCogVLM(answers)
    grounder = CogVLMGrounder.from_components(PARTS, model, FakeTokenizer(), device="cpu")
    out = grounder.ground(images_with_ids([1, 2], [32, 32]), [None, None])
    assert out.found.all() and len(model.calls) == 3
    assert all(c["length"] == 1 + 4 + len(query(p)) for c, p in zip(model.calls, PARTS))


def test_missing_weights_are_a_clear_error(tmp_path):
    grounder = CogVLMGrounder(PARTS, model=str(tmp_path / "cogvlm"), tokenizer=str(tmp_path / "vicuna"),
                              local_files_only=True, device="cpu")
    with pytest.raises(FileNotFoundError, match=r"grounder 'cogvlm': cannot load the tokenizer .*local folder"):
        grounder.ground([Image.new("RGB", (32, 64))], [None])


def test_bad_keys_are_errors():
    with pytest.raises(ValueError, match="first, largest, union"):
        CogVLMGrounder(PARTS, pick="best")
    with pytest.raises(ValueError, match="max_new_tokens must leave room for a box"):
        CogVLMGrounder(PARTS, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"a mapping names every part once .*missing 'legs'"):
        CogVLMGrounder(PARTS, query={"head": "where is the head?", "upper body": "where is the torso?"})


def test_by_default_the_first_of_several_boxes_is_kept():
    """The docstring's and README's rule: what the model names first is its best guess."""
    answers = {(1, query(p)): "[[100,100,300,300];[000,000,1000,1000]]" for p in PARTS}
    grounder = CogVLMGrounder.from_components(PARTS, FakeCogVLM(answers), FakeTokenizer(), device="cpu")
    out = grounder.ground(images_with_ids([1], [32]), [None])
    for p in range(3):  # the first box, although the second is larger
        np.testing.assert_allclose(out.boxes[0, p], [0.1, 0.1, 0.3, 0.3], atol=1e-6)

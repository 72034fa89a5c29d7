"""The `owlvit` grounder's plumbing (not its accuracy): box conversion from OWL-ViT's
(cx, cy, w, h) to image xyxy fractions (OWLv2's padded square included), the threshold,
and a batch through a tiny random-initialised OWL-ViT built here (no weights); clear
errors without transformers or without weights."""


import numpy as np
import pytest
import torch
from PIL import Image

from core.separate_device import emulation_for
from reid_vge_labeler.grounders import hf
from reid_vge_labeler.grounders.owlvit import OwlViTGrounder, best_part_boxes
from reid_vge_labeler.labeler import VGELabeler

PARTS = ["head", "upper body", "legs"]


@pytest.fixture
def transformers():
    """Skip where Hugging Face transformers is absent (the `owlvit` extra)."""
    return pytest.importorskip("transformers")


def test_best_box_per_query_converted_to_xyxy_fractions_and_thresholded():
    logits = np.asarray([[[2.0, -3.0], [0.5, -2.0], [-1.0, -2.5]]])  # 3 boxes, 2 queries
    pred = np.asarray([[[0.5, 0.25, 0.4, 0.3], [0.2, 0.2, 0.2, 0.2], [0.5, 0.5, 1.0, 1.0]]])
    boxes, found, scores = best_part_boxes(logits, pred, [(100, 200)], padded_square=False, threshold=0.1)
    np.testing.assert_allclose(boxes[0, 0], [0.3, 0.1, 0.7, 0.4], atol=1e-6)     # box 0 for query 0
    np.testing.assert_allclose(boxes[0, 1], [0.1, 0.1, 0.3, 0.3], atol=1e-6)     # box 1 for query 1
    np.testing.assert_allclose(scores[0], [1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(2.0))], rtol=1e-6)
    np.testing.assert_array_equal(found[0], [True, True])
    _, found, _ = best_part_boxes(logits, pred, [(100, 200)], padded_square=False, threshold=0.5)
    np.testing.assert_array_equal(found[0], [True, False])                       # sigmoid(-2) < 0.5


def test_owlv2_boxes_are_fractions_of_the_padded_square_and_are_rescaled_to_the_image():
    # a 100 x 200 (w x h) image padded (right) to 200 x 200: the image spans x 0..0.5 of the square
    pred = np.asarray([[[0.25, 0.5, 0.5, 1.0]]])                               # the whole image
    boxes, _, _ = best_part_boxes(np.zeros((1, 1, 1)), pred, [(100, 200)], padded_square=True, threshold=0.0)
    np.testing.assert_allclose(boxes[0, 0], [0.0, 0.0, 1.0, 1.0], atol=1e-6)
    pred = np.asarray([[[0.5, 0.25, 0.2, 0.5]]])                               # a wide image (200 x 100)
    boxes, _, _ = best_part_boxes(np.zeros((1, 1, 1)), pred, [(200, 100)], padded_square=True, threshold=0.0)
    np.testing.assert_allclose(boxes[0, 0], [0.4, 0.0, 0.6, 1.0], atol=1e-6)


def tiny_owlvit():
    """A random-initialised OWL-ViT (32 x 32 input, 4 x 4 patches of 8), a word tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "a", "photo", "of", "person's", "head", "upper", "body", "legs"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                        model_max_length=16)
    block = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = OwlViTConfig(text_config=dict(vocab_size=len(words), max_position_embeddings=16, bos_token_id=0,
                                           eos_token_id=0, pad_token_id=0, **block),
                          vision_config=dict(image_size=32, patch_size=8, **block), projection_dim=32)
    torch.manual_seed(0)
    return OwlViTForObjectDetection(config).eval(), tokenizer, OwlViTImageProcessor(size={"height": 32, "width": 32})


def test_a_batch_through_a_tiny_owlvit_gives_the_best_box_of_each_part_query(transformers):
    model, tokenizer, processor = tiny_owlvit()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)) for _ in range(4)]

    # an independent pass: the queries in part order, the best box per query by logit
    # (the sigmoid is monotone; float32 sigmoids of large logits tie at 1.0)
    queries = ["a photo of a person's head", "a photo of a person's upper body", "a photo of a person's legs"]
    text = tokenizer(queries * 4, padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                    pixel_values=processor(images, return_tensors="pt")["pixel_values"])
    best_logit, best = out.logits.max(dim=1)                               # (4 images, 3 parts)
    scores = best_logit.double().sigmoid().numpy()
    threshold = float(np.median(scores))                                   # some parts found, some not
    cx, cy, w, h = out.pred_boxes.gather(1, best[..., None].expand(-1, -1, 4)).unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).clamp(0, 1).numpy()

    grounder = OwlViTGrounder.from_components(PARTS, model, tokenizer, processor, threshold=threshold,
                                              device="cpu")
    assert grounder.queries == queries
    labeler = VGELabeler(grounder="stripes", grid=[4, 2])
    labeler.grounder = grounder
    raw = labeler.label_batch(images, [None] * 4)
    assert raw["part_boxes_raw"].shape == (4, 3, 4) and raw["part_scores"].shape == (4, 3)
    np.testing.assert_allclose(raw["part_scores"], scores, rtol=1e-5)
    found = raw["part_found"].astype(bool)
    np.testing.assert_array_equal(found, scores >= threshold)
    assert found.any() and not found.all()
    np.testing.assert_allclose(raw["part_boxes_raw"][found], xyxy[found], atol=1e-6)
    assert not raw["part_boxes_raw"][~found].any()


def test_missing_weights_are_a_clear_error(transformers, tmp_path):
    grounder = OwlViTGrounder(PARTS, model=str(tmp_path / "owlv2"), local_files_only=True, device="cpu")
    with pytest.raises(FileNotFoundError, match=r"grounder 'owlvit': cannot load the processor .*local folder"):
        grounder.ground([Image.new("RGB", (32, 64))], [None])


def test_without_transformers_the_grounder_says_which_extra_to_install(monkeypatch):
    real = hf.importlib.util.find_spec
    monkeypatch.setattr(hf.importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))
    with pytest.raises(ValueError, match=r"needs Hugging Face transformers.*pip install 'reid-vge-labeler\[owlvit\]'"):
        VGELabeler(grounder={"name": "owlvit"}, grid=[4, 2])
    with pytest.raises(ValueError, match=r"pip install 'reid-vge-labeler\[cogvlm\]'"):
        VGELabeler(grounder="cogvlm", grid=[4, 2])


def test_bad_keys_are_errors(transformers):
    with pytest.raises(ValueError, match=r"grounder.query: a template must contain '\{part\}'"):
        OwlViTGrounder(PARTS, query="a person")
    with pytest.raises(ValueError, match=r"grounder.threshold is a score in \[0, 1\]"):
        OwlViTGrounder(PARTS, threshold=2)
    g = OwlViTGrounder(PARTS, query={"head": "a face", "upper body": "a torso", "legs": "trousers"})
    assert g.queries == ["a face", "a torso", "trousers"]


def test_the_grounder_on_a_separate_device_gives_the_cpu_boxes(transformers):
    """`device: cuda` emulated (core.separate_device): the tokens and pixels go to the
    model's device, the boxes come back to the host, under inference mode; the same boxes,
    scores and verdicts as on the CPU."""
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)) for _ in range(3)]
    raw = {}
    for device in ("cpu", "meta"):
        model, tokenizer, processor = tiny_owlvit()
        with emulation_for(device):
            labeler = VGELabeler(grounder="stripes", grid=[4, 2])
            labeler.grounder = OwlViTGrounder.from_components(PARTS, model, tokenizer, processor, threshold=0.5,
                                                              device=device)
            raw[device] = labeler.label_batch(images, [None] * 3)
            assert all(p.device.type == device for p in model.parameters())
    assert sorted(raw["cpu"]) == sorted(raw["meta"])
    for key, value in raw["cpu"].items():
        np.testing.assert_allclose(raw["meta"][key], value, atol=1e-6, err_msg=key)

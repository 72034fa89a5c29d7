"""amsa's backbone builds on the meta device (a sweep checks each variant so, before its
first run: core.parameter_check.check_build), and built for real its prompts are what
Sec. 3.1.1 / 4.2 say: CLIP as built, then (C, T, N, W) vectors drawn N(0, 0.002)."""

import torch

from reid_amsa.clip_model import build_clip
from reid_amsa.prompts import MultiGrainedText


def test_the_amsa_backbone_builds_on_the_meta_device_as_it_does_for_real(tiny_backbone):
    real = tiny_backbone()
    with torch.device("meta"):
        meta = tiny_backbone()  # tokenizing the templates read meta tensors' values before
    assert {k: v.shape for k, v in meta.state_dict().items()} == {k: v.shape for k, v in real.state_dict().items()}
    # the templates' token ids: computed on the host, registered on the build's device
    for name in ("template_ids", "slots", "eot"):
        assert getattr(meta.text, name).device.type == "meta", name
        assert getattr(meta.text, name).shape == getattr(real.text, name).shape, name


def test_the_real_prompts_are_clip_as_built_then_the_papers_draw(tiny_clip):
    torch.manual_seed(0)
    clip, tokenizer = build_clip("", tiny_clip, False, None, (32, 16))
    text = MultiGrainedText(clip, tokenizer, num_identities=3, prompt_tokens=4)
    torch.manual_seed(0)  # the reference: the same CLIP, then the prompts' one draw (std 0.002)
    ref_clip, _ = build_clip("", tiny_clip, False, None, (32, 16))
    prompts = torch.randn(3, 4, 4, 16) * 0.002
    assert torch.equal(text.prompts, prompts)
    for key, value in ref_clip.state_dict().items():
        assert torch.equal(clip.state_dict()[key], value), key
    assert text.template_ids.device.type == "cpu" and text.template_ids.dtype == torch.long

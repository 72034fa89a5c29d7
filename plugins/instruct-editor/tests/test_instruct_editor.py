"""The editing transformer (`instruct_editor` backbone) and its head: the embedding follows
the instruction and nothing else, the instruction's padding is masked, the editing blocks
start as the ViT's last blocks, text-only queries live in the same retrieval space."""

import logging

import pytest
import torch

from reid_instruct_editor.backbone import InstructEditor
from reid_instruct_editor.head import InstructHead


def embed(backbone, head, batch):
    with torch.no_grad():
        return head(backbone(batch), batch)["embedding"]


@pytest.fixture
def model(editor):
    backbone, ctx = editor
    return backbone, InstructHead(ctx).eval()


def test_the_embedding_changes_with_the_instruction_and_only_with_it(model, make_batch):
    backbone, head = model
    texts = ["do not change clothes", "ignore clothes", "cross modality"]
    batch = make_batch(texts, seed=1)
    first, again = embed(backbone, head, batch), embed(backbone, head, batch)
    assert torch.equal(first, again)
    changed = make_batch(["do not change clothes", "cross modality", "cross modality"], seed=1)
    edited = embed(backbone, head, changed)
    assert torch.allclose(edited[0], first[0])  # same image, same instruction: same embedding
    assert not torch.allclose(edited[1], first[1], atol=1e-4)  # same image, new instruction
    assert torch.allclose(edited[2], first[2])
    # a row's embedding does not depend on the other rows' instructions (eval mode)
    alone = embed(backbone, head, make_batch(["do not change clothes"], images=batch.images[:1]))
    assert torch.allclose(alone[0], first[0], atol=1e-6)


def test_both_streams_read_the_instruction(editor, make_batch):
    backbone, _ = editor
    a = backbone(make_batch(["ignore clothes"], seed=2))
    b = backbone(make_batch(["cross modality"], seed=2))
    assert torch.equal(a["global"], b["global"])  # the image's own class token ignores instructions
    assert not torch.allclose(a["bio"], b["bio"], atol=1e-5)  # [x_cls ; instruction tokens]
    assert not torch.allclose(a["clo"], b["clo"], atol=1e-5)  # [instruction cls ; x_patches]


def test_padding_tokens_change_nothing(editor):
    backbone, _ = editor
    torch.manual_seed(3)
    n, d = 2, backbone.feature_dim
    image_tokens = torch.randn(n, 1 + 8, d)
    tokens, cls = torch.randn(n, 5, d), torch.randn(n, d)
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    with torch.no_grad():
        bio, clo = backbone.edit(image_tokens, tokens, valid, cls)
        # different values at the padded positions, and more padding appended
        noisy = tokens.clone()
        noisy[1, 3:] = torch.randn(2, d) * 10
        longer = torch.cat([noisy, torch.randn(n, 4, d)], dim=1)
        longer_valid = torch.cat([valid, torch.zeros(n, 4, dtype=torch.bool)], dim=1)
        bio2, clo2 = backbone.edit(image_tokens, longer, longer_valid, cls)
        assert torch.allclose(bio, bio2, atol=1e-5) and torch.allclose(clo, clo2, atol=1e-5)
        backbone.mask_padding = False  # the authors' code: padding attended to
        bio3, _ = backbone.edit(image_tokens, longer, longer_valid, cls)
        assert not torch.allclose(bio, bio3, atol=1e-3)


def test_text_padding_in_the_tokenizer_output_is_invalid(editor, make_batch):
    backbone, _ = editor
    out = backbone.encode_instructions(make_batch(["ignore clothes", "a person in a long red coat and boots"]))
    lengths = out["valid"].sum(1).tolist()
    assert lengths[0] == 2 + 2 and lengths[1] == 2 + 9  # start + words + end
    assert not out["valid"][:, 12:].any()


def test_editing_blocks_start_as_the_backbones_last_blocks(build_ctx, tiny):
    torch.manual_seed(0)
    ctx = build_ctx()
    backbone = InstructEditor(ctx, **tiny["vit"], clip_config=tiny["clip"], editing_blocks=2)
    vit_blocks = backbone.image_encoder.model.blocks
    for editing, original in zip(backbone.editing, vit_blocks[-2:]):
        for (name, p), q in zip(editing.state_dict().items(), original.state_dict().values()):
            assert torch.equal(p, q), name
        assert editing is not original  # copies: trained on their own
    random = InstructEditor(ctx, **tiny["vit"], clip_config=tiny["clip"], editing_init="random")
    assert not torch.equal(random.editing[0].attn.qkv.weight, random.image_encoder.model.blocks[-2].attn.qkv.weight)


def test_an_instruction_image_is_read_by_the_image_tower(model, make_batch):
    backbone, head = model
    g = torch.Generator().manual_seed(4)
    templates = torch.rand(2, 3, 24, 24, generator=g)  # resized to the tower's 16 x 16
    batch = make_batch(["", ""], instruction_images=templates, seed=4)
    other = make_batch(["", ""], instruction_images=torch.stack([templates[0], templates[0]]), seed=4)
    a, b = embed(backbone, head, batch), embed(backbone, head, other)
    assert torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1], atol=1e-4)
    # mixed batch: a list with None where a row has a text instruction
    mixed = make_batch(["ignore clothes", ""], instruction_images=[None, templates[1]], seed=4)
    out = backbone(mixed)
    assert out["instruction_embedding"].shape == (2, backbone.instruction.embed_dim)
    text_only = backbone(make_batch(["ignore clothes"], images=mixed.images[:1]))
    assert torch.allclose(out["bio"][0], text_only["bio"][0], atol=1e-5)


def test_a_text_query_is_embedded_from_its_instruction_alone(model, make_batch):
    backbone, head = model
    caption = "a person with short red hair wearing a blue top"
    batch = make_batch([caption, "retrieve the person described by the text"], text_query=[True, False], seed=5)
    other_image = make_batch([caption, "retrieve the person described by the text"], text_query=[True, False], seed=6)
    out = backbone(batch)
    assert out["has_image"].tolist() == [False, True]
    assert torch.count_nonzero(out["global"][0]) == 0
    a, b = embed(backbone, head, batch), embed(backbone, head, other_image)
    assert torch.equal(a[0], b[0])  # the placeholder image is never read
    assert not torch.allclose(a[1], b[1])
    changed = embed(backbone, head, make_batch(["a person in green", "x"], text_query=[True, False], seed=5))
    assert not torch.allclose(changed[0], a[0])
    assert a.shape == (2, 2 * backbone.feature_dim)


def _drawn(backbone, batch):
    """The phrasing each row's tokens are (by tokenizing every candidate: an independent check)."""
    backbone.train()
    tokens = backbone._draw_phrasings(batch, list(range(len(batch))))
    out = []
    for row, value in enumerate(batch.extras["instruction"]):
        options = list(value) if isinstance(value, tuple) else [value]
        hits = [o for o in options if torch.equal(backbone.instruction.tokenize([o], tokens.device)[0], tokens[row])]
        assert len(hits) == 1, (row, hits)
        out.append(hits[0])
    return out


def test_training_draws_one_phrasing_per_sample_evaluation_the_first(editor, make_batch):
    backbone, _ = editor
    phrasings = ("do not change clothes", "the person wears the same clothes", "same clothes")
    batch = make_batch([phrasings] * 64, seed=0)
    batch.indices = torch.arange(1000, 1064)
    first = _drawn(backbone, batch)
    assert set(first) == set(phrasings)  # all reachable, roughly uniform over 64 samples
    assert all(first.count(p) >= 10 for p in phrasings), [first.count(p) for p in phrasings]
    assert _drawn(backbone, batch) == first  # a function of (seed, draws, sample): repeatable
    backbone.phrase_draws += 1  # the next training forward draws anew
    assert _drawn(backbone, batch) != first
    before = int(backbone.phrase_draws)
    with torch.no_grad():
        backbone.train()(make_batch([phrasings] * 2, seed=0))
        assert int(backbone.phrase_draws) == before + 1  # each training forward counts
        backbone.eval()(make_batch([phrasings] * 2, seed=0))
        assert int(backbone.phrase_draws) == before + 1
    backbone.eval()
    out = backbone.encode_instructions(make_batch([phrasings], seed=0))
    first_only = backbone.encode_instructions(make_batch([phrasings[0]], seed=0))
    assert torch.equal(out["embedding"], first_only["embedding"])


def test_a_samples_phrasing_does_not_depend_on_its_row_or_batch(editor, make_batch):
    """DDP (issue 19): the global batch split over two ranks, in any order, draws what one
    process draws for each sample; another run seed draws other phrasings."""
    backbone, _ = editor
    phrasings = tuple(f"phrasing number {k}" for k in range(5))
    batch = make_batch([phrasings] * 32, seed=0)
    batch.indices = torch.randperm(10_000, generator=torch.Generator().manual_seed(0))[:32]
    whole = _drawn(backbone, batch)
    for half in (torch.arange(0, 32, 2), torch.arange(1, 32, 2).flip(0)):
        shard = make_batch([phrasings] * 16, seed=0)
        shard.indices = batch.indices[half]
        assert _drawn(backbone, shard) == [whole[i] for i in half.tolist()]
    seed = backbone.phrase_seed
    backbone.phrase_seed = seed + 1
    assert _drawn(backbone, batch) != whole
    backbone.phrase_seed = seed
    # a checkpoint keeps the count of draws; one written before the counter loads with 0
    backbone.phrase_draws.fill_(7)
    state = backbone.state_dict()
    assert int(state["phrase_draws"]) == 7
    del state["phrase_draws"]
    backbone.load_state_dict(state)
    assert int(backbone.phrase_draws) == 0


def test_the_head_shares_one_bn_between_the_streams_and_concatenates_them(model, make_batch):
    backbone, head = model
    batch = make_batch(["ignore clothes", "cross modality"], seed=7)
    with torch.no_grad():
        features = backbone(batch)
        out = head(features, batch)
    bn = head.fusion_bn
    manual = (features["bio"] - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    assert torch.allclose(out["bio_bn"], manual, atol=1e-5)
    assert torch.equal(out["embedding"], torch.cat([out["bio_bn"], out["clo_bn"]], dim=1))
    head.train()
    logits = head(backbone(batch), batch)
    assert {"bio_logits", "clo_logits", "global_logits"} <= set(logits)


def test_missing_weights_and_bad_keys_are_clear_errors(build_ctx, tiny, tmp_path):
    ctx = build_ctx()
    with pytest.raises(FileNotFoundError, match="clip_pretrained file not found"):
        InstructEditor(ctx, **tiny["vit"], clip_model="ViT-B-16", clip_pretrained=str(tmp_path / "none.bin"))
    broken = tmp_path / "broken.bin"  # a local file names itself, not the download advice (below)
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="clip_pretrained file .*broken.bin: not a readable checkpoint"):
        InstructEditor(ctx, **tiny["vit"], clip_model="ViT-B-16", clip_pretrained=str(broken))
    with pytest.raises(ValueError, match="unknown open_clip model"):
        InstructEditor(ctx, **tiny["vit"], clip_model="ViT-Q-99")
    with pytest.raises(ValueError, match="clip_config lacks"):
        InstructEditor(ctx, **tiny["vit"], clip_config={"embed_dim": 8})
    with pytest.raises(ValueError, match="editing_blocks"):
        InstructEditor(ctx, **tiny["vit"], clip_config=tiny["clip"], editing_blocks=5)


@pytest.fixture
def tiny_clip_name(monkeypatch, tiny):
    """'Tiny-CLIP': the tiny CLIP config as an open_clip built-in model, for this test only."""
    import open_clip.factory

    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "Tiny-CLIP", tiny["clip"])
    return "Tiny-CLIP"


def _clip_build_error(build_ctx, tiny, name, path) -> str:
    """The one-line ValueError of building the editor on the clip_pretrained file `path`."""
    with pytest.raises(ValueError) as caught:
        InstructEditor(build_ctx(), **tiny["vit"], clip_model=name, clip_pretrained=str(path))
    text = str(caught.value)
    assert "\n" not in text and len(text) < 600, text
    assert "clip_pretrained file" in text and str(path) in text, text
    assert "weights_only=False" not in text and "Nothing is downloaded" not in text, text
    return text


def test_a_clip_file_that_needs_pickle_or_is_cut_is_one_line_and_runs_nothing(build_ctx, tiny, tiny_clip_name,
                                                                              tmp_path, caplog):
    """A local clip_pretrained file went through open_clip.create_model, whose failure, any
    failure, came back as 'could not load the open_clip weights (... Weights only load
    failed ... weights_only=False ...). Nothing is downloaded here: ...', exit 1. It is now
    read as every weights file is: the pickle refused naming the global it would call
    (its unpickling would write a marker), a cut file told to be copied again."""
    import os

    from reid_instruct_editor.instruction_encoder import build_clip

    marker = tmp_path / "RAN"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    good = tmp_path / "good.bin"
    torch.save(build_clip(tiny_clip_name, None, None)[0].state_dict(), good)
    evil = tmp_path / "evil.bin"
    torch.save({"logit_scale": Payload()}, evil)
    cut = tmp_path / "cut.bin"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = _clip_build_error(build_ctx, tiny, tiny_clip_name, evil)
    assert "refused: this file needs pickle" in text and "system" in text, text
    text = _clip_build_error(build_ctx, tiny, tiny_clip_name, cut)
    assert "not a readable checkpoint" in text and "copy it again" in text, text
    assert not marker.exists()
    # the whole file loads, without open_clip's 'Model initialized randomly' on the way
    caplog.clear()  # (building the source model above said it, rightly)
    with caplog.at_level(logging.WARNING):
        editor = InstructEditor(build_ctx(), **tiny["vit"], clip_model=tiny_clip_name, clip_pretrained=str(good))
    assert "initialized randomly" not in caplog.text, caplog.text
    saved = torch.load(good, weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in editor.instruction.clip.state_dict().items())


def test_a_clip_file_of_another_size_is_one_line_naming_a_tensor(build_ctx, tiny, tiny_clip_name, tmp_path):
    """open_clip's strict load listed every missing key and size mismatch inside the
    download advice; now: the file, the model, one tensor's two shapes."""
    import open_clip

    wider = dict(tiny["clip"], embed_dim=48)
    path = tmp_path / "wider.safetensors"
    from safetensors.torch import save_file

    save_file(open_clip.CLIP(**wider).state_dict(), str(path))
    text = _clip_build_error(build_ctx, tiny, tiny_clip_name, path)
    assert f"does not fit open_clip '{tiny_clip_name}'" in text and "another shape" in text, text
    assert "text_projection is [32, 48] in the file, [32, 32] in the model" in text, text


def test_a_clip_torchscript_archive_is_refused_unless_trusted_and_nothing_of_it_runs(build_ctx, tiny,
                                                                                     tiny_clip_name, tmp_path,
                                                                                     monkeypatch):
    """open_clip reads a TorchScript archive only with weights_only=False (loading one runs
    the code it holds): without --trust-checkpoint it is refused before torch reads it,
    naming the file, why and the flag; with the flag it is read (here, a module that is no
    CLIP, so it does not fit)."""
    import warnings

    from core import trust

    path = tmp_path / "ViT-B-16.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    reads = []
    for module, name in ((torch.jit, "load"), (torch, "load")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, **k: reads.append(a) or _real(*a, **k))
    text = _clip_build_error(build_ctx, tiny, tiny_clip_name, path)
    assert "TorchScript archive" in text and "--trust-checkpoint" in text and ".safetensors" in text, text
    assert not reads
    with trust.trusting(checkpoint=True):
        text = _clip_build_error(build_ctx, tiny, tiny_clip_name, path)
    assert "does not fit" in text and reads, text


def test_a_tag_missing_from_the_cache_keeps_the_download_advice(build_ctx, tiny, tiny_clip_name, tmp_path, monkeypatch):
    """Not a local file: the tag's weights are not in the cache and cannot be downloaded
    (offline), and the advice says nothing is downloaded here and how to give them."""
    import open_clip.factory
    import open_clip.pretrained

    def offline(*args, **kwargs):
        raise OSError("offline: the hub cannot be reached")

    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, tiny_clip_name,
                        {"openai": {"hf_hub": "nobody/not-a-repo/", "quick_gelu": False}})
    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    with pytest.raises(RuntimeError, match="could not load the open_clip weights .*Nothing is downloaded here"):
        InstructEditor(build_ctx(), **tiny["vit"], clip_model=tiny_clip_name, clip_pretrained="openai",
                       clip_cache_dir=str(tmp_path / "cache"))

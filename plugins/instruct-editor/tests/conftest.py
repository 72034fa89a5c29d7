"""Tiny models, worlds and batches for the instruct-editor tests: a 2-block ViT on 32x16
images and a one-layer CLIP (text and image towers) with random weights."""

import json

import pytest
import torch
from PIL import Image

from core.context import BuildContext
from core.data.table import RecordTable
from core.records import Batch, Record

IMAGE_SIZE = (32, 16)
TINY_VIT = {"arch": "vit_tiny_patch16_224",
            "model_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}}
TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
             "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
TINY_WORLD = {"identities": 4, "test_identities": 3, "render_size": [32, 16]}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models on a shared CPU run fastest on one thread (a 10x slowdown measured with
    two on 2 busy cores); the fixture is the core's (core.testing)."""


def build_ctx(num_identities: int = 4, images: int = 2) -> BuildContext:
    records = [Record(path=None, pid=i, camid=j, category="person") for i in range(num_identities)
               for j in range(images)]
    return BuildContext.from_table(RecordTable.build([("src", records)], relabel=True), image_size=IMAGE_SIZE)


def make_batch(instructions, pids=None, images=None, text_query=None, instruction_images=None, seed=0) -> Batch:
    """A batch of len(instructions) samples (random images unless given)."""
    n = len(instructions)
    g = torch.Generator().manual_seed(seed)
    pids = torch.as_tensor(pids if pids is not None else list(range(n)))
    extras = {"instruction": list(instructions)}
    if text_query is not None:
        extras["text_query"] = torch.as_tensor(text_query, dtype=torch.bool)
    if instruction_images is not None:
        extras["instruction_image"] = instruction_images
    zeros = torch.zeros(n, dtype=torch.long)
    return Batch(images=images if images is not None else torch.rand(n, 3, *IMAGE_SIZE, generator=g),
                 pids=pids, camids=zeros.clone(), categories=zeros.clone(), domains=zeros.clone(), roles=zeros.clone(),
                 indices=torch.arange(n), extras=extras)


@pytest.fixture
def editor():
    """A tiny `instruct_editor` backbone (eval mode) and its build context."""
    from reid_instruct_editor.backbone import InstructEditor

    torch.manual_seed(0)
    ctx = build_ctx()
    backbone = InstructEditor(ctx, **TINY_VIT, clip_config=TINY_CLIP, freeze_text_encoder=False,
                              freeze_image_encoder=False)
    ctx.feature_dim = backbone.feature_dim
    return backbone.eval(), ctx


@pytest.fixture(name="make_batch")
def make_batch_fixture():
    return make_batch


@pytest.fixture(name="build_ctx")
def build_ctx_fixture():
    return build_ctx


@pytest.fixture
def tiny():
    """The tiny settings: {"world", "vit", "clip"} (fresh copies)."""
    import copy

    return copy.deepcopy({"world": TINY_WORLD, "vit": TINY_VIT, "clip": TINY_CLIP})


@pytest.fixture
def authors_lists(tmp_path):
    """The authors' OmniReID++ datalists in miniature (COCAS+ Real2-like query / gallery
    lists with clothes templates and attribute texts, a text-to-image training list) under
    tmp_path / "lists"; returns that root."""
    root = tmp_path / "lists"
    for name in ("query/0032_c3_7.jpg", "gallery/0032_c1_2.jpg", "gallery/0040_c2_1.jpg", "clothes/0032_2.jpg",
                 "clothes/0040_1.jpg", "train/0001_c1_1.jpg"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 16), (10, 120, 200)).save(root / name)
    (root / "query.txt").write_text("query/0032_c3_7.jpg clothes/0032_2.jpg 32 2 3\n")
    (root / "gallery.txt").write_text("gallery/0032_c1_2.jpg clothes/0032_2.jpg 32 2 1\n"
                                      "gallery/0040_c2_1.jpg clothes/0040_1.jpg 40 1 2\n")
    (root / "query_attr.txt").write_text("query/0032_c3_7.jpg 0032_2 32 2 3\n")
    (root / "gallery_attr.txt").write_text("gallery/0032_c1_2.jpg 0032_2 32 2 1\ngallery/0040_c2_1.jpg 0040_1 40 1 2\n")
    (root / "train_t2i.txt").write_text("train/0001_c1_1.jpg 5 1 0\n")
    (root / "texts.json").write_text(json.dumps({"0032_2": "The person wears a grey hoodie.", "0040_1": "A red coat.",
                                                 "5": "A man in a blue shirt."}))
    return root


@pytest.fixture
def joined_sources(authors_lists) -> list[dict]:
    """`sources:` joining the clothes-template and language-instructed lists of
    `authors_lists` into one task-free test set."""
    root = str(authors_lists)
    return [
        {"task": "clothes-template", "source": {"dataset": "omnireid", "root": root, "query": "query.txt",
                                                "gallery": "gallery.txt", "instruction": "image"}},
        {"task": "language-instructed", "source": {"dataset": "omnireid", "root": root, "query": "query_attr.txt",
                                                   "gallery": "gallery_attr.txt", "texts": "texts.json",
                                                   "instruction": "text"}}]

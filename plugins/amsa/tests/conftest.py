"""Tiny open_clip CLIPs, build contexts and batches for the amsa tests (CPU, random init)."""

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from core.context import BuildContext
from core.data.table import RecordTable
from core.records import Batch, Record

# amsa_stubs.py (Net, StubTrainer), importable by the test modules as `amsa_stubs`:
# importlib mode does not put this folder on sys.path; conftest is imported before them
if "amsa_stubs" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("amsa_stubs", Path(__file__).with_name("amsa_stubs.py"))
    sys.modules["amsa_stubs"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["amsa_stubs"])

IMAGE_SIZE = (32, 16)  # 8x8 patches -> a 4 x 2 grid of 8 patches

#: An open_clip config small enough for unit tests: 2 blocks of width 32 (2 heads of 16).
TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 20, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}


def build_ctx(identities: int = 3, images: int = 2, image_size=IMAGE_SIZE) -> BuildContext:
    records = [Record(path=None, pid=i, camid=j, category="person") for i in range(identities) for j in range(images)]
    table = RecordTable.build([("src", records)], relabel=True)
    return BuildContext.from_table(table, image_size=tuple(image_size))


def make_batch(pids, image_size=IMAGE_SIZE, seed: int = 0, extras=None) -> Batch:
    g = torch.Generator().manual_seed(seed)
    pids = torch.as_tensor(pids, dtype=torch.long)
    n = len(pids)
    zeros = torch.zeros(n, dtype=torch.long)
    return Batch(images=torch.randn(n, 3, *image_size, generator=g), pids=pids, camids=zeros, categories=zeros,
                 domains=zeros, roles=zeros, indices=torch.arange(n), extras=dict(extras or {}))


def tiny_backbone(ctx=None, seed: int = 0, **kwargs):
    from reid_amsa.backbone import AMSAClip

    torch.manual_seed(seed)
    ctx = ctx if ctx is not None else build_ctx()
    kwargs.setdefault("model_cfg", copy.deepcopy(TINY_CLIP))
    backbone = AMSAClip(ctx, **kwargs)
    ctx.feature_dim, ctx.patch_grid = backbone.feature_dim, backbone.patch_grid
    return backbone


@pytest.fixture(name="build_ctx")
def build_ctx_fixture():
    return build_ctx


@pytest.fixture(name="make_batch")
def make_batch_fixture():
    return make_batch


@pytest.fixture(name="tiny_backbone")
def tiny_backbone_fixture():
    return tiny_backbone


@pytest.fixture(name="tiny_clip")
def tiny_clip_fixture():
    return copy.deepcopy(TINY_CLIP)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models on a shared CPU run fastest on one thread (a 10x slowdown measured with
    two on 2 busy cores); the fixture is the core's (core.testing)."""

"""Small build contexts and batches for the hse tests: a tiny ViT on 32x16 images."""

import pytest
import torch

from core.context import BuildContext
from core.data.table import RecordTable
from core.records import Batch, Record

#: 32x16 images, 8x8 patches -> a 4 x 2 grid of 8 patches; 2 blocks of width 32.
TINY_VIT = {"arch": "vit_tiny_patch16_224",
            "model_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}}
IMAGE_SIZE = (32, 16)


def build_ctx(identities: dict[str, int], images: int = 2, feature_dim: int | None = 32) -> BuildContext:
    """`identities` maps a category name to its number of training identities."""
    records = [Record(path=None, pid=1000 * c + i, camid=j, category=name)
               for c, (name, n) in enumerate(identities.items()) for i in range(n) for j in range(images)]
    table = RecordTable.build([("src", records)], relabel=True)
    ctx = BuildContext.from_table(table, image_size=IMAGE_SIZE)
    ctx.feature_dim = feature_dim
    return ctx


def make_batch(ctx: BuildContext, roles=None, seed: int = 0) -> Batch:
    """One sample per training record, random images; `roles` default all 0."""
    g = torch.Generator().manual_seed(seed)
    n = len(ctx.train)
    return Batch(images=torch.randn(n, 3, *IMAGE_SIZE, generator=g),
                 pids=torch.as_tensor(ctx.train.pids), camids=torch.as_tensor(ctx.train.camids),
                 categories=torch.as_tensor(ctx.train.category_ids), domains=torch.zeros(n, dtype=torch.long),
                 roles=torch.as_tensor(roles if roles is not None else [0] * n), indices=torch.arange(n))


@pytest.fixture
def ctx():
    # categories sorted by name: animal (2 identities), person (3), vehicle (1)
    return build_ctx({"person": 3, "vehicle": 1, "animal": 2})


@pytest.fixture
def model(ctx):
    """(backbone, head, loss) built from one context, in training mode."""
    from reid_hse.backbone import DualTokenViT
    from reid_hse.head import HSEHead
    from reid_hse.loss import HSELoss

    torch.manual_seed(0)
    backbone = DualTokenViT(ctx, **TINY_VIT)
    ctx.feature_dim = backbone.feature_dim
    return backbone.train(), HSEHead(ctx).train(), HSELoss(ctx)


@pytest.fixture
def tiny_vit():
    return {**TINY_VIT, "model_kwargs": dict(TINY_VIT["model_kwargs"])}


@pytest.fixture(name="build_ctx")
def build_ctx_fixture():
    return build_ctx


@pytest.fixture(name="make_batch")
def make_batch_fixture():
    return make_batch

"""Record tables for the edps tests: categories of chosen sizes, built from Records."""

import pytest

from core.context import BuildContext
from core.data.table import RecordTable
from core.records import Record


def build_ctx(identities: dict[str, list[int]], rank: int = 0, world_size: int = 1, seed: int = 0) -> BuildContext:
    """`identities` maps a category name to the image count of each of its identities."""
    records = [Record(path=None, pid=1000 * c + i, camid=j % 3, category=name)
               for c, (name, sizes) in enumerate(identities.items()) for i, n in enumerate(sizes) for j in range(n)]
    table = RecordTable.build([("src", records)], relabel=True)
    return BuildContext.from_table(table, rank=rank, world_size=world_size, seed=seed)


#: Four categories, 20 identities each with 3..8 images (some below K = 4).
WORLD = {name: [3 + (i + c) % 6 for i in range(20)] for c, name in enumerate(["person", "vehicle", "animal", "ship"])}


@pytest.fixture
def make_ctx():
    return build_ctx


@pytest.fixture
def world_ctx():
    return build_ctx(WORLD)


@pytest.fixture
def world_sizes():
    return {name: list(sizes) for name, sizes in WORLD.items()}

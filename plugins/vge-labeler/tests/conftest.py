"""Synthetic people and labelling helpers for the vge-labeler tests."""

import pytest

from core.data.synthetic import SyntheticWorld

#: the synthetic world's person parts, in the order of its `part_boxes`
WORLD_PARTS = ["head", "upper", "legs"]


def person_world(identities: int = 6, images: int = 4, size=(64, 32), seed: int = 0) -> SyntheticWorld:
    return SyntheticWorld(seed=seed, categories=["person"], identities=identities, test_identities=1,
                          images_per_identity=images, render_size=list(size))


def label_items(world: SyntheticWorld, source: str = "synthetic"):
    from core.labeling import LabelItem

    return [LabelItem(world, r, f"{source}:{world.record_key(r)}") for r in world.records("train")]


class CountingGrounder:
    """Wraps a grounder: records which records it was asked about; raises
    KeyboardInterrupt on call number `interrupt_at` (1-based), like a user's Ctrl-C."""

    def __init__(self, inner, interrupt_at: int | None = None) -> None:
        self.inner, self.interrupt_at = inner, interrupt_at
        self.name = inner.name
        self.parts = inner.parts
        self.calls = 0
        self.seen = []

    def ground(self, images, records):
        self.calls += 1
        if self.interrupt_at is not None and self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        self.seen += records
        return self.inner.ground(images, records)


@pytest.fixture(name="person_world")
def person_world_fixture():
    return person_world


@pytest.fixture(name="label_items")
def label_items_fixture():
    return label_items


@pytest.fixture(name="counting_grounder")
def counting_grounder_fixture():
    return CountingGrounder

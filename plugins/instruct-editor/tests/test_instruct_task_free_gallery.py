"""The synthetic world's task-free gallery: every image once (each test person belongs to
one task, as the paper's test sets are different datasets), and every task still has
queries with positives in its own gallery."""

from collections import Counter

import pytest

from reid_instruct_editor.dataset import InstructDataset
from reid_instruct_editor.tasks import TASKS

WORLD = {"identities": 4, "test_identities": 12, "images_per_identity": 8, "cameras": 4, "render_size": [32, 16],
         "clothes_changes": 2, "captions": True, "infrared_cameras": [3]}


def image_key(record):
    return record.extras["render_key"]


def test_the_task_free_gallery_holds_no_duplicate_images():
    data = InstructDataset(world=WORLD)
    gallery = data.records("gallery")
    counts = Counter(image_key(r) for r in gallery)
    assert max(counts.values()) == 1, [k for k, c in counts.items() if c > 1][:3]
    query = data.records("query")
    for task in TASKS:
        q = [r for r in query if r.extras["task"] == task]
        g = [r for r in gallery if r.extras["task"] == task]
        assert q and g, task
        people = {r.pid for r in g}
        assert all(r.pid in people for r in q), task
    # test people are split between tasks: no identity in two tasks
    owners = {}
    for r in query + gallery:
        assert owners.setdefault(r.pid, r.extras["task"]) == r.extras["task"]


def test_shared_test_people_repeat_images_across_tasks():
    data = InstructDataset(world=WORLD, test_people="shared")
    counts = Counter(image_key(r) for r in data.records("gallery"))
    assert max(counts.values()) > 1
    with pytest.raises(ValueError, match="test_people"):
        InstructDataset(world=WORLD, test_people="some")

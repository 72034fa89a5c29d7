"""Resumability through the core's runner: an interrupted labelling run keeps what was
grounded, the rerun asks the grounder only about the images not done yet, and the file
equals an uninterrupted run's; an up-to-date file is not labelled again."""

import numpy as np
import pytest

from core.data.annotations import Annotations
from core.labeling import run_labeler
from reid_vge_labeler.labeler import VGELabeler

FAULTS = {"whole_body": 0.2, "tiny": 0.2, "missing": 0.1, "seed": 1}


def make_labeler(counting_grounder, interrupt_at=None):
    labeler = VGELabeler(grounder={"name": "record_boxes", "faults": FAULTS}, parts=["head", "upper", "legs"],
                         grid=[8, 4], batch_size=6)
    labeler.grounder = counting_grounder(labeler.grounder, interrupt_at)
    return labeler


def run(labeler, items, out):
    return run_labeler(labeler, items, out, fingerprint={"labeler": "vge", "faults": FAULTS}, ctx=None, name="vge",
                       progress=False, save_every=6, echo=lambda *_: None)


def test_an_interrupted_run_resumes_without_grounding_done_images_again(tmp_path, person_world, label_items,
                                                                        counting_grounder):
    items = label_items(person_world(identities=6, images=5))  # 30 images, 5 batches of 6
    out = tmp_path / "parts.npz"

    first = make_labeler(counting_grounder, interrupt_at=4)
    with pytest.raises(KeyboardInterrupt):
        run(first, items, out)
    assert not out.exists()
    assert len(first.grounder.seen) == 18  # three batches grounded before the interruption
    done = {id(r) for r in first.grounder.seen}

    second = make_labeler(counting_grounder)
    resumed = run(second, items, out)
    asked = [id(r) for r in second.grounder.seen]
    assert len(asked) == 12 and not done & set(asked)
    assert done | set(asked) == {id(item.record) for item in items}
    assert not (tmp_path / "parts.npz.partial").exists()

    whole = run(make_labeler(counting_grounder), items, tmp_path / "whole.npz")
    for name in whole.fields:
        np.testing.assert_array_equal(resumed.fields[name], whole.fields[name], err_msg=name)

    third = make_labeler(counting_grounder)
    again = run(third, items, out)
    assert third.grounder.calls == 0
    assert again.keys == Annotations.load(out).keys

"""The hierarchical label space (MGOR Sec. 3.3): Y = disjoint union of Y_s, pi: Y -> S,
and the local index y~ of an identity inside its category."""

import numpy as np
import pytest

from reid_hse.labels import category_labels, labels_from_context


def test_hand_case_maps_each_global_identity_to_its_category_and_local_index():
    # categories: 0 animal, 1 person, 2 vehicle; identities 0..5 in mixed order
    pids = np.array([0, 0, 1, 2, 3, 3, 4, 5])
    cats = np.array([1, 1, 2, 1, 0, 0, 1, 0])
    labels = category_labels(pids, cats, ["animal", "person", "vehicle"])
    assert labels.category.tolist() == [1, 2, 1, 0, 1, 0]   # pi(y)
    assert labels.local.tolist() == [0, 0, 1, 0, 2, 1]      # y~: rank of y among its category's ids
    assert labels.sizes.tolist() == [2, 3, 1]               # |Y_s|
    assert labels.offsets.tolist() == [0, 2, 5]


def test_context_of_the_training_table_gives_the_same_map(ctx):
    labels = labels_from_context(ctx, "test")
    # relabelled in order of appearance: person 0,1,2; vehicle 3; animal 4,5
    assert labels.names == ("animal", "person", "vehicle")
    assert labels.category.tolist() == [1, 1, 1, 2, 0, 0]
    assert labels.local.tolist() == [0, 1, 2, 0, 0, 1]


def test_identity_in_two_categories_is_an_error_naming_both():
    with pytest.raises(ValueError, match="identity 0 appears in several categories \\(animal, person\\)"):
        category_labels(np.array([0, 0]), np.array([0, 1]), ["animal", "person"])


def test_gaps_in_the_labels_are_an_error():
    with pytest.raises(ValueError, match="0..N-1"):
        category_labels(np.array([0, 2]), np.array([0, 0]), ["animal"])

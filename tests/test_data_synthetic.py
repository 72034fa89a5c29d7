"""The synthetic world: deterministic, disjoint train/test identities, a valid ReID protocol,
cameras that change the view, identities that differ, part boxes inside the image."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from core.data.synthetic import CATEGORIES, PID_STRIDE, SyntheticWorld, preview_grid

SMALL = dict(identities=6, test_identities=4, cameras=3, images_per_identity=5)


def pixels(world: SyntheticWorld, record) -> np.ndarray:
    return np.asarray(world.load_image(record), dtype=np.int16)


def test_same_seed_renders_the_same_pixels():
    a, b = SyntheticWorld(seed=3, **SMALL), SyntheticWorld(seed=3, **SMALL)
    for ra, rb in zip(a.records("query")[:4], b.records("query")[:4]):
        assert np.array_equal(pixels(a, ra), pixels(b, rb))


def test_different_seed_renders_different_pixels():
    a, b = SyntheticWorld(seed=0, **SMALL), SyntheticWorld(seed=1, **SMALL)
    ra, rb = a.records("train")[0], b.records("train")[0]
    assert np.abs(pixels(a, ra) - pixels(b, rb)).mean() > 10


def test_image_has_render_size_and_is_rgb():
    world = SyntheticWorld(render_size=[96, 48], **SMALL)
    image = world.load_image(world.records("train")[0])
    assert image.mode == "RGB" and image.size == (48, 96)


def test_train_and_test_identities_are_disjoint():
    world = SyntheticWorld(**SMALL)
    train = {r.pid for r in world.records("train")}
    test = {r.pid for r in world.records("query")} | {r.pid for r in world.records("gallery")}
    assert train and test and not train & test
    assert {r.pid for r in world.records("query")} == {r.pid for r in world.records("gallery")}


def test_split_sizes_and_pids_follow_the_parameters():
    world = SyntheticWorld(categories=["person", "vehicle", "animal"], **SMALL)
    assert len(world.records("train")) == 3 * 6 * 5
    assert len(world.records("query")) == 3 * 4 * 2
    assert len(world.records("gallery")) == 3 * 4 * 3
    for r in world.records("train"):
        assert r.pid // PID_STRIDE == list(CATEGORIES).index(r.category)
        assert r.domain == "synthetic" and r.path is None and r.split == "train"


def test_held_out_category_is_only_in_query_and_gallery():
    world = SyntheticWorld(categories=["person", "vehicle"], held_out_categories=["vehicle"], **SMALL)
    assert {r.category for r in world.records("train")} == {"person"}
    assert {r.category for r in world.records("query")} == {"person", "vehicle"}
    assert {r.category for r in world.records("gallery")} == {"person", "vehicle"}


def test_every_query_has_a_gallery_match_in_another_camera():
    world = SyntheticWorld(**SMALL)
    gallery_cams = defaultdict(set)
    for r in world.records("gallery"):
        gallery_cams[r.pid].add(r.camid)
    queries = defaultdict(list)
    for r in world.records("query"):
        queries[r.pid].append(r.camid)
        assert gallery_cams[r.pid] - {r.camid}, f"query of pid {r.pid} has no cross-camera match"
    assert all(sorted(cams) == [0, 1] for cams in queries.values())


def test_camid_is_image_index_modulo_cameras():
    world = SyntheticWorld(**SMALL)
    for r in world.records("train"):
        assert r.camid == r.extras["render_key"][2] % 3


def test_cameras_change_the_view_of_one_identity():
    world = SyntheticWorld(**SMALL)
    cat = list(CATEGORIES).index("person")
    a, b = world.render(cat, 0, 0), world.render(cat, 0, 1)
    assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean() > 15


def test_identities_differ_in_their_attributes():
    world = SyntheticWorld(**SMALL)
    for cat in range(2):
        attrs = [world.attributes(cat, i) for i in range(10)]
        keys = [k for k in attrs[0] if not isinstance(attrs[0][k], np.ndarray)]
        signatures = {tuple(str(a[k]) for k in keys) for a in attrs}
        assert len(signatures) == 10
        assert world.attributes(cat, 0) == world.attributes(cat, 0)


def test_identity_attributes_do_not_depend_on_the_category_list():
    """Adding a category to a world must not change the identities already in it."""
    a = SyntheticWorld(categories=["vehicle"], **SMALL)
    b = SyntheticWorld(categories=["person", "vehicle"], **SMALL)
    ra = a.records("train")[0]
    rb = next(r for r in b.records("train") if r.category == "vehicle")
    assert ra.pid == rb.pid and np.array_equal(pixels(a, ra), pixels(b, rb))


def test_part_boxes_lie_inside_the_image_with_head_above_legs():
    world = SyntheticWorld(categories=["person", "vehicle", "animal"], **SMALL)
    for r in world.records("train") + world.records("gallery"):
        parts = r.extras["parts"]
        assert parts.shape == (3, 4) and parts.dtype == np.float32
        assert (parts >= 0).all() and (parts <= 1).all()
        assert (parts[:, 0] <= parts[:, 2]).all() and (parts[:, 1] <= parts[:, 3]).all()
        if r.category == "person":
            head, legs = parts[0], parts[2]
            assert (head[1] + head[3]) / 2 < (legs[1] + legs[3]) / 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(categories=["persn"]), "known categories: person, vehicle, animal"),
    (dict(held_out_categories=["animal"]), "held-out category 'animal'"),
    (dict(held_out_categories=["person", "vehicle"]), "held_out_categories"),
    (dict(cameras=1), "'cameras'"),
    (dict(cameras=2, images_per_identity=3), "'images_per_identity'"),
    (dict(identities=0), "'identities'"),
    (dict(render_size=[128]), "'render_size'"),
])
def test_bad_arguments_name_the_key_and_the_valid_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticWorld(**kwargs)


def test_unknown_split_lists_the_valid_ones():
    with pytest.raises(ValueError, match="train, query, gallery"):
        SyntheticWorld(**SMALL).records("val")


def test_preview_grid_has_a_row_per_identity_and_a_column_per_camera():
    world = SyntheticWorld(render_size=[32, 16], **SMALL)
    grid = preview_grid(world, n_identities=2)
    assert grid.size == (3 * (16 + 2) + 2, 2 * 2 * (32 + 2) + 2)

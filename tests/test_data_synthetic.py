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
        parts = r.extras["part_boxes"]
        assert parts.shape == (3, 4) and parts.dtype == np.float32
        assert (parts >= 0).all() and (parts <= 1).all()
        assert (parts[:, 0] <= parts[:, 2]).all() and (parts[:, 1] <= parts[:, 3]).all()
        if r.category == "person":
            head, legs = parts[0], parts[2]
            assert (head[1] + head[3]) / 2 < (legs[1] + legs[3]) / 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(categories=["persn"]), "known categories: person, vehicle, animal, ship, building, object"),
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


def test_preview_grid_shows_no_more_identities_than_the_split_holds():
    """--preview-identities 50 on a world of 4 training identities rendered 50 rows per
    category, 46 of identities the world does not hold (one of the test split's among them)."""
    world = SyntheticWorld(render_size=[32, 16], categories=["person", "vehicle"], identities=3, test_identities=2,
                           cameras=2, images_per_identity=4, held_out_categories=["vehicle"])
    grid = preview_grid(world, n_identities=50)
    assert grid.size[1] == (3 + 2) * (32 + 2) + 2  # person: its 3 training ids; vehicle (held out): its 2 test ids
    assert preview_grid(world, n_identities=2).size[1] == (2 + 2) * (32 + 2) + 2


# -- the full world: six categories, domains, clothes changes, infrared, captions

ALL = ["person", "vehicle", "animal", "ship", "building", "object"]
FULL = dict(categories=ALL, identities=4, test_identities=2, cameras=4, images_per_identity=8,
            render_size=[64, 32], clothes_changes=1, infrared_cameras=[3], captions=True,
            domains=["synthetic", "cartoon", "sketch", "night"], perspective=0.4, occlusion=0.3)


@pytest.fixture(scope="module")
def full() -> SyntheticWorld:
    return SyntheticWorld(**FULL)


def test_every_category_renders_and_identities_differ():
    world = SyntheticWorld(categories=ALL, render_size=[64, 32], **SMALL)
    for cat, name in enumerate(ALL):
        a, b = world.render(cat, 0, 0), world.render(cat, 1, 0)
        assert a.mode == "RGB" and a.size == (32, 64), name
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean() > 5, name


def test_every_record_of_a_world_has_the_same_extras_and_a_batch_collates(full):
    from core.data.loading import collate_extras

    records = [r for s in ("train", "query", "gallery") for r in full.records(s)]
    keys = {frozenset(r.extras) for r in records}
    assert keys == {frozenset({"render_key", "part_boxes", "clothes_id", "modality", "caption", "attributes"})}
    mixed = [full.records("train")[i].extras for i in (0, 40, 80, 130, 200)]
    batch = collate_extras([{k: v for k, v in e.items() if k != "render_key"} for e in mixed])
    assert batch["clothes_id"].dtype.is_floating_point is False and batch["modality"].shape == (5,)
    assert batch["part_boxes"].shape == (5, 3, 4)
    assert isinstance(batch["caption"], list) and isinstance(batch["attributes"], list)


def test_default_world_has_only_part_boxes_as_public_extras():
    assert set(SyntheticWorld(**SMALL).records("train")[0].extras) == {"render_key", "part_boxes"}


def test_images_do_not_change_when_unrelated_parameters_change():
    base = SyntheticWorld(categories=["vehicle"], **SMALL)
    more = SyntheticWorld(categories=["vehicle", "ship"], domains=["synthetic", "sketch"], clothes_changes=2,
                          captions=True, **SMALL)
    ra = base.records("train")[3]
    rb = next(r for r in more.records("train") if r.extras["render_key"] == (1, 0, 3, "synthetic"))
    assert ra.extras["render_key"][:3] == rb.extras["render_key"][:3]
    assert np.array_equal(pixels(base, ra), pixels(more, rb))
    a = SyntheticWorld(domains=["cartoon"], **SMALL)
    b = SyntheticWorld(domains=["synthetic", "cartoon"], **SMALL)
    assert np.array_equal(np.asarray(a.render(0, 1, 2, "cartoon")), np.asarray(b.render(0, 1, 2, "cartoon")))


def test_person_part_boxes_are_head_over_upper_body_over_legs_under_any_camera(full):
    rotated = SyntheticWorld(categories=["person"], perspective=1.0, **SMALL)
    for world in (full, rotated):
        for r in world.records("train") + world.records("gallery"):
            parts = r.extras["part_boxes"]
            assert (parts >= 0).all() and (parts <= 1).all()
            if r.category == "person":
                cy = (parts[:, 1] + parts[:, 3]) / 2
                assert cy[0] < cy[1] < cy[2], (r.extras["render_key"], parts)
                assert parts[0, 3] - parts[0, 1] < parts[2, 3] - parts[2, 1]  # a head is shorter than legs


def test_part_boxes_cover_the_drawn_person():
    """Without background (a uniform camera), the head box holds the person's pixels."""
    world = SyntheticWorld(categories=["person"], render_size=[128, 64], **SMALL)
    for r in world.records("train")[:10]:
        image = np.asarray(world.load_image(r), np.float32)
        h, w = image.shape[:2]
        x0, y0, x1, y1 = r.extras["part_boxes"][0] * [w, h, w, h]
        head = image[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))]
        above = image[: max(int(y0) - 2, 1)]
        assert head.size and np.abs(head.mean(axis=(0, 1)) - above.mean(axis=(0, 1))).sum() > 10


def test_clothes_change_across_views_of_one_person(full):
    train = [r for r in full.records("train") if r.category == "person" and r.domain == "synthetic"]
    by_pid: dict[int, set[int]] = defaultdict(set)
    for r in train:
        by_pid[r.pid].add(r.extras["clothes_id"])
    assert all(len(ids) == 2 for ids in by_pid.values())
    everyone = [i for ids in by_pid.values() for i in ids]
    assert len(everyone) == len(set(everyone))  # a clothes id is global
    assert {r.extras["clothes_id"] for r in full.records("train") if r.category != "person"} == {-1}
    r0, r1 = train[0], train[1]
    assert r0.extras["clothes_id"] != r1.extras["clothes_id"]
    t0, t1 = (np.asarray(full.clothes_template(r), np.int16) for r in (r0, r1))
    assert np.abs(t0 - t1).mean() > 3
    assert np.array_equal(t0, np.asarray(full.clothes_template(train[2]), np.int16))  # outfit 0 again
    assert full.image_attributes(0, 0, 0)["hair"] == full.image_attributes(0, 0, 1)["hair"]  # the body stays


def test_each_camera_sees_several_outfits():
    world = SyntheticWorld(categories=["person"], clothes_changes=1, **SMALL)
    seen = defaultdict(set)
    for image in range(world.images_per_identity):
        seen[image % world.num_cameras].add(world.outfit(image))
    assert any(len(v) == 2 for v in seen.values())


def test_clothes_template_is_only_for_people(full):
    vehicle = next(r for r in full.records("train") if r.category == "vehicle")
    with pytest.raises(ValueError, match="only 'person'"):
        full.clothes_template(vehicle)
    person = full.records("train")[0]
    assert full.clothes_template(person, size=(128, 64)).size == (64, 128)


def test_without_clothes_changes_outfit_zero_renders_as_before():
    a = SyntheticWorld(categories=["person"], **SMALL)
    b = SyntheticWorld(categories=["person"], clothes_changes=3, **SMALL)
    assert np.array_equal(np.asarray(a.render(0, 2, 0)), np.asarray(b.render(0, 2, 0)))  # image 0: outfit 0
    assert not np.array_equal(np.asarray(a.render(0, 2, 1)), np.asarray(b.render(0, 2, 1)))


CAPTION_WORDS = {"person": ("top", "bottom_color", "shoes", "hair"), "vehicle": ("color", "rim_color"),
                 "animal": ("fur", "ears"), "ship": ("hull", "superstructure"), "building": ("wall", "roof_color"),
                 "object": ("color", "trim")}


def test_captions_say_the_attribute_values(full):
    from core.data.synthetic import parse_attributes

    for r in full.records("gallery"):
        words = parse_attributes(r.extras["attributes"])
        assert words["category"] == r.category and words["view"] in ("front", "back", "side")
        caption = r.extras["caption"]
        for key in CAPTION_WORDS[r.category]:
            assert words[key] in caption, (key, words[key], caption)
        for key, value in words.items():
            if key.endswith("color") and value != "none":
                assert value in caption, (key, value, caption)


def test_caption_colour_names_match_the_painted_colours():
    from core.data.synthetic.drawing import color_name

    assert [color_name(c) for c in ((200, 20, 20), (20, 40, 200), (20, 160, 40), (250, 250, 250), (10, 10, 10),
                                    (128, 128, 128), (230, 200, 20), (110, 70, 30))] == \
        ["red", "blue", "green", "white", "black", "grey", "yellow", "brown"]
    world = SyntheticWorld(categories=["person"], captions=True, **SMALL)
    r = world.records("train")[0]
    a = world.image_attributes(0, 0, 0)
    assert f"{color_name(a['trousers'])} {'shorts' if a['shorts'] else 'trousers'}" in r.extras["caption"]


def test_infrared_cameras_render_grey_and_flag_the_modality(full):
    for r in full.records("train")[:16]:
        image = np.asarray(full.load_image(r))
        grey = (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
        assert r.extras["modality"] == int(r.camid == 3)
        assert grey == (r.camid == 3) or r.domain == "sketch"


def test_domains_render_in_their_style_and_can_be_held_out():
    world = SyntheticWorld(domains=["synthetic", "cartoon", "sketch", "night"], held_out_domains=["night"], **SMALL)
    assert {r.domain for r in world.records("train")} == {"synthetic", "cartoon", "sketch"}
    assert {r.domain for r in world.records("query")} == {"synthetic", "cartoon", "sketch", "night"}
    assert len(world.records("train")) == 3 * len(SyntheticWorld(**SMALL).records("train"))
    images = {d: np.asarray(world.render(0, 0, 0, d), np.float32) for d in world.domains}
    assert images["night"].mean() < images["synthetic"].mean() - 30
    assert images["sketch"].mean() > images["synthetic"].mean()
    assert np.abs(images["cartoon"] - images["synthetic"]).mean() > 10


def test_perspective_and_occlusion_change_the_image_but_not_the_identity():
    a = SyntheticWorld(**SMALL)
    b = SyntheticWorld(perspective=0.8, occlusion=1.0, **SMALL)
    assert a.attributes(0, 0) == b.attributes(0, 0)
    assert np.abs(np.asarray(a.render(0, 0, 0), np.int16) - np.asarray(b.render(0, 0, 0), np.int16)).mean() > 5


@pytest.mark.parametrize("kwargs, message", [
    (dict(domains=["painting"]), "known render styles: synthetic, cartoon, sketch, night"),
    (dict(domains=["synthetic"], held_out_domains=["synthetic"]), "held_out_domains"),
    (dict(held_out_domains=["sketch"]), "held-out domain 'sketch'"),
    (dict(clothes_changes=-1), "'clothes_changes'"),
    (dict(cameras=3, infrared_cameras=[3]), "'infrared_cameras'"),
    (dict(perspective=2.0), "'perspective'"),
    (dict(occlusion=-0.1), "'occlusion'"),
])
def test_bad_new_arguments_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticWorld(**kwargs)


def test_labelled_preview_shows_every_domain_and_camera():
    world = SyntheticWorld(categories=ALL, domains=["synthetic", "cartoon"], render_size=[32, 16], **SMALL)
    grid = preview_grid(world, n_identities=1, labels=True)
    assert grid.size == (64 + 2 * 3 * (16 + 2) + 2, 14 + 6 * (32 + 2) + 2)

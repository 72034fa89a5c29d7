"""Instructions as data: the six tasks of Instruct-ReID (paper Fig. 1) as the `instruct`
dataset lists them from the synthetic world and from a manifest."""

import numpy as np
import pytest
import torch
from PIL import Image

from core.data.synthetic import SyntheticWorld
from reid_instruct_editor.dataset import InstructDataset
from reid_instruct_editor.tasks import TASKS, attribute_sentences, normalize_text

#: 4 training and 3 test people, three outfits, captions, infrared camera 3
TINY_WORLD = {"identities": 4, "test_identities": 3, "render_size": [32, 16]}


@pytest.fixture(scope="module")
def dataset():
    return InstructDataset(world=TINY_WORLD, instruction_size=[16, 16], test_people="shared")


def by_task(records, task):
    return [r for r in records if r.extras["task"] == task]


def outfit_of(world, record):
    return world.outfit(record.extras["render_key"][2])


def test_text_is_lower_cased_stripped_of_punctuation_and_cut_at_50_words():
    assert normalize_text("Do NOT change clothes!") == "do not change clothes"
    assert normalize_text("a two-tone top, with (blue) stripes; white/grey shoes.") == \
        "a two tone top with blue stripes white grey shoes"
    long = " ".join(f"w{i}" for i in range(80))
    assert normalize_text(long).split() == [f"w{i}" for i in range(50)]


def test_every_task_has_records_in_every_split(dataset):
    for split in ("train", "query", "gallery"):
        tasks = {r.extras["task"] for r in dataset.records(split)}
        assert tasks == set(TASKS), split


def test_fixed_text_tasks_carry_their_phrase_all_phrasings_in_training(dataset):
    phrase = {"traditional": "do not change clothes", "clothes-changing": "ignore clothes",
              "visible-infrared": "cross modality"}
    for task, text in phrase.items():
        train = by_task(dataset.records("train"), task)
        assert all(isinstance(r.extras["instruction"], tuple) and r.extras["instruction"][0] == text
                   and len(r.extras["instruction"]) > 1 for r in train)
        for split in ("query", "gallery"):
            assert {r.extras["instruction"] for r in by_task(dataset.records(split), task)} == {text}


def test_traditional_lists_visible_images_of_the_first_outfit_only(dataset):
    w = dataset.world
    for split in ("train", "query", "gallery"):
        for r in by_task(dataset.records(split), "traditional"):
            assert outfit_of(w, r) == 0 and r.extras["modality"] == 0


def test_clothes_changing_lists_every_outfit_of_a_person(dataset):
    w = dataset.world
    outfits = {outfit_of(w, r) for r in by_task(dataset.records("gallery"), "clothes-changing")}
    assert outfits == set(range(w.clothes_changes + 1))


def test_visible_infrared_queries_are_visible_and_its_gallery_infrared(dataset):
    assert {r.extras["modality"] for r in by_task(dataset.records("query"), "visible-infrared")} == {0}
    assert {r.extras["modality"] for r in by_task(dataset.records("gallery"), "visible-infrared")} == {1}
    assert {r.extras["modality"] for r in by_task(dataset.records("train"), "visible-infrared")} == {0, 1}


def test_infrared_queries_search_the_visible_gallery():
    """SYSU-MM01's direction: infrared queries, visible gallery; training unchanged."""
    reverse = InstructDataset(world=TINY_WORLD, tasks=["visible-infrared"], infrared_queries=True)
    assert {r.extras["modality"] for r in reverse.records("query")} == {1}
    assert {r.extras["modality"] for r in reverse.records("gallery")} == {0}
    assert {r.extras["modality"] for r in reverse.records("train")} == {0, 1}
    forward = InstructDataset(world=TINY_WORLD, tasks=["visible-infrared"])
    assert {r.split for split in ("query", "gallery") for r in reverse.records(split)} == {"query", "gallery"}
    assert all(r.split == "gallery" for r in reverse.records("gallery"))
    assert sorted(r.path or str(r.extras["render_key"]) for r in reverse.records("query")) == \
        sorted(r.path or str(r.extras["render_key"]) for r in forward.records("gallery"))
    every_test_image = len(forward.world.records("query")) + len(forward.world.records("gallery"))
    assert len(reverse.records("query")) + len(reverse.records("gallery")) == every_test_image
    with pytest.raises(ValueError, match="infrared_queries must be true or false"):
        InstructDataset(world=TINY_WORLD, tasks=["visible-infrared"], infrared_queries="yes")


def test_text_to_image_queries_are_captions_without_an_image(dataset):
    queries = by_task(dataset.records("query"), "text-to-image")
    for r in queries:
        assert r.extras["text_query"] is True
        assert r.extras["instruction"] == normalize_text(r.extras["caption"])
        pixels = np.asarray(dataset.load_image(r))
        assert (pixels == pixels.reshape(-1, 3)[0]).all()  # a plain placeholder, nothing of the person
    gallery = by_task(dataset.records("gallery"), "text-to-image")
    assert not any(r.extras["text_query"] for r in gallery)
    assert {r.extras["instruction"] for r in gallery} == {"retrieve the person described by the text"}
    train = by_task(dataset.records("train"), "text-to-image")
    assert sum(r.extras["text_query"] for r in train) == sum(not r.extras["text_query"] for r in train)


def test_clothes_template_query_shows_the_next_outfit_and_gallery_items_their_own(dataset):
    w = dataset.world
    query = by_task(dataset.records("query"), "clothes-template")[0]
    image = dataset.sample_extras(query)["instruction_image"]
    assert image.shape == (3, 16, 16) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    cat, identity, _, domain = query.extras["render_key"]
    want = (outfit_of(w, query) + 1) % (w.clothes_changes + 1)
    # the gallery item of the same person in that outfit carries the very same template
    match = [g for g in by_task(dataset.records("gallery"), "clothes-template")
             if g.pid == query.pid and outfit_of(w, g) == want]
    other = [g for g in by_task(dataset.records("gallery"), "clothes-template")
             if g.pid == query.pid and outfit_of(w, g) != want]
    assert match and other
    assert torch.equal(dataset.sample_extras(match[0])["instruction_image"], image)
    assert not torch.equal(dataset.sample_extras(other[0])["instruction_image"], image)
    expected = w.clothes_template(match[0], size=(16, 16))
    assert torch.allclose(image.permute(1, 2, 0) * 255, torch.from_numpy(np.array(expected, dtype=np.float32)))


def test_language_instructed_query_describes_the_next_outfit(dataset):
    w = dataset.world
    gallery = by_task(dataset.records("gallery"), "language-instructed")
    for query in by_task(dataset.records("query"), "language-instructed"):
        want = (outfit_of(w, query) + 1) % (w.clothes_changes + 1)
        same = [g for g in gallery if g.pid == query.pid]
        assert {g.extras["instruction"] for g in same if outfit_of(w, g) == want} == {query.extras["instruction"]}
        assert query.extras["instruction"] not in {g.extras["instruction"] for g in same if outfit_of(w, g) != want}
    words = {"top": "red", "top_pattern": "striped", "top2": "white", "sleeves": "long", "bottom": "trousers",
             "bottom_color": "blue", "shoes": "black", "hat": "none"}
    text = attribute_sentences(words, "person")
    assert text == ("the person wears a red striped top the second colour of the top is white the sleeves are long "
                    "the person wears blue trousers the shoes are black the person wears no hat")


def test_training_lists_target_instructions_for_the_query_situation(dataset):
    train = by_task(dataset.records("train"), "clothes-template")
    keys = {dataset.record_key(r) for r in train}
    assert len(keys) == len(train)  # one image, two instructions: two distinct records
    targets = [r for r in train if r.extras["_instruction_key"] != r.extras["render_key"]]
    assert len(targets) == len(train) // 2
    without = InstructDataset(world=TINY_WORLD, tasks=["clothes-template"], target_instructions=False)
    assert len(without.records("train")) == len(train) // 2


def test_a_task_the_world_cannot_feed_is_an_error_naming_the_world_key():
    with pytest.raises(ValueError, match="world.infrared_cameras"):
        InstructDataset(world={**TINY_WORLD, "infrared_cameras": []}, tasks=["visible-infrared"])
    with pytest.raises(ValueError, match="world.captions"):
        InstructDataset(world={**TINY_WORLD, "captions": False}, tasks=["text-to-image"])
    with pytest.raises(ValueError, match="unknown task 'reid'"):
        InstructDataset(world=TINY_WORLD, tasks=["reid"])
    with pytest.raises(ValueError, match="unknown world key"):
        InstructDataset(world={"identitys": 3})


def test_a_manifest_maps_its_task_and_instruction_columns(tmp_path):
    for name, colour in (("a.jpg", (255, 0, 0)), ("b.jpg", (0, 255, 0)), ("clothes.jpg", (0, 0, 255))):
        Image.new("RGB", (16, 32), colour).save(tmp_path / name)
    rows = ["path,pid,camid,split,task,instruction,instruction_image,text_query",
            "a.jpg,1,0,train,traditional,Same clothes!||Do not change clothes,,0",
            "a.jpg,1,0,train,clothes-template,,clothes.jpg,0",
            "a.jpg,1,0,query,text-to-image,\"A woman in a RED coat.\",,1",
            "b.jpg,1,1,gallery,text-to-image,,,0",
            "b.jpg,1,1,gallery,visible-infrared,,,0"]
    (tmp_path / "omni.csv").write_text("\n".join(rows) + "\n")
    data = InstructDataset(manifest=str(tmp_path / "omni.csv"), instruction_size=[8, 8])
    train = data.records("train")
    assert train[0].extras["instruction"] == ("same clothes", "do not change clothes")
    template = data.sample_extras(train[1])["instruction_image"]
    assert template.shape == (3, 8, 8) and float(template[2].mean()) > 0.9 > float(template[0].mean())
    query = data.records("query")[0]
    assert query.extras["text_query"] and query.extras["instruction"] == "a woman in a red coat"
    gallery = data.records("gallery")
    assert [g.extras["instruction"] for g in gallery] == ["retrieve the person described by the text", "cross modality"]
    assert len({data.record_key(r) for r in train}) == 2
    (tmp_path / "bad.csv").write_text("path,pid,camid,task\na.jpg,1,0,reid\n")
    with pytest.raises(ValueError, match="task 'reid'"):
        InstructDataset(manifest=str(tmp_path / "bad.csv")).records("train")


def test_world_options_feed_all_six_tasks_with_the_same_identities():
    world = SyntheticWorld(**{**TINY_WORLD, "categories": ["person"], "clothes_changes": 2, "captions": True,
                              "infrared_cameras": [3]})
    data = InstructDataset(world=TINY_WORLD)
    pids = {task: {r.pid for r in by_task(data.records("train"), task)} for task in TASKS}
    assert all(p == {r.pid for r in world.records("train")} for p in pids.values())

"""`instruct` over a registered dataset (`source:` + `task:`): the paper's sets enter one
entry each, read by the core's readers (here `omnireid`, the authors' datalists)."""

import pytest

from reid_instruct_editor.dataset import InstructDataset


def test_clothes_template_from_the_authors_lists(authors_lists):
    data = InstructDataset(task="clothes-template", instruction_size=[8, 8],
                           source={"dataset": "omnireid", "root": str(authors_lists), "query": "query.txt",
                                   "gallery": "gallery.txt", "instruction": "image"})
    (q,) = data.records("query")
    assert q.extras["task"] == "clothes-template" and q.extras["instruction_id"] == "ref:clothes/0032_2.jpg"
    assert data.sample_extras(q)["instruction_image"].shape == (3, 8, 8)
    g = data.records("gallery")
    assert [r.extras["instruction_id"] for r in g] == ["ref:clothes/0032_2.jpg", "ref:clothes/0040_1.jpg"]


def test_language_instructed_and_text_to_image(authors_lists):
    li = InstructDataset(task="language-instructed", source={
        "dataset": "omnireid", "root": str(authors_lists), "query": "query_attr.txt", "gallery": "gallery_attr.txt",
        "texts": "texts.json", "instruction": "text"})
    (q,) = li.records("query")
    assert q.extras["instruction"] == "the person wears a grey hoodie" and q.extras["instruction_id"] == "ref:0032_2"
    t2i = InstructDataset(task="text-to-image", source={
        "dataset": "omnireid", "root": str(authors_lists), "train": "train_t2i.txt", "query": "query_attr.txt",
        "gallery": "gallery_attr.txt", "texts": "texts.json", "instruction": "text"})
    train = t2i.records("train")
    assert [r.extras["text_query"] for r in train] == [False, True]
    assert train[1].extras["instruction"] == "a man in a blue shirt"
    assert all(r.extras["text_query"] for r in t2i.records("query"))
    assert not any(r.extras["text_query"] for r in t2i.records("gallery"))


def test_source_errors_are_named(authors_lists):
    with pytest.raises(ValueError, match="needs `task`"):
        InstructDataset(source={"dataset": "omnireid", "root": str(authors_lists), "query": "query.txt"})
    with pytest.raises(ValueError, match="no extras 'instruction_image'"):
        InstructDataset(task="clothes-template", source={"dataset": "omnireid", "root": str(authors_lists),
                                                         "query": "query.txt"}).records("query")
    with pytest.raises(ValueError, match="mapping with a `dataset`"):
        InstructDataset(task="traditional", source="market1501")


def test_sources_join_several_sets_into_one_task_free_test_set(joined_sources):
    both = InstructDataset(instruction_size=[8, 8], sources=joined_sources)
    gallery = both.records("gallery")
    assert [r.extras["task"] for r in gallery] == ["clothes-template"] * 2 + ["language-instructed"] * 2
    assert [r.pid for r in gallery] == [32, 40, 32 + 41, 40 + 41]  # the second set's identities offset past the first's
    assert both.load_image(gallery[0]).size == (8, 16)
    assert both.sample_extras(both.records("query")[0])["instruction_image"].shape == (3, 8, 8)
    with pytest.raises(ValueError, match="exactly the keys task and source"):
        InstructDataset(sources=[{"task": "traditional"}])

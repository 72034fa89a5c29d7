"""The `instruct` dataset returns the columnar table (core.data.columns) holding exactly
the task records its list path builds (the world's `_synthetic`, a source's
`source_records`, several sources' `joined_records`: the pre-columnar code, kept as the
reference), every extra with its value and Python type -- phrasing tuples, render keys,
booleans; and a source read by a core reader comes from that reader's cache the second time."""

import pytest

import core.data.layouts.common as common
from core.data.columns import RecordColumns
from reid_instruct_editor.dataset import InstructDataset
from reid_instruct_editor.sourced import joined_records, source_records

TINY_WORLD = {"identities": 3, "test_identities": 2, "render_size": [32, 16]}
SPLITS = ("train", "query", "gallery")




def rows(records):
    return [((r.path, r.pid, r.camid, r.category, r.domain, r.split),
             sorted((k, repr(v), type(v).__name__) for k, v in r.extras.items())) for r in records]


def test_world_records_are_columns_holding_the_list_path_records():
    data = InstructDataset(world=TINY_WORLD, instruction_size=[16, 16])
    for split in SPLITS:
        got = data.records(split)
        assert isinstance(got, RecordColumns)
        listed = data._synthetic(split)
        assert len(listed) > 0 and rows(got) == rows(listed), split
    train = data.records("train")
    assert {type(r.extras["instruction"]).__name__ for r in train} >= {"tuple"}  # phrasings stay tuples


@pytest.mark.parametrize("task,source", [
    ("clothes-template", {"query": "query.txt", "gallery": "gallery.txt", "instruction": "image"}),
    ("text-to-image", {"train": "train_t2i.txt", "query": "query_attr.txt", "gallery": "gallery_attr.txt",
                       "texts": "texts.json", "instruction": "text"}),
])
def test_source_records_are_columns_holding_the_list_path_records(task, source, authors_lists):
    data = InstructDataset(task=task, instruction_size=[8, 8], source={"dataset": "omnireid", "root": str(authors_lists),
                                                                      **source})
    for split in SPLITS:
        got = data.records(split)
        assert isinstance(got, RecordColumns)
        assert rows(got) == rows(source_records(data, split)), split


def test_joined_sources_are_columns_holding_the_list_path_records(joined_sources):
    both = InstructDataset(instruction_size=[8, 8], sources=joined_sources)
    for split in ("query", "gallery"):
        got = both.records(split)
        assert isinstance(got, RecordColumns) and len(got) > 0
        assert rows(got) == rows(joined_records(both.parts, split)), split


def test_a_source_comes_from_its_readers_cache_the_second_time(tmp_path, monkeypatch, authors_lists):
    monkeypatch.setenv("REID_CORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REID_CORE_CACHE_MIN_ROWS", "0")
    spec = {"dataset": "omnireid", "root": str(authors_lists), "query": "query_attr.txt", "gallery": "gallery_attr.txt",
            "texts": "texts.json", "instruction": "text"}
    first = rows(InstructDataset(task="language-instructed", source=spec).records("gallery"))
    real = common.cached

    def only_cached(kind, inputs, params, build):
        def refuse():
            raise AssertionError("the omnireid lists were read again although the cache holds them")
        return real(kind, inputs, params, refuse)

    monkeypatch.setattr(common, "cached", only_cached)
    assert rows(InstructDataset(task="language-instructed", source=spec).records("gallery")) == first

"""query_paths_in_gallery's fast path against its definition (normpath(abspath(p)) of each side,
intersected) for the ways of writing a path the first tests did not use: a last segment `.` or
`..` with no slash after it. Review 19: a fast-path pattern that took `a/b/..` as normalised
already passed every other test."""

import os

import pytest

from core.data.protocol_checks import query_paths_in_gallery
from core.records import Record

ENDINGS19 = ["a/b/..", "a/.", "a", "/abs/x/..", "/abs", "a/b/../..", "x/..", ".", "..", "/abs/."]


def records19(paths: list[str], split: str) -> list[Record]:
    return [Record(path=p, pid=i, camid=0, category="person", domain="d", split=split) for i, p in enumerate(paths)]


def definition19(query: list[str], gallery: list[str]) -> list[str]:
    def norm(paths):
        return {os.path.normpath(os.path.abspath(p)) for p in paths}
    return sorted(norm(query) & norm(gallery))


@pytest.mark.parametrize("query, gallery", [
    (["a/b/.."], ["a"]), (["a/."], ["a"]), (["/abs/x/.."], ["/abs"]), (["/abs/."], ["/abs"]),
    (["x/.."], ["."]), (ENDINGS19[::2], ENDINGS19[1::2]), (ENDINGS19, ENDINGS19[::-1]),
])
def test_a_last_dot_or_dotdot_segment_is_normalised_as_the_definition_says(tmp_path, monkeypatch, query, gallery):
    monkeypatch.chdir(tmp_path)
    expected = definition19(query, gallery)
    assert query_paths_in_gallery(records19(query, "query"), records19(gallery, "gallery")) == expected

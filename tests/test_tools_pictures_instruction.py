"""Ranked-list pictures show an instruction-conditioned query's instruction (an
Instruct-ReID caption or attribute sentence) in a line under the query tile: before, the
picture of a text-to-image query showed a blank placeholder and nothing of what was asked."""

import numpy as np

from core.records import Record
from core.tools.images import ImageFiles, ImageSet, _table
from core.tools.search import QueryResult, ranked_picture

LINE = 13  # pixels per caption line (core.tools.pictures.draw_ranked_list)


def image_set(instructions) -> ImageSet:
    records = [Record(path=None, pid=i, camid=0, category="person",
                      extras={} if text is None else {"instruction": text}) for i, text in enumerate(instructions)]
    return ImageSet(_table(records, "q"), [ImageFiles(records)], "q")


GALLERY = image_set([None] * 4)
RESULT = QueryResult(0, np.arange(4), np.linspace(0.1, 0.4, 4), [True, False, False, False])


def ink_rows(picture) -> np.ndarray:
    """Rows of the picture holding any non-white pixel."""
    return np.flatnonzero((np.asarray(picture) < 250).any(axis=(1, 2)))


def test_a_query_with_an_instruction_gets_a_line_under_its_tile():
    plain = ranked_picture(RESULT, image_set([None]), GALLERY, "q")
    instructed = ranked_picture(RESULT, image_set(["a man in a red coat"]), GALLERY, "q")
    assert instructed.width == plain.width and instructed.height == plain.height + LINE
    assert ink_rows(instructed)[-1] > plain.height - 6  # ink in the added line, below the tiles' captions


def test_the_evaluation_phrasing_is_shown_and_an_image_instruction_is_not():
    from core.tools.search import _instruction_note

    assert _instruction_note(image_set([("do not change clothes", "keep the clothes")]), 0) == \
        "instruction: do not change clothes"
    assert _instruction_note(image_set([""]), 0) == ""  # a clothes template: the instruction is an image
    assert _instruction_note(image_set([None]), 0) == ""


def test_a_long_instruction_wraps_within_the_picture_and_stops_after_four_lines():
    from core.tools.pictures import wrap

    def measure(text):
        return 6 * len(text)

    words = [f"word{i}" for i in range(12)]
    lines = wrap(" ".join(words), 60, measure)
    assert all(measure(line) <= 60 for line in lines)
    shown = " ".join(lines).removesuffix("...").split()
    assert shown == words[:len(shown)]  # the words in order, none dropped before the cut
    assert " ".join(wrap(" ".join(words[:4]), 60, measure)).split() == words[:4]  # nothing lost when it fits
    assert len(lines) == 4 and lines[-1].endswith("...")
    assert all(measure(line) <= 60 for line in wrap("x" * 25, 60, measure))  # a word wider than a line is cut
    long = ranked_picture(RESULT, image_set([" ".join(["coat"] * 200)]), GALLERY, "q")
    assert long.height == ranked_picture(RESULT, image_set([None]), GALLERY, "q").height + 4 * LINE

"""The six ReID tasks of Instruct-ReID as instructions (paper Fig. 1; METHODS.md
"Instruct-ReID"): every task is retrieval of an identity under an instruction.

    task                  instruction of a query                   of a gallery item
    traditional           "do not change clothes" (fixed text)     the same text
    clothes-changing      "ignore clothes" (fixed text)            the same text
    clothes-template      a clothes image (the target outfit)      its own outfit's image
    visible-infrared      "cross modality" (fixed text)            the same text
    text-to-image         the description itself (no image)        a fixed text
    language-instructed   attribute sentences (target outfit)      its own attribute sentences

Fixed-text tasks have several phrasings (`DEFAULT_VARIANTS`, first = canonical): a
training sample draws one, evaluation uses the first. Every text is normalised as the
authors' `pre_caption` does: lower case, punctuation stripped, '-' and '/' to spaces, at
most 50 words.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

TRADITIONAL = "traditional"
CLOTHES_CHANGING = "clothes-changing"
CLOTHES_TEMPLATE = "clothes-template"
VISIBLE_INFRARED = "visible-infrared"
TEXT_TO_IMAGE = "text-to-image"
LANGUAGE_INSTRUCTED = "language-instructed"

#: The tasks in the paper's order (Fig. 1).
TASKS: tuple[str, ...] = (TRADITIONAL, CLOTHES_CHANGING, CLOTHES_TEMPLATE, VISIBLE_INFRARED, TEXT_TO_IMAGE,
                          LANGUAGE_INSTRUCTED)
#: Tasks whose instruction is an image (a clothes template) rather than text.
IMAGE_INSTRUCTION_TASKS = frozenset({CLOTHES_TEMPLATE})
#: Tasks whose instruction is a per-record text (a description), not a fixed phrase.
DESCRIPTION_TASKS = frozenset({TEXT_TO_IMAGE, LANGUAGE_INSTRUCTED})

#: Phrasings of the fixed-text instructions, the first the canonical one (paper Fig. 1:
#: "Do not change clothes", "Ignore clothes", "Cross modality"). For text-to-image the
#: phrase is the gallery images' instruction (the query is the description itself).
DEFAULT_VARIANTS: dict[str, tuple[str, ...]] = {
    TRADITIONAL: ("do not change clothes", "the person wears the same clothes",
                  "retrieve the same person in the same clothes"),
    CLOTHES_CHANGING: ("ignore clothes", "the person may have changed clothes",
                       "retrieve the same person in any clothes"),
    VISIBLE_INFRARED: ("cross modality", "match visible and infrared images",
                       "retrieve the same person in another modality"),
    TEXT_TO_IMAGE: ("retrieve the person described by the text",),
}

#: Attribute keys that describe a person's outfit (the synthetic world's `attributes`).
OUTFIT_ATTRIBUTES = ("hat", "top", "top_pattern", "top2", "sleeves", "bottom", "bottom_color", "shoes")

_PUNCTUATION = re.compile(r"([,.'!?\"()*#:;~])")
_SPACES = re.compile(r"\s{2,}")


def check_tasks(tasks: Sequence[str], where: str) -> list[str]:
    """`tasks` as a list of known, distinct task names; errors name `where` and the valid names."""
    if isinstance(tasks, str) or not len(tasks):
        raise ValueError(f"{where}: tasks must be a non-empty list of task names; valid: {', '.join(TASKS)}")
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"{where}: unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"{where}: a task is listed twice in {list(tasks)}")
    return list(tasks)


def normalize_text(text: str, max_words: int = 50) -> str:
    """Lower case, punctuation stripped, '-' and '/' as spaces, single spaces, at most
    `max_words` words (the authors' `pre_caption(caption, 50)`)."""
    text = _PUNCTUATION.sub("", str(text).lower()).replace("-", " ").replace("/", " ")
    text = _SPACES.sub(" ", text).strip()
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


def task_variants(task: str, overrides: Mapping[str, Sequence[str]], max_words: int) -> tuple[str, ...]:
    """The normalised phrasings of a fixed-text task: `overrides[task]` or the defaults."""
    variants = overrides.get(task, DEFAULT_VARIANTS.get(task, ()))
    out = tuple(normalize_text(v, max_words) for v in variants)
    if not out or not all(out):
        raise ValueError(f"task {task!r}: its instruction variants must be a non-empty list of non-empty "
                         f"texts, got {list(variants)!r}")
    return out


def attribute_sentences(attributes: Mapping[str, str], category: str, max_words: int = 50) -> str:
    """Language-instructed ReID's instruction: sentences about the attributes (the paper
    has an LLM turn attributes into sentences, Fig. 3a; ours is a template). For people:
    the outfit only (what can change), e.g. "the person wears a red striped top the
    second colour of the top is white the sleeves are long the person wears blue
    trousers the shoes are black the person wears no hat"; other categories: every
    attribute but the view."""
    a = dict(attributes)
    if category == "person":
        parts = [f"the person wears a {a.get('top', '')} {a.get('top_pattern', '')} top".replace(" plain top", " top")]
        if a.get("top2", "none") != "none":
            parts.append(f"the second colour of the top is {a['top2']}")
        parts.append(f"the sleeves are {a.get('sleeves', '')}")
        parts.append(f"the person wears {a.get('bottom_color', '')} {a.get('bottom', '')}")
        parts.append(f"the shoes are {a.get('shoes', '')}")
        parts.append("the person wears no hat" if a.get("hat", "none") == "none" else f"the hat is {a['hat']}")
        text = ". ".join(parts)
    else:
        text = ". ".join(f"the {k.replace('_', ' ')} is {v}" for k, v in a.items()
                         if k not in ("category", "view") and v not in ("", "none"))
    return normalize_text(text, max_words)

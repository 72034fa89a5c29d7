"""Text queries per part for the model grounders: a template with `{part}`, or one text
per part."""

from __future__ import annotations

from typing import Sequence


def part_queries(query: str | dict[str, str], parts: Sequence[str], key: str = "grounder.query") -> list[str]:
    """One query per part: `query.format(part=...)` for a template, `query[part]` for a
    mapping (every part named)."""
    if isinstance(query, dict):
        missing = [p for p in parts if p not in query]
        unknown = [k for k in query if k not in parts]
        if missing or unknown:
            raise ValueError(f"{key}: a mapping names every part once ({', '.join(parts)}); "
                             + (f"missing {missing[0]!r}" if missing else f"unknown part {unknown[0]!r}"))
        bad = [p for p in parts if not isinstance(query[p], str) or not query[p].strip()]
        if bad:
            raise ValueError(f"{key}.{bad[0]}: expected a non-empty text, got {query[bad[0]]!r}")
        return [query[p] for p in parts]
    if not isinstance(query, str) or "{part}" not in query:
        raise ValueError(f"{key}: a template must contain '{{part}}' (else every part gets the same query), "
                         f"or give a mapping {{part: text}}; got {query!r}")
    try:
        return [query.format(part=p) for p in parts]
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"{key}: {query!r} is not a valid template (only {{part}} is filled in): {exc}") from None

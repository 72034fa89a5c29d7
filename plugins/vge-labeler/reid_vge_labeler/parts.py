"""Part names, their stripe windows and height limits (MUVA Sec. 3.2.3; METHODS.md "VGE
labels").

A part is named by the words that fill the grounding query ("the <part> of the person"),
e.g. "head", "upper body", "legs" (the paper's three, in that order: the rows of G). The
stripe window of a part is where the part usually is in a pedestrian crop; the
calibration falls back to it (Figure 5), and the `stripes` grounder returns it.

Windows are written in YAML as [y0, y1] (a full-width horizontal stripe) or
[x0, y0, x1, y1], fractions of the image.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

#: The paper's parts, in the order of G's rows.
DEFAULT_PARTS = ("head", "upper body", "legs")

#: Stripe windows (our choice, METHODS.md): head 0-0.3, upper body 0.2-0.6, legs 0.5-1.0 of
#: the height, full width. "upper" is the synthetic world's name for the upper body.
DEFAULT_STRIPES: dict[str, tuple[float, float]] = {
    "head": (0.0, 0.3), "upper body": (0.2, 0.6), "upper": (0.2, 0.6), "legs": (0.5, 1.0),
}

#: Tallest plausible box per part, as a fraction of the image height (METHODS.md): a box
#: near the full height holds the whole person (Figure 5 (b)). Legs reach further.
DEFAULT_MAX_H = 0.9
DEFAULT_MAX_H_BY_PART = {"legs": 0.95}


def check_parts(parts: Any) -> list[str]:
    """A non-empty list of distinct, non-empty part names."""
    if isinstance(parts, str) or not isinstance(parts, Sequence) or not parts:
        raise ValueError(f"parts must be a non-empty list of part names, e.g. {list(DEFAULT_PARTS)}; got {parts!r}")
    names = [p.strip() if isinstance(p, str) else p for p in parts]
    bad = [p for p in names if not isinstance(p, str) or not p]
    if bad:
        raise ValueError(f"parts: every part is a non-empty name (the words of the query 'the <part> of the "
                         f"person'); got {bad[0]!r} in {list(parts)}")
    dup = sorted({p for p in names if names.count(p) > 1})
    if dup:
        raise ValueError(f"parts: {dup[0]!r} is listed twice in {list(parts)}")
    return names


def window_box(window: Any, where: str) -> np.ndarray:
    """[y0, y1] or [x0, y0, x1, y1] (fractions) -> (4,) float [x0, y0, x1, y1]."""
    try:
        values = [float(v) for v in window]
    except (TypeError, ValueError):
        values = []
    if len(values) == 2:
        values = [0.0, values[0], 1.0, values[1]]
    if len(values) != 4 or not all(0.0 <= v <= 1.0 for v in values) \
            or values[2] <= values[0] or values[3] <= values[1]:
        raise ValueError(f"{where}: a window is [y0, y1] (a full-width stripe) or [x0, y0, x1, y1], fractions "
                         f"of the image with x0 < x1 and y0 < y1; got {window!r}")
    return np.asarray(values, dtype=np.float32)


def stripe_boxes(parts: Sequence[str], stripes: Mapping[str, Any] | None, key: str = "stripes") -> np.ndarray:
    """(P, 4) stripe windows of `parts`: `stripes[part]` where given, else the default
    window of that part name; a part with neither is an error naming the key."""
    stripes = dict(stripes or {})
    unknown = [k for k in stripes if k not in parts]
    if unknown:
        raise ValueError(f"{key}: {unknown[0]!r} is not one of the parts ({', '.join(parts)})")
    out = []
    for part in parts:
        if part in stripes:
            out.append(window_box(stripes[part], f"{key}.{part}"))
        elif part in DEFAULT_STRIPES:
            out.append(window_box(DEFAULT_STRIPES[part], f"default stripe of {part!r}"))
        else:
            raise ValueError(f"{key}: part {part!r} has no default stripe window (defaults exist for "
                             f"{', '.join(DEFAULT_STRIPES)}); give one, e.g. {key}: {{{part}: [0.3, 0.7]}}")
    return np.stack(out)


def per_part(value: float | Mapping[str, float] | None, parts: Sequence[str], key: str,
             default: Mapping[str, float | None] | float | None) -> list[float | None]:
    """A per-part number from a float (every part), a mapping {part: float} (the others
    keep their default) or None (the defaults)."""
    def fallback(part: str) -> float | None:
        return default.get(part) if isinstance(default, Mapping) else default

    if value is None:
        return [fallback(p) for p in parts]
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in parts]
        if unknown:
            raise ValueError(f"{key}: {unknown[0]!r} is not one of the parts ({', '.join(parts)})")
        out = [value.get(p, fallback(p)) for p in parts]
    else:
        out = [value] * len(parts)
    for part, v in zip(parts, out):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0):
            raise ValueError(f"{key}: the value for {part!r} must be a fraction of the image height in [0, 1]; "
                             f"got {v!r}")
    return [None if v is None else float(v) for v in out]


def default_max_h(parts: Sequence[str]) -> dict[str, float]:
    return {p: DEFAULT_MAX_H_BY_PART.get(p, DEFAULT_MAX_H) for p in parts}

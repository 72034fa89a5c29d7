"""`record_boxes`: the records' own part boxes (the synthetic world's `part_boxes` extras,
or a manifest's `part_boxes` column), optionally spoiled with the faults MUVA's Figure 5
shows a grounding model makes, so that the calibration can be measured against a truth:

  - whole_body: the box of the whole person (the union of its part boxes), the "irregular
    peaks at values approximating the entire image height" (Figure 5 (a), (b));
  - tiny: a small fragment inside the true box (over-splitting, Figure 5 (c), (d)), its
    height uniform in `tiny_height` (fractions of the image height), its width 20-60 %
    of the true box's;
  - missing: no box (the model answered without coordinates).

Each (image, part) draws at most one fault, with the given probabilities. The draws
depend on (seed, the record: path, pid, camera, render key, true boxes), never on the
batch order, so an interrupted and resumed run spoils the same boxes.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from core.records import Record
from reid_vge_labeler.grounders.base import Grounder, Grounding

#: codes of the `part_fault` field (uint8)
FAULT_NAMES = ("none", "whole_body", "tiny", "missing")


@dataclass(frozen=True)
class Faults:
    whole_body: float = 0.0
    tiny: float = 0.0
    missing: float = 0.0
    seed: int = 0
    tiny_height: tuple[float, float] = (0.01, 0.05)

    @classmethod
    def from_yaml(cls, value: dict[str, Any] | None) -> "Faults":
        if value is None:
            return cls()
        if not isinstance(value, dict):
            raise ValueError(f"grounder.faults must be a mapping {{whole_body: p, tiny: p, missing: p, seed: n}}, "
                             f"got {value!r}")
        valid = ("whole_body", "tiny", "missing", "seed", "tiny_height")
        for key in value:
            if key not in valid:
                raise ValueError(f"grounder.faults: unknown key {key!r}; valid keys: {', '.join(valid)}")
        probs = {k: value.get(k, 0.0) for k in ("whole_body", "tiny", "missing")}
        for key, p in probs.items():
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
                raise ValueError(f"grounder.faults.{key} is a probability in [0, 1]; got {p!r}")
        if sum(probs.values()) > 1.0 + 1e-9:
            raise ValueError(f"grounder.faults: the probabilities add up to {sum(probs.values()):.3g} > 1 "
                             "(one fault at most per box)")
        seed = value.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"grounder.faults.seed is an integer; got {seed!r}")
        tiny = value.get("tiny_height", (0.01, 0.05))
        if (not isinstance(tiny, (list, tuple)) or len(tiny) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in tiny)
                or not 0.0 < tiny[0] <= tiny[1] <= 1.0):
            raise ValueError(f"grounder.faults.tiny_height is [low, high], fractions of the image height with "
                             f"0 < low <= high <= 1; got {tiny!r}")
        return cls(seed=seed, tiny_height=(float(tiny[0]), float(tiny[1])),
                   **{k: float(v) for k, v in probs.items()})

    @property
    def any(self) -> bool:
        return self.whole_body + self.tiny + self.missing > 0


class RecordBoxGrounder(Grounder):
    """field: the record extra holding (P, 4) boxes, fractions, in the order of the
    labeler's `parts`. faults: {whole_body, tiny, missing: probabilities, seed,
    tiny_height: [low, high]}, none by default."""

    def __init__(self, parts: Sequence[str], field: str = "part_boxes", faults: dict[str, Any] | None = None) -> None:
        super().__init__(parts)
        self.field = field
        self.faults = Faults.from_yaml(faults)

    def ground(self, images: list[Any], records: list[Record]) -> Grounding:
        out = self.empty(len(records))
        codes = np.zeros((len(records), len(self.parts)), dtype=np.uint8)
        for i, record in enumerate(records):
            truth = self.true_boxes(record)
            out.boxes[i], out.found[i] = truth, True
            if self.faults.any:
                self._spoil(record, truth, out.boxes[i], out.found[i], codes[i])
        out.extras["part_fault"] = codes
        return out

    def true_boxes(self, record: Record) -> np.ndarray:
        where = f"record of pid {record.pid}" + (f" ({record.path})" if record.path else "")
        if self.field not in record.extras:
            raise ValueError(f"grounder 'record_boxes': {where} has no '{self.field}' extra (the synthetic world's "
                             f"records have 'part_boxes'; a manifest can carry a part_boxes column); records have: "
                             f"{', '.join(sorted(k for k in record.extras if not k.startswith('_'))) or 'no extras'}")
        boxes = np.asarray(record.extras[self.field], dtype=np.float32)
        if boxes.shape != (len(self.parts), 4):
            raise ValueError(f"grounder 'record_boxes': {where}: '{self.field}' has shape {boxes.shape}; expected "
                             f"({len(self.parts)}, 4), one box per part ({', '.join(self.parts)})")
        return boxes

    def _spoil(self, record: Record, truth: np.ndarray, boxes: np.ndarray, found: np.ndarray,
               codes: np.ndarray) -> None:
        f = self.faults
        rng = np.random.default_rng([f.seed, _record_hash(record, truth)])
        person = np.concatenate([truth[:, :2].min(0), truth[:, 2:].max(0)])
        for p in range(len(self.parts)):
            u = rng.random()
            if u < f.whole_body:
                boxes[p], codes[p] = person, 1
            elif u < f.whole_body + f.tiny:
                boxes[p], codes[p] = _fragment(truth[p], f.tiny_height, rng), 2
            elif u < f.whole_body + f.tiny + f.missing:
                boxes[p], found[p], codes[p] = 0.0, False, 3


def _fragment(box: np.ndarray, heights: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """A small box inside `box`: height uniform in `heights`, width 20-60 % of the box's."""
    x0, y0, x1, y1 = (float(v) for v in box)
    h = min(rng.uniform(*heights), max(y1 - y0, 1e-3))
    w = max((x1 - x0) * rng.uniform(0.2, 0.6), 1e-3)
    fx = x0 + rng.uniform(0.0, max(x1 - x0 - w, 0.0))
    fy = y0 + rng.uniform(0.0, max(y1 - y0 - h, 0.0))
    return np.asarray([fx, fy, fx + w, fy + h], dtype=np.float32)


def _record_hash(record: Record, truth: np.ndarray) -> int:
    ident = f"{record.path}|{record.pid}|{record.camid}|{record.extras.get('render_key')}|"
    return zlib.crc32(ident.encode() + np.ascontiguousarray(truth, dtype=np.float32).tobytes())

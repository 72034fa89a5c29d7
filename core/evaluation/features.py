"""Embeddings of millions of images on disk: a memory-mapped float16 .npy file written in
chunks (issue 24), so extraction never holds the whole gallery in RAM as float32 (5M x
768 x 4 bytes = 15 GB; as float16 on disk, 7.7 GB, paged in block by block by
`core.evaluation.blocked`).

float16 keeps 11 significant bits (relative error <= 2^-11 per component) and a range of
+-65504. Embeddings beyond that range would become inf, so a chunk with a value outside
it (or NaN / inf already) is refused with the offending row named, not written. Ranking
on float16-stored features is ranking on features rounded to float16; the distances are
computed in float32 from them (`blocked.rows_as_float`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Largest finite float16.
FLOAT16_MAX = float(np.finfo(np.float16).max)


class FeatureWriter:
    """(num, dim) float16 embeddings written chunk by chunk into a .npy memory map."""

    def __init__(self, path: str | Path, num: int, dim: int) -> None:
        if num < 1 or dim < 1:
            raise ValueError(f"feature file needs num >= 1 rows and dim >= 1, got ({num}, {dim})")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.array = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float16, shape=(num, dim))
        self.written = 0

    def write(self, chunk: np.ndarray) -> None:
        """Append rows (any float dtype) after those written so far."""
        chunk = np.asarray(chunk)
        num, dim = self.array.shape
        if chunk.ndim != 2 or chunk.shape[1] != dim:
            raise ValueError(f"{self.path}: chunk of shape {chunk.shape} does not fit rows of dimension {dim}")
        stop = self.written + len(chunk)
        if stop > num:
            raise ValueError(f"{self.path}: {stop} rows written, but the file holds {num}")
        bad = ~np.isfinite(chunk).all(1) | (np.abs(chunk) > FLOAT16_MAX).any(1)
        if bad.any():
            row = self.written + int(np.flatnonzero(bad)[0])
            raise ValueError(f"{self.path}: row {row} has a value that float16 cannot hold (NaN, inf or "
                             f"|x| > {FLOAT16_MAX:g}); normalise the embeddings or keep them as float32")
        self.array[self.written:stop] = chunk
        self.written = stop

    def close(self) -> np.memmap:
        """Flush; every row must have been written. Returns the file opened read-only."""
        if self.written != len(self.array):
            raise ValueError(f"{self.path}: {self.written} of {len(self.array)} rows written")
        self.array.flush()
        del self.array
        return open_features(self.path)


def open_features(path: str | Path) -> np.memmap:
    """A feature .npy file, memory-mapped read-only (nothing is read until used)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file not found: {path}")
    array = np.load(path, mmap_mode="r")
    if array.ndim != 2:
        raise ValueError(f"{path}: feature file must hold a 2-D (N, D) array, got shape {array.shape}")
    return array

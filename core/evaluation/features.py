"""Embeddings of millions of images on disk: a memory-mapped float16 (or float32) .npy
file written in chunks (issue 24), so extraction never holds the whole gallery in RAM as
float32 (5M x 768 x 4 bytes = 15 GB; as float16 on disk, 7.7 GB, paged in block by block
by `core.evaluation.blocked`). Used by `core extract --half` and by the trainer's
evaluation (`trainer.eval_features`).

float16 keeps 11 significant bits (relative error <= 2^-11 per component) and a range of
+-65504. Embeddings beyond that range would become inf, so a chunk with a value outside
it (or NaN / inf already) is refused with the offending row named, not written. Ranking
on float16-stored features is ranking on features rounded to float16; the distances are
computed in float32 from them (`blocked.rows_as_float`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

#: Largest finite float16.
FLOAT16_MAX = float(np.finfo(np.float16).max)


#: The dtypes a feature file may hold.
FEATURE_DTYPES = ("float16", "float32")


class FeatureWriter:
    """(num, dim) float16 (or float32) embeddings written chunk by chunk into a .npy
    memory map. An existing file at `path` is unlinked first, not truncated: a process
    that still maps it (an earlier evaluation's features) keeps reading its old pages."""

    def __init__(self, path: str | Path, num: int, dim: int, dtype: str = "float16") -> None:
        if num < 1 or dim < 1:
            raise ValueError(f"feature file needs num >= 1 rows and dim >= 1, got ({num}, {dim})")
        if dtype not in FEATURE_DTYPES:
            raise ValueError(f"feature file dtype must be one of {', '.join(FEATURE_DTYPES)}, got {dtype!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        self.array = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.dtype(dtype), shape=(num, dim))
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
        bad = ~np.isfinite(chunk).all(1)
        if self.array.dtype == np.float16:
            bad |= (np.abs(chunk) > FLOAT16_MAX).any(1)
        if bad.any():
            row = self.written + int(np.flatnonzero(bad)[0])
            if self.array.dtype == np.float16:
                raise ValueError(f"{self.path}: row {row} has a value that float16 cannot hold (NaN, inf or "
                                 f"|x| > {FLOAT16_MAX:g}); normalise the embeddings or keep them as float32")
            raise ValueError(f"{self.path}: row {row} has a NaN or infinite value")
        self.array[self.written:stop] = chunk
        self.written = stop

    def close(self) -> np.memmap:
        """Flush; every row must have been written. Returns the file opened read-only."""
        if self.written != len(self.array):
            raise ValueError(f"{self.path}: {self.written} of {len(self.array)} rows written")
        self.array.flush()
        del self.array
        return open_features(self.path)


def open_features(path: str | Path, mode: str = "r") -> np.memmap:
    """A feature .npy file, memory-mapped read-only (nothing is read until used); mode
    "c" (copy-on-write) gives a writable view whose writes stay in this process, so torch
    can wrap it (`features_tensor`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file not found: {path}")
    array = np.load(path, mmap_mode=mode)  # allow_pickle stays False: an object array is refused, nothing unpickled
    if array.ndim != 2:
        raise ValueError(f"{path}: feature file must hold a 2-D (N, D) array, got shape {array.shape}")
    return array


def features_tensor(path: str | Path) -> torch.Tensor:
    """A feature file as a CPU tensor over its memory map (copy-on-write): rows are read
    from disk only when sliced, so `core.evaluation.blocked` pages the file in block by
    block; an in-place change by an evaluator stays private to the process."""
    return torch.from_numpy(open_features(path, mode="c"))

"""Extract CUHK03's images from the official release file `cuhk-03.mat` (Li et al. 2014).

The release is one MATLAB v7.3 file (HDF5 inside): `labeled` and `detected` each hold a
1 x 5 array of references, one per camera pair; each pair is a (10 x persons) cell array
of images, the first five taken by the pair's first camera (view 1), the last five by
the second (view 2); missing shots are empty cells. Images are stored column-major, so
a cell reads as (channels, width, height) and is transposed to (height, width, channels).

Files are written as `<pair>_<pid>_<view>_<index>.png` with 1-based pair, person
(3 digits, numbered within the pair), view and shot (2 digits) — the names torchreid
gives them and that the new protocol's split files (`cuhk03_new_protocol_config_*.mat`,
`splits_new_*.json`) list. Extraction writes into a temporary folder renamed at the
end, so an interrupted run leaves nothing that looks complete.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Where torchreid and the release put the file, relative to the dataset root.
RAW_LOCATIONS = ("cuhk-03.mat", "cuhk03_release/cuhk-03.mat")
SHOTS_PER_VIEW = 5


def find_raw_mat(root: Path) -> Path | None:
    for rel in RAW_LOCATIONS:
        if (root / rel).is_file():
            return root / rel
    return None


def image_name(pair: int, person: int, shot: int) -> str:
    """File name of shot `shot` (0-based, 0..9) of person `person` (0-based) in camera pair
    `pair` (0-based)."""
    view = 1 if shot < SHOTS_PER_VIEW else 2
    return f"{pair + 1:01d}_{person + 1:03d}_{view:01d}_{shot + 1:02d}.png"


def extract_images(raw_mat: Path, out_dir: Path, subset: str) -> int:
    """Write every non-empty image of `subset` ("labeled" or "detected") in `raw_mat` to
    `out_dir`; returns the number written. Needs h5py (`pip install reid-core[cuhk03]`)."""
    try:
        import h5py
    except ImportError:
        raise ImportError(f"CUHK03: extracting images from {raw_mat} needs h5py (the file is MATLAB v7.3, "
                          "i.e. HDF5): pip install 'reid-core[cuhk03]', or extract them once with "
                          "torchreid's CUHK03 dataset") from None
    from PIL import Image

    def unreadable(exc: Exception) -> ValueError:
        return ValueError(f"CUHK03: {raw_mat} is not a readable cuhk-03.mat ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())}); the official release is one MATLAB v7.3 (HDF5) file: "
                          "this one is cut short or another file: copy it again")

    def read(mat: Any, ref: Any) -> np.ndarray:
        """The array `ref` names (h5py raises OSError, KeyError, ... on a damaged file)."""
        try:
            return np.asarray(mat[ref])
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise unreadable(exc) from None

    with open(raw_mat, "rb"):  # a permission problem as the OS tells it (h5py's text has no errno)
        pass
    try:
        mat_file = h5py.File(raw_mat, "r")
    except OSError as exc:  # h5py: 'file signature not found', 'truncated file: eof = ...'
        if exc.errno is not None:  # the disk or the permissions: not the content
            raise
        raise unreadable(exc) from None
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    written = 0
    try:
        with mat_file as mat:
            if subset not in mat:
                raise ValueError(f"CUHK03: {raw_mat} has no '{subset}' entry; the official cuhk-03.mat "
                                 f"holds 'labeled' and 'detected' (found: {', '.join(sorted(mat.keys()))})")
            for pair, pair_ref in enumerate(read(mat, subset).ravel()):
                cells = read(mat, pair_ref).T  # (persons, 10) references
                for person in range(cells.shape[0]):
                    for shot, ref in enumerate(cells[person]):
                        pixels = read(mat, ref).T
                        if pixels.size == 0 or pixels.ndim < 3:
                            continue  # an empty cell: the shot does not exist
                        Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(
                            partial / image_name(pair, person, shot))
                        written += 1
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    os.replace(partial, out_dir)
    log.info("CUHK03: extracted %d %s images from %s into %s", written, subset, raw_mat, out_dir)
    return written

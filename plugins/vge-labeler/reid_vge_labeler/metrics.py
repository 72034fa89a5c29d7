"""Agreement of part masks with a reference (for the calibration experiment)."""

from __future__ import annotations

import numpy as np


def mask_iou(masks: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """IoU of binary masks (..., rows, cols) with `truth` of the same shape, per mask:
    |A and B| / |A or B|; two empty masks agree (1)."""
    a = np.asarray(masks).astype(bool)
    b = np.asarray(truth).astype(bool)
    if a.shape != b.shape:
        raise ValueError(f"mask_iou: shapes differ: {a.shape} and {b.shape}")
    inter = (a & b).sum(axis=(-2, -1))
    union = (a | b).sum(axis=(-2, -1))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)

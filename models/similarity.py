"""Cosine agreement between two embedding sets, row by row.

How closely one model reproduces another's vectors on the same texts: the
alignment toolchain selects adapters by it and the alignment report prints it,
so it lives here, below both.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def mean_cosine(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    """Mean cosine of paired rows of ``a`` and ``b`` (n, dim); NaN when there are none."""
    if len(a) == 0:
        return float("nan")
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return float(np.mean(np.sum(a * b, axis=1)))

"""Small-array numpy shortcuts the plant's step is made of.

A plant step works on arrays of a few to a few dozen elements, where numpy's
Python-level dispatch costs more than the arithmetic; these skip it.
"""

from __future__ import annotations

import numpy as np

# ndarray.sum()/any() go through Python wrappers; the ufunc reductions are
# several times cheaper on the small arrays a plant step is made of.
fsum = np.add.reduce
fany = np.logical_or.reduce


def clamp(x: np.ndarray, limit: float) -> np.ndarray:
    """Symmetric clamp; np.clip's dispatch costs more than the math on small arrays."""
    return np.minimum(np.maximum(x, -limit), limit)

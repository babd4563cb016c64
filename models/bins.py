"""Time bins: which bin a sample falls in, what a bin accumulates, when a bin counts.

One definition for everything that turns scans into per-minute values: the
historian's 1-minute aggregates, the dataset builder's resampling and the live
forecaster's minute means. A forecast made at run time must see exactly the
minutes the model was trained on, so the three may not drift apart.

* **Bin index**: ``floor(t / step)`` (the bin starts at ``index * step``; a
  sample on a boundary opens the next bin).
* **Accumulation**: per series the sum and count of its usable samples (and,
  when asked, their min and max). The sums are running sums added scan by
  scan in time order, and :func:`bin_sums` (vectorised) adds in the same order
  as :class:`BinAccumulator` (streaming), so both give the same bits.
* **Validity** (:func:`invalid_bins`): a series' bin is invalid when fewer than
  half of the bin's scans carry a usable sample of it, and every series' bin is
  invalid when the bin holds fewer than half the usual number of scans (a gap
  in the recording). Invalid bins are NaN; nothing is interpolated.
"""

from __future__ import annotations

import math
from typing import overload

import numpy as np

__all__ = [
    "BinAccumulator",
    "bin_index",
    "bin_means",
    "bin_start",
    "bin_sums",
    "invalid_bins",
    "usual_scans",
]


@overload
def bin_index(t: float, step_s: float) -> int: ...
@overload
def bin_index(t: np.ndarray, step_s: float) -> np.ndarray: ...
def bin_index(t: float | np.ndarray, step_s: float) -> int | np.ndarray:
    """``floor(t / step_s)``: an int for a scalar, an int64 array for an array."""
    if isinstance(t, np.ndarray):
        return np.floor(t / step_s).astype(np.int64)
    return math.floor(t / step_s)


def bin_start(t: float, step_s: float) -> float:
    """The start time of the bin ``t`` falls in."""
    return math.floor(t / step_s) * step_s


class BinAccumulator:
    """Running sum, count (and optionally min/max) of one bin, one slot per series.

    NaN samples (or the ones ``usable`` marks False) are left out, as SQL's
    aggregates leave out NULL.
    """

    __slots__ = ("cnt", "mn", "mx", "rows", "sum")

    def __init__(self, n: int, *, extremes: bool = True) -> None:
        self.rows = 0  # scans added, usable or not
        self.sum = np.zeros(n)
        self.cnt = np.zeros(n, np.int64)
        self.mn: np.ndarray | None = np.full(n, np.nan) if extremes else None
        self.mx: np.ndarray | None = np.full(n, np.nan) if extremes else None

    def reset(self) -> None:
        """Empty it for the next bin (reusing the arrays)."""
        self.rows = 0
        self.sum[:] = 0.0
        self.cnt[:] = 0
        if self.mn is not None and self.mx is not None:
            self.mn[:] = np.nan
            self.mx[:] = np.nan

    def add(self, values: np.ndarray, usable: np.ndarray | None = None) -> None:
        """One scan; ``usable`` defaults to "not NaN"."""
        ok = ~np.isnan(values) if usable is None else usable
        self.sum += np.where(ok, values, 0.0)
        self.cnt += ok
        if self.mn is not None and self.mx is not None:
            # fmin/fmax skip NaN; a sample marked unusable must not count either
            v = values if usable is None else np.where(ok, values, np.nan)
            np.fmin(self.mn, v, out=self.mn)
            np.fmax(self.mx, v, out=self.mx)
        self.rows += 1

    def add_block(self, block: np.ndarray) -> None:
        """Several scans at once (one row each, NaN = missing)."""
        ok = ~np.isnan(block)
        self.sum += np.where(ok, block, 0.0).sum(axis=0)
        self.cnt += ok.sum(axis=0)
        if self.mn is not None and self.mx is not None:
            np.fmin(self.mn, np.fmin.reduce(block, axis=0), out=self.mn)
            np.fmax(self.mx, np.fmax.reduce(block, axis=0), out=self.mx)
        self.rows += len(block)

    def mean(self) -> np.ndarray:
        """Mean of the usable samples per series; NaN where there was none."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.cnt > 0, self.sum / np.maximum(self.cnt, 1), np.nan)

    def stats(self) -> dict[str, np.ndarray]:
        """``mean``, ``min`` and ``max`` per series (NaN where nothing was usable)."""
        if self.mn is None or self.mx is None:
            raise ValueError("this accumulator does not keep min/max (extremes=False)")
        return {"mean": self.mean(), "min": self.mn, "max": self.mx}


def bin_sums(
    index: np.ndarray, values: np.ndarray, usable: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per bin: the sum and the count of the usable samples of one series.

    ``index`` is the bin of every sample (0-based). ``np.bincount`` adds the
    samples in their order, as :meth:`BinAccumulator.add` does scan by scan.
    """
    cnt = np.bincount(index, weights=usable.astype(np.float64), minlength=n_bins)
    s = np.bincount(index, weights=np.where(usable, values, 0.0), minlength=n_bins)
    return s, cnt


def usual_scans(scans_per_bin: np.ndarray) -> float:
    """The usual number of scans in a bin: the median over the bins that hold any."""
    counts = np.asarray(scans_per_bin, dtype=np.float64)
    return float(np.median(counts[counts > 0]))


def invalid_bins(cnt: np.ndarray, scans: np.ndarray | float, usual: float) -> np.ndarray:
    """Where a bin's mean is not to be used (see the module docstring).

    ``cnt``: usable samples of a series per bin (or of every series in one
    bin), ``scans``: scans in the bin(s), ``usual``: :func:`usual_scans`.
    """
    scans = np.asarray(scans, dtype=np.float64)
    return (cnt < 0.5 * scans) | (scans < 0.5 * usual) | (cnt == 0)


def bin_means(
    s: np.ndarray, cnt: np.ndarray, scans: np.ndarray | float, usual: float
) -> np.ndarray:
    """``s / cnt``, NaN where :func:`invalid_bins` says the bin does not count."""
    with np.errstate(invalid="ignore", divide="ignore"):
        m = s / cnt
    m[np.broadcast_to(invalid_bins(cnt, scans, usual), m.shape)] = np.nan
    return m

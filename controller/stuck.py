"""Check 6 of validation (``estimate.py``): a sensor stuck while its witness moves.

An analog transducer whose raw value has not changed at all while a
physically coupled *witness* moved significantly (``plausibility.witnesses``
names the pairs and their thresholds) is stuck: ``UNCERTAIN + FLAG_STUCK``
after ``STUCK_S``, or after ``STUCK_FAST_S`` when the witness moved
``STUCK_FAST_X`` times as far, and ``BAD`` after ``STUCK_BAD_S``.

Pure and vectorised, like the estimator that owns it: ``StuckDetector.step``
takes the scan's time and arrays and keeps only the memory the rule needs
(the frozen value, since when, how many identical samples, and each witness's
movement since). That memory is fast state: after a restart it starts afresh.
"""

from __future__ import annotations

import numpy as np

from thermogate.plc.pointmap import PointMap
from thermogate.plc.site import Site

from .plausibility import witnesses

#: Identical raw readings this long, while a witness moved, -> UNCERTAIN ...
STUCK_S = 120.0
#: ... and this long -> BAD.
STUCK_BAD_S = 300.0
#: With the witness moving STUCK_FAST_X times its threshold (1.5 K for a
#: partner temperature: 15 counts at 0.1 °C), 20 s of not a single count of
#: change is already conclusive (a thermowell lags by ~10-30 s, not more).
STUCK_FAST_S = 20.0
#: ... and never on fewer identical samples than this (at a 1 s scan the fast
#: path's 20 s; a longer scan needs proportionally longer).
STUCK_MIN_SAMPLES = 20
#: ... and the slow path on no fewer than this: a quiet reading whose noise is
#: half a count repeats with p ~ 0.7, so 20 repeats happen by chance about once
#: in 2,000 windows (hours of a large site at a 5 s scan), 40 once in 10^6.
STUCK_MIN_SAMPLES_SLOW = 40
STUCK_FAST_X = 3.0


class StuckDetector:
    """The stuck rule over every point of one point map, and its memory."""

    def __init__(self, pmap: PointMap, site: Site) -> None:
        self.n = n = len(pmap.points)
        w = witnesses(pmap, site)
        # the pairs (point, witness), grouped in runs by point
        self._pp, self._pw = w.point, w.witness
        self._elig = w.eligible
        self._pp_starts, self._pp_heads = w.starts, w.heads
        self._zero_band = w.zero_band
        self._pw_abs, self._pw_rel = w.move_abs, w.move_rel
        self._pw_fast = w.fast
        # each point's run among the pairs (its index in ``_pp_heads``; -1: none)
        self._head_of = np.full(n, -1, dtype=np.int64)
        self._head_of[self._pp_heads] = np.arange(len(self._pp_heads))
        self._pp_lens = np.diff(np.append(self._pp_starts, len(self._pp)))  # pairs per run

        self._frozen = np.full(n, np.nan)  # raw value since it last changed
        self._frozen_t = np.full(n, np.nan)
        self._frozen_n = np.zeros(n)  # identical samples since it last changed
        self._w0 = np.full(len(self._pp), np.nan)  # witness value when the point froze
        self._wmax = np.zeros(len(self._pp))  # witness movement since, in thresholds

    def step(
        self, t: float, v: np.ndarray, accept: np.ndarray, cur: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(stuck, stuck long enough to be BAD) for every point at time ``t``.

        ``v`` is the raw reading, ``accept`` where it passed checks 1-5, ``cur``
        the accepted values (NaN elsewhere) the witnesses are judged on.
        """
        elig = accept & self._elig
        changed = elig & (v != self._frozen)
        # (np.putmask(a, m, b) is np.copyto(a, b, where=m) for one shape, several
        # times faster; adding the bool mask adds 1.0 or 0.0, exactly)
        np.putmask(self._frozen, changed, v)
        np.putmask(self._frozen_t, changed, t)
        np.putmask(self._frozen_n, changed, 0.0)
        np.add(self._frozen_n, elig & ~changed, out=self._frozen_n)
        w0, wmax = self._w0, self._wmax
        wv = cur[self._pw]
        reset = changed[self._pp]
        np.putmask(w0, reset, wv)
        np.putmask(wmax, reset, 0.0)
        np.putmask(w0, np.isnan(w0) & ~np.isnan(wv), wv)
        thr = np.maximum(self._pw_abs, self._pw_rel * np.abs(w0))
        np.fmax(wmax, np.abs(wv - w0) / thr, out=wmax)  # NaN (a witness away) leaves it
        stuck = np.zeros(self.n, dtype=bool)
        stuck_bad = np.zeros(self.n, dtype=bool)
        # A noisy, quantised reading repeats by chance: how unlikely a run of repeats
        # is depends on how many samples, not how many seconds. Only the few points
        # frozen that long can be stuck (a changed point's count is 0): the rule is
        # worked out for those alone.
        cand = np.flatnonzero(elig & (self._frozen_n >= STUCK_MIN_SAMPLES))
        if not cand.size:
            return stuck, stuck_bad
        moved = np.zeros(cand.size)
        moved_fast = np.zeros(cand.size)  # by the witnesses that may judge on the fast path
        head = self._head_of[cand]  # its run of pairs (-1: no witness)
        has = head >= 0
        at = head[has]
        if at.size:
            # the witnesses' movement, the most of each candidate's run of pairs: the
            # runs gathered one after another, then reduced run by run
            lens = self._pp_lens[at]
            off = np.cumsum(lens) - lens
            pair = np.repeat(self._pp_starts[at] - off, lens) + np.arange(int(lens.sum()))
            w = wmax[pair]
            moved[has] = np.maximum.reduceat(w, off)
            moved_fast[has] = np.maximum.reduceat(np.where(self._pw_fast[pair], w, 0.0), off)
        n_c = self._frozen_n[cand]
        frozen_for = t - self._frozen_t[cand]
        hit = (np.abs(v[cand]) > self._zero_band[cand]) & (
            ((frozen_for >= STUCK_S) & (moved >= 1.0) & (n_c >= STUCK_MIN_SAMPLES_SLOW))
            | ((frozen_for >= STUCK_FAST_S) & (moved_fast >= STUCK_FAST_X))
        )
        stuck[cand] = hit
        stuck_bad[cand] = hit & (frozen_for >= STUCK_BAD_S)
        return stuck, stuck_bad

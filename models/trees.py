"""Fitted gradient-boosted trees as flat numpy arrays, for fast small-batch prediction.

``HistGradientBoostingRegressor.predict`` costs ~10 ms per call whatever the
row count (thread start-up and input validation); a planning interval asks a
few hundred rows of a few hundred trees, which numpy evaluates level by level
for all rows and trees at once in well under a millisecond.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["CompiledForest"]


class CompiledForest:
    """Fitted ``HistGradientBoostingRegressor`` s (squared error), one per output
    column, as padded numpy arrays evaluated level by level for all trees at once."""

    def __init__(self, regs: Sequence[Any]) -> None:
        trees = [p[0].nodes for r in regs for p in r._predictors]
        counts = [len(r._predictors) for r in regs]
        n = max(len(t) for t in trees)
        T = len(trees)
        feat = np.zeros((T, n), np.intp)
        thr = np.zeros((T, n))
        left = np.zeros((T, n), np.intp)
        right = np.zeros((T, n), np.intp)
        leaf = np.ones((T, n), bool)
        value = np.zeros((T, n))
        nan_left = np.zeros((T, n), bool)
        for i, nd in enumerate(trees):
            k = len(nd)
            feat[i, :k] = nd["feature_idx"]
            thr[i, :k] = nd["num_threshold"]
            left[i, :k] = nd["left"] + i * n  # flat indices into the (T, n) arrays
            right[i, :k] = nd["right"] + i * n
            leaf[i, :k] = nd["is_leaf"].astype(bool)
            value[i, :k] = nd["value"]
            nan_left[i, :k] = nd["missing_go_to_left"].astype(bool)
        # a leaf (and padding) points to itself both ways: a row that reached its
        # leaf stays there for the remaining levels without a leaf test per level
        own = np.arange(T * n).reshape(T, n)
        left[leaf] = own[leaf]
        right[leaf] = own[leaf]
        feat[leaf] = 0
        self.feat, self.thr = feat.ravel(), thr.ravel()
        self.left, self.right, self.value = left.ravel(), right.ravel(), value.ravel()
        self.nan_left = nan_left.ravel()
        self.root = np.arange(T) * n
        self.starts = np.r_[0, np.cumsum(counts)[:-1]]
        self.depth = int(max(t["depth"].max() for t in trees))
        self.baseline = np.array([float(np.ravel(r._baseline_prediction)[0]) for r in regs])

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(n, outputs) predictions."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        flat = X.ravel()
        offset = (np.arange(len(X)) * X.shape[1])[:, None]
        has_nan = bool(np.isnan(flat).any())
        node = np.broadcast_to(self.root, (len(X), len(self.root)))
        for _ in range(self.depth):
            x = flat[offset + self.feat[node]]
            go_left = x <= self.thr[node]
            if has_nan:  # sklearn sends a missing value the way it saw most of them go
                go_left = np.where(np.isnan(x), self.nan_left[node], go_left)
            node = np.where(go_left, self.left[node], self.right[node])
        return self.baseline + np.add.reduceat(self.value[node], self.starts, axis=1)

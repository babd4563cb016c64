"""models.bins: one bin rule, one accumulator, one validity rule for every minute binning."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thermogate.models.bins import (
    BinAccumulator,
    bin_index,
    bin_means,
    bin_start,
    bin_sums,
    invalid_bins,
    usual_scans,
)


def test_a_sample_on_a_boundary_opens_the_next_bin_and_negative_times_floor() -> None:
    assert bin_index(59.999, 60.0) == 0
    assert bin_index(60.0, 60.0) == 1
    assert bin_index(-0.5, 60.0) == -1
    assert bin_start(-0.5, 60.0) == -60.0
    t = np.array([-60.0, -0.5, 0.0, 59.999, 60.0, 1.7e9 + 30.0])
    np.testing.assert_array_equal(bin_index(t, 60.0), [bin_index(float(x), 60.0) for x in t])
    assert bin_index(t, 60.0).dtype == np.int64


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_scans=st.integers(1, 400))
def test_streaming_and_vectorised_sums_agree_bit_for_bit(seed: int, n_scans: int) -> None:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0.0, 600.0, n_scans))
    v = rng.normal(40.0, 7.0, (n_scans, 3)) * rng.uniform(0.1, 1e3)
    usable = rng.random((n_scans, 3)) > 0.3
    v[rng.random((n_scans, 3)) < 0.1] = np.nan
    usable &= np.isfinite(v)
    k = bin_index(t, 60.0)
    b = k - k.min()
    nb = int(b.max()) + 1
    acc = {int(m): BinAccumulator(3, extremes=False) for m in np.unique(b)}
    for i in range(n_scans):
        acc[int(b[i])].add(v[i], usable[i])
    for j in range(3):
        s, cnt = bin_sums(b, v[:, j], usable[:, j], nb)
        for m, a in acc.items():
            assert s[m] == a.sum[j]  # the same additions in the same order
            assert cnt[m] == a.cnt[j]


def test_a_point_with_fewer_than_half_usable_samples_is_invalid() -> None:
    scans = np.array([60.0, 60.0, 60.0])
    cnt = np.array([29.0, 30.0, 0.0])
    s = cnt * 20.0
    means = bin_means(s, cnt, scans, usual_scans(scans))
    assert math.isnan(means[0])  # 29 of 60
    assert means[1] == 20.0  # exactly half counts
    assert math.isnan(means[2])  # nothing usable


def test_a_bin_with_fewer_than_half_the_usual_scans_is_a_gap_for_every_point() -> None:
    scans = np.array([60.0, 29.0, 60.0, 0.0, 30.0])
    assert usual_scans(scans) == 45.0  # the median over bins that hold any scan
    cnt = scans.copy()  # every sample usable
    bad = invalid_bins(cnt, scans, 60.0)
    assert bad.tolist() == [False, True, False, True, False]
    # one bin of many points (the live forecaster's case): the gap blanks them all
    assert invalid_bins(np.array([25.0, 25.0]), 25.0, 60.0).all()
    assert not invalid_bins(np.array([30.0, 16.0]), 30.0, 60.0).any()


def test_the_accumulator_skips_nan_and_unusable_samples_in_every_statistic() -> None:
    acc = BinAccumulator(3)
    acc.add(np.array([1.0, np.nan, 5.0]))
    acc.add(np.array([3.0, np.nan, 100.0]), usable=np.array([True, False, False]))
    acc.add_block(np.array([[2.0, np.nan, 7.0], [np.nan, np.nan, 3.0]]))
    stats = acc.stats()
    np.testing.assert_array_equal(stats["mean"], [2.0, np.nan, 5.0])
    np.testing.assert_array_equal(stats["min"], [1.0, np.nan, 3.0])
    np.testing.assert_array_equal(stats["max"], [3.0, np.nan, 7.0])
    assert acc.rows == 4 and acc.cnt.tolist() == [3, 0, 3]
    acc.reset()
    assert acc.rows == 0 and np.isnan(acc.mean()).all()
    with pytest.raises(ValueError, match="extremes"):
        BinAccumulator(1, extremes=False).stats()

"""Unit tests for the Wilson score interval and the phase distribution.

The known values are the "score" method's intervals in Newcombe (1998),
Two-sided confidence intervals for the single proportion, Statistics in
Medicine 17:857-872, Table I, to the four decimals printed there.
"""

import pytest

from kerbside_tempest_plugin.loadtest import stats


@pytest.mark.parametrize('failures,runs,low,high', [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_newcombe_table(failures, runs, low, high):
    got = stats.wilson_interval(failures, runs)
    assert got[0] == pytest.approx(low, abs=5e-5)
    assert got[1] == pytest.approx(high, abs=5e-5)


def test_wilson_clean_soak_of_50():
    # 0 of 50: the upper bound is z^2/(n + z^2) exactly.
    low, high = stats.wilson_interval(0, 50)
    z2 = stats.Z95 ** 2
    assert low == 0.0
    assert high == pytest.approx(z2 / (50 + z2), rel=1e-12)
    assert high == pytest.approx(0.0713, abs=5e-5)


def test_wilson_is_symmetric_and_contains_the_estimate():
    for f, n in [(1, 10), (3, 50), (7, 9)]:
        low, high = stats.wilson_interval(f, n)
        mirror = stats.wilson_interval(n - f, n)
        assert low == pytest.approx(1 - mirror[1], abs=1e-12)
        assert high == pytest.approx(1 - mirror[0], abs=1e-12)
        assert low < f / n < high
    assert stats.wilson_interval(50, 50)[1] == 1.0
    assert stats.wilson_interval(5, 10) == pytest.approx(
        [0.2366, 0.7634], abs=5e-5)


def test_wilson_narrows_with_more_runs():
    w = [stats.wilson_interval(0, n)[1] for n in (10, 50, 200)]
    assert w[0] > w[1] > w[2]


def test_wilson_wider_z_is_wider():
    narrow = stats.wilson_interval(2, 50, z=1.0)
    wide = stats.wilson_interval(2, 50)
    assert wide[0] < narrow[0] and wide[1] > narrow[1]


@pytest.mark.parametrize('failures,runs', [
    (1, 0), (0, -3), (-1, 10), (11, 10), (1.5, 10), (True, 10)])
def test_wilson_rejects_bad_counts(failures, runs):
    with pytest.raises((ValueError, TypeError)):
        stats.wilson_interval(failures, runs)


def test_wilson_rejects_bad_z():
    with pytest.raises(ValueError):
        stats.wilson_interval(1, 10, z=0)
    with pytest.raises(ValueError):
        stats.wilson_interval(1, 10, z=float('nan'))


def test_distribution_nearest_rank_and_missing():
    d = stats.distribution([3.0, None, 1.0, 2.0, 10.0])
    assert d == {'n': 4, 'missing': 1, 'min': 1.0, 'p50': 2.0,
                 'p95': 10.0, 'max': 10.0}
    e = stats.distribution([None])
    assert e['n'] == 0 and e['p50'] is None and e['max'] is None

"""Unit tests for the loadtest's statistics (nearest-rank percentiles)."""

import math

import pytest

from kerbside_tempest_plugin.loadtest import stats


def test_nearest_rank_picks_measured_values():
    values = [15.0, 20.0, 35.0, 40.0, 50.0]
    # ceil(p/100 * 5): p30 -> rank 2, p40 -> rank 2, p50 -> rank 3
    assert stats.nearest_rank(values, 30) == 20.0
    assert stats.nearest_rank(values, 40) == 20.0
    assert stats.nearest_rank(values, 50) == 35.0
    assert stats.nearest_rank(values, 100) == 50.0
    assert stats.nearest_rank(values, 0) == 15.0


def test_nearest_rank_textbook_example():
    values = sorted([1, 2, 3, 4, 5, 6, 7, 8, 9, 10] * 1)
    assert stats.nearest_rank(values, 95) == 10
    assert stats.nearest_rank(values, 90) == 9
    assert stats.nearest_rank(list(range(1, 101)), 95) == 95
    assert stats.nearest_rank(list(range(1, 101)), 99) == 99


def test_nearest_rank_edges():
    assert stats.nearest_rank([], 50) is None
    assert stats.nearest_rank([7.5], 99) == 7.5
    with pytest.raises(ValueError):
        stats.nearest_rank([1], 101)


def test_summarise_fields_and_values():
    s = stats.summarise([30.0, 10.0, 20.0, 40.0], timeouts=2)
    assert s == {'samples': 4, 'timeouts': 2, 'min_ms': 10.0,
                 'p50_ms': 20.0, 'p95_ms': 40.0, 'p99_ms': 40.0,
                 'max_ms': 40.0, 'mean_ms': 25.0}


def test_summarise_empty_route_has_none_figures():
    s = stats.summarise([], timeouts=3)
    assert s['samples'] == 0 and s['timeouts'] == 3
    assert s['p50_ms'] is None and s['mean_ms'] is None


def test_summarise_rejects_non_finite():
    with pytest.raises(ValueError):
        stats.summarise([1.0, math.inf])
    with pytest.raises(ValueError):
        stats.summarise([math.nan])


def test_ratio_per_percentile():
    k = {'p50_ms': 40.0, 'p95_ms': 60.0, 'p99_ms': 80.0, 'mean_ms': 45.0}
    d = {'p50_ms': 20.0, 'p95_ms': 30.0, 'p99_ms': None, 'mean_ms': 0.0}
    r = stats.ratio(k, d)
    assert r['p50'] == 2.0 and r['p95'] == 2.0
    assert r['p99'] is None and r['mean'] is None
    assert stats.ratio(None, d)['p50'] is None


def test_brief():
    assert stats.brief([]) == {'count': 0, 'min': None, 'p50': None,
                               'max': None}
    assert stats.brief([3, 1, 2]) == {'count': 3, 'min': 1, 'p50': 2,
                                      'max': 3}


def test_method_is_stated():
    assert 'nearest-rank' in stats.PERCENTILE_METHOD


def test_bootstrap_ratio_ci_brackets_the_ratio():
    a = [float(x) for x in range(20, 60)]
    b = [float(x) for x in range(10, 30)]
    lo, hi = stats.bootstrap_ratio_ci(a, b, 50, resamples=500)
    point = stats.nearest_rank(a, 50) / stats.nearest_rank(b, 50)
    assert lo <= point <= hi
    assert 1.0 < lo and hi < 3.0
    # Reproducible (fixed seed) and None on tiny samples.
    assert stats.bootstrap_ratio_ci(a, b, 50, resamples=500) == [lo, hi]
    assert stats.bootstrap_ratio_ci([1.0] * 19, b, 50) is None


def test_text_table_aligns_columns_under_a_rule():
    from kerbside_tempest_plugin.loadtest import report
    text = report.text_table(['metric', 'kerbside', 'direct'],
                             [['passed', '10 / 10', 9], ['walk (s)', 7.3,
                                                         '7.37 (7.3-7.5)']])
    lines = text.splitlines()
    assert lines[0].split() == ['metric', 'kerbside', 'direct']
    assert set(lines[1].replace(' ', '')) == {'-'}
    # every column starts at the same offset on every line
    starts = [lines[0].index('kerbside'), lines[0].index('direct')]
    assert lines[2].index('10 / 10') == starts[0]
    assert lines[3].index('7.37') == starts[1]
    assert lines[3].startswith('walk (s)')

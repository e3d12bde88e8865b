"""Summary statistics for latency samples.

Percentiles use the nearest-rank method: the p-th percentile of n sorted
values is the value at 1-based rank ceil(p / 100 * n) (rank 1 for p = 0),
so it is always one of the measured values, never an interpolation.
"""

import math

PERCENTILE_METHOD = (
    'nearest-rank: the value at 1-based rank ceil(p/100 * n) of the sorted '
    'successful samples; timeouts are counted separately and excluded')


def nearest_rank(sorted_values, p):
    """The p-th percentile (0 <= p <= 100) of already sorted values."""
    if not sorted_values:
        return None
    if not 0 <= p <= 100:
        raise ValueError('percentile %r is outside 0..100' % p)
    n = len(sorted_values)
    rank = max(1, math.ceil(p / 100.0 * n))
    return sorted_values[min(rank, n) - 1]


def summarise(values_ms, timeouts=0):
    """The summary of one route: counts, min, p50, p95, p99, max, mean.

    `values_ms` are the successful samples in milliseconds; `timeouts` the
    number of keys that drew nothing within their deadline. With no
    successful sample every figure is None.
    """
    values = sorted(float(v) for v in values_ms)
    for v in values:
        if not math.isfinite(v):
            raise ValueError('latency sample %r is not finite' % v)
    out = {'samples': len(values), 'timeouts': int(timeouts)}
    if values:
        out.update({
            'min_ms': values[0],
            'p50_ms': nearest_rank(values, 50),
            'p95_ms': nearest_rank(values, 95),
            'p99_ms': nearest_rank(values, 99),
            'max_ms': values[-1],
            'mean_ms': sum(values) / len(values),
        })
    else:
        out.update(dict.fromkeys(
            ('min_ms', 'p50_ms', 'p95_ms', 'p99_ms', 'max_ms', 'mean_ms')))
    return out


def ratio(numerator, denominator, keys=('p50', 'p95', 'p99', 'mean')):
    """numerator / denominator for each `<key>_ms` of two summaries.

    None where either side is missing or the denominator is not positive.
    """
    out = {}
    for key in keys:
        a = (numerator or {}).get('%s_ms' % key)
        b = (denominator or {}).get('%s_ms' % key)
        out[key] = (a / b) if (a is not None and b) else None
    return out


def brief(values):
    """min / median / max / count of a list of numbers (for side figures
    such as ping intervals and delivery delays); None figures when empty.
    """
    values = sorted(values)
    if not values:
        return {'count': 0, 'min': None, 'p50': None, 'max': None}
    return {'count': len(values), 'min': values[0],
            'p50': nearest_rank(values, 50), 'max': values[-1]}


def bootstrap_ratio_ci(numerator, denominator, p, resamples=2000,
                       confidence=0.95, seed=20261125):
    """A percentile-bootstrap confidence interval for the ratio of the
    p-th nearest-rank percentiles of two samples (numerator/denominator).

    Each resample draws both samples with replacement, independently. The
    seed is fixed so a summary is reproducible from its CSV. Returns
    [low, high], or None when either side has fewer than 20 values (the
    tail percentiles of a handful of samples resample to nonsense).
    """
    import random
    a, b = list(numerator), list(denominator)
    if len(a) < 20 or len(b) < 20:
        return None
    rng = random.Random(seed)
    ratios = []
    for _ in range(resamples):
        pa = nearest_rank(sorted(rng.choices(a, k=len(a))), p)
        pb = nearest_rank(sorted(rng.choices(b, k=len(b))), p)
        if pb > 0:
            ratios.append(pa / pb)
    if not ratios:
        return None
    ratios.sort()
    tail = (1.0 - confidence) / 2.0 * 100.0
    return [nearest_rank(ratios, max(tail, 0.0)),
            nearest_rank(ratios, 100.0 - tail)]

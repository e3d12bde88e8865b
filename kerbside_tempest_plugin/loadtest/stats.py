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


# The two-sided 95% normal quantile, z = Phi^-1(0.975).
Z95 = 1.959963984540054


def wilson_interval(failures, runs, z=Z95):
    """The Wilson score interval [low, high] for a proportion.

    `failures` out of `runs` trials (any count of "successes" in the
    statistical sense); `z` is the normal quantile of the confidence
    (the default is 95%). Unlike the normal approximation it stays
    inside [0, 1] and is not degenerate at 0 or n: 0 of 50 gives
    [0, 0.0713], i.e. a true fail rate up to about 7% is still
    consistent with a clean soak of 50.
    """
    if isinstance(failures, bool) or isinstance(runs, bool):
        raise TypeError('counts must be integers, not booleans')
    if int(failures) != failures or int(runs) != runs:
        raise ValueError('counts must be whole numbers: %r of %r'
                         % (failures, runs))
    if runs <= 0:
        raise ValueError('no trials: runs is %r' % runs)
    if not 0 <= failures <= runs:
        raise ValueError('%r failures is outside 0..%r' % (failures, runs))
    if not z > 0 or not math.isfinite(z):
        raise ValueError('z %r is not a positive number' % z)
    n = float(runs)
    p = failures / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denom
    half = z / denom * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n))
    # Clamp the float noise at the ends (0 of n, n of n are exact there).
    low = 0.0 if failures == 0 else max(0.0, centre - half)
    high = 1.0 if failures == runs else min(1.0, centre + half)
    return [low, high]


def distribution(values, percentiles=(50, 95)):
    """n, min, the nearest-rank percentiles and max of a list of numbers
    (None entries are dropped and counted as `missing`).
    """
    present = sorted(float(v) for v in values if v is not None)
    out = {'n': len(present), 'missing': len(values) - len(present)}
    out['min'] = present[0] if present else None
    for p in percentiles:
        out['p%g' % p] = nearest_rank(present, p)
    out['max'] = present[-1] if present else None
    return out

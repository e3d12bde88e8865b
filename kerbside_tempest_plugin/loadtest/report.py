"""The loadtest's outputs: per-sample CSV, JSON summary, PNG plot, stdout.

- ``samples.csv``: one row per key (timeouts included), written and
  flushed as the run goes so an interrupted run keeps its data.
- ``ping_intervals.csv``: ryll's ``latency`` events per route. Each is the
  interval between two consecutive SPICE server PINGs, not a round trip.
- ``summary.json``: per route {samples, timeouts, min_ms, p50_ms, p95_ms,
  p99_ms, max_ms, mean_ms, ...}, the Kerbside/direct ratio per percentile,
  the percentile method, the settings, the floor (when measured) and how
  each route's series ended.
- ``latency.png``: the distribution per route (ECDF and box + strip).
"""

import csv
import math
import os
import time

from kerbside_tempest_plugin.common import atomic
from kerbside_tempest_plugin.loadtest import stats

PING_NOTE = ('ryll latency events: the interval between two consecutive '
             'SPICE server PINGs (ms), not a round-trip time; useful only '
             'as a stall detector')


class SampleCsv:
    """Appends samples to a CSV as they come (line-buffered)."""

    def __init__(self, path, fields):
        self.path = path
        self._f = open(path, 'w', newline='', buffering=1)
        self._w = csv.writer(self._f)
        self._w.writerow(fields)

    def write(self, sample):
        self._w.writerow(sample.csv_row())
        self._f.flush()

    def close(self):
        if not self._f.closed:
            self._f.close()


def write_pings(path, sessions):
    with open(path, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['route', 'wallclock_us', 'interval_ms'])
        for s in sessions:
            for stamp, ms in s.pings:
                w.writerow([s.name, '' if stamp is None else stamp,
                            '' if ms is None else '%.3f' % ms])


def route_summary(session):
    out = stats.summarise(session.latencies_ms, session.timeouts)
    deliveries = [s.delivery_ms for s in session.samples
                  if s.delivery_ms is not None]
    draws = [s.draws for s in session.samples if not s.timeout]
    pings = [ms for _, ms in session.pings if isinstance(ms, (int, float))]
    out.update({
        'attempts': len(session.samples),
        'ended': session.dead or 'completed',
        'draws_per_key': stats.brief(draws),
        'event_delivery_ms': stats.brief(deliveries),
        'stale_draws_ignored': session.stale_draws,
        'dropped_events_reported': session.dropped_total,
        'spice_ping_interval_ms': stats.brief(pings),
    })
    return out


def build_summary(sessions, settings=None, floor=None, extra=None):
    routes = {s.name: route_summary(s) for s in sessions}
    by_name = {s.name: s for s in sessions}
    ci = {}
    if 'kerbside' in by_name and 'direct' in by_name:
        for p in (50, 95):
            ci['p%d' % p] = stats.bootstrap_ratio_ci(
                by_name['kerbside'].latencies_ms,
                by_name['direct'].latencies_ms, p)
    summary = {
        'metric': 'keypress-to-screen latency: from just before send_key '
                  'down (time.time_ns()//1000) to the wallclock_us of the '
                  'first surface_drawn stamped after it, same host clock',
        'routes': routes,
        'ratio': stats.ratio(routes.get('kerbside'), routes.get('direct')),
        'ratio_definition': 'kerbside / direct, per percentile',
        'ratio_ci95': ci,
        'ratio_ci95_method': 'percentile bootstrap, 2000 resamples of each '
                             'route independently, fixed seed',
        'percentile_method': stats.PERCENTILE_METHOD,
        'latency_events_note': PING_NOTE,
    }
    if settings is not None:
        summary['settings'] = settings
    if floor is not None:
        summary['floor'] = floor
    if extra:
        summary.update(extra)
    return summary


def write_json(path, data):
    return atomic.write_json(path, data, indent=2, sort_keys=True,
                             default=str)


def _fmt(v, unit=' ms'):
    if v is None:
        return 'n/a'
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return '%.1f%s' % (v, unit)


def _fmt2(v):
    return 'n/a' if v is None else '%.2fx' % v


def text_lines(summary):
    """The short human summary (without the final JSON path line)."""
    lines = []
    for name, r in summary['routes'].items():
        lines.append(
            'LOADTEST route=%s latency_ms samples=%d timeouts=%d p50=%s '
            'p95=%s p99=%s min=%s max=%s mean=%s%s' % (
                name, r['samples'], r['timeouts'],
                _fmt(r['p50_ms'], ''), _fmt(r['p95_ms'], ''),
                _fmt(r['p99_ms'], ''), _fmt(r['min_ms'], ''),
                _fmt(r['max_ms'], ''), _fmt(r['mean_ms'], ''),
                '' if r.get('ended', 'completed') == 'completed'
                else ' ENDED EARLY: %s' % r['ended']))
    ratio = summary.get('ratio') or {}
    if ratio.get('p50') is not None or ratio.get('p95') is not None:
        ci = summary.get('ratio_ci95') or {}

        def with_ci(key):
            text = _fmt2(ratio.get(key))
            if ci.get(key):
                text += ' (95%% CI %s-%s)' % (_fmt2(ci[key][0]),
                                              _fmt2(ci[key][1]))
            return text
        lines.append('LOADTEST ratio kerbside/direct p50=%s p95=%s' % (
            with_ci('p50'), with_ci('p95')))
    floor = summary.get('floor')
    if floor and floor.get('samples'):
        lines.append(
            'LOADTEST floor (fake socket, client cost) samples=%d p50=%s '
            'p95=%s max=%s' % (floor['samples'], _fmt(floor['p50_ms'], ''),
                               _fmt(floor['p95_ms'], ''),
                               _fmt(floor['max_ms'], '')))
    if summary.get('plot'):
        lines.append('plot: %s' % summary['plot'])
    if summary.get('csv'):
        lines.append('samples: %s' % summary['csv'])
    return lines


COLOURS = {'kerbside': '#d9730d', 'direct': '#2f6fb0', 'floor': '#6b6b6b'}


def plot(path, series, title, summary_routes=None, floor_ms=None):
    """Draw the distribution per route into a PNG.

    `series` maps route name -> list of latencies in ms. Left: the ECDF
    (share of keys drawn within x ms) with p50/p95 marked, and the floor's
    p50 as a grey line when given; right: box plot with every sample as a
    dot. Returns `path`, or None when matplotlib is
    missing (the run still has its CSV and JSON).
    """
    try:
        import matplotlib
        matplotlib.use('Agg')
        from matplotlib import pyplot as plt
    except ImportError:
        return None
    names = [n for n in series if series[n]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.8),
                                   gridspec_kw={'width_ratios': [3, 2]})
    for i, name in enumerate(names):
        values = sorted(series[name])
        n = len(values)
        colour = COLOURS.get(name, 'C%d' % i)
        r = (summary_routes or {}).get(name, {})
        label = '%s: n=%d p50=%s p95=%s%s' % (
            name, n, _fmt(r.get('p50_ms', stats.nearest_rank(values, 50))),
            _fmt(r.get('p95_ms', stats.nearest_rank(values, 95))),
            ', %d timeouts' % r['timeouts'] if r.get('timeouts') else '')
        ax1.step(values, [(k + 1) / n for k in range(n)], where='post',
                 color=colour, lw=2, label=label)
        for p, style in ((50, '--'), (95, ':')):
            ax1.axvline(stats.nearest_rank(values, p), color=colour,
                        ls=style, lw=1)
    if floor_ms is not None:
        ax1.axvline(floor_ms, color=COLOURS['floor'], lw=1.5,
                    label='floor p50 %.2f ms (client cost)' % floor_ms)
    ax1.set_xlabel('keypress to first surface_drawn (ms)')
    ax1.set_ylabel('share of keys drawn within x')
    ax1.set_ylim(0, 1.02)
    ax1.set_xlim(left=0)
    ax1.grid(alpha=0.3)
    ax1.legend(loc='lower right', fontsize=8)
    ax1.set_title('ECDF (dashed p50, dotted p95)', fontsize=9)
    if names:
        data = [series[n] for n in names]
        ax2.boxplot(data, widths=0.5, showfliers=False,
                    medianprops={'color': 'black', 'lw': 1.5})
        ax2.set_xticks(range(1, len(names) + 1))
        ax2.set_xticklabels(names)
        for i, name in enumerate(names):
            values = series[name]
            k = len(values)
            xs = [i + 1 + 0.18 * (((j * 7919) % 101) / 100.0 - 0.5)
                  for j in range(k)]
            ax2.scatter(xs, values, s=9, alpha=0.6,
                        color=COLOURS.get(name, 'C%d' % i), zorder=3)
    ax2.set_ylabel('ms')
    ax2.set_ylim(bottom=0)
    ax2.grid(alpha=0.3, axis='y')
    ax2.set_title('box (quartiles) and every sample', fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def text_table(header, rows):
    """Rows of cells as aligned text columns under `header`, with a rule
    line (the benchmarks' side-by-side tables).
    """
    rows = [[str(c) for c in r] for r in rows]
    header = [str(c) for c in header]
    widths = [max(len(r[i]) for r in rows + [header])
              for i in range(len(header))]
    lines = ['  '.join(c.ljust(w) for c, w in zip(header, widths)),
             '  '.join('-' * w for w in widths)]
    lines += ['  '.join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return '\n'.join(lines)


def loadavg():
    """/proc/loadavg as one line (every benchmark prints it beside its
    figures), or why it could not be read.
    """
    try:
        with open('/proc/loadavg') as f:
            return f.read().strip()
    except OSError as e:
        return 'unreadable: %s' % e


def stamped_dir(out, repo, name):
    """`out` made absolute, or <repo>/artifacts/bench-<name>-<UTC stamp>;
    created. The benchmarks' --out default.
    """
    path = os.path.abspath(out or os.path.join(
        repo, 'artifacts', 'bench-%s-%s' % (
            name, time.strftime('%Y%m%dT%H%M%SZ', time.gmtime()))))
    os.makedirs(path, exist_ok=True)
    return path

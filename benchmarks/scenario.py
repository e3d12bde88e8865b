#!/usr/bin/env python3
"""N Sextant walks per route, side by side (default: 10 canonical walks).

For each route (kerbside, direct) one lane is brought up and N walks run,
each on a fresh guest, exactly as the tempest test runs them
(scenario.runner.run_scenario). Printed per route: passes, wall time per
phase (boot to banner, walk, drain; median and range), capture fidelity
(distinct frame counters / refresh_stats count), framebuffer-hash matches
(over all checked captures), and harness overhead: the wall time from the
first key to the power-off key minus the guest's own pacing over the same
span (its drain `t` clock, which counts only its stalls, so the overhead
includes TCG emulation and refresh costs as well as the harness). The
per-run results and every artifact directory are kept under --out;
the failures' directories are listed at the end and in failures.txt.

For a soak (`--runs 50`) it also prints, per route, the fail count with
its 95% Wilson score interval (loadtest.stats.wilson_interval), each
phase's min / p50 / p95 / max (nearest rank), a histogram of the total
per walk, /proc/loadavg at start and end, and as its last line one JSON
object with those figures. `SEXTANT_IMAGE` (or --image) selects a real
Sextant instead of the bundled guest. `run_route(..., lane_factory=)`
takes another lane (docs/plans/soak-and-concurrency.md).

    python3 benchmarks/scenario.py [--runs 10] [--routes kerbside direct]
        [--walk canonical] [--image PATH] [--char-delay 50] [--out DIR]

`kerbside-plain` is the kerbside route with the proxy's leg to qemu in
plain SPICE (Lane(hypervisor_tls=False)), for comparison with the TLS leg
the lane uses by default (docs/contracts/kerbside.md §15).
"""

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from kerbside_tempest_plugin.common import signals  # noqa: E402
from kerbside_tempest_plugin.loadtest import report  # noqa: E402
from kerbside_tempest_plugin.loadtest import stats  # noqa: E402
from kerbside_tempest_plugin.scenario import runner  # noqa: E402
from kerbside_tempest_plugin.sextant import contract  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return '-'
    return '%.2f (%.2f-%.2f)' % (statistics.median(values), min(values),
                                 max(values))


def direct_qemu_lane(workdir, label, route):
    """The default lane factory: a direct-qemu Lane for `label`
    (`kerbside-plain` is the kerbside route with a plain hypervisor leg).
    """
    from kerbside_tempest_plugin.lane import lane as lane_mod
    return lane_mod.Lane(workdir, route=route,
                         kerbside=route == 'kerbside',
                         hypervisor_tls=label != 'kerbside-plain')


def run_route(label, args, out, lane_factory=direct_qemu_lane,
              log=print):
    """Bring one lane up for route `label`, run args.runs walks of
    args.walk on it (each on a fresh guest), tear it down.

    `lane_factory(workdir, label, route)` returns an unstarted lane with
    up(), down() and what scenario.runner.run_scenario uses; the default
    is the direct-qemu lane, another lane (a cloud) plugs in here. A lane
    that does not come up is reported in `lane_error` with no results
    (every run counts as failed in the soak figures).
    """
    lanes = os.path.join(out, 'lanes')
    os.makedirs(lanes, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix=label + '-', dir=lanes)
    route = label.split('-')[0]
    lane = lane_factory(workdir, label, route)
    results = []
    lane_up = lane_error = None
    down = {}
    t0 = time.monotonic()
    try:
        try:
            lane.up()
        except Exception as e:
            lane_error = '%s: %s' % (type(e).__name__, e)
            log('  %s: lane did not come up: %s (lane workdir %s)' % (
                label, lane_error, workdir))
            return {'lane_up_s': None, 'lane_error': lane_error,
                    'lane_workdir': workdir, 'results': results,
                    'teardown': {}}
        lane_up = time.monotonic() - t0
        for i in range(args.runs):
            r = runner.run_scenario(
                lane, args.walk, route, args.image,
                os.path.join(out, route),
                char_delay_ms=args.char_delay,
                name='bench-%s-%s-%02d' % (args.walk, label, i + 1),
                log=lambda m: None)
            log('  %s %2d/%d: %s' % (label, i + 1, args.runs,
                                     r.summary_line()))
            if not r.passed:
                log('  %s %2d/%d FAILED, artifacts kept in %s' % (
                    label, i + 1, args.runs, r.artifact_dir))
            results.append(r)
    finally:
        down = signals.down_shielded(lane) or {}
        shutil.rmtree(os.path.join(workdir, 'secrets'), ignore_errors=True)
    return {'lane_up_s': lane_up, 'lane_error': lane_error,
            'lane_workdir': workdir, 'results': results,
            'teardown': {k: down.get(k)
                         for k in ('leftover_pids', 'busy_ports')}}


PHASES = ('boot_to_banner', 'ryll_to_surface', 'walk', 'drain', 'total')


def soak_figures(d, runs):
    """The fail count over the planned runs with its 95% Wilson interval,
    and each phase's distribution (nearest-rank p50/p95), of one route.
    Runs that never happened (the lane did not come up, or the benchmark
    was interrupted) count as failures.
    """
    rs = d['results']
    planned = max(runs, len(rs))
    failed = planned - sum(1 for r in rs if r.passed)
    low, high = stats.wilson_interval(failed, planned)
    phases = {k: stats.distribution([r.phases.get(k) for r in rs])
              for k in PHASES}
    phases['harness_overhead'] = stats.distribution(
        [r.stats.get('overhead_s') for r in rs])
    return {'runs': planned, 'completed': len(rs), 'failed': failed,
            'fail_rate': failed / planned, 'wilson95': [low, high],
            'phases_s': phases,
            'failures': [{'name': r.name, 'artifact_dir': r.artifact_dir,
                          'error': r.error,
                          'failed_checks': [c.name for c in r.results
                                            if not c.passed]}
                         for r in rs if not r.passed]}


def fmt_dist(dist):
    if not dist['n']:
        return '-'
    return '%.2f / %.2f / %.2f / %.2f' % (dist['min'], dist['p50'],
                                          dist['p95'], dist['max'])


def histogram(values, bins=8, width=30):
    """A text histogram of `values` (None dropped), one line per bin."""
    values = [v for v in values if v is not None]
    if not values:
        return ['  (no values)']
    lo, hi = min(values), max(values)
    step = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / step), bins - 1)] += 1
    top = max(counts)
    return ['  %7.2f-%7.2f %3d %s' % (lo + i * step, lo + (i + 1) * step,
                                      c, '#' * max(c and 1,
                                                   c * width // top))
            for i, c in enumerate(counts)]


def soak_text(per_route, figures):
    lines = ['soak: fail count with its 95% Wilson interval',
             '  %-15s %-12s %s' % ('route', 'failed/runs', 'fail rate, '
                                   '95% CI')]
    for route, f in figures.items():
        lines.append('  %-15s %-12s %.1f%% (%.1f%%-%.1f%%)' % (
            route, '%d / %d' % (f['failed'], f['runs']),
            100 * f['fail_rate'], 100 * f['wilson95'][0],
            100 * f['wilson95'][1]))
    lines += ['', 'phase times (s): min / p50 / p95 / max (nearest rank)']
    names = list(PHASES) + ['harness_overhead']
    w = max(len(n) for n in names)
    for route, f in figures.items():
        lines.append('  %s' % route)
        for k in names:
            lines.append('    %s  %s' % (
                k.ljust(w), fmt_dist(f['phases_s'][k])))
    for route, d in per_route.items():
        lines += ['', 'total per walk (s), %s:' % route]
        lines += histogram([r.phases.get('total') for r in d['results']])
    return '\n'.join(lines)


def table(per_route, args):
    routes = list(per_route)
    rows = []

    def row(label, fn):
        rows.append([label] + [fn(per_route[r]) for r in routes])

    def rs(d):
        return d['results']

    def stat(d, key):
        return [r.stats.get(key) for r in rs(d)]

    def phase(d, key):
        return [r.phases.get(key) for r in rs(d)]

    row('passed', lambda d: '%d / %d' % (sum(r.passed for r in rs(d)),
                                         len(rs(d))))
    row('lane up (s)', lambda d: '%.1f' % d['lane_up_s']
        if d['lane_up_s'] is not None else 'FAILED')
    row('boot to banner (s)', lambda d: spread(phase(d, 'boot_to_banner')))
    row('ryll to surface (s)', lambda d: spread(phase(d, 'ryll_to_surface')))
    row('walk (s)', lambda d: spread(phase(d, 'walk')))
    row('drain (s)', lambda d: spread(phase(d, 'drain')))
    row('total per walk (s)', lambda d: spread(phase(d, 'total')))
    row('guest pacing (s)', lambda d: spread(stat(d, 'guest_pacing_s')))
    row('first to last key, wall (s)',
        lambda d: spread(stat(d, 'keys_wall_s')))
    row('harness overhead (s)', lambda d: spread(stat(d, 'overhead_s')))
    row('capture fidelity', lambda d: spread(stat(d, 'fidelity')))
    row('fb hash matched/checked', lambda d: '%d / %d' % (
        sum(r.stats.get('fb_matched', 0) for r in rs(d)),
        sum(r.stats.get('fb_checked', 0) for r in rs(d))))
    row('captures per walk', lambda d: spread(stat(d, 'captures')))
    row('decode failures', lambda d: str(sum(
        r.stats.get('decode_failures', 0) for r in rs(d))))
    row('inferred beats', lambda d: str(sum(
        1 for r in rs(d) for b in r.beats if b.get('inferred'))))
    return report.text_table(['metric'] + routes, rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--runs', type=int, default=10)
    p.add_argument('--routes', nargs='+', default=['kerbside', 'direct'],
                   choices=['kerbside', 'kerbside-plain', 'direct'])
    p.add_argument('--walk', default='canonical',
                   choices=sorted(runner.walk_mod.WALKS))
    p.add_argument('--image', default=None,
                   help='default SEXTANT_IMAGE, else the bundled guest')
    p.add_argument('--char-delay', type=int,
                   default=contract.PASTE_CHAR_DELAY_MS,
                   help='paste delay per character (ms)')
    p.add_argument('--out', default=None)
    args = p.parse_args()
    # SIGTERM/SIGHUP/SIGINT: the lanes' finally blocks run (common.signals).
    signals.install(signals.BATCH_SIGNALS)
    logging.basicConfig(level=logging.WARNING)
    from kerbside_tempest_plugin import guest_images
    args.image = guest_images.sextant_image(args.image)
    out = report.stamped_dir(args.out, REPO, 'scenario')
    print('%d %s walk(s) per route, routes %s, paste delay %d ms; '
          'image %s%s; artifacts in %s' % (
              args.runs, args.walk, ' '.join(args.routes), args.char_delay,
              args.image, ' (SEXTANT_IMAGE)' if os.environ.get(
                  'SEXTANT_IMAGE') else '', out), flush=True)
    load = {'start': report.loadavg()}
    t0 = time.monotonic()
    per_route = {}
    for route in args.routes:
        per_route[route] = run_route(
            route, args, out, log=lambda m: print(m, flush=True))
    load['end'] = report.loadavg()
    wall = time.monotonic() - t0
    figures = {route: soak_figures(d, args.runs)
               for route, d in per_route.items()}
    text = table(per_route, args) + '\n\n' + soak_text(per_route, figures)
    text += '\n\nwall %.0f s; /proc/loadavg at start: %s; at end: %s' % (
        wall, load['start'], load['end'])
    print()
    print(text)
    failed_any = False
    for route, d in per_route.items():
        if d['lane_error']:
            failed_any = True
            print('\nLANE FAILED %s: %s; lane workdir kept: %s' % (
                route, d['lane_error'], d['lane_workdir']))
        for r in d['results']:
            if not r.passed:
                failed_any = True
                print('\nFAILED %s: %s' % (route,
                                           r.failure_message()[:1500]))
    failures = [f for fig in figures.values() for f in fig['failures']]
    with open(os.path.join(out, 'failures.txt'), 'w') as f:
        for item in failures:
            f.write('%s\t%s\n' % (item['name'], item['artifact_dir']))
    if failures:
        print('\nartifact directories of the %d failure(s) (also in %s):'
              % (len(failures), os.path.join(out, 'failures.txt')))
        for item in failures:
            print('  %s' % item['artifact_dir'])
    with open(os.path.join(out, 'summary.txt'), 'w') as f:
        f.write(text + '\n')
    with open(os.path.join(out, 'results.json'), 'w') as f:
        json.dump({route: {'lane_up_s': d['lane_up_s'],
                           'lane_error': d['lane_error'],
                           'teardown': d['teardown'],
                           'soak': figures[route],
                           'results': [r.to_json() for r in d['results']]}
                   for route, d in per_route.items()}, f, indent=1,
                  default=str)
    print('artifacts: %s (summary.txt, results.json, failures.txt)' % out)
    print(json.dumps({
        'runs_per_route': args.runs, 'walk': args.walk,
        'image': args.image, 'wall_s': round(wall, 1), 'loadavg': load,
        'routes': {route: rounded({k: fig[k] for k in (
            'runs', 'failed', 'wilson95', 'phases_s')})
            for route, fig in figures.items()}}, sort_keys=True))
    return 1 if failed_any else 0


def rounded(value, places=3):
    """`value` with every float rounded (for the one-line JSON)."""
    if isinstance(value, float):
        return round(value, places)
    if isinstance(value, dict):
        return {k: rounded(v, places) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, places) for v in value]
    return value


if __name__ == '__main__':
    sys.exit(main())

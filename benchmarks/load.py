#!/usr/bin/env python3
"""N consoles at once through one Kerbside, each judged pixel-exact.

For each route one lane is brought up with as many consoles as the
largest N (lane.lane.Lane(consoles=N): one MariaDB, one Kerbside whose
static source lists every console; on the direct route no Kerbside, as in
benchmarks/scenario.py). For each N, N threads start the same walk at the
same moment, each on its own console slot
(scenario.runner.run_scenario(slot, ...)), so each walk is judged exactly
as the scenario test judges one: beats, drain, chains, framebuffer hash,
frame counters, capture fidelity.

Per N and route it reports passes out of N, walk time p50 and max, capture
fidelity, framebuffer-hash matches, the CPU seconds and peak RSS of
kerbside-proxy, the Kerbside daemon, the qemu processes, the ryll
processes and this harness (sampled from /proc every --sample seconds),
the whole machine's busy share (/proc/stat), and the deltas of the proxy's
/metrics counters over the N walks. It names the knee (the first N at
which a walk fails or the walk p50 exceeds 1.5 x the N=1 walk p50) and
what saturated first, from the CPU figures. The last line it prints is one
JSON object with every figure. Every walk's artifact directory is kept
under --out (failures are listed with theirs).

    python3 benchmarks/load.py [--guests 1,2,4,8] [--route kerbside,direct]
        [--walk canonical] [--image PATH] [--out DIR]
"""

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from kerbside_tempest_plugin.common import signals  # noqa: E402
from kerbside_tempest_plugin.loadtest import report  # noqa: E402
from kerbside_tempest_plugin.scenario import runner  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf('SC_CLK_TCK')
NCPU = os.cpu_count() or 1
KNEE_FACTOR = 1.5
CATEGORIES = ('qemu', 'kerbside-proxy', 'kerbside-daemon', 'ryll',
              'harness')
# A single-threaded Python (the GIL) or a busy proxy is saturated at about
# one core; the machine at about all of them.
SATURATED_CORES = 0.9
SATURATED_MACHINE = 0.9


def parse_list(text, cast=str):
    return [cast(x) for x in text.split(',') if x.strip()]


def proc_cpu_rss(pid):
    """(cpu seconds, rss MiB, peak rss MiB) of `pid`, or None if gone.
    A zombie still has its CPU times (until it is reaped).
    """
    try:
        with open('/proc/%d/stat' % pid) as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(')') + 2:].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    rss = hwm = 0.0
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    rss = int(line.split()[1]) / 1024.0
                elif line.startswith('VmHWM:'):
                    hwm = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return cpu, rss, hwm


def machine_busy():
    """(busy jiffies, total jiffies) of the whole machine (/proc/stat)."""
    with open('/proc/stat') as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return sum(parts) - idle, sum(parts)


class Sampler:
    """CPU and RSS per category of processes, from /proc, on a thread.

    `pids_fn()` returns {category: [pid, ...]} (called every sample, so
    qemu and ryll processes born during the run are picked up). A
    process's CPU counts from the first sample (long-lived ones: the delta
    over the run) or from zero when it was born during the run; its last
    sample before it vanished is kept, so up to one interval of a
    short-lived process's CPU can be missed.
    """

    def __init__(self, pids_fn, interval=0.25):
        self.pids_fn = pids_fn
        self.interval = interval
        self.first = {}     # pid -> cpu at first sight (0 if born later)
        self.last = {}      # pid -> (category, cpu, hwm)
        self.rss_total_peak = {c: 0.0 for c in CATEGORIES}
        self._stop = threading.Event()
        self._thread = None
        self._started = False

    def sample(self):
        totals = {c: 0.0 for c in CATEGORIES}
        for cat, pids in self.pids_fn().items():
            for pid in pids:
                got = proc_cpu_rss(pid)
                if got is None:
                    continue
                cpu, rss, hwm = got
                if pid not in self.first:
                    self.first[pid] = cpu if not self._started else 0.0
                # An exiting process has dropped its memory (no VmHWM)
                # before it is reaped: keep the peak seen so far.
                if pid in self.last:
                    hwm = max(hwm, self.last[pid][2])
                self.last[pid] = (cat, cpu, hwm)
                totals[cat] += rss
        for cat, v in totals.items():
            self.rss_total_peak[cat] = max(self.rss_total_peak[cat], v)

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:
                logging.exception('sampling /proc failed')

    def start(self):
        self.t0 = time.monotonic()
        self.busy0 = machine_busy()
        self.sample()
        self._started = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        self.sample()
        wall = time.monotonic() - self.t0
        busy1 = machine_busy()
        out = {'wall_s': round(wall, 2), 'ncpu': NCPU}
        dbusy, dtotal = busy1[0] - self.busy0[0], busy1[1] - self.busy0[1]
        out['machine_busy'] = round(dbusy / dtotal, 3) if dtotal else None
        for cat in CATEGORIES:
            pids = [p for p, v in self.last.items() if v[0] == cat]
            cpu = sum(self.last[p][1] - self.first[p] for p in pids)
            out[cat] = {
                'processes': len(pids),
                'cpu_s': round(cpu, 2),
                'cores': round(cpu / wall, 3) if wall else None,
                'rss_peak_mb': round(max([self.last[p][2] for p in pids],
                                         default=0.0), 1),
                'rss_total_peak_mb': round(self.rss_total_peak[cat], 1),
            }
        return out


def lane_pids(lane):
    """{category: [pid]} of the lane's processes, and this process."""
    out = {c: [] for c in CATEGORIES}
    out['harness'] = [os.getpid()]
    for r in list(lane.registry.records):
        cat = r['name'].split(':', 1)[0]
        # alive() checks the start time: a recycled pid is not ours.
        if cat in out and cat != 'harness' and lane.registry.alive(r):
            out[cat].append(r['pid'])
    if lane.kerbside is not None:
        # kerbside-proxy is the daemon's child; a restarted one is new.
        out['kerbside-proxy'] = sorted(set(out['kerbside-proxy']) | set(
            lane.kerbside.proxy_pids()))
    return out


def metrics_delta(before, after):
    """The proxy's counters over a run: after - before (a missing one
    counts 0; a counter that appears only after its first use has no
    line before it). Gauges (active_connections) are the after value.
    """
    out = {}
    for key in sorted(set(before) | set(after)):
        if not key.startswith('kerbside_proxy_'):
            continue
        if 'active_connections' in key:
            out[key] = after.get(key, 0.0)
        else:
            out[key] = after.get(key, 0.0) - before.get(key, 0.0)
    return out


def metric_sum(delta, name):
    return sum(v for k, v in delta.items()
               if k == name or k.startswith(name + '{'))


def pct(values, q):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    if q == 50:
        return statistics.median(values)
    return values[-1]


def run_point(lane, route, n, args, out, tag=''):
    """N walks at once on the first N console slots of `lane` (`tag` in
    their names keeps guest names unique when an N runs again).
    """
    slots = lane.console_slots()[:n]
    results = [None] * n
    barrier = threading.Barrier(n)
    root = os.path.join(out, route, 'n%02d' % n)

    def walk(i):
        name = 'load-%s-n%02d%s-%02d' % (route, n, tag, i + 1)
        try:
            barrier.wait(60)
            results[i] = runner.run_scenario(
                slots[i], args.walk, route, args.image, root, name=name,
                log=lambda m: None)
        except BaseException as e:
            results[i] = runner.RunResult(name, args.walk, route, root,
                                          error='%s: %s' % (
                                              type(e).__name__, e))
            with open(os.path.join(out, 'harness-error-%s.txt' % name),
                      'w') as f:
                f.write(traceback.format_exc())

    before = lane.kerbside.metrics() if lane.kerbside else {}
    load0 = report.loadavg()
    sampler = Sampler(lambda: lane_pids(lane), args.sample).start()
    threads = [threading.Thread(target=walk, args=(i,), name='walk-%d' % i)
               for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    usage = sampler.stop()
    after = lane.kerbside.metrics() if lane.kerbside else {}
    point = summarise(route, n, results, usage, metrics_delta(before, after))
    point['loadavg_start'] = load0
    point['loadavg_end'] = report.loadavg()
    for r in results:
        print('  %s N=%d: %s' % (route, n, r.summary_line()), flush=True)
    return point, results


def summarise(route, n, results, usage, metrics):
    walks = [r.phases.get('walk') for r in results]
    totals = [r.phases.get('total') for r in results]
    boots = [r.phases.get('boot_to_banner') for r in results]
    fid = [r.stats.get('fidelity') for r in results]
    return {
        'route': route, 'n': n,
        'passed': sum(1 for r in results if r.passed),
        'walk_p50_s': _round(pct(walks, 50)),
        'walk_max_s': _round(pct(walks, 100)),
        'total_p50_s': _round(pct(totals, 50)),
        'total_max_s': _round(pct(totals, 100)),
        'boot_p50_s': _round(pct(boots, 50)),
        'fidelity_p50': _round(pct(fid, 50), 3),
        'fidelity_min': _round(min([f for f in fid if f is not None],
                                   default=None), 3),
        'fb_matched': sum(r.stats.get('fb_matched', 0) for r in results),
        'fb_checked': sum(r.stats.get('fb_checked', 0) for r in results),
        'decode_failures': sum(r.stats.get('decode_failures', 0)
                               for r in results),
        'usage': usage,
        'metrics': metrics,
        'failures': [{'name': r.name, 'artifact_dir': r.artifact_dir,
                      'error': r.error, 'failed_checks': [
                          c.name for c in r.results if not c.passed]}
                     for r in results if not r.passed],
        'artifact_dirs': [r.artifact_dir for r in results],
    }


def _round(v, nd=2):
    return None if v is None else round(v, nd)


def saturation(point):
    """What saturated at `point`, and the figures that say so."""
    u = point['usage']
    cores = {c: u[c]['cores'] or 0.0 for c in CATEGORIES}
    why = 'machine %.0f%% busy over %d cores; cores used: %s' % (
        100 * (u['machine_busy'] or 0), u['ncpu'], ', '.join(
            '%s %.2f' % (c, cores[c]) for c in CATEGORIES))
    if cores['harness'] >= SATURATED_CORES:
        return 'harness', why + ' (the harness, one Python process, is ' \
            'at its one-core GIL limit)'
    if cores['kerbside-proxy'] >= SATURATED_CORES:
        return 'proxy', why + ' (kerbside-proxy uses a whole core)'
    top = max(CATEGORIES, key=lambda c: cores[c])
    if (u['machine_busy'] or 0) >= SATURATED_MACHINE:
        label = 'qemu (TCG)' if top == 'qemu' else top
        return label, why + ' (the cores are full; %s uses the most)' % top
    return 'none', why + ' (no component and not the machine saturated)'


def find_knee(points):
    """(point, reason) of the first N that failed or slowed past
    KNEE_FACTOR x the first point's walk p50, or (None, None).
    """
    if not points:
        return None, None
    base = points[0]['walk_p50_s']
    for p in points:
        if p['passed'] < p['n']:
            return p, '%d of %d walks failed' % (p['n'] - p['passed'],
                                                 p['n'])
        if base and p['walk_p50_s'] and \
                p['walk_p50_s'] > KNEE_FACTOR * base:
            return p, 'walk p50 %.2f s > %.1f x %.2f s (N=%d)' % (
                p['walk_p50_s'], KNEE_FACTOR, base, points[0]['n'])
    return None, None


def table(points):
    cols = ['%s N=%d' % (p['route'], p['n']) for p in points]
    rows = []

    def row(label, fn):
        rows.append([label] + [fn(p) for p in points])

    def f(v, fmt='%.2f'):
        return '-' if v is None else fmt % v

    row('passed', lambda p: '%d / %d' % (p['passed'], p['n']))
    row('walk p50 / max (s)', lambda p: '%s / %s' % (
        f(p['walk_p50_s']), f(p['walk_max_s'])))
    row('total per walk p50 / max (s)', lambda p: '%s / %s' % (
        f(p['total_p50_s']), f(p['total_max_s'])))
    row('boot to banner p50 (s)', lambda p: f(p['boot_p50_s']))
    row('capture fidelity p50 (min)', lambda p: '%s (%s)' % (
        f(p['fidelity_p50'], '%.3f'), f(p['fidelity_min'], '%.3f')))
    row('fb hash matched / checked', lambda p: '%d / %d' % (
        p['fb_matched'], p['fb_checked']))
    row('decode failures', lambda p: str(p['decode_failures']))
    row('wall (s)', lambda p: f(p['usage']['wall_s'], '%.1f'))
    row('machine busy', lambda p: f(p['usage']['machine_busy'], '%.2f'))
    for cat in CATEGORIES:
        row('%s CPU s (cores)' % cat, lambda p, c=cat: '%s (%s)' % (
            f(p['usage'][c]['cpu_s'], '%.1f'),
            f(p['usage'][c]['cores'], '%.2f')))
        row('%s peak RSS MiB (sum)' % cat, lambda p, c=cat: '%s (%s)' % (
            f(p['usage'][c]['rss_peak_mb'], '%.0f'),
            f(p['usage'][c]['rss_total_peak_mb'], '%.0f')))
    row('proxy connections', lambda p: _metric(
        p, 'kerbside_proxy_connections_total'))
    row('proxy authorized', lambda p: _metric(
        p, 'kerbside_proxy_authorized_total'))
    row('proxy denied', lambda p: _metric(p, 'kerbside_proxy_denied_total'))
    row('proxy MiB relayed', lambda p: _metric(
        p, 'kerbside_proxy_bytes_relayed_total', 1.0 / 1048576, '%.2f'))
    row('loadavg at end', lambda p: ' '.join(p['loadavg_end'].split()[:3]))
    return report.text_table(['metric'] + cols, rows)


def _metric(point, name, scale=1.0, fmt='%.0f'):
    if point['route'] != 'kerbside':
        return '-'
    return fmt % (metric_sum(point['metrics'], name) * scale)


def run_route(route, args, out):
    from kerbside_tempest_plugin.lane import lane as lane_mod
    lanes = os.path.join(out, 'lanes')
    os.makedirs(lanes, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix=route + '-', dir=lanes)
    lane = lane_mod.Lane(workdir, route=route, kerbside=route == 'kerbside',
                         consoles=max(args.guests))
    points = []
    t0 = time.monotonic()
    lane_up = None
    try:
        lane.up()
        lane_up = time.monotonic() - t0
        print('%s lane up in %.1f s (%d consoles); loadavg %s' % (
            route, lane_up, lane.consoles, report.loadavg()), flush=True)
        for n in args.guests:
            point, results = run_point(lane, route, n, args, out)
            points.append(point)
            if args.stop_at_zero and point['passed'] == 0:
                print('  %s: 0 of %d passed; not going further' % (route, n))
                break
    finally:
        down = signals.down_shielded(lane)
        shutil.rmtree(os.path.join(workdir, 'secrets'), ignore_errors=True)
    return {'lane_up_s': lane_up, 'workdir': workdir, 'points': points,
            'teardown': {k: down.get(k)
                         for k in ('leftover_pids', 'busy_ports')}}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--guests', default='1,2,4,8',
                   help='comma-separated N (default 1,2,4,8)')
    p.add_argument('--route', default='kerbside,direct',
                   help='comma-separated routes (kerbside, direct)')
    p.add_argument('--walk', default='canonical',
                   choices=sorted(runner.walk_mod.WALKS))
    p.add_argument('--image', default=None,
                   help='default SEXTANT_IMAGE, else the bundled guest')
    p.add_argument('--sample', type=float, default=0.25,
                   help='/proc sampling interval (s)')
    p.add_argument('--stop-at-zero', action='store_true',
                   help='stop a route after an N where no walk passed')
    p.add_argument('--out', default=None)
    args = p.parse_args()
    # SIGTERM/SIGHUP/SIGINT: the lanes' finally blocks run (common.signals).
    signals.install(signals.BATCH_SIGNALS)
    args.guests = sorted(set(parse_list(args.guests, int)))
    args.routes = parse_list(args.route)
    bad = [r for r in args.routes if r not in ('kerbside', 'direct')]
    if bad or not args.guests or min(args.guests) < 1:
        p.error('routes must be kerbside/direct and N positive: %s %s' % (
            bad, args.guests))
    logging.basicConfig(level=logging.WARNING)
    from kerbside_tempest_plugin import guest_images
    args.image = guest_images.sextant_image(args.image)
    out = report.stamped_dir(args.out, REPO, 'load')
    start_load = report.loadavg()
    print('%s walks, N %s, routes %s, %d cpus; artifacts in %s; loadavg %s'
          % (args.walk, args.guests, args.routes, NCPU, out, start_load),
          flush=True)
    t0 = time.monotonic()
    per_route = {}
    for route in args.routes:
        per_route[route] = run_route(route, args, out)
    points = [pt for d in per_route.values() for pt in d['points']]
    print()
    print(table(points))
    summary = {'walk': args.walk, 'guests': args.guests,
               'routes': args.routes, 'ncpu': NCPU, 'out': out,
               'loadavg_start': start_load, 'loadavg_end': report.loadavg(),
               'wall_s': round(time.monotonic() - t0, 1), 'knee': {},
               'lanes': {}, 'points': points}
    for route, d in per_route.items():
        summary['lanes'][route] = {k: d[k] for k in
                                   ('lane_up_s', 'workdir', 'teardown')}
        knee, reason = find_knee(d['points'])
        if knee is None:
            msg = 'no knee up to N=%s' % (
                d['points'][-1]['n'] if d['points'] else '-')
            summary['knee'][route] = {'n': None, 'reason': msg}
        else:
            what, why = saturation(knee)
            summary['knee'][route] = {'n': knee['n'], 'reason': reason,
                                      'saturated': what, 'evidence': why}
            msg = 'knee at N=%d: %s; saturated first: %s; %s' % (
                knee['n'], reason, what, why)
        print('\n%s: %s' % (route, msg))
    failures = [f for pt in points for f in pt['failures']]
    for fl in failures:
        print('FAILED %s: %s %s; artifacts %s' % (
            fl['name'], fl['error'] or '', ','.join(fl['failed_checks']),
            fl['artifact_dir']))
    print('\nwall %.0f s; /proc/loadavg at start: %s; at end: %s' % (
        summary['wall_s'], start_load, summary['loadavg_end']))
    with open(os.path.join(out, 'summary.txt'), 'w') as f:
        f.write(table(points) + '\n')
    with open(os.path.join(out, 'load.json'), 'w') as f:
        json.dump(summary, f, indent=1, default=str)
    print(json.dumps(summary, sort_keys=True, default=str))
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())

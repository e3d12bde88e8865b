#!/usr/bin/env python3
"""Issue 21's target: N walks at once through Kerbside, many times over,
and every failure put on its hop.

For each N (default 4 and 8) one lane with N consoles runs rounds of N
simultaneous walks (benchmarks/load.py's run_point: each walk judged as
the scenario test judges one) until at least --walks walks have run.
Each --pace mode (on: the paste is paced on qemu's PS/2 trace, off:
one ryll paste at its fixed pace; `KTP_PACE_KEYS`) gets its own rounds,
alternating round by round so both see the same machine.

Printed per N and mode: passes out of walks with the Wilson 95 % bound
of the failure rate; walk p50 and max; the 1-minute load at the start and
end of each round; from every walk's keyhops.json and qemu's trace, the
keys lost per hop, the PS/2 queue's fullest moment, bytes it dropped and
the largest burst of key events; the paste's pacing waits; the path's
starved share (liveness.json); and each failure's one-line cause, with
PathStarved (the machine, not the proxy) counted apart. The last line is
one JSON object with every figure.

Holds the machine lock (/tmp/ktp-machine.lock, fcntl) while it runs: do
not wrap it in `flock` on the same file.

    python3 benchmarks/keys_under_load.py [--guests 4,8] [--walks 50]
        [--pace on] [--image images/out/sextant_blits.qcow2] [--out DIR]
"""

import argparse
import collections
import fcntl
import importlib.util
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
from kerbside_tempest_plugin.scenario import keyhops  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCK = '/tmp/ktp-machine.lock'


def _load_module():
    spec = importlib.util.spec_from_file_location(
        'ktp_bench_load', os.path.join(REPO, 'benchmarks', 'load.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def walk_figures(art):
    """What one walk's artifacts say about its keys and its path."""
    out = {'lost': [], 'max_depth': None, 'dropped': None, 'burst': None,
           'pace_waits': [], 'pace_lost': 0, 'starved_share': None}
    kh = _json(os.path.join(art, keyhops.NAME)) or {}
    out['lost'] = list(kh.get('lost') or [])
    for k in ('overflow', 'short_paste', 'unsent', 'extra'):
        if kh.get(k):
            out['lost'].append(kh[k])
    q = kh.get('ps2_queue') or {}
    out['max_depth'] = q.get('max_depth')
    out['dropped'] = q.get('bytes_dropped')
    try:
        with open(os.path.join(art, keyhops.TRACE)) as f:
            trace = keyhops.parse_trace(f.read())
        out['burst'] = max((k.burst for k in trace.keys), default=0)
    except (OSError, keyhops.KeyHopsError):
        pass
    live = _json(os.path.join(art, 'liveness.json')) or {}
    for paste in live.get('paste_pacing') or ():
        for c in paste.get('chunks') or ():
            out['pace_waits'].append(c.get('waited_s') or 0.0)
            if str(c.get('before', '')).startswith('lost'):
                out['pace_lost'] += 1
    if live.get('path'):
        out['starved_share'] = live['path'].get('share')
    return out


def _p(values, q):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    if q == 50:
        return round(statistics.median(values), 3)
    return round(values[min(len(values) - 1,
                            int(round(q / 100.0 * (len(values) - 1))))], 3)


def summarise(n, pace, rounds):
    results = [r for rd in rounds for r in rd['results']]
    figs = [walk_figures(r.artifact_dir) for r in results]
    fails = [r for r in results if not r.passed]
    starved = [r for r in fails if r.error_type == 'PathStarved']
    lo, hi = stats.wilson_interval(len(fails), len(results))
    hops = collections.Counter()
    for f in figs:
        for line in f['lost']:
            hops[line.split(':')[0][:90]] += 1
    return {
        'n': n, 'pace': pace, 'walks': len(results),
        'passed': len(results) - len(fails),
        'failure_rate_wilson95': [round(lo, 4), round(hi, 4)],
        'path_starved_failures': len(starved),
        'walk_p50_s': _p([r.phases.get('walk') for r in results], 50),
        'walk_max_s': _p([r.phases.get('walk') for r in results], 100),
        'load_per_round': [(rd['load_start'], rd['load_end'])
                           for rd in rounds],
        'keys_lost_lines': sum(len(f['lost']) for f in figs),
        'lost_by_kind': dict(hops),
        'ps2_max_depth': max([f['max_depth'] or 0 for f in figs],
                             default=None),
        'ps2_bytes_dropped': sum(f['dropped'] or 0 for f in figs),
        'walks_with_drops': sum(1 for f in figs if f['dropped']),
        'largest_burst': max([f['burst'] or 0 for f in figs], default=None),
        'pace_wait_p50_s': _p([w for f in figs for w in f['pace_waits']],
                              50),
        'pace_wait_max_s': _p([w for f in figs for w in f['pace_waits']],
                              100),
        'pace_chunks_lost': sum(f['pace_lost'] for f in figs),
        'starved_share_p50': _p([f['starved_share'] for f in figs], 50),
        'starved_share_max': _p([f['starved_share'] for f in figs], 100),
        'failures': [{'name': r.name, 'error_type': r.error_type,
                      'cause': (r.error or ', '.join(
                          c.name for c in r.results if not c.passed))[:600],
                      'keys_lost': f['lost'], 'artifact_dir':
                      r.artifact_dir} for r, f in zip(results, figs)
                     if not r.passed],
    }


def table(points):
    rows = [('N / pace', lambda p: '%d / %s' % (p['n'], p['pace'])),
            ('passed', lambda p: '%d of %d' % (p['passed'], p['walks'])),
            ('failure rate (Wilson 95 %)', lambda p: '%.3f-%.3f' % tuple(
                p['failure_rate_wilson95'])),
            ('PathStarved failures', lambda p: p['path_starved_failures']),
            ('walk p50 / max (s)', lambda p: '%s / %s' % (
                p['walk_p50_s'], p['walk_max_s'])),
            ('load (round start-end, min-max)', lambda p: '%s-%s' % (
                min(float(a) for a, _ in p['load_per_round']),
                max(float(b) for _, b in p['load_per_round']))),
            ('keys lost (lines)', lambda p: p['keys_lost_lines']),
            ('PS/2 fullest / dropped', lambda p: '%s / %s (%d walks)' % (
                p['ps2_max_depth'], p['ps2_bytes_dropped'],
                p['walks_with_drops'])),
            ('largest burst (events)', lambda p: p['largest_burst']),
            ('pace wait p50 / max (s)', lambda p: '%s / %s' % (
                p['pace_wait_p50_s'], p['pace_wait_max_s'])),
            ('path starved share p50 / max', lambda p: '%s / %s' % (
                p['starved_share_p50'], p['starved_share_max']))]
    width = max(len(r[0]) for r in rows)
    lines = []
    for name, fn in rows:
        lines.append('%-*s  %s' % (width, name, '  '.join(
            '%-22s' % fn(p) for p in points)))
    return '\n'.join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--guests', default='4,8')
    p.add_argument('--walks', type=int, default=50)
    p.add_argument('--pace', default='on',
                   help='on, off, or on,off (alternating rounds)')
    p.add_argument('--route', default='kerbside',
                   choices=('kerbside', 'direct'))
    p.add_argument('--walk', default='canonical')
    p.add_argument('--image', default=None)
    p.add_argument('--sample', type=float, default=0.5)
    p.add_argument('--out', default=None)
    args = p.parse_args()
    signals.install(signals.BATCH_SIGNALS)
    logging.basicConfig(level=logging.WARNING)
    load = _load_module()
    guests = sorted(set(int(x) for x in args.guests.split(',') if x))
    paces = [x.strip() for x in args.pace.split(',') if x.strip()]
    if not guests or min(guests) < 1 or set(paces) - {'on', 'off'}:
        p.error('--guests positive, --pace on/off')
    from kerbside_tempest_plugin import guest_images
    from kerbside_tempest_plugin.lane import lane as lane_mod
    args.image = guest_images.sextant_image(args.image)
    out = report.stamped_dir(args.out, REPO, 'keys-under-load')
    lock = open(LOCK, 'w')
    fcntl.flock(lock, fcntl.LOCK_EX)
    print('keys under load: N %s, %d walks each, pace %s, %s route, image '
          '%s; load %s; out %s' % (guests, args.walks, paces, args.route,
                                   args.image, report.loadavg(), out),
          flush=True)
    t0 = time.monotonic()
    points = []
    work = tempfile.mkdtemp(prefix='lane-', dir=out)
    lane = lane_mod.Lane(work, route=args.route,
                         kerbside=args.route == 'kerbside',
                         consoles=max(guests))
    saved = os.environ.get('KTP_PACE_KEYS')
    try:
        lane.up()
        for n in guests:
            rounds = {pace: [] for pace in paces}
            done = {pace: 0 for pace in paces}
            r = 0
            while min(done.values()) < args.walks:
                for pace in paces:
                    if done[pace] >= args.walks:
                        continue
                    os.environ['KTP_PACE_KEYS'] = '1' if pace == 'on' \
                        else '0'
                    r += 1
                    a = report.loadavg()
                    point, results = load.run_point(
                        lane, args.route, n, args,
                        os.path.join(out, 'pace-%s' % pace, 'r%02d' % r),
                        tag='-r%02d' % r)
                    rounds[pace].append({'results': results,
                                         'load_start': a.split()[0],
                                         'load_end':
                                         report.loadavg().split()[0]})
                    done[pace] += len(results)
                    print('N=%d pace %s round %d: %d of %d passed, load '
                          '%s -> %s (%d walks so far)' % (
                              n, pace, r, point['passed'], n, a.split()[0],
                              report.loadavg().split()[0], done[pace]),
                          flush=True)
            for pace in paces:
                points.append(summarise(n, pace, rounds[pace]))
    finally:
        if saved is None:
            os.environ.pop('KTP_PACE_KEYS', None)
        else:
            os.environ['KTP_PACE_KEYS'] = saved
        down = signals.down_shielded(lane)
        shutil.rmtree(os.path.join(work, 'secrets'), ignore_errors=True)
        fcntl.flock(lock, fcntl.LOCK_UN)
    print()
    print(table(points))
    for pt in points:
        for f in pt['failures']:
            print('FAILED N=%d pace %s %s [%s]: %s; keys: %s; %s' % (
                pt['n'], pt['pace'], f['name'], f['error_type'],
                f['cause'][:300], '; '.join(f['keys_lost'])[:300] or
                'none lost', f['artifact_dir']))
    summary = {'guests': guests, 'walks': args.walks, 'paces': paces,
               'route': args.route, 'image': args.image,
               'wall_s': round(time.monotonic() - t0, 1),
               'teardown': {k: down.get(k) for k in ('leftover_pids',
                                                     'busy_ports')},
               'points': points}
    with open(os.path.join(out, 'keys-under-load.json'), 'w') as f:
        json.dump(summary, f, indent=1, default=str)
    print(json.dumps(summary, sort_keys=True, default=str))
    return 0


if __name__ == '__main__':
    sys.exit(main())

#!/usr/bin/env python3
"""N Sextant walks per route on the single-box OpenStack (default: 10
canonical walks), side by side, with the same figures as
benchmarks/scenario.py.

One cloud (lane.openstack.cloud.OpenStackCloud, Kerbside in front) is
brought up and shared by both routes; each route gets an
lane.openstack.lane.OpenStackLane over it, and every walk boots a fresh
Nova server exactly as the tempest test does (scenario.runner):

- `kerbside`: spice-direct at 2.99, Kerbside's /nova-console.vv, ryll
  through the proxy (TLS to libvirt's qemu);
- `direct`: ryll on the token's tls_port, verified with the lane CA.

Printed: scenario.py's table and soak figures per route (passes with a
95% Wilson interval, phases), the cloud's bring-up time per component
and its memory with one guest, and one JSON line. Artifacts of every walk
and the cloud's logs are kept under --out.

    python3 benchmarks/openstack_scenario.py [--runs 10]
        [--routes kerbside direct] [--walk canonical] [--image PATH]
        [--out DIR] [--modes before after] [--no-lock]

`--modes before after` (issue 20) runs it all once per mode, each on a
cloud of its own, in one run: `before` is the lane as it was (Nova's
default power-state sync, so a guest's power-off reaches Nova with the
libvirt driver's 15 s delayed STOPPED event; the provider polling every
2 s and waiting for each delete), `after` the lane now (the sync every
second, polls every 0.5 s, deletes waited for once per lane). Printed
beside: each phase's median (min-max) per mode and route, `after drain`
(the guest seen stopped, ryll stopped, the server deleted), the lane's
own teardown, the cloud's bring-up, and the 1-minute load average at the
end of each walk. Holds the machine lock (/tmp/ktp-machine.lock) unless
--no-lock.
"""

import argparse
import fcntl
import json
import logging
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import scenario as bench  # noqa: E402
import statistics  # noqa: E402

from kerbside_tempest_plugin.common import errors  # noqa: E402
from kerbside_tempest_plugin.common import signals  # noqa: E402
from kerbside_tempest_plugin.lane.openstack import cloud as os_cloud  # noqa
from kerbside_tempest_plugin.lane.openstack import lane as os_lane  # noqa
from kerbside_tempest_plugin.scenario import runner  # noqa: E402
from kerbside_tempest_plugin.sextant import contract  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--runs', type=int, default=10)
    p.add_argument('--routes', nargs='+', default=['kerbside', 'direct'],
                   choices=['kerbside', 'direct'])
    p.add_argument('--walk', default='canonical',
                   choices=sorted(runner.walk_mod.WALKS))
    p.add_argument('--image', default=None,
                   help='default SEXTANT_IMAGE, else the bundled guest')
    p.add_argument('--char-delay', type=int,
                   default=contract.PASTE_CHAR_DELAY_MS)
    p.add_argument('--out', default=None)
    p.add_argument('--modes', nargs='+', default=None, choices=sorted(MODES),
                   help='compare these lane settings, a cloud each, in '
                   'one run (issue 20)')
    p.add_argument('--no-lock', action='store_true',
                   help='the caller holds %s already' % LOCK)
    return p.parse_args(argv)


LOCK = '/tmp/ktp-machine.lock'
# The lane's settings compared by --modes: the cloud's and the Nova
# provider's options.
MODES = {
    'before': {'cloud': {'power_state_sync': None},
               'provider': {'poll_interval': 2.0, 'serial_interval': 2.0,
                            'wait_for_delete': True}},
    'after': {'cloud': {}, 'provider': {}},
}
STEPS = ('boot_to_banner', 'ryll_to_surface', 'walk', 'drain',
         'after_drain', 'total')


def loadavg():
    with open('/proc/loadavg') as f:
        return float(f.read().split()[0])


def after_drain(result):
    """Seconds of a walk after its drain was read: the guest seen
    stopped, ryll stopped, the server deleted (and, waiting, gone).
    """
    ph = result.phases
    if 'total' not in ph or 'drain' not in ph:
        return None
    return ph['total'] - sum(ph.get(k, 0) for k in (
        'boot_to_banner', 'ryll_to_surface', 'walk', 'drain'))


def run_mode(mode, args, out):
    """One cloud with `mode`'s settings, args.runs walks per route on
    it; returns the figures of the comparison.
    """
    settings = MODES[mode]
    res = {'mode': mode, 'load_start': loadavg(), 'routes': {}}
    t0 = time.monotonic()
    cloud = os_cloud.OpenStackCloud(os.path.join(out, 'cloud-' + mode),
                                    **settings['cloud'])
    try:
        try:
            cloud.up(timeout=300)
        except errors.HarnessError as e:
            res['error'] = 'the cloud did not come up: %s' % e
            return res
        res['cloud_up'] = (time.monotonic() - t0, loadavg())

        def factory(workdir, label, route):
            lane = os_lane.OpenStackLane(
                workdir, route=route, cloud=cloud,
                provider_kwargs=settings['provider'])
            down = lane.down

            def timed_down():
                t = time.monotonic()
                try:
                    return down()
                finally:
                    res['routes'][route]['lane_down'] = (
                        time.monotonic() - t, loadavg())
            lane.down = timed_down
            return lane

        for route in args.routes:
            res['routes'][route] = {'loads': []}
            t = time.monotonic()
            d = bench.run_route(
                route, args, os.path.join(out, mode), lane_factory=factory,
                log=lambda m, r=route: (
                    res['routes'][r]['loads'].append(loadavg())
                    if ' FAILED' not in m else None,
                    print('[%s] %s' % (mode, m), flush=True)))
            res['routes'][route].update(
                wall=time.monotonic() - t,
                results=d['results'], lane_error=d.get('lane_error'))
    finally:
        down = cloud.down()
        res['teardown'] = {k: down.get(k)
                           for k in ('leftover_pids', 'busy_ports')}
    res['load_end'] = loadavg()
    return res


def cell(values, loads=None):
    values = [v for v in values if v is not None]
    if not values:
        return '-'
    text = '%.1f (%.1f-%.1f)' % (statistics.median(values), min(values),
                                 max(values)) if len(values) > 1 else \
        '%.1f' % values[0]
    if loads:
        text += ' L%.1f-%.1f' % (min(loads), max(loads)) if len(
            loads) > 1 else ' L%.1f' % loads[0]
    return text


def compare_text(results, routes):
    """One row per step, one column per mode and route: median (min-max)
    seconds, then the 1-minute load at the end of the walks (L...).
    """
    cols = [(r['mode'], route) for r in results for route in routes
            if route in r.get('routes', {})]
    head = ['%-16s' % 'step'] + ['%-30s' % ('%s %s' % c) for c in cols]
    lines = [' '.join(head)]
    by = {(r['mode'], route): r['routes'][route] for r in results
          for route in r.get('routes', {})}
    for step in STEPS:
        row = ['%-16s' % step.replace('_', ' ')]
        for c in cols:
            d = by[c]
            vals = [after_drain(x) if step == 'after_drain'
                    else x.phases.get(step) for x in d['results']]
            row.append('%-30s' % cell(vals, d['loads']))
        lines.append(' '.join(row))
    for key, label in (('lane_down', 'lane down'), ('wall', 'route wall')):
        row = ['%-16s' % label]
        for c in cols:
            v = by[c].get(key)
            if isinstance(v, tuple):
                row.append('%-30s' % ('%.1f L%.1f' % v))
            else:
                row.append('%-30s' % ('%.1f' % v if v is not None else '-'))
        lines.append(' '.join(row))
    lines.append('passed: ' + ', '.join('%s %s %d/%d' % (
        c[0], c[1], sum(1 for x in by[c]['results'] if x.passed),
        len(by[c]['results'])) for c in cols))
    lines.append('cloud up: ' + ', '.join(
        '%s %.1f s (load %.1f)' % ((r['mode'],) + r['cloud_up'])
        for r in results if 'cloud_up' in r))
    lines.append('teardown: ' + ', '.join('%s %s' % (
        r['mode'], r.get('teardown')) for r in results))
    return '\n'.join(lines)


def main_compare(args):
    from kerbside_tempest_plugin import guest_images
    args.image = guest_images.sextant_image(args.image)
    out = bench.report.stamped_dir(args.out, bench.REPO, 'openstack-cmp')
    lock = open(LOCK, 'a')
    if not args.no_lock:
        print('waiting for the machine lock %s' % LOCK, flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
    print('modes %s, %d %s walk(s) per route per mode, routes %s; load '
          '%.2f; artifacts in %s' % (' / '.join(args.modes), args.runs,
                                     args.walk, ' '.join(args.routes),
                                     loadavg(), out), flush=True)
    t0 = time.monotonic()
    try:
        results = [run_mode(mode, args, out) for mode in args.modes]
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    text = compare_text(results, args.routes)
    text += '\nwall %.0f s' % (time.monotonic() - t0)
    print()
    print(text)
    with open(os.path.join(out, 'compare.txt'), 'w') as f:
        f.write(text + '\n')

    def walks(d):
        return [dict(bench.rounded(x.phases), passed=x.passed,
                     after_drain=bench.rounded(after_drain(x)))
                for x in d.get('results', [])]

    print(json.dumps({'benchmark': 'openstack_scenario', 'modes': [
        {'mode': r['mode'], 'error': r.get('error'),
         'cloud_up': r.get('cloud_up'), 'teardown': r.get('teardown'),
         'routes': {route: {'loads': d['loads'], 'wall': d.get('wall'),
                            'lane_down': d.get('lane_down'),
                            'walks': walks(d)}
                    for route, d in r.get('routes', {}).items()}}
        for r in results]}, sort_keys=True, default=str))
    ok = all(not r.get('error') and all(
        x.passed for d in r['routes'].values() for x in d['results'])
        for r in results)
    return 0 if ok else 1


def main(argv=None):
    args = parse_args(argv)
    # SIGTERM/SIGHUP/SIGINT: the lanes' finally blocks run (common.signals).
    signals.install(signals.BATCH_SIGNALS)
    logging.basicConfig(level=logging.WARNING)
    if args.modes:
        return main_compare(args)
    from kerbside_tempest_plugin import guest_images
    args.image = guest_images.sextant_image(args.image)
    out = bench.report.stamped_dir(args.out, bench.REPO, 'openstack')
    print('%d %s walk(s) per route on the single-box OpenStack, routes %s;'
          ' image %s; artifacts in %s' % (
              args.runs, args.walk, ' '.join(args.routes), args.image,
              out), flush=True)
    load = {'start': bench.report.loadavg()}
    t0 = time.monotonic()
    cloud = os_cloud.OpenStackCloud(os.path.join(out, 'cloud'))
    per_route, memory, down = {}, None, {}
    try:
        try:
            cloud.up(timeout=300)
        except errors.HarnessError as e:
            print('the cloud did not come up: %s (workdir %s)' % (
                e, cloud.workdir))
            return 1
        cloud_up = time.monotonic() - t0
        print('cloud up in %.0f s' % cloud_up, flush=True)

        def factory(workdir, label, route):
            return os_lane.OpenStackLane(workdir, route=route, cloud=cloud)

        for route in args.routes:
            per_route[route] = bench.run_route(
                route, args, out, lane_factory=factory,
                log=lambda m: print(m, flush=True))
            if memory is None:
                memory = cloud.memory()
    finally:
        down = cloud.down()
    load['end'] = bench.report.loadavg()
    wall = time.monotonic() - t0
    figures = {route: bench.soak_figures(d, args.runs)
               for route, d in per_route.items()}
    timings = {k: round(v, 1) for k, v in sorted(cloud.timings.items())
               if isinstance(v, (int, float))}
    text = bench.table(per_route, args) + '\n\n' + bench.soak_text(
        per_route, figures)
    text += '\n\ncloud up %.0f s; per component (s): %s' % (
        cloud_up, ', '.join('%s %s' % kv for kv in timings.items()))
    if memory:
        text += ('\ncloud memory after the first route (no guest): %s MiB'
                 % memory['total_mib'])
    text += '\nteardown: leftover pids %s, busy ports %s' % (
        down.get('leftover_pids'), down.get('busy_ports'))
    text += '\nwall %.0f s; /proc/loadavg at start: %s; at end: %s' % (
        wall, load['start'], load['end'])
    print()
    print(text)
    failed = [(route, r) for route, d in per_route.items()
              for r in d['results'] if not r.passed]
    for route, r in failed:
        print('\nFAILED %s (artifacts %s): %s' % (
            route, r.artifact_dir, r.failure_message()[:1500]))
    with open(os.path.join(out, 'summary.txt'), 'w') as f:
        f.write(text + '\n')
    with open(os.path.join(out, 'results.json'), 'w') as f:
        json.dump({route: {'soak': figures[route],
                           'results': [r.to_json() for r in d['results']]}
                   for route, d in per_route.items()}, f, indent=1,
                  default=str)
    print(json.dumps({
        'runs_per_route': args.runs, 'walk': args.walk,
        'cloud_up_s': round(cloud_up, 1), 'cloud_timings_s': timings,
        'cloud_memory_mib': memory and memory['total_mib'],
        'wall_s': round(wall, 1), 'loadavg': load,
        'teardown': {k: down.get(k)
                     for k in ('leftover_pids', 'busy_ports')},
        'routes': {route: bench.rounded({k: fig[k] for k in (
            'runs', 'failed', 'wilson95', 'phases_s')})
            for route, fig in figures.items()}}, sort_keys=True))
    lane_failed = any(d.get('lane_error') for d in per_route.values())
    return 1 if failed or lane_failed or len(per_route) < len(
        args.routes) else 0


if __name__ == '__main__':
    sys.exit(main())

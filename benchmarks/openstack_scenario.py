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
        [--out DIR]
"""

import argparse
import json
import logging
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import scenario as bench  # noqa: E402

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
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # SIGTERM/SIGHUP/SIGINT: the lanes' finally blocks run (common.signals).
    signals.install(signals.BATCH_SIGNALS)
    logging.basicConfig(level=logging.WARNING)
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

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
per-run results and every artifact directory are kept under --out.

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

from kerbside_tempest_plugin.scenario import runner  # noqa: E402
from kerbside_tempest_plugin.sextant import contract  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return '-'
    return '%.2f (%.2f-%.2f)' % (statistics.median(values), min(values),
                                 max(values))


def run_route(route, args, out):
    from kerbside_tempest_plugin.lane import lane as lane_mod
    lanes = os.path.join(out, 'lanes')
    os.makedirs(lanes, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix=route + '-', dir=lanes)
    label, route = route, route.split('-')[0]
    lane = lane_mod.Lane(workdir, route=route,
                         kerbside=route == 'kerbside',
                         hypervisor_tls=label != 'kerbside-plain')
    results = []
    t0 = time.monotonic()
    try:
        lane.up()
        lane_up = time.monotonic() - t0
        for i in range(args.runs):
            r = runner.run_scenario(
                lane, args.walk, route, args.image,
                os.path.join(out, route),
                char_delay_ms=args.char_delay,
                name='bench-%s-%s-%02d' % (args.walk, label, i + 1),
                log=lambda m: None)
            print('  %s %2d/%d: %s' % (label, i + 1, args.runs,
                                       r.summary_line()), flush=True)
            results.append(r)
    finally:
        down = lane.down()
        shutil.rmtree(os.path.join(workdir, 'secrets'), ignore_errors=True)
    return {'lane_up_s': lane_up, 'results': results,
            'teardown': {k: down.get(k)
                         for k in ('leftover_pids', 'busy_ports')}}


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
    row('lane up (s)', lambda d: '%.1f' % d['lane_up_s'])
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
    widths = [max(len(str(x[i])) for x in rows + [['metric'] + routes])
              for i in range(len(routes) + 1)]
    lines = ['  '.join(str(c).ljust(w) for c, w in
                       zip(['metric'] + routes, widths))]
    lines.append('  '.join('-' * w for w in widths))
    for r in rows:
        lines.append('  '.join(str(c).ljust(w) for c, w in zip(r, widths)))
    return '\n'.join(lines)


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
    logging.basicConfig(level=logging.WARNING)
    from kerbside_tempest_plugin import guest_images
    args.image = guest_images.sextant_image(args.image)
    out = os.path.abspath(args.out or os.path.join(
        REPO, 'artifacts', 'bench-scenario-%s' % time.strftime(
            '%Y%m%dT%H%M%SZ', time.gmtime())))
    os.makedirs(out, exist_ok=True)
    print('%d %s walk(s) per route, routes %s, paste delay %d ms; '
          'artifacts in %s' % (args.runs, args.walk, ' '.join(args.routes),
                               args.char_delay, out), flush=True)
    per_route = {}
    for route in args.routes:
        per_route[route] = run_route(route, args, out)
    text = table(per_route, args)
    print()
    print(text)
    failures = [(route, r) for route, d in per_route.items()
                for r in d['results'] if not r.passed]
    for route, r in failures:
        print('\nFAILED %s: %s' % (route, r.failure_message()[:1500]))
    with open(os.path.join(out, 'summary.txt'), 'w') as f:
        f.write(text + '\n')
    with open(os.path.join(out, 'results.json'), 'w') as f:
        json.dump({route: {'lane_up_s': d['lane_up_s'],
                           'teardown': d['teardown'],
                           'results': [r.to_json() for r in d['results']]}
                   for route, d in per_route.items()}, f, indent=1,
                  default=str)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())

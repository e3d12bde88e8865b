#!/usr/bin/env python3
"""The console's verbs on a real lane, and a walk via the console beside
the same walk via the scenario runner, in one run.

One lane is brought up (default: the kerbside route). Alternating N
times, on a fresh guest each: the canonical walk through
scenario.runner.run_scenario (as the tempest test runs it), then through
a console.session.Session (`walk canonical`: the same scenario.walk
beats, then the drain read and judged). On the first console guest,
before its walk, each read-only verb (status, digest, shot, serial) is
timed M times on the Awaiting screen; on one more fresh guest, `key
lshift` is timed M times (a lone Shift leaves Awaiting alone). Printed
side by side: walk seconds (median and range) and passes per path, and
each verb's round trip (median, min, max).

    python3 benchmarks/console_verbs.py [--runs 3] [--verb-runs 20]
        [--route kerbside] [--image PATH] [--out DIR]
"""

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from kerbside_tempest_plugin import guest_images  # noqa: E402
from kerbside_tempest_plugin.console import session as session_mod  # noqa
from kerbside_tempest_plugin.lane import lane as lane_mod  # noqa: E402
from kerbside_tempest_plugin.scenario import runner  # noqa: E402


def spread(values):
    if not values:
        return 'n/a'
    return '%.2f (%.2f-%.2f)' % (statistics.median(values), min(values),
                                 max(values))


def timed(fn, n):
    out = []
    for _ in range(n):
        t = time.monotonic()
        fn()
        out.append(time.monotonic() - t)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--runs', type=int, default=3)
    p.add_argument('--verb-runs', type=int, default=20)
    p.add_argument('--route', default='kerbside', choices=lane_mod.ROUTES)
    p.add_argument('--image')
    p.add_argument('--out')
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = args.out or tempfile.mkdtemp(prefix='ktp-bench-console-')
    workdir = os.path.join(out, 'lane')
    lane = lane_mod.Lane(workdir, route=args.route,
                         kerbside=args.route == 'kerbside')
    walks = {'scenario': [], 'console': []}
    passes = {'scenario': 0, 'console': 0}
    verbs = {}
    try:
        lane.up()
        image = guest_images.sextant_image(
            args.image, log_dir=os.path.join(workdir, 'logs'))
        for i in range(args.runs):
            r = runner.run_scenario(lane, 'canonical', args.route, image,
                                    os.path.join(out, 'artifacts'),
                                    log=lambda m: None)
            passes['scenario'] += r.passed
            if r.phases.get('walk') is not None:
                walks['scenario'].append(r.phases['walk'])
            s = session_mod.Session.start(lane=lane, image=image, up=False)
            try:
                if i == 0:
                    m = args.verb_runs
                    verbs['status'] = timed(s.status, m)
                    verbs['digest'] = timed(s.digest, m)
                    verbs['shot'] = timed(s.shot, m)
                    verbs['serial'] = timed(s.serial, m)
                res = s.walk('canonical')
                walks['console'].append(res['walk_s'])
                passes['console'] += res['drain']['passed']
            except session_mod.ConsoleError as e:
                print('console walk %d failed: %s' % (i, e))
            finally:
                s.close(teardown=False)
        s = session_mod.Session.start(lane=lane, image=image, up=False)
        try:
            verbs['key'] = timed(lambda: s.key(['lshift']), args.verb_runs)
        finally:
            s.close(teardown=False)
    finally:
        report = lane.down()
        shutil.rmtree(os.path.join(workdir, 'secrets'), ignore_errors=True)
    print('console vs scenario, canonical walk, %s route, %d run(s) each '
          '(lane down in %.1f s; artifacts %s)' % (
              args.route, args.runs, report.get('seconds', 0), out))
    print('%-10s %-8s %s' % ('path', 'passed', 'walk s median (range)'))
    for k in ('scenario', 'console'):
        print('%-10s %d/%-6d %s' % (k, passes[k], args.runs,
                                    spread(walks[k])))
    print('\nverb round trip, s (median, min-max), %d each'
          % args.verb_runs)
    for k, v in verbs.items():
        print('%-8s %s' % (k, spread(v)))
    return 0


if __name__ == '__main__':
    sys.exit(main())

#!/usr/bin/env python3
"""The latency loadtest's floor: what the client itself costs.

Runs the loadtest's own loop (RouteSession.measure through the project's
ControlClient) against the instant fake control socket, which answers every
request at once and stamps a surface_drawn right after the key-down reply.
Prints, per hold time, the key-to-stamp figures (what a real route's sample
would be with a zero-cost SPICE path and guest) and the event delivery
delay (stamp to receipt in this process).

    python3 benchmarks/latency_floor.py [--samples N] [--hold-ms 0 50]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from kerbside_tempest_plugin.loadtest import floor  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--samples', type=int, default=1000)
    p.add_argument('--hold-ms', type=float, nargs='+', default=[0.0, 50.0])
    args = p.parse_args()
    print('%-8s %7s %8s %8s %8s %8s %8s  %s' % (
        'hold_ms', 'n', 'min', 'p50', 'p95', 'p99', 'max',
        'delivery p50/max (ms)'))
    for hold in args.hold_ms:
        samples = args.samples if hold == 0 else max(args.samples // 10, 20)
        s, _ = floor.measure_floor(samples, hold_s=hold / 1000.0)
        d = s['event_delivery_ms']
        print('%-8g %7d %8.3f %8.3f %8.3f %8.3f %8.3f  %.3f / %.3f' % (
            hold, s['samples'], s['min_ms'], s['p50_ms'], s['p95_ms'],
            s['p99_ms'], s['max_ms'], d['p50'], d['max']))
        if s['timeouts']:
            print('  %d timeouts!' % s['timeouts'])


if __name__ == '__main__':
    main()

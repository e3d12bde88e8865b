#!/usr/bin/env python3
"""Lane bring-up time, split into stages, for both console routes side by
side in one run.

For each route and round a whole fresh lane is brought up and torn down:

- mariadb:        mariadb-install-db, mariadbd start to ping, DB and user
- tls:            openssl CA and proxy certificate
- kerbside:       db upgrade, API (gunicorn) answering, daemon + proxy
                  listening, API token minted
- boot_to_banner: the lane's own timing (lane.base.TIMINGS): guest boot
                  started to the serial banner (Sextant) or Shell> (no
                  image)
- ryll_to_surface: .vv fetch/write + ryll start to a surface in `status`
- first_digest:   from that surface to the first screenshot that decodes
                  as a visual digest (only with the Sextant image; else the
                  first PNG screenshot)
- teardown:       lane.down() (all processes stopped, ports checked)

Screenshots are served from ryll's own copy of the screen and never cross
the proxy, so they do not measure the route; the latency loadtest does.

    python3 benchmarks/lane.py [--rounds N] [--image PATH|--diskless]
                               [--json OUT]
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from kerbside_tempest_plugin.lane import base as lane_base  # noqa: E402
from kerbside_tempest_plugin.lane import lane as lane_mod  # noqa: E402

ROUTES = ('kerbside', 'direct')
BOOT = 'boot_to_banner'   # the lane's name for it
assert BOOT in lane_base.TIMINGS
STAGES = ('mariadb', 'tls', 'kerbside', BOOT, 'ryll_to_surface',
          'first_digest', 'total_to_digest', 'teardown')


def first_digest(client, decode, timeout=60):
    from kerbside_tempest_plugin.digest import errors
    from kerbside_tempest_plugin.digest import frame
    deadline = time.monotonic() + timeout
    tries = 0
    while True:
        tries += 1
        shot = client.screenshot()
        if not decode:
            return tries
        try:
            frame.analyse(shot.png)
            return tries
        except errors.DigestError as e:
            if time.monotonic() >= deadline:
                raise RuntimeError('no decodable digest in %d screenshots '
                                   'over %.0f s (last: %s)' % (
                                       tries, timeout, e))
        time.sleep(0.05)


def one_round(route, image, workdir):
    t = {}
    lane = lane_mod.Lane(workdir, route=route)
    t0 = time.monotonic()
    try:
        lane.up()
        t['mariadb'] = lane.timings['mariadb']
        t['tls'] = lane.timings['tls']
        t['kerbside'] = lane.timings['kerbside']
        banner = lane_mod.SEXTANT_BANNER if image else r'Shell> '
        guest = lane.boot_guest(image, name='bench', banner=banner)
        t[BOOT] = lane.timings[BOOT]
        s = time.monotonic()
        rp = lane.start_ryll(guest, route=route)
        client = rp.connect(timeout=30)
        try:
            rp.wait_ready(client, timeout=60, settle=0, interval=0.01)
            t['ryll_to_surface'] = time.monotonic() - s
            s = time.monotonic()
            t['screenshots'] = first_digest(client, decode=bool(image))
            t['first_digest'] = time.monotonic() - s
            t['total_to_digest'] = time.monotonic() - t0
        finally:
            client.close()
    finally:
        s = time.monotonic()
        report = lane.down()
        t['teardown'] = time.monotonic() - s
        t['leftovers'] = report['leftover_pids'] + report['busy_ports']
        t['accel'] = lane.guests[0].accel if lane.guests else None
    return t


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--rounds', type=int, default=1)
    img = p.add_mutually_exclusive_group()
    img.add_argument('--image')
    img.add_argument('--diskless', action='store_true')
    p.add_argument('--json', help='write every measurement here')
    p.add_argument('--keep', action='store_true',
                   help='keep the lane workdirs (printed)')
    args = p.parse_args()
    image = None
    if not args.diskless:
        # --image, else SEXTANT_IMAGE, else the bundled guest.
        from kerbside_tempest_plugin import guest_images
        image = guest_images.sextant_image(args.image)
    results = {r: [] for r in ROUTES}
    for n in range(args.rounds):
        for route in ROUTES:  # interleaved, so drift hits both alike
            workdir = tempfile.mkdtemp(prefix='ktp-bench-')
            results[route].append(one_round(route, image, workdir))
            if args.keep:
                print('kept %s' % workdir, file=sys.stderr)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
            print('round %d %s done' % (n + 1, route), file=sys.stderr)

    accel = {r['accel'] for rs in results.values() for r in rs}
    print('lane bring-up, seconds (median of %d round(s); guest %s; '
          'accel %s)' % (args.rounds, 'Sextant image' if image else
                         'diskless OVMF', ','.join(sorted(map(str, accel)))))
    print('%-18s %10s %10s' % ('stage', *ROUTES))
    for stage in STAGES:
        row = []
        for route in ROUTES:
            vals = [r[stage] for r in results[route] if stage in r]
            row.append('%10.3f' % statistics.median(vals) if vals
                       else '%10s' % '-')
        print('%-18s %s' % (stage, ' '.join(row)))
    left = [r['leftovers'] for rs in results.values() for r in rs
            if r['leftovers']]
    print('leftover processes/ports after teardown: %s' % (left or 'none'))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1)
    return 1 if left else 0


if __name__ == '__main__':
    sys.exit(main())

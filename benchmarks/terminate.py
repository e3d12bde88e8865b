#!/usr/bin/env python3
"""How long Kerbside takes to cut a terminated session, measured.

One lane, one guest, N terminations (default 20), alternating the two
endpoints (POST /session/<id>/terminate and POST
/console/<source>/<uuid>/terminate). Each round fetches a fresh proxy
.vv, connects ryll (surface up), waits a random 0-2.5 s (so the POST
lands anywhere in the daemon's 2 s ProxyControl poll), POSTs the
terminate and records, from the POST:

- `eof`: ryll's control connection closed (what the promise test's
  bound, scenario.promises.CUT_BOUND_S, is about);
- `relays`: the proxy's kerbside_proxy_active_connections back to its
  value before ryll connected (polled every 20 ms);
- `exit`: ryll exited.

Printed side by side per endpoint and overall: p50, p95 and max of each
(nearest rank), with /proc/loadavg at start and end; the per-round
figures go to --out as JSON. Hold the machine lock (flock) while it runs
so nothing else times anything at the same time.

    python3 benchmarks/terminate.py [--rounds 20] [--lane direct-qemu]
        [--out DIR]

The OpenStack lane (`--lane openstack`) opens each console through Nova
(a spice-direct console, then Kerbside's /nova-console.vv) on a cloud of
its own.
"""

import argparse
import fcntl
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from kerbside_tempest_plugin.common import signals  # noqa: E402
from kerbside_tempest_plugin.kerbside_api import client as kapi  # noqa
from kerbside_tempest_plugin.loadtest import report  # noqa: E402
from kerbside_tempest_plugin.loadtest import stats  # noqa: E402
from kerbside_tempest_plugin.scenario import promises as pr  # noqa: E402
from kerbside_tempest_plugin.sextant import contract  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCK = '/tmp/ktp-machine.lock'
ACTIVE = 'kerbside_proxy_active_connections'


def _active(api):
    return kapi.metric_sum(api.metrics(), ACTIVE)


def one_round(lane, guest, api, source, uuid, how, open_vv, log):
    """Connect, terminate, time the cut. Returns the round's figures."""
    from kerbside_tempest_plugin.ryll import errors as ryll_errors
    base = _active(api)
    vv = open_vv()
    session = pr.session_of(vv)
    rp = lane.start_ryll(guest, route='kerbside', timeout=30, vv=vv)
    client = rp.connect(timeout=30)
    try:
        rp.wait_ready(client, timeout=60)
        time.sleep(random.uniform(0, 2.5))
        t0 = time.monotonic()
        if how == 'session':
            api.terminate_session(session)
        else:
            api.terminate_console(source, uuid)
        posted = time.monotonic() - t0
        eof = relays = exited = None
        deadline = t0 + 30
        while time.monotonic() < deadline and None in (eof, relays,
                                                       exited):
            now = time.monotonic() - t0
            if eof is None and client.closed:
                eof = now
            if exited is None and not rp.alive:
                exited = now
            if relays is None:
                try:
                    if _active(api) <= base:
                        relays = time.monotonic() - t0
                except kapi.KerbsideAPIError:
                    pass
            time.sleep(0.02)
    except ryll_errors.RyllError as e:
        log('round failed: %s' % str(e).splitlines()[0])
        return {'how': how, 'error': str(e).splitlines()[0]}
    finally:
        client.close()
        lane.stop_ryll()
    out = {'how': how, 'post': round(posted, 3),
           'eof': None if eof is None else round(eof, 3),
           'relays': None if relays is None else round(relays, 3),
           'exit': None if exited is None else round(exited, 3)}
    log('%-8s POST %.3f s, eof %s, relays %s, exit %s' % (
        how, posted, out['eof'], out['relays'], out['exit']))
    return out


def direct_qemu(args, work, log):
    from kerbside_tempest_plugin import guest_images
    from kerbside_tempest_plugin.lane import lane as lane_mod
    lane = lane_mod.Lane(os.path.join(work, 'lane'), route='kerbside')
    try:
        lane.up()
        guest = lane.boot_guest(guest_images.sextant_image(args.image),
                                banner=contract.BANNER, timeout=120)
        api = pr.api_for(lane)
        route = lane.console_route(guest, 'kerbside')
        rounds = []
        for i in range(args.rounds):
            how = ('session', 'console')[i % 2]
            rounds.append(one_round(
                lane, guest, api, route.source, route.uuid, how,
                lambda: api.console_vv(route.source, route.uuid), log))
        return rounds
    finally:
        signals.down_shielded(lane)


def openstack(args, work, log):
    """The same rounds on a single-box OpenStack of the benchmark's own,
    each console opened as a cloud user opens it: a spice-direct console
    from Nova, then Kerbside's /nova-console.vv.
    """
    from kerbside_tempest_plugin.lane.openstack import kerbside as os_kb
    from kerbside_tempest_plugin.lane.openstack import lane as os_lane
    from kerbside_tempest_plugin.scenario import promise_cloud as pc
    lane = os_lane.OpenStackLane(os.path.join(work, 'lane'),
                                 route='kerbside', image=args.image)
    try:
        lane.up()
        kb = pr.kerbside_of(lane)
        # Log in before the first /nova-console.vv (contracts §16.6).
        kb.token()
        api = pr.api_for(lane)
        guest = lane.boot_guest(None, banner=contract.BANNER, timeout=300)

        def open_vv():
            token = pc.nova_token_of(guest._mint())
            lane.redactor.add(token)
            return api.nova_console_vv(token).text
        rounds = []
        for i in range(args.rounds):
            how = ('session', 'console')[i % 2]
            rounds.append(one_round(lane, guest, api, os_kb.SOURCE_NAME,
                                    guest.ref, how, open_vv, log))
        return rounds
    finally:
        signals.down_shielded(lane)


def summarise(rounds):
    rows = []
    for label, sel in (('session', 'session'), ('console', 'console'),
                       ('all', None)):
        mine = [r for r in rounds if sel in (None, r['how'])]
        row = [label, '%d/%d' % (len([r for r in mine if r.get('eof')
                                      is not None]), len(mine))]
        for key in ('eof', 'relays', 'exit'):
            d = stats.distribution([r[key] for r in mine
                                    if r.get(key) is not None])
            row.append('-' if not d['n'] else '%.2f / %.2f / %.2f' % (
                d['p50'], d['p95'], d['max']))
        rows.append(row)
    return report.text_table(
        ['endpoint', 'cut', 'eof p50/p95/max s', 'relays p50/p95/max s',
         'ryll exit p50/p95/max s'], rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--rounds', type=int, default=20)
    p.add_argument('--lane', choices=['direct-qemu', 'openstack'],
                   default='direct-qemu')
    p.add_argument('--image', default=None)
    p.add_argument('--out', default=None)
    args = p.parse_args(argv)
    # SIGTERM/SIGHUP/SIGINT: the lanes' finally blocks run (common.signals).
    signals.install(signals.BATCH_SIGNALS)
    out = report.stamped_dir(args.out, REPO, 'terminate')
    work = out

    def log(msg):
        print('[%s] %s' % (time.strftime('%H:%M:%S'), msg), flush=True)
    with open(LOCK, 'a') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        load0 = report.loadavg()
        rounds = (openstack if args.lane == 'openstack' else
                  direct_qemu)(args, work, log)
        load1 = report.loadavg()
    table = summarise(rounds)
    print('\nterminate -> cut on the %s lane, %d rounds (load %s -> %s)'
          % (args.lane, len(rounds), load0, load1))
    print(table)
    report.write_json(os.path.join(out, 'terminate.json'), {
        'lane': args.lane, 'rounds': rounds, 'load_start': load0,
        'load_end': load1})
    print('figures: %s' % os.path.join(out, 'terminate.json'))
    failed = [r for r in rounds if r.get('eof') is None]
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())

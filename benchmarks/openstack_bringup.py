#!/usr/bin/env python3
"""The single-box OpenStack's bring-up, phase by phase: the serial order
(one step after another, as before issue 20) against the parallel one
(lane.openstack.cloud BRINGUP_MODES), side by side in one run.

Each round brings one cloud up in each mode (Kerbside in front, no guest
unless --boot), in alternating order, tears it down, and keeps its
workdir (logs, cloud.json) under --out. Printed: one row per phase with
each mode's seconds and, beside each figure, the 1-minute load average
when that phase ended; then one JSON line. With --boot, each cloud also
uploads the Sextant image and times one server create → ACTIVE → delete
(Nova's own part of every test).

Holds the machine lock (/tmp/ktp-machine.lock, fcntl.flock) while it
runs: do not wrap it in `flock` on the same file (it would wait for
itself) unless with --no-lock.

    python3 benchmarks/openstack_bringup.py [--rounds 1]
        [--modes serial parallel] [--boot] [--out DIR]

`--modes parallel-split parallel` compares the parallel bring-up with
Keystone's and Nova's one-shot setups as one process per command
against one process each (issue 20). `CPU s of the one-shot commands`
is the user + system CPU of every one-shot command of the bring-up (the
db syncs, *-manage, the capabilities probe), each reaped with wait4 by
Services.run; `cpu` in the JSON line has each command's.
"""

import argparse
import fcntl
import json
import logging
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from kerbside_tempest_plugin.common import signals  # noqa: E402
from kerbside_tempest_plugin.lane.openstack import cloud as os_cloud  # noqa

LOCK = '/tmp/ktp-machine.lock'
# Phases in the order printed: (timings key, label). Keys a mode does not
# have print as '-'.
PHASES = [
    ('tls', 'TLS'),
    ('mariadb', 'MariaDB'),
    ('rabbitmq', 'epmd + RabbitMQ (to its port)'),
    ('memcached', 'memcached'),
    ('libvirt', 'virtlogd + libvirtd'),
    ('libvirt_capabilities', 'libvirtd probes QEMU (beside the rest)'),
    ('keystone-setup', '  keystone-manage x4 in one process'),
    ('keystone-manage-import', '    its import'),
    ('keystone-db-sync', '  keystone db_sync'),
    ('keystone-fernet-setup', '  keystone fernet_setup'),
    ('keystone-credential-setup', '  keystone credential_setup'),
    ('keystone-bootstrap', '  keystone bootstrap'),
    ('keystone', '  keystone API'),
    ('keystone_register', '  users, roles, catalog'),
    ('keystone_total', 'Keystone'),
    ('placement-db-sync', '  placement db sync'),
    ('placement', '  placement API'),
    ('placement_total', 'Placement'),
    ('glance-db-sync', '  glance db_sync'),
    ('glance', '  glance API'),
    ('glance_total', 'Glance'),
    ('neutron-db-manage', '  neutron db-manage'),
    ('neutron', '  neutron API'),
    ('neutron_total', 'Neutron'),
    ('nova-manage-cells', '  nova-manage x4 in one process'),
    ('nova-manage-import', '    its import'),
    ('nova-manage-api-db-sync', '  nova api_db sync'),
    ('nova-manage-map-cell0', '  nova map_cell0'),
    ('nova-manage-create-cell', '  nova create_cell'),
    ('nova-manage-db-sync', '  nova db sync'),
    ('nova_api', '  nova API'),
    ('nova_compute_up', '  compute service up (from the wait)'),
    ('nova-manage-discover-hosts', '  nova-manage discover_hosts'),
    ('nova_host_mapped', '  host mapped (from the wait)'),
    ('nova_discover', '  compute up + mapped + hypervisor (the wait)'),
    ('nova_compute_to_hypervisor', '  nova-compute spawn to hypervisor'),
    ('nova_total', 'Nova'),
    ('kerbside', 'Kerbside'),
    ('cloud_up', 'cloud up (all)'),
    ('oneshot_cpu', 'CPU s of the one-shot commands'),
    ('boot_to_active', 'server create to ACTIVE (--boot)'),
    ('delete', 'server delete to gone (--boot)'),
]


def loadavg():
    with open('/proc/loadavg') as f:
        return float(f.read().split()[0])


class LoadStamped(dict):
    """The cloud's timings dict, noting the 1-minute load average when
    each figure is set (at the end of its phase).
    """

    def __init__(self):
        super().__init__()
        self.load = {}

    def __setitem__(self, key, value):
        self.load[key] = loadavg()
        super().__setitem__(key, value)

    def update(self, *args, **kwargs):
        # Services.run_script() merges its steps' timings with update().
        for key, value in dict(*args, **kwargs).items():
            self[key] = value


def one_cloud(mode, workdir, boot_image=None):
    cloud = os_cloud.OpenStackCloud(workdir, bringup=mode)
    cloud.timings = LoadStamped()
    result = {'mode': mode, 'workdir': workdir, 'load_start': loadavg()}
    try:
        cloud.up(timeout=300)
        # The one-shot commands (db syncs, *-manage, the capabilities
        # probe), each reaped with its own rusage (Services.run).
        result['cpu'] = dict(cloud.services.cpu)
        cloud.timings['oneshot_cpu'] = sum(
            v for v in cloud.services.cpu.values() if v)
        if boot_image:
            cloud.upload_image(boot_image)
            server = cloud.boot(boot_image, name='bringup-bench')
            t = time.monotonic()
            cloud.delete(server['id'])
            cloud.timings['delete'] = time.monotonic() - t
        result['ok'] = True
    except Exception as e:
        result['ok'] = False
        result['error'] = cloud.redactor.redact(str(e))[-2000:]
    finally:
        report = cloud.down()
    result['timings'] = dict(cloud.timings)
    result['load'] = dict(cloud.timings.load)
    result['load_end'] = loadavg()
    result['leftover_pids'] = report.get('leftover_pids')
    result['busy_ports'] = report.get('busy_ports')
    return result


def table(results, modes):
    def cell(mode, key):
        vals = [(r['timings'][key], r['load'].get(key)) for r in results
                if r['mode'] == mode and r['ok'] and key in r['timings']]
        if not vals:
            return '-'
        secs = statistics.median(v for v, _ in vals)
        loads = [lv for _, lv in vals if lv is not None]
        load = ('load %.1f' % loads[0] if len(loads) == 1 else
                'load %.1f-%.1f' % (min(loads), max(loads)) if loads
                else 'load -')
        if len(vals) == 1:
            return '%6.1f s (%s)' % (secs, load)
        return '%6.1f s (median of %d; %s)' % (secs, len(vals), load)

    width = max(len(label) for _, label in PHASES)
    lines = ['%-*s  %s' % (width, 'phase', '  '.join(
        '%-28s' % m for m in modes))]
    for key, label in PHASES:
        cells = [cell(m, key) for m in modes]
        if all(c == '-' for c in cells):
            continue
        lines.append('%-*s  %s' % (width, label, '  '.join(
            '%-28s' % c for c in cells)))
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--rounds', type=int, default=1)
    p.add_argument('--modes', nargs='+', default=['serial', 'parallel'],
                   choices=os_cloud.BRINGUP_MODES)
    p.add_argument('--boot', action='store_true',
                   help='also time a server create to ACTIVE and its '
                   'delete on each cloud')
    p.add_argument('--image', default=None)
    p.add_argument('--out', default=None)
    p.add_argument('--no-lock', action='store_true',
                   help='the caller already holds the machine lock (e.g. '
                   '`flock %s sh -c "...; ..."`)' % LOCK)
    args = p.parse_args(argv)
    signals.install(signals.BATCH_SIGNALS)
    logging.basicConfig(level=logging.WARNING)
    image = None
    if args.boot:
        from kerbside_tempest_plugin import guest_images
        image = guest_images.sextant_image(args.image)
    out = args.out or '/tmp/ktp-bringup-%s' % time.strftime(
        '%Y%m%d-%H%M%S')
    os.makedirs(out, exist_ok=True)
    lock = open(LOCK, 'a')
    if not args.no_lock:
        print('waiting for the machine lock %s' % LOCK, flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
    t0 = time.monotonic()
    results = []
    try:
        print('%d round(s) of %s; load %.2f; workdirs in %s' % (
            args.rounds, ' / '.join(args.modes), loadavg(), out), flush=True)
        for i in range(args.rounds):
            order = args.modes if i % 2 == 0 else args.modes[::-1]
            for mode in order:
                r = one_cloud(mode, os.path.join(out, '%s-%d' % (mode, i)),
                              image)
                results.append(r)
                print('round %d %s: %s, cloud up %s s (load %.2f at start,'
                      ' %.2f at end)%s' % (
                          i, mode, 'up' if r['ok'] else 'FAILED',
                          r['timings'].get('cloud_up', '-') if r['ok']
                          else '-', r['load_start'], r['load_end'],
                          '' if r['ok'] else ': ' + r['error']), flush=True)
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    print()
    print(table(results, args.modes))
    print()
    print('wall %.0f s' % (time.monotonic() - t0))
    print(json.dumps({'benchmark': 'openstack_bringup', 'results': results},
                     sort_keys=True, default=str))
    return 0 if all(r['ok'] for r in results) else 1


if __name__ == '__main__':
    sys.exit(main())

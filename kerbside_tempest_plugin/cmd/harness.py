"""kerbside-harness: bring the direct-qemu lane up and down.

    kerbside-harness setup [--venv DIR] [--kerbside-source DIR]
                           [--proxy-bin PATH]
    kerbside-harness up [--image PATH | --diskless] [--route kerbside|direct]
                        [--workdir DIR] [--kerbside-source DIR]
                        [--proxy-bin PATH] [--firewall-mode enforce|warn]
                        [--firewall-permitted-channels main,display,...]
                        [--console-token-duration MINUTES]
                        [--qemu-binary PATH] [--[no-]hypervisor-tls]
                        [--relay] [--fault SPEC]
    kerbside-harness fault [SPEC | --clear] [--console N] [--workdir DIR]
    kerbside-harness status [--workdir DIR]
    kerbside-harness down [--workdir DIR]
    kerbside-harness console [--attach DIR | --provider P --route R]
                             [--script FILE]
    kerbside-harness mcp [--workdir DIR]

`up` prints one JSON object (workdir, control socket, serial log, SPICE and
API ports, route, Kerbside's settings and build) once ryll's control
socket exists, and leaves the lane running. Every process is recorded in
the workdir, so `down` finds them even after `up` itself crashed.

While `up` brings the lane up, and for as long as `console` or `mcp` hold
theirs, SIGTERM and SIGHUP tear the lane down before the command exits
(common.signals), and the lane's reaper (lane.reaper) does it when the
command dies any other way (SIGKILL, a crash); `up` stops the reaper once
the lane is up, since it leaves the lane running on purpose.

A fault by hand: `up --fault SPEC` (or `up --relay`, then `fault SPEC`
while the lane runs) puts a SPICE-aware relay (spice.relay) on the
hypervisor leg; it logs every injection to logs/fault-relay.jsonl.
`fault` alone prints what the relay armed, fired and saw.

A Kerbside developer's own build: `--kerbside-source` (or
$KERBSIDE_SOURCE) for the Python side, installed into the Kerbside venv
when it does not hold that checkout unchanged; `--proxy-bin` (or
$KERBSIDE_PROXY_BIN) for the proxy. `setup` and `up` print
`{"kerbside_build": {...}}`: the versions, where kerbside came from, and
the proxy binary with its sha256 and contract hash.
"""

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys

from kerbside_tempest_plugin.cmd import _lane_cli
from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import signals
from kerbside_tempest_plugin.common import tools
from kerbside_tempest_plugin import guest_images
from kerbside_tempest_plugin.lane import kerbside as lane_kerbside
from kerbside_tempest_plugin.lane import lane as lane_mod
from kerbside_tempest_plugin.providers import direct_qemu

DISKLESS_BANNER = r'Shell> '
# What `setup` checks: the lane's programs (the Kerbside venv's are checked
# by KerbsideVenv.check).
LANE_TOOLS = ('qemu-system-x86_64', 'qemu-img', 'openssl')
MARIADB_TOOLS = (('mariadbd', 'mysqld'),
                 ('mariadb-install-db', 'mysql_install_db'))


PROG = 'kerbside-harness'
# The commands that hold a lane while they run (`up` until it is up).
LANE_OWNERS = ('up', 'console', 'mcp')


def _err(msg):
    print('%s: %s' % (PROG, msg), file=sys.stderr)


def cmd_setup(args):
    venv = lane_kerbside.KerbsideVenv(args.venv)
    source = args.kerbside_source or os.environ.get('KERBSIDE_SOURCE')
    ok = True
    missing = tools.missing(LANE_TOOLS)
    for names in MARIADB_TOOLS:
        try:
            tools.find_any(*names)
        except tools.ToolNotFound as e:
            missing.append(e)
    try:
        tools.find('ryll', override=args.ryll)
    except tools.ToolNotFound as e:
        missing.append(e)
    for e in missing:
        ok = False
        _err('missing tool %s' % e)
    try:
        direct_qemu.find_ovmf()
    except errors.ProviderError as e:
        ok = False
        _err(str(e))
    os.makedirs(os.path.dirname(venv.path), exist_ok=True)
    log_path = os.path.join(os.path.dirname(venv.path), 'kerbside-pip.log')
    try:
        done = venv.ensure(source=source, log=_err, log_path=log_path)
        _err(done)
        settings = lane_kerbside.KerbsideSettings.from_options(
            proxy_bin=args.proxy_bin)
        build = lane_kerbside.build_of(venv, settings.proxy_bin)
    except ValueError as e:
        _err(str(e))
        return 2
    except (errors.HarnessError, subprocess.CalledProcessError) as e:
        _err(str(e))
        return 1
    print(json.dumps({'kerbside_build': build}, sort_keys=True))
    return 0 if ok else 1


def _channels(text):
    """--firewall-permitted-channels: comma-separated names (checked by
    the lane).
    """
    return tuple(n for n in (p.strip() for p in text.split(',')) if n)


def cmd_up(args):
    workdir = os.path.abspath(args.workdir or lane_mod.default_workdir())
    state = lane_mod.load_state(workdir)
    if state and state.get('state') in ('up', 'starting'):
        status = lane_mod.lane_status(workdir)
        if any(p['alive'] for p in status['processes']):
            _err('a lane is already up in %s; run `kerbside-harness down '
                 '--workdir %s` first' % (workdir, workdir))
            return 1
    if os.path.isdir(workdir) and os.listdir(workdir) and \
            not args.keep_workdir:
        if not os.path.exists(os.path.join(workdir, 'processes.json')):
            _err('%s exists and is not a lane workdir; refusing to use it'
                 % workdir)
            return 1
        # A fresh lane each time: the previous lane's artifacts go away.
        shutil.rmtree(workdir)
    try:
        lane = lane_mod.Lane(
            workdir, route=args.route, kerbside=not args.no_kerbside,
            kerbside_venv=args.venv, ryll_binary=args.ryll,
            accel=args.accel, guest_tls=args.guest_tls,
            kerbside_source=args.kerbside_source,
            proxy_bin=args.proxy_bin, firewall_mode=args.firewall_mode,
            firewall_permitted_channels=args.firewall_permitted_channels,
            console_token_duration=args.console_token_duration,
            qemu_binary=args.qemu_binary,
            hypervisor_tls=args.hypervisor_tls, relay=args.relay,
            fault=args.fault)
    except ValueError as e:
        _err(str(e))
        return 2
    try:
        if args.diskless:
            image, banner = None, DISKLESS_BANNER
        else:
            image = guest_images.sextant_image(
                args.image, log_dir=os.path.join(workdir, 'logs'))
            banner = args.banner if args.banner is not None else \
                lane_mod.SEXTANT_BANNER
        lane.up(timeout=args.timeout)
        lane.boot_guest(image, banner=banner or None,
                        timeout=args.boot_timeout)
        if not args.no_ryll:
            lane.start_ryll(timeout=args.timeout)
        lane.save_state(state='up')
        # Left running on purpose: its reaper must not take it down
        # when this command exits.
        lane.leave_running()
    except BaseException as e:
        _err('lane failed to come up: %s' % e)
        report = lane.down()
        _err('torn down; logs kept in %s (leftover pids %s, busy ports %s)'
             % (workdir, report['leftover_pids'], report['busy_ports']))
        return 1
    info = lane.info()
    out = {
        'workdir': info['workdir'],
        'route': info['route'],
        'control_socket': info['control_socket'],
        'serial_log': info['serial_log'],
        'spice_port': info['spice_port'],
        'api_port': info['api_port'],
        'api_url': info['api_url'],
        'proxy_tls_port': info['ports'].get('proxy_secure')
        if lane.with_kerbside else None,
        'console': info['console'],
        'guest': info['guest'],
        'ryll_pid': info['ryll_pid'],
        'timings': info['timings'],
        'kerbside_settings': info['kerbside_settings'],
        'kerbside_build': info['kerbside_build'],
        'hypervisor_tls': info['hypervisor_tls'],
        'relay': info['relay'],
        'relay_note': info['relay_note'],
    }
    print(json.dumps(out, sort_keys=True))
    return 0


def cmd_fault(args):
    """Arm, clear or show the faults of a running lane's relays."""
    from kerbside_tempest_plugin.lane import relay as lane_relay
    workdir = os.path.abspath(args.workdir or lane_mod.default_workdir())
    if args.clear:
        op = 'clear'
    else:
        op = 'arm' if args.spec else 'status'
    answers = lane_relay.command(workdir, op, args.spec, args.console)
    print(json.dumps(answers if len(answers) > 1 else answers[0],
                     sort_keys=True))
    return 0 if all(a.get('ok') for a in answers) else 1


def cmd_status(args):
    return _lane_cli.status(args.workdir or lane_mod.default_workdir(),
                            lane_mod.lane_status)


def cmd_down(args):
    return _lane_cli.down(PROG, args.workdir or lane_mod.default_workdir(),
                          lane_mod.teardown_workdir, what='lane')


def build_parser():
    p = argparse.ArgumentParser(
        prog='kerbside-harness',
        description='Bring the direct-qemu Kerbside lane up and down.')
    p.add_argument('-v', '--verbose', action='store_true')
    sub = p.add_subparsers(dest='command', required=True)

    s = sub.add_parser('setup', help='create or repair the Kerbside venv')
    s.add_argument('--venv', help='Kerbside venv (default: $KERBSIDE_VENV '
                   'or ~/.cache/kerbside-tempest-plugin/kerbside-venv)')
    s.add_argument('--kerbside-source',
                   help='a local Kerbside checkout to install instead of '
                        'kerbside==%s (or $KERBSIDE_SOURCE)' %
                        lane_kerbside.KERBSIDE_VERSION)
    s.add_argument('--ryll', default='ryll', help='ryll binary to check '
                   '(default $RYLL_BINARY, else ryll beside this python, '
                   'then on PATH)')
    s.add_argument('--proxy-bin', help='the kerbside-proxy binary the '
                   'printed build names (default $%s, else the venv\'s)'
                   % lane_kerbside.PROXY_BIN_ENV)
    s.set_defaults(func=cmd_setup)

    u = sub.add_parser('up', help='bring a lane up and print JSON')
    img = u.add_mutually_exclusive_group()
    img.add_argument('--image', help='guest image (qcow2 or raw); default '
                     '$SEXTANT_IMAGE, else the bundled Sextant-compatible '
                     'guest, built into ~/.cache/kerbside-tempest-plugin/'
                     'images when missing')
    img.add_argument('--diskless', action='store_true',
                     help='boot OVMF with no disk (EFI shell; for testing '
                          'the lane without a guest image)')
    u.add_argument('--route', choices=lane_mod.ROUTES, default='kerbside')
    u.add_argument('--workdir', help='default $KERBSIDE_HARNESS_WORKDIR or '
                   '/tmp/kerbside-harness; emptied first')
    u.add_argument('--keep-workdir', action='store_true',
                   help='do not empty the workdir first')
    u.add_argument('--no-kerbside', action='store_true',
                   help='no MariaDB/Kerbside (direct route only)')
    u.add_argument('--no-ryll', action='store_true',
                   help='do not start ryll')
    u.add_argument('--banner', help='regex to wait for on serial (default '
                   'the Sextant banner; empty: do not wait)')
    u.add_argument('--accel', choices=['auto', 'kvm', 'tcg'], default='auto')
    u.add_argument('--guest-tls', action='store_true',
                   help='give qemu a SPICE TLS port too')
    u.add_argument('--qemu-binary', help='the qemu system emulator '
                   '(default $KTP_QEMU_BINARY, else qemu-system-x86_64)')
    tls = u.add_mutually_exclusive_group()
    tls.add_argument('--hypervisor-tls', dest='hypervisor_tls',
                     action='store_true', default=None,
                     help='TLS on the hypervisor leg (the default; '
                     '$KTP_HYPERVISOR_TLS)')
    tls.add_argument('--no-hypervisor-tls', dest='hypervisor_tls',
                     action='store_false',
                     help='plain SPICE on the hypervisor leg')
    u.add_argument('--relay', action='store_true', default=None,
                   help='put the fault relay on the hypervisor leg (then '
                   'plain); arm faults later with `kerbside-harness fault` '
                   '($KTP_RELAY)')
    u.add_argument('--fault', metavar='SPEC',
                   help='a fault for the relay from the start (implies '
                   '--relay; $KTP_FAULT), e.g. '
                   '"stall,channel=display,after=8,duration=20"')
    u.add_argument('--venv', help='Kerbside venv')
    kerbside_arguments(u)
    u.add_argument('--ryll', default='ryll', help='ryll binary')
    u.add_argument('--timeout', type=float, default=90,
                   help='deadline of each service start')
    u.add_argument('--boot-timeout', type=float, default=120,
                   help='deadline for the serial banner')
    u.set_defaults(func=cmd_up)

    f = sub.add_parser('fault', help='arm a fault on a running lane\'s '
                       'relay (SPEC), --clear them, or show them')
    f.add_argument('spec', nargs='?', help='a fault spec (spice.faults), '
                   'e.g. "drop,channel=inputs,type=key_down,after_keys=3"')
    f.add_argument('--clear', action='store_true')
    f.add_argument('--console', type=int, help='only this console\'s relay '
                   '(1-based; default all)')
    f.add_argument('--workdir')
    f.set_defaults(func=cmd_fault)

    st = sub.add_parser('status', help='show what runs')
    st.add_argument('--workdir')
    st.set_defaults(func=cmd_status)

    d = sub.add_parser('down', help='stop everything the lane started')
    d.add_argument('--workdir')
    d.set_defaults(func=cmd_down)

    c = sub.add_parser('console', help='a live console on a lane: verbs '
                       'by hand, or a script (one JSON line per result)')
    _lane_args(c)
    c.add_argument('--attach', metavar='WORKDIR',
                   help='attach to the lane `up` left in WORKDIR instead '
                        'of starting one')
    c.add_argument('--down-on-exit', action='store_true',
                   help='with --attach: tear that lane down on exit')
    c.add_argument('--script', help='run the verbs in FILE (default: '
                   'standard input when it is not a terminal)')
    c.set_defaults(func=cmd_console)

    m = sub.add_parser('mcp', help='an MCP server (stdio) over the console '
                       'verbs (needs the mcp extra)')
    _lane_args(m)
    m.set_defaults(func=cmd_mcp)
    return p


def kerbside_arguments(p):
    """The Kerbside options of a command that brings Kerbside up (`up`
    here and in kerbside-openstack): its build and its settings.
    """
    k = p.add_argument_group(
        'Kerbside', 'its build and its settings (unset: Kerbside\'s '
        'default)')
    k.add_argument('--kerbside-source', metavar='DIR',
                   help='a Kerbside checkout the venv must hold (installed '
                   'when it does not; default $KERBSIDE_SOURCE)')
    k.add_argument('--proxy-bin', metavar='PATH',
                   help='the kerbside-proxy binary the daemon runs '
                   '(KERBSIDE_PROXY_BIN; default $%s, else the venv\'s)'
                   % lane_kerbside.PROXY_BIN_ENV)
    k.add_argument('--firewall-mode', choices=lane_kerbside.FIREWALL_MODES,
                   help='KERBSIDE_FIREWALL_MODE (default enforce)')
    k.add_argument('--firewall-permitted-channels', type=_channels,
                   metavar='NAME,...',
                   help='KERBSIDE_FIREWALL_PERMITTED_CHANNELS: the channels '
                   'the proxy relays, of %s (default: all)'
                   % ', '.join(lane_kerbside.CHANNEL_NAMES))
    k.add_argument('--console-token-duration', type=int, metavar='MINUTES',
                   help='KERBSIDE_CONSOLE_TOKEN_DURATION: how long a console '
                   'token lives (default 1)')


def _lane_args(p):
    """The lane options of `console` and `mcp` (a lane they start)."""
    p.add_argument('--provider', default='direct_qemu',
                   choices=['direct_qemu', 'shakenfist', 'nova'])
    p.add_argument('--route', choices=lane_mod.ROUTES, default='kerbside')
    p.add_argument('--workdir', help='the workdir of the lane it starts '
                   '(default: a fresh /tmp/kerbside-console-*)')
    p.add_argument('--image', help='guest image (default as for `up`)')
    p.add_argument('--config-file', help='tempest.conf with the provider '
                   'groups (shakenfist)')
    p.add_argument('--os-cloud-workdir', metavar='DIR',
                   help='nova: the cloud `kerbside-openstack up` left in DIR '
                   '(its Keystone, admin, flavor and Sextant image); '
                   'default: the OS_* environment')
    p.add_argument('--flavor', help='nova: the flavor to boot (default: '
                   "the cloud's, or $OS_FLAVOR)")
    p.add_argument('--ryll', default='ryll', help='ryll binary')
    p.add_argument('--accel', choices=['auto', 'kvm', 'tcg'],
                   default='auto')
    p.add_argument('--boot-timeout', type=float, default=120)
    p.add_argument('--relay', action='store_true', default=None,
                   help='direct_qemu: the fault relay on the hypervisor '
                   'leg (then plain); the `fault` verb arms faults')
    p.add_argument('--fault', metavar='SPEC',
                   help='direct_qemu: a fault for the relay from the start '
                   '(implies --relay)')


def cmd_console(args):
    # Imported here: the console's imports never burden the other verbs.
    from kerbside_tempest_plugin.console import shell
    return shell.main(args)


def cmd_mcp(args):
    from kerbside_tempest_plugin.console import mcp_server
    return mcp_server.main(args)


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr, format='%(asctime)s %(levelname)s %(name)s: '
                                  '%(message)s')
    if args.command == 'up' and args.no_kerbside and \
            args.route == 'kerbside':
        _err('--no-kerbside needs --route direct')
        return 2
    if args.command in LANE_OWNERS:
        # SIGTERM/SIGHUP take the same path as Ctrl-C: the lane this
        # command holds is torn down before it exits.
        signals.install()
    try:
        return args.func(args)
    except errors.HarnessError as e:
        _err(str(e))
        return 1


if __name__ == '__main__':
    sys.exit(main())

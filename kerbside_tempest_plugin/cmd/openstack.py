"""kerbside-openstack: a real single-box OpenStack for the lane.

    kerbside-openstack setup [--venv DIR] [--kerbside-venv DIR]
                             [--kerbside-source DIR] [--proxy-bin PATH]
    kerbside-openstack up [--workdir DIR] [--image PATH] [--no-boot]
                          [--upload] [--no-kerbside] [--kerbside-source DIR]
                          [--proxy-bin PATH] [--firewall-mode M]
                          [--firewall-permitted-channels NAME,...]
                          [--console-token-duration MINUTES]
                          [--bringup parallel|serial]
    kerbside-openstack tempest-conf --workspace WS --image ID [--route R]
    kerbside-openstack status [--workdir DIR]
    kerbside-openstack down [--workdir DIR]

`up` brings the cloud up (MariaDB, RabbitMQ, memcached, libvirtd,
Keystone, Placement, Glance, Neutron, Nova, then Kerbside in front with
an `openstack` source), uploads the Sextant image,
boots it with networks none, waits for its banner in Nova's console
output, and prints one JSON object (URLs, server id, timings, memory; no
secrets: the admin password is in the file it names), Kerbside's settings
and build among them. It leaves the cloud running; `down` stops
everything, also after a crash of `up`.

Kerbside's build and settings as for `kerbside-harness`: the Kerbside venv
holds $KERBSIDE_SOURCE (`--kerbside-source`) when set, and the daemon runs
$KERBSIDE_PROXY_BIN (`--proxy-bin`) when set; `setup` prints
`{"kerbside_build": {...}}`.
"""

import argparse
import json
import logging
import os
import shutil
import sys

from kerbside_tempest_plugin.cmd import _lane_cli
from kerbside_tempest_plugin.cmd import harness
from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import secrets as common_secrets
from kerbside_tempest_plugin.common import signals
from kerbside_tempest_plugin import guest_images
from kerbside_tempest_plugin.lane import kerbside as lane_kerbside
from kerbside_tempest_plugin.lane.openstack import api as os_api
from kerbside_tempest_plugin.lane.openstack import cloud as os_cloud
from kerbside_tempest_plugin.lane.openstack import kerbside as os_kerbside
from kerbside_tempest_plugin.lane.openstack import keystone as os_keystone
from kerbside_tempest_plugin.lane.openstack import tempest_conf
from kerbside_tempest_plugin.lane.openstack import venv as os_venv
from kerbside_tempest_plugin.sextant import contract


PROG = 'kerbside-openstack'


def _err(msg):
    print('%s: %s' % (PROG, msg), file=sys.stderr)


def cmd_setup(args):
    venv = os_venv.OpenStackVenv(args.venv)
    log_path = os.path.join(os.path.dirname(venv.path),
                            'openstack-pip.log')
    _err(venv.ensure(log_path))
    # Kerbside in front: its venv (from a checkout when asked), plus the
    # clients of its Nova flow.
    kvenv = lane_kerbside.KerbsideVenv(args.kerbside_venv)
    source = args.kerbside_source or os.environ.get('KERBSIDE_SOURCE')
    try:
        settings = lane_kerbside.KerbsideSettings.from_options(
            proxy_bin=args.proxy_bin)
    except ValueError as e:
        _err(str(e))
        return 2
    _err(kvenv.ensure(source=source, log=_err, log_path=log_path))
    _err(os_kerbside.ensure_clients(kvenv, log_path=log_path))
    print(json.dumps({'kerbside_build': lane_kerbside.build_of(
        kvenv, settings.proxy_bin)}, sort_keys=True))
    return 0


def cmd_up(args):
    workdir = os.path.abspath(args.workdir or os_cloud.default_workdir())
    if os.path.isdir(workdir) and os.listdir(workdir):
        if not os.path.exists(os.path.join(workdir, 'processes.json')):
            _err('%s exists and is not a cloud workdir; refusing to use it'
                 % workdir)
            return 1
        if os_cloud.cloud_pids(workdir):
            _err('a cloud still runs in %s; run `kerbside-openstack down '
                 '--workdir %s` first' % (workdir, workdir))
            return 1
        shutil.rmtree(workdir)
    try:
        cloud = os_cloud.OpenStackCloud(
            workdir, venv=args.venv, spice_tls=not args.no_spice_tls,
            kerbside=not args.no_kerbside, kerbside_venv=args.kerbside_venv,
            kerbside_source=args.kerbside_source, proxy_bin=args.proxy_bin,
            firewall_mode=args.firewall_mode,
            firewall_permitted_channels=args.firewall_permitted_channels,
            console_token_duration=args.console_token_duration,
            bringup=args.bringup)
    except ValueError as e:
        _err(str(e))
        return 2
    out = {}
    try:
        cloud.up(timeout=args.timeout)
        if args.upload:
            image = guest_images.sextant_image(
                args.image, log_dir=os.path.join(workdir, 'logs'))
            out['image'] = cloud.upload_image(image)['id']
        if not args.no_boot:
            image = guest_images.sextant_image(
                args.image, log_dir=os.path.join(workdir, 'logs'))
            server = cloud.boot(image, timeout=args.boot_timeout,
                                banner=contract.BANNER)
            out['server'] = server['id']
            console = cloud.console(server['id'])
            out['console'] = {k: console[k]
                              for k in ('host', 'port', 'tls_port')}
    except BaseException as e:
        _err('cloud failed to come up: %s' % cloud.redactor.redact(str(e)))
        report = cloud.down()
        _err('torn down; logs kept in %s (leftover pids %s, busy ports %s)'
             % (workdir, report['leftover_pids'], report['busy_ports']))
        return 1
    # Up on purpose after this process exits: `down` is the way down.
    cloud.leave_running()
    out.update(cloud.info())
    out['memory'] = cloud.memory()
    print(json.dumps(out, sort_keys=True))
    return 0


def cmd_status(args):
    return _lane_cli.status(args.workdir or os_cloud.default_workdir(),
                            os_cloud.cloud_status)


def cmd_down(args):
    return _lane_cli.down(PROG, args.workdir or os_cloud.default_workdir(),
                          os_cloud.teardown_workdir, what='cloud')


def cmd_tempest_conf(args):
    """Write tempest.conf for the cloud in --workdir (0600: it holds the
    admin password) and a redacted copy beside it; unless
    --dynamic-credentials, also the member account tempest uses (made
    in the cloud's Keystone, its password in the cloud's secrets) and
    accounts.yaml (0600) with a redacted copy.
    """
    workdir = os.path.abspath(args.workdir or os_cloud.default_workdir())
    state = os_cloud.load_state(workdir)
    if not state or state.get('state') != 'up':
        _err('no cloud up in %s' % workdir)
        return 1
    with open(state['admin_password_file']) as f:
        password = f.read().strip()
    ws = os.path.abspath(args.workspace)
    etc = os.path.join(ws, 'etc')
    path = os.path.join(etc, 'tempest.conf')
    accounts = None
    if not args.dynamic_credentials:
        accounts = os.path.join(etc, 'accounts.yaml')
        member = tempest_member(workdir, state, password)
        common_secrets.write_private(accounts, tempest_conf.accounts_yaml(
            password, member['password'], member['names']), 0o600)
        with open(os.path.join(etc, 'accounts.redacted.yaml'), 'w') as f:
            f.write(tempest_conf.accounts_yaml(
                tempest_conf.REDACTED, tempest_conf.REDACTED,
                member['names']))
    common_secrets.write_private(path, tempest_conf.render(
        state, password, args.route, ws, args.image,
        accounts_file=accounts), 0o600)
    with open(os.path.join(etc, 'tempest.redacted.conf'), 'w') as f:
        f.write(tempest_conf.render(state, tempest_conf.REDACTED,
                                    args.route, ws, args.image,
                                    accounts_file=accounts))
    print(path)
    return 0


def tempest_member(workdir, state, admin_password):
    """tempest's member account in the cloud's Keystone (idempotent):
    {'names': (project, user), 'password'}. The password lives in the
    cloud's secrets (so the cloud's teardown masks it in the logs).
    """
    redactor = common_secrets.Redactor()
    secrets = common_secrets.SecretStore(os.path.join(workdir, 'secrets'),
                                         redactor)
    member_password = secrets.get_or_create('tempest-member-password')
    client = os_api.Client(state['auth_url'], 'admin', admin_password,
                           project='admin', redactor=redactor)
    names = os_keystone.tempest_account(client, member_password)
    return {'names': names, 'password': member_password}


def build_parser():
    p = argparse.ArgumentParser(
        prog='kerbside-openstack',
        description='A single-box OpenStack that boots the Sextant guest.')
    p.add_argument('-v', '--verbose', action='store_true')
    sub = p.add_subparsers(dest='command', required=True)
    s = sub.add_parser('setup', help='create or repair the OpenStack venv')
    s.add_argument('--venv')
    s.add_argument('--kerbside-venv')
    s.add_argument('--kerbside-source', metavar='DIR',
                   help='a Kerbside checkout to install into the Kerbside '
                   'venv instead of kerbside==%s (default $KERBSIDE_SOURCE)'
                   % lane_kerbside.KERBSIDE_VERSION)
    s.add_argument('--proxy-bin', metavar='PATH',
                   help='the kerbside-proxy binary the printed build names '
                   '(default $%s, else the venv\'s)'
                   % lane_kerbside.PROXY_BIN_ENV)
    s.set_defaults(func=cmd_setup)
    u = sub.add_parser('up', help='bring the cloud up, boot the guest')
    u.add_argument('--workdir', help='default $KTP_OPENSTACK_WORKDIR or '
                   '/tmp/ktp-openstack; emptied first')
    u.add_argument('--venv')
    u.add_argument('--image', help='guest image (default $SEXTANT_IMAGE '
                   'or the bundled Sextant guest)')
    u.add_argument('--kerbside-venv')
    u.add_argument('--no-boot', action='store_true')
    u.add_argument('--upload', action='store_true',
                   help='upload the guest image to Glance (its id is '
                   '"image" in the output)')
    u.add_argument('--no-kerbside', action='store_true',
                   help='no Kerbside in front (spice-direct URLs then '
                   'point at a closed port)')
    u.add_argument('--no-spice-tls', action='store_true')
    u.add_argument('--bringup', choices=os_cloud.BRINGUP_MODES,
                   help='parallel (default, or $KTP_OPENSTACK_BRINGUP): '
                   'services side by side as their dependencies allow; '
                   'serial: the earlier one-after-another order')
    harness.kerbside_arguments(u)
    u.add_argument('--timeout', type=float, default=300,
                   help='deadline of each service start')
    u.add_argument('--boot-timeout', type=float, default=600)
    u.set_defaults(func=cmd_up)
    tc = sub.add_parser('tempest-conf', help='write tempest.conf for the '
                        'cloud into a tempest workspace')
    tc.add_argument('--workdir')
    tc.add_argument('--workspace', required=True)
    tc.add_argument('--route', choices=('kerbside', 'direct'),
                    default='kerbside')
    tc.add_argument('--image', required=True, help='Glance image id')
    tc.add_argument('--dynamic-credentials', action='store_true',
                    help='tempest makes a project and users per test class '
                    '(the default: one pre-provisioned member the lane '
                    'makes, in accounts.yaml)')
    tc.set_defaults(func=cmd_tempest_conf)
    st = sub.add_parser('status', help='show what runs')
    st.add_argument('--workdir')
    st.set_defaults(func=cmd_status)
    d = sub.add_parser('down', help='stop everything the cloud started')
    d.add_argument('--workdir')
    d.set_defaults(func=cmd_down)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr, format='%(asctime)s %(levelname)s %(name)s: '
                                  '%(message)s')
    if args.command == 'up':
        # SIGTERM/SIGHUP while the cloud comes up take the Ctrl-C path:
        # cmd_up's handler tears it down before the command exits (its
        # reaper would otherwise race the job's own `down`).
        signals.install()
    try:
        return args.func(args)
    except errors.HarnessError as e:
        _err(str(e))
        return 1


if __name__ == '__main__':
    sys.exit(main())

"""The console's Nova lane: credentials without a tempest test.

`providers.nova.NovaProvider` is built from tempest.lib's service clients
(`NovaProvider.from_credentials`), with the credentials from one of:

- `--os-cloud-workdir DIR`: a cloud `kerbside-openstack up` left in DIR
  (cloud.json for the Keystone URL, the flavor and the Sextant image it
  uploaded; secrets/admin-password for the bootstrap admin);
- the standard OS_* environment (OS_AUTH_URL, OS_USERNAME, OS_PASSWORD,
  OS_PROJECT_NAME, OS_USER_DOMAIN_NAME, OS_PROJECT_DOMAIN_NAME,
  OS_REGION_NAME, OS_CACERT, OS_INSECURE), with the flavor and image from
  `--flavor` / `--image` or OS_FLAVOR / OS_IMAGE, and the CA of the
  hypervisors' SPICE certificates (for the direct route's tls_port) from
  KTP_NOVA_HYPERVISOR_CA.

The password goes to the lane's redactor before any request is made, so
no result line, error or artifact of the console carries it.
"""

import json
import logging
import os
import re
import threading

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.lane import provider_lane

LOG = logging.getLogger(__name__)

ENV_KEYS = ('OS_AUTH_URL', 'OS_USERNAME', 'OS_PASSWORD', 'OS_PROJECT_NAME')
# The OpenStack lane's Keystone (lane/openstack/config.py): region and the
# bootstrap admin.
CLOUD_REGION = 'RegionOne'
CLOUD_ADMIN = 'admin'
# What Nova's API removes from console output (nova/api/openstack/compute/
# console_output.py), applied to the log file read directly.
NOVA_REMOVED = re.compile('[\x00-\x08\x0B-\x1F]')
# Serial polling while a console is open: the drain is written just
# before the ACPI power-off, and Nova has no console output for a stopped
# server.
SERIAL_INTERVAL = 0.5


class CloudConfigError(errors.HarnessError):
    """The Nova credentials or defaults could not be found."""


def _read(path, what):
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise CloudConfigError('cannot read %s (%s): %s' % (
            what, path, e.strerror or e)) from None


def from_cloud_workdir(workdir):
    """Credentials and defaults of the cloud in `workdir` (a dict)."""
    workdir = os.path.abspath(workdir)
    try:
        state = json.loads(_read(os.path.join(workdir, 'cloud.json'),
                                 'the cloud state of `kerbside-openstack '
                                 'up`'))
    except ValueError as e:
        raise CloudConfigError('%s/cloud.json is not JSON: %s' % (
            workdir, e)) from None
    if state.get('state') != 'up':
        raise CloudConfigError(
            'the cloud in %s is %s, not up: run `kerbside-openstack up '
            '--workdir %s`' % (workdir, state.get('state'), workdir))
    pw_file = state.get('admin_password_file') or os.path.join(
        workdir, 'secrets', 'admin-password')
    password = _read(pw_file, "the cloud's admin password").strip()
    images = list((state.get('images') or {}).values())
    return {'source': 'cloud workdir %s' % workdir,
            'auth_url': state.get('auth_url'), 'username': CLOUD_ADMIN,
            'password': password, 'project_name': CLOUD_ADMIN,
            'user_domain_name': 'Default', 'project_domain_name': 'Default',
            'region': CLOUD_REGION, 'ca_file': None, 'verify': True,
            'admin': True, 'flavor': state.get('flavor'),
            'image': images[-1] if images else None,
            'network': 'none',
            # The lane's libvirt refuses plain SPICE (require_secure): the
            # direct route goes to the tls_port, checked against this CA.
            'hypervisor_ca_file': state.get('spice_ca_file'),
            'instances_path': state.get('instances_path')}


def from_environment(environ=None):
    """Credentials from the OS_* variables (a dict)."""
    env = os.environ if environ is None else environ
    missing = [k for k in ENV_KEYS if not env.get(k)]
    if missing:
        raise CloudConfigError(
            'the nova provider needs a cloud: --os-cloud-workdir DIR (a '
            '`kerbside-openstack up` workdir) or the OS_* environment '
            '(missing %s)' % ', '.join(missing))
    return {'source': 'OS_* environment',
            'auth_url': env['OS_AUTH_URL'], 'username': env['OS_USERNAME'],
            'password': env['OS_PASSWORD'],
            'project_name': env['OS_PROJECT_NAME'],
            'user_domain_name': env.get('OS_USER_DOMAIN_NAME', 'Default'),
            'project_domain_name': env.get('OS_PROJECT_DOMAIN_NAME',
                                           'Default'),
            'region': env.get('OS_REGION_NAME') or None,
            'ca_file': env.get('OS_CACERT') or None,
            'verify': env.get('OS_INSECURE', '').lower() not in (
                '1', 'true', 'yes'),
            # Resolving a console token (the direct route) is admin-only.
            'admin': env.get('KTP_NOVA_ADMIN', '').lower() in (
                '1', 'true', 'yes'),
            'flavor': env.get('OS_FLAVOR') or None,
            'image': env.get('OS_IMAGE') or None,
            'network': env.get('KTP_NOVA_NETWORK') or 'none',
            'hypervisor_ca_file': env.get('KTP_NOVA_HYPERVISOR_CA') or None}


def credentials(cloud_workdir=None, environ=None):
    if cloud_workdir:
        return from_cloud_workdir(cloud_workdir)
    return from_environment(environ)


def make_provider(creds, route='kerbside', flavor=None, image=None,
                  network=None):
    """A NovaProvider over tempest.lib clients for `creds` (they
    authenticate on their first request).
    """
    from kerbside_tempest_plugin.providers import nova
    if not creds.get('auth_url'):
        raise CloudConfigError('no Keystone URL in %s' % creds['source'])
    if route == 'direct' and not creds.get('admin'):
        raise CloudConfigError(
            "route 'direct' resolves Nova's console token to the "
            "hypervisor's host and port, which is admin-only: use an admin "
            "user (set KTP_NOVA_ADMIN=1 with admin OS_* credentials) or "
            "route 'kerbside'")
    return nova.NovaProvider.from_credentials(
        creds['auth_url'], creds['username'], creds['password'],
        creds['project_name'], user_domain_name=creds['user_domain_name'],
        project_domain_name=creds['project_domain_name'],
        region=creds.get('region'), ca_file=creds.get('ca_file'),
        verify=creds.get('verify', True), admin=bool(creds.get('admin')),
        route=route, image_ref=image or creds.get('image'),
        flavor_ref=flavor or creds.get('flavor'),
        network=network or creds.get('network'),
        hypervisor_ca_file=creds.get('hypervisor_ca_file'),
        serial_interval=SERIAL_INTERVAL)


class NovaLane(provider_lane.ProviderLane):
    """A ProviderLane over a NovaProvider built from `creds`; its redactor
    knows the password from the start and each Keystone token once
    issued.
    """

    def __init__(self, creds, workdir, route='kerbside', ryll_binary='ryll',
                 flavor=None, image=None):
        provider = make_provider(creds, route=route, flavor=flavor,
                                 image=image)
        super().__init__(provider, os.path.abspath(workdir), route=route,
                         ryll_binary=ryll_binary)
        self.redactor.add(creds['password'])
        self.cloud_source = creds['source']
        self.instances_path = creds.get('instances_path')
        self.local_reads = 0
        self._pollers = []

    def learn_tokens(self):
        """Tell the redactor the Keystone token(s) the clients hold."""
        for client in (self.provider.servers_client,
                       self.provider.images_client):
            ap = getattr(client, 'auth_provider', None)
            data = getattr(ap, 'auth_data', None) if ap else None
            if data:
                self.redactor.add(data[0])

    def _boot(self, image, name, artifact_dir):
        try:
            guest = super()._boot(image, name, artifact_dir)
        finally:
            self.learn_tokens()
        self._watch_serial(guest)
        return guest

    def _watch_serial(self, guest):
        """Keep reading the guest's serial while it runs (the drain is
        only on Nova's API until the power-off); for a cloud on this box,
        fall back to the log file Nova's API reads (virtlogd's
        console.log) once Nova has no console for the stopped server.
        """
        serial = guest.serial
        if self.instances_path:
            api_fetch = serial._fetch
            path = os.path.join(self.instances_path, guest.server_id,
                                'console.log')

            def fetch():
                try:
                    return api_fetch()
                except Exception as e:
                    if guest.is_running() or not os.path.exists(path):
                        raise
                    with open(path, 'rb') as f:
                        text = f.read().decode('utf-8', 'replace')
                    self.local_reads += 1
                    if self.local_reads == 1:
                        LOG.info('Nova has no console output for stopped '
                                 'server %s (%s); reading %s, the file its '
                                 'API reads', guest.server_id,
                                 type(e).__name__, path)
                    return NOVA_REMOVED.sub('', text)
            serial._fetch = fetch

        stop = threading.Event()

        def poll():
            while not stop.wait(SERIAL_INTERVAL):
                try:
                    serial.read()
                    if not serial.guest_running():
                        serial.read()        # the final fetch
                        return
                except Exception:
                    LOG.debug('serial poll failed', exc_info=True)
        t = threading.Thread(target=poll, name='nova-serial-%s' % guest.name,
                             daemon=True)
        t.start()
        self._pollers.append(stop)

    def down(self):
        for stop in self._pollers:
            stop.set()
        return super().down()

    def console_vv(self, guest, route=None):
        try:
            return super().console_vv(guest, route)
        finally:
            self.learn_tokens()

"""Kerbside 0.8.0 in front of the cloud: an `openstack` source.

The same Kerbside as the direct-qemu lane (lane.kerbside.Kerbside: API
under gunicorn, daemon, proxy, all in the Kerbside venv), with a
different source file: one `type: openstack` source pointing at this
Keystone as the `kerbside` service user (admin, since looking a console
token up is admin-only), on the catalog's internal interface. There is no
console in the file: Kerbside's `/nova-console.vv?token=` asks Nova what
the token resolves to (host, port, tls_port) on each request.

0.8.0 imports openstacksdk, keystoneauth1 and keystoneclient for that
route but lists only the first two, and only as a test extra: the lane's
setup installs all three into the Kerbside venv (`ensure_clients`).
"""

import subprocess

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import logtext
from kerbside_tempest_plugin.lane import kerbside as lane_kerbside
from kerbside_tempest_plugin.lane.openstack import config

SOURCE_NAME = 'ktp-openstack'
# What kerbside/api.py's NovaToken imports (the last is not declared).
CLIENT_PACKAGES = ('keystoneauth1', 'openstacksdk>=4.5.0',
                   'python-keystoneclient')
CLIENT_IMPORTS = 'import openstack, keystoneauth1.identity.v3, ' \
    'keystoneclient.v3.client'


def clients_problem(venv):
    """None when Kerbside's Nova flow can import its clients."""
    proc = subprocess.run([venv.bin('python'), '-c', CLIENT_IMPORTS],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode == 0:
        return None
    return 'the Kerbside venv %s lacks the OpenStack clients: %s' % (
        venv.path, logtext.tail_text(proc.stderr, 1))


def ensure_clients(venv, log_path=None):
    """Install CLIENT_PACKAGES into the Kerbside venv when missing."""
    if clients_problem(venv) is None:
        return 'OpenStack clients already in %s' % venv.path
    out = open(log_path, 'ab') if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.run([venv.bin('pip'), 'install'] +
                              list(CLIENT_PACKAGES), stdout=out, stderr=out)
    finally:
        if log_path:
            out.close()
    problem = clients_problem(venv)
    if proc.returncode != 0 or problem:
        raise errors.HarnessError('pip install %s into %s failed (exit %d)%s'
                                  % (' '.join(CLIENT_PACKAGES), venv.path,
                                     proc.returncode,
                                     '; see %s' % log_path if log_path
                                     else ''))
    return 'installed %s into %s' % (' '.join(CLIENT_PACKAGES), venv.path)


class CloudKerbside(lane_kerbside.Kerbside):
    """Kerbside with an `openstack` source for the cloud's Layout.

    `firewall_mode`, `firewall_permitted_channels`,
    `console_token_duration` and `proxy_bin`: Kerbside's settings, as for
    lane.kerbside.Kerbside.
    """

    def __init__(self, venv, layout, secrets, registry, tls, sql_url,
                 verbose=True, hypervisor_ca=None, firewall_mode=None,
                 firewall_permitted_channels=None,
                 console_token_duration=None, proxy_bin=None):
        p = layout.ports
        super().__init__(
            venv, layout.workdir, layout.run_dir, secrets, registry, tls,
            sql_url,
            p['kerbside_api'], p['kerbside_secure'], p['kerbside_insecure'],
            p['kerbside_metrics'], console_uuid=None, guest_port=None,
            ticket=None, verbose=verbose, firewall_mode=firewall_mode,
            firewall_permitted_channels=firewall_permitted_channels,
            console_token_duration=console_token_duration,
            proxy_bin=proxy_bin)
        self.layout = layout
        # The CA file the source trusts for the hypervisors' SPICE TLS;
        # default the lane CA, which signed libvirt's certificate.
        self.hypervisor_ca = hypervisor_ca or tls.ca_cert

    def sources_yaml(self, ticket=None):
        """The source file; `ticket` (when given) replaces the password,
        as in the parent (the redacted copy passes '<redacted>').
        """
        lay = self.layout
        password = lay.passwords['kerbside'] if ticket is None else ticket
        text = (
            '- source: %s\n'
            '  type: openstack\n'
            '  url: %s\n'
            '  username: kerbside\n'
            '  password: "%s"\n'
            '  project_name: %s\n'
            '  user_domain_id: default\n'
            '  project_domain_id: default\n'
            '  interface: internal\n'
            '  verify: false\n' % (SOURCE_NAME, lay.auth_url, password,
                                   config.SERVICE_PROJECT))
        if lay.spice_tls:
            # The CA the proxy verifies libvirt's SPICE certificate with:
            # the source's ca_cert, never the proxy's --cacert (contracts
            # §15.1). No host_subject comes from Nova, so the name checked
            # is the console's host (127.0.0.1, in the certificate's SAN).
            with open(self.hypervisor_ca) as f:
                pem = f.read().strip()
            text += '  ca_cert: |\n' + ''.join(
                '    %s\n' % line for line in pem.splitlines())
        return text

    def start(self, timeout=60):
        problem = clients_problem(self.venv)
        if problem:
            raise errors.HarnessError(
                '%s; run `kerbside-openstack setup`' % problem)
        return super().start(timeout=timeout)

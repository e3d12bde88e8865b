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

Kerbside's API tokens come the way a deployer's operators get them:
`POST /auth` with a Keystone user's name and password (`api_login`;
docs/contracts/kerbside.md §16.6). Kerbside's environment names this
Keystone, the `kerbside` service user (which lists groups and checks
membership) and the access group the lane's Keystone bootstrap makes
with the cloud's admin in it. `kerbside demo token` refuses here: it
mints only when every source is static.
"""

import base64
import json
import subprocess
import time
import urllib.error
import urllib.request

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import logtext
from kerbside_tempest_plugin.common import secrets as common_secrets
from kerbside_tempest_plugin.lane import kerbside as lane_kerbside
from kerbside_tempest_plugin.lane.openstack import config

SOURCE_NAME = 'ktp-openstack'
# What kerbside/api.py's NovaToken imports (the last is not declared).
CLIENT_PACKAGES = ('keystoneauth1', 'openstacksdk>=4.5.0',
                   'python-keystoneclient')
CLIENT_IMPORTS = 'import openstack, keystoneauth1.identity.v3, ' \
    'keystoneclient.v3.client'


# A JWT this close to its expiry is replaced by a fresh login.
TOKEN_MARGIN_S = 300
# What Kerbside 0.8.0 says when a gunicorn worker that already served
# GET /nova-console.vv is asked to log someone in (docs/contracts/
# kerbside.md §16.6): NovaToken.get sets the module global KEYSTONE_V3,
# Auth.post's "already imported" marker, but assigns KEYSTONE_CLIENT to a
# local, so the worker's global client stays None.
POISONED_WORKER = "'NoneType' object has no attribute 'Client'"
POISONED_WORKER_WHY = (
    'a known Kerbside 0.8.0 bug: this gunicorn worker already served GET '
    '/nova-console.vv (any token, even an unknown one), which marks the '
    'Keystone modules imported without importing keystoneclient, and it '
    'can never log anyone in again (docs/contracts/kerbside.md §16.6); log '
    'in before the first /nova-console.vv, or restart Kerbside\'s API')


class LoginError(errors.HarnessError):
    """POST /auth did not give a token: `status` (None: no answer) and
    the body a user would see (redacted).
    """

    def __init__(self, message, status=None, body=''):
        super().__init__(message)
        self.status = status
        self.body = body


def jwt_claims(token):
    """The claims of a JWT (its payload, not verified), {} when `token`
    is not one.
    """
    try:
        payload = token.split('.')[1]
        payload += '=' * (-len(payload) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (AttributeError, IndexError, ValueError, TypeError):
        return {}
    return claims if isinstance(claims, dict) else {}


def api_login(api_url, username, password, redactor=None, timeout=30.0):
    """Log in to Kerbside's API as a Keystone user: POST /auth with
    {"username", "password"}. Returns {'access_token', 'token_type',
    'expires_in', 'status', 'seconds'}. The password, the JWT and the
    Keystone token Kerbside puts inside it (claim `openstack_token`) go
    to `redactor` before anything can hold them. Anything but a 200 with
    a token raises LoginError with the status and Kerbside's message.
    """
    redactor = redactor or common_secrets.Redactor()
    redactor.add(password)
    req = urllib.request.Request(
        api_url.rstrip('/') + '/auth', method='POST',
        data=json.dumps({'username': username,
                         'password': password}).encode(),
        headers={'Content-Type': 'application/json',
                 'Accept': 'application/json'})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    t0 = time.monotonic()
    try:
        with opener.open(req, timeout=timeout) as r:
            status, text = r.status, r.read().decode('utf-8', 'replace')
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode('utf-8', 'replace')
    except OSError as e:
        raise LoginError('POST %s/auth as %s: Kerbside did not answer (%s)'
                         % (api_url, username, e)) from None
    seconds = time.monotonic() - t0
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    token = body.get('access_token') if isinstance(body, dict) else None
    redactor.add(token)
    redactor.add(jwt_claims(token).get('openstack_token'))
    if status != 200 or not token:
        shown = common_secrets.redact_patterns(redactor.redact(text))
        raise LoginError('POST %s/auth as %s answered %d%s: %s%s' % (
            api_url, username, status, '' if status != 200 else
            ' without an access_token', ' '.join(shown.split())[:300],
            ' (%s)' % POISONED_WORKER_WHY if status == 500 and
            POISONED_WORKER in text else ''),
            status=status, body=shown[:500])
    return {'access_token': token, 'token_type': body.get('token_type'),
            'expires_in': body.get('expires_in'), 'status': status,
            'seconds': round(seconds, 3)}


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

    def env(self):
        """Kerbside's environment (lane.kerbside.Kerbside.env) plus the
        Keystone it logs API users in against (POST /auth): the auth URL,
        the `kerbside` service user that lists groups and checks
        membership, and the access group.
        """
        env = super().env()
        lay = self.layout
        env.update({
            'KERBSIDE_KEYSTONE_AUTH_URL': lay.auth_url,
            'KERBSIDE_KEYSTONE_SERVICE_AUTH_USER': 'kerbside',
            'KERBSIDE_KEYSTONE_SERVICE_AUTH_PASSWORD':
                lay.passwords['kerbside'],
            'KERBSIDE_KEYSTONE_SERVICE_AUTH_USER_DOMAIN_ID': 'default',
            'KERBSIDE_KEYSTONE_SERVICE_AUTH_PROJECT': config.SERVICE_PROJECT,
            'KERBSIDE_KEYSTONE_SERVICE_AUTH_PROJECT_DOMAIN_ID': 'default',
            'KERBSIDE_KEYSTONE_ACCESS_GROUP': config.KERBSIDE_ACCESS_GROUP,
        })
        return env

    def token(self):
        """An API JWT from POST /auth as the cloud's operator
        (config.KERBSIDE_OPERATOR, in the access group), kept among the
        secrets and replaced by a fresh login when it is within
        TOKEN_MARGIN_S of its expiry. Ask for it before the first GET
        /nova-console.vv: Kerbside 0.8.0 cannot log anyone in on a
        gunicorn worker that already served one (POISONED_WORKER).
        """
        token = (self.secrets.get('api-token') or '').strip()
        exp = jwt_claims(token).get('exp') if token else None
        if token and isinstance(exp, (int, float)) and \
                exp - time.time() > TOKEN_MARGIN_S:
            return token
        info = api_login(self.api_url, config.KERBSIDE_OPERATOR,
                         self.layout.passwords[config.KERBSIDE_OPERATOR],
                         redactor=self.secrets.redactor)
        self.secrets.put('api-token', info['access_token'])
        return info['access_token']

    def start(self, timeout=60):
        problem = clients_problem(self.venv)
        if problem:
            raise errors.HarnessError(
                '%s; run `kerbside-openstack setup`' % problem)
        return super().start(timeout=timeout)

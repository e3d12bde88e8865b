#!/usr/bin/env python3
"""Record real Keystone, Glance and Nova responses for the fake clouds.

Run against a cloud brought up with `kerbside-openstack up --no-boot
--workdir DIR` (it reads DIR/cloud.json and the admin password from
DIR/secrets/), from the project venv:

    .venv/bin/python tools/record_nova_responses.py --workdir DIR

Every call the Nova provider (providers/nova.py, through tempest's
ServersClient and image v2 ImagesClient) and Kerbside's Nova flow make is
sent once, successful and failing, and each answer is saved as one JSON
fixture in unit_tests/fixtures/openstack/: the request (method, path
relative to the service endpoint, the microversion headers, the JSON
body), the status, the headers that matter and the body. Before writing,
every secret is replaced by a placeholder (Keystone tokens, passwords,
console tokens) and every id is normalised (`<server-1>`, `<image-1>`,
...), consistently across all fixtures, so the shape test can replay the
requests against the fakes and bind the placeholders to the fakes' ids.

The recorder makes a member project and user of its own (the admin-only
console-token lookup is tried as that user too) and deletes them, the
server and the image at the end, also on failure.
"""

import argparse
import json
import os
import re
import sys
import time


HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from kerbside_tempest_plugin.common import secrets as common_secrets  # noqa
from kerbside_tempest_plugin import guest_images  # noqa
from kerbside_tempest_plugin.lane.openstack import api  # noqa
from tempest.lib.common.utils import data_utils  # noqa

DEFAULT_OUT = os.path.join(os.path.dirname(HERE), 'unit_tests', 'fixtures',
                           'openstack')
SPICE_DIRECT = '2.99'
# What the provider uploads (providers/nova.py REQUIRED + RECOMMENDED) and
# what the lane adds for the Sextant guest on libvirt 9.0.
IMAGE_PROPERTIES = {'hw_video_model': 'qxl', 'hw_firmware_type': 'uefi',
                    'hw_machine_type': 'q35', 'hw_disk_bus': 'sata',
                    'os_secure_boot': 'disabled'}
KEPT_HEADERS = ('content-type', 'openstack-api-version',
                'x-openstack-nova-api-version', 'vary', 'location',
                'x-subject-token', 'openstack-request-id',
                'x-openstack-request-id', 'www-authenticate')
UUID_RE = re.compile(r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-'
                     r'[0-9a-f]{12}')
HEX_ID_RE = re.compile(r'(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])')
REQ_ID_RE = re.compile(r'req-' + UUID_RE.pattern)


class Normaliser:
    """Replaces secrets and ids by placeholders, the same way everywhere.

    `bind(value, kind)` names a known value (`<server-1>`); `secret(value,
    placeholder)` hides one; anything else that looks like an id (a UUID,
    a 32-hex Keystone id, a request id) becomes `<id-N>`/`<request-id>`.
    """

    def __init__(self):
        self.names = {}        # real value -> placeholder
        self.counts = {}

    def bind(self, value, kind):
        if not value:
            return None
        if value not in self.names:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self.names[value] = '<%s-%d>' % (kind, self.counts[kind])
        return self.names[value]

    def secret(self, value, placeholder):
        if value:
            self.names[value] = placeholder

    def text(self, s):
        for value in sorted(self.names, key=len, reverse=True):
            s = s.replace(value, self.names[value])
        s = REQ_ID_RE.sub('<request-id>', s)
        s = UUID_RE.sub(lambda m: self.bind(m.group(0), 'id'), s)
        s = HEX_ID_RE.sub(lambda m: self.bind(m.group(0), 'id'), s)
        return common_secrets.redact_patterns(s)

    def value(self, v):
        if isinstance(v, str):
            return self.text(v)
        if isinstance(v, dict):
            return {self.text(k): self.value(x) for k, x in v.items()}
        if isinstance(v, list):
            return [self.value(x) for x in v]
        return v


class Recorder:
    def __init__(self, workdir, out, image_path):
        with open(os.path.join(workdir, 'cloud.json')) as f:
            self.state = json.load(f)
        with open(self.state['admin_password_file']) as f:
            self.admin_password = f.read().strip()
        self.out = out
        self.image_path = image_path
        self.redactor = common_secrets.Redactor()
        self.norm = Normaliser()
        self.norm.secret(self.admin_password, '<password>')
        self.auth_url = self.state['auth_url']
        self.admin = api.Client(self.auth_url, 'admin', self.admin_password,
                                redactor=self.redactor)
        self.member = None
        self.cleanups = []
        self.written = []
        for name, port in self.state['ports'].items():
            self.norm.secret('127.0.0.1:%d' % port, '<%s>' % name)

    # -- recording -------------------------------------------------------
    def send(self, client, method, service, path, body=None,
             microversion=None, headers=None, raw_body=None):
        if service == 'identity':
            base = self.auth_url.rsplit('/v3', 1)[0]
        elif service == 'compute-root':   # the unversioned document
            base = client.endpoint('compute').rsplit('/v2.1', 1)[0]
        else:
            base = client.endpoint(service)
        hdrs = dict(headers or {})
        if service not in ('identity', 'compute-root'):
            hdrs['X-Auth-Token'] = client.token
        if microversion:
            hdrs['OpenStack-API-Version'] = 'compute %s' % microversion
            hdrs['X-OpenStack-Nova-API-Version'] = microversion
        payload = raw_body if raw_body is not None else body
        status, rheaders, data = client.raw(method, base + path, payload,
                                            hdrs)
        rheaders = {k.lower(): v for k, v in rheaders.items()}
        text = data.decode('utf-8', 'replace')
        try:
            rbody = json.loads(text) if text.strip() else None
            kind = 'json' if rbody is not None else 'empty'
        except ValueError:
            rbody, kind = text, 'text'
        return status, rheaders, rbody, kind

    def record(self, name, client, auth, method, service, path, body=None,
               microversion=None, expect=None, headers=None, raw_body=None,
               note=None):
        status, rheaders, rbody, kind = self.send(
            client, method, service, path, body, microversion, headers,
            raw_body)
        token = rheaders.get('x-subject-token')
        if token:
            self.redactor.add(token)
            self.norm.secret(token, '<keystone-token>')
        fixture = {
            'name': name, 'service': service, 'auth': auth,
            'request': {
                'method': method, 'path': path,
                'microversion': microversion,
                'headers': {k: v for k, v in (headers or {}).items()
                            if k.lower() == 'content-type'},
                'body': body if raw_body is None else '<%d bytes>' % len(
                    raw_body)},
            'response': {
                'status': status,
                'headers': {k: rheaders[k] for k in KEPT_HEADERS
                            if k in rheaders},
                'body_kind': kind, 'body': rbody}}
        if note:
            fixture['note'] = note
        if expect is not None and status not in (
                expect if isinstance(expect, tuple) else (expect,)):
            print('warning: %s answered %s (expected %s)' % (name, status,
                                                             expect))
        self._pending.append(fixture)
        print('%-40s %s %s' % (name, status, kind))
        return status, rbody

    def flush(self):
        os.makedirs(self.out, exist_ok=True)
        for old in os.listdir(self.out):
            if old.endswith('.json'):
                os.unlink(os.path.join(self.out, old))
        for i, fixture in enumerate(self._pending):
            fixture = self.norm.value(fixture)
            fixture['order'] = i
            path = os.path.join(self.out, '%s.json' % fixture['name'])
            with open(path, 'w') as f:
                json.dump(fixture, f, indent=1, sort_keys=True)
                f.write('\n')
            self.written.append(path)

    # -- the member user -------------------------------------------------
    def make_member(self):
        suffix = data_utils.rand_uuid_hex()[:8]
        project = self.admin.call('POST', 'identity', '/projects', {
            'project': {'name': 'ktp-rec-%s' % suffix,
                        'domain_id': 'default'}}, expect=(201,))['project']
        self.cleanups.append(('identity', '/projects/%s' % project['id']))
        password = data_utils.rand_uuid_hex()
        self.norm.secret(password, '<password>')
        user = self.admin.call('POST', 'identity', '/users', {'user': {
            'name': 'ktp-rec-member-%s' % suffix, 'password': password,
            'domain_id': 'default', 'default_project_id': project['id']}},
            expect=(201,))['user']
        self.cleanups.append(('identity', '/users/%s' % user['id']))
        role = self.admin.call('GET', 'identity', '/roles?name=member')[
            'roles'][0]
        self.admin.call('PUT', 'identity', '/projects/%s/users/%s/roles/%s'
                        % (project['id'], user['id'], role['id']),
                        expect=(204,))
        self.norm.bind(project['id'], 'project')
        self.norm.bind(user['id'], 'user')
        self.norm.secret(project['name'], 'ktp-rec-project')
        self.norm.secret(user['name'], 'ktp-rec-member')
        self.member = api.Client(self.auth_url, user['name'], password,
                                 project=project['name'],
                                 redactor=self.redactor)
        self.member_password = password
        return self.member

    # -- the run -----------------------------------------------------------
    def run(self):
        self._pending = []
        admin = self.admin
        admin.authenticate()
        self.norm.secret(admin.token, '<keystone-token>')
        member = self.make_member()
        member.authenticate()
        self.norm.secret(member.token, '<keystone-token>')

        def token_body(password):
            return {'auth': {
                'identity': {'methods': ['password'], 'password': {'user': {
                    'name': member.username, 'password': password,
                    'domain': {'name': 'Default'}}}},
                'scope': {'project': {'name': member.project,
                                      'domain': {'name': 'Default'}}}}}

        # Keystone (tempest's KeystoneV3AuthProvider, Kerbside's
        # keystoneauth Password): v3 password, project scope.
        self.record('keystone-token-issue', member, 'none', 'POST',
                    'identity', '/v3/auth/tokens',
                    token_body(self.member_password), expect=201)
        self.norm.secret('not-the-password', '<wrong-password>')
        self.record('keystone-token-wrong-password', member, 'none', 'POST',
                    'identity', '/v3/auth/tokens',
                    token_body('not-the-password'), expect=401)

        # Glance, as the provider's _upload/_check_image/cleanup do.
        with open(self.image_path, 'rb') as f:
            data = f.read()
        disk_format = 'qcow2' if data[:4] == b'QFI\xfb' else 'raw'
        st, image = self.record(
            'glance-image-create', member, 'member', 'POST', 'image',
            '/v2/images', dict(IMAGE_PROPERTIES, name='ktp-sextant.qcow2',
                               container_format='bare',
                               disk_format=disk_format,
                               visibility='private'), expect=201)
        image_id = image['id']
        self.norm.bind(image_id, 'image')
        self.cleanups.append(('image', '/v2/images/%s' % image_id))
        self.record('glance-image-upload', member, 'member', 'PUT', 'image',
                    '/v2/images/%s/file' % image_id, raw_body=data,
                    headers={'Content-Type': 'application/octet-stream'},
                    expect=204)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            image = self.send(member, 'GET', 'image',
                              '/v2/images/%s' % image_id)[2]
            if image.get('status') == 'active':
                break
            time.sleep(0.5)
        else:
            raise SystemExit('image %s never became active' % image_id)
        self.record('glance-image-show', member, 'member', 'GET', 'image',
                    '/v2/images/%s' % image_id, expect=200)
        self.record('glance-image-show-unknown', member, 'member', 'GET',
                    'image', '/v2/images/%s' % data_utils.rand_uuid(),
                    expect=404)

        # Flavor (the lane's), as tempest's FlavorsClient.show_flavor.
        flavor_id = self.state.get('flavor')
        if not flavor_id:
            raise SystemExit('no flavor in cloud.json: is the cloud up?')
        self.norm.bind(flavor_id, 'flavor')
        self.record('nova-flavor-show', member, 'member', 'GET', 'compute',
                    '/flavors/%s' % flavor_id, expect=200)

        # Version discovery, as openstacksdk (Kerbside's Nova flow) does
        # before it picks a microversion for the token lookup.
        self.record('nova-versions-root', member, 'none', 'GET',
                    'compute-root', '/', expect=(200, 300))
        self.record('nova-version-v21', member, 'member', 'GET',
                    'compute', '/', expect=200)

        # Server create: networks none needs 2.37; the provider sends the
        # test's microversion (None unless the test sets one).
        server_body = {'server': {'name': 'ktp-rec', 'imageRef': image_id,
                                  'flavorRef': flavor_id,
                                  'networks': 'none'}}
        self.record('nova-server-create-networks-none-v21', member,
                    'member', 'POST', 'compute', '/servers', server_body,
                    expect=400)
        st, created = self.record(
            'nova-server-create', member, 'member', 'POST', 'compute',
            '/servers', server_body, microversion='2.37', expect=202)
        server_id = created['server']['id']
        self.norm.bind(server_id, 'server')
        self.norm.secret(created['server'].get('adminPass'), '<password>')
        self.cleanups.insert(0, ('compute', '/servers/%s' % server_id))
        self.record('nova-server-show-build', member, 'member', 'GET',
                    'compute', '/servers/%s' % server_id, expect=200)
        rc_body = {'remote_console': {'protocol': 'spice',
                                      'type': 'spice-direct'}}
        self.record('nova-remote-console-not-active', member, 'member',
                    'POST', 'compute', '/servers/%s/remote-consoles' %
                    server_id, rc_body, microversion=SPICE_DIRECT,
                    expect=409)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            server = self.send(member, 'GET', 'compute',
                               '/servers/%s' % server_id)[2]['server']
            if server['status'] == 'ACTIVE':
                break
            if server['status'] == 'ERROR':
                raise SystemExit('server went ERROR: %s' % server.get(
                    'fault'))
            time.sleep(1)
        else:
            raise SystemExit('server %s never became ACTIVE' % server_id)
        self.record('nova-server-show-active', member, 'member', 'GET',
                    'compute', '/servers/%s' % server_id, expect=200)
        self.record('nova-server-show-active-v299', member, 'member', 'GET',
                    'compute', '/servers/%s' % server_id,
                    microversion=SPICE_DIRECT, expect=200)
        self.record('nova-server-show-unknown', member, 'member', 'GET',
                    'compute', '/servers/%s' % data_utils.rand_uuid(),
                    expect=404)

        # Console output (tempest sends {"os-getConsoleOutput": kwargs}).
        action = '/servers/%s/action' % server_id
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            out = self.send(member, 'POST', 'compute', action,
                            {'os-getConsoleOutput': {}})[2]
            if (out or {}).get('output'):
                break
            time.sleep(2)
        self.record('nova-console-output', member, 'member', 'POST',
                    'compute', action, {'os-getConsoleOutput': {}},
                    expect=200)
        self.record('nova-console-output-length', member, 'member', 'POST',
                    'compute', action, {'os-getConsoleOutput': {
                        'length': 3}}, expect=200)
        self.record('nova-console-output-length-null', member, 'member',
                    'POST', 'compute', action,
                    {'os-getConsoleOutput': {'length': None}}, expect=200)
        self.record('nova-console-output-unknown', member, 'member', 'POST',
                    'compute', '/servers/%s/action' % data_utils.rand_uuid(),
                    {'os-getConsoleOutput': {}}, expect=404)

        # spice-direct (the provider's _mint) and its failures.
        consoles = '/servers/%s/remote-consoles' % server_id
        st, remote = self.record(
            'nova-remote-console-spice-direct', member, 'member', 'POST',
            'compute', consoles, rc_body, microversion=SPICE_DIRECT,
            expect=200)
        token = remote['remote_console']['url'].split('token=', 1)[1]
        self.redactor.add(token)
        self.norm.secret(token, '<console-token>')
        self.record('nova-remote-console-spice-direct-v298', member,
                    'member', 'POST', 'compute', consoles, rc_body,
                    microversion='2.98', expect=400)
        self.record('nova-remote-console-unknown-server', member, 'member',
                    'POST', 'compute', '/servers/%s/remote-consoles' %
                    data_utils.rand_uuid(), rc_body, microversion=SPICE_DIRECT,
                    expect=404)

        # os-console-auth-tokens (console_details, Kerbside's validate).
        tokens = '/os-console-auth-tokens/'
        self.record('nova-console-auth-token', admin, 'admin', 'GET',
                    'compute', tokens + token, microversion=SPICE_DIRECT,
                    expect=200)
        self.record('nova-console-auth-token-v21', admin, 'admin', 'GET',
                    'compute', tokens + token, note='no microversion')
        self.record('nova-console-auth-token-unknown', admin, 'admin', 'GET',
                    'compute', tokens + data_utils.rand_uuid(),
                    microversion=SPICE_DIRECT, expect=404)
        # Nova 34 answers a malformed token like an unknown one.
        self.record('nova-console-auth-token-malformed', admin, 'admin',
                    'GET', 'compute', tokens + 'not-a-token',
                    microversion=SPICE_DIRECT, expect=404)
        self.record('nova-console-auth-token-member', member, 'member',
                    'GET', 'compute', tokens + token,
                    microversion=SPICE_DIRECT, expect=403)

        # Delete and the 404 that ends the provider's wait.
        self.record('nova-server-delete', member, 'member', 'DELETE',
                    'compute', '/servers/%s' % server_id, expect=204)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.send(member, 'GET', 'compute',
                         '/servers/%s' % server_id)[0] == 404:
                break
            time.sleep(1)
        self.record('nova-server-show-deleted', member, 'member', 'GET',
                    'compute', '/servers/%s' % server_id, expect=404)
        self.record('nova-server-delete-deleted', member, 'member',
                    'DELETE', 'compute', '/servers/%s' % server_id,
                    expect=404)
        self.record('nova-remote-console-deleted-server', member, 'member',
                    'POST', 'compute', consoles, rc_body,
                    microversion=SPICE_DIRECT, expect=404)
        self.record('glance-image-delete', member, 'member', 'DELETE',
                    'image', '/v2/images/%s' % image_id, expect=204)
        self.flush()

    def scrub_logs(self, workdir):
        """Mask, in the cloud's logs, the secrets only the recorder knew
        (console tokens, its member's password and Keystone tokens): the
        lane's teardown scrub masks only what the lane itself saw. Same
        length, in place, so services still appending are not disturbed.
        """
        secrets = [v for v, p in self.norm.names.items()
                   if p in ('<console-token>', '<keystone-token>',
                            '<password>') and len(v) >= 8]
        logs = os.path.join(workdir, 'logs')
        for root, _, files in os.walk(logs):
            for name in files:
                path = os.path.join(root, name)
                with open(path, 'r+b') as f:
                    data = f.read()
                    masked = data
                    for value in secrets:
                        v = value.encode()
                        masked = masked.replace(v, b'x' * len(v))
                    if masked != data:
                        f.seek(0)
                        f.write(masked)

    def cleanup(self):
        for service, path in self.cleanups:
            try:
                self.admin.raw('DELETE', (self.auth_url if service ==
                                          'identity' else
                                          self.admin.endpoint(service)) +
                               path, headers={'X-Auth-Token':
                                              self.admin.token})
            except api.CloudAPIError as e:
                print('cleanup of %s failed: %s' % (path, e))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--workdir', default=os.environ.get(
        'KTP_OPENSTACK_WORKDIR', '/tmp/ktp-openstack'))
    p.add_argument('--out', default=DEFAULT_OUT)
    p.add_argument('--image', help='guest image (default $SEXTANT_IMAGE '
                   'or the bundled Sextant guest)')
    args = p.parse_args(argv)
    image = guest_images.sextant_image(args.image)
    rec = Recorder(args.workdir, args.out, image)
    try:
        rec.run()
    finally:
        rec.cleanup()
        rec.scrub_logs(args.workdir)
    print('wrote %d fixtures to %s' % (len(rec.written), args.out))
    return 0


if __name__ == '__main__':
    sys.exit(main())

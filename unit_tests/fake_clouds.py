"""Local HTTP fakes of the Nova compute API, the Shaken Fist API and
Kerbside's console-exchange endpoints, for the cloud provider tests.

Each fake is an http.server on 127.0.0.1 port 0 in a daemon thread and
speaks the documented shapes (docs/contracts/kerbside.md §12 and §13)
closely enough for the real clients
(tempest's ServersClient, shakenfist_client's Client) to accept the
responses, schema validation included. Every request is recorded.

Knobs a test turns (all plain attributes):

- FakeKerbside: `unscraped` (answer this many console fetches 404 "console
  not found" without using the token up, then "scrape"); tokens are single
  use (a replay gets 401 "token already used").
- FakeNova: `build_polls` (GETs in BUILD before ACTIVE), `fault` (go to
  ERROR with this fault instead), `delete_polls`, `delete_status` (answer
  DELETE with this status, e.g. 500), `show_failures` (answer that many
  GETs of a server 500), per-server `console` text.
- FakeGlance: `add(**props)` seeds an image; uploads arrive chunked.
- FakeShakenFist: `create_polls`, `fail_state`/`fail_message`,
  `delete_polls`, `reuse_token` (hand out the same console token again),
  `kerbside` (None: vdiconsoleproxy answers 404, no KERBSIDE_URL),
  per-instance `console` bytes.
"""

import base64
import hashlib
import http.server
import json
import re
import secrets
import threading
import time
import urllib.parse

from tempest.lib.common.utils import data_utils

NOVA_TOKEN = 'member-token'
NOVA_ADMIN_TOKEN = 'admin-token'
SF_KEY = 'sf-namespace-key-s3cr3t'
SF_CAPABILITIES = ['spice-vdi-console', 'vdi-console-helper',
                   'instance-screenshot', 'get-instance-namespace',
                   'cluster-cacert']


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, *args):
        pass

    def _dispatch(self):
        if 'chunked' in (self.headers.get('Transfer-Encoding') or ''):
            body = self._read_chunked()
        else:
            length = int(self.headers.get('Content-Length') or 0)
            body = self.rfile.read(length) if length else b''
        parsed = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parsed.query)
        headers = {k.lower(): v for k, v in self.headers.items()}
        app = self.server.app
        with app.lock:
            app.requests.append({'method': self.command,
                                 'path': parsed.path, 'query': query,
                                 'headers': headers, 'body': body})
        try:
            status, rheaders, rbody = app.handle(
                self.command, parsed.path, query, headers, body)
        except Exception as e:  # a bug in the fake: make it visible
            status, rheaders, rbody = 500, {}, repr(e).encode()
        if isinstance(rbody, (dict, list)):
            rbody = json.dumps(rbody).encode()
            rheaders.setdefault('Content-Type', 'application/json')
        elif isinstance(rbody, str):
            rbody = rbody.encode()
        self.send_response(status)
        for k, v in rheaders.items():
            self.send_header(k, v)
        self.send_header('Content-Length', str(len(rbody)))
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(rbody)

    def _read_chunked(self):
        chunks = []
        while True:
            size = int(self.rfile.readline().split(b';')[0].strip(), 16)
            if size == 0:
                while self.rfile.readline() not in (b'\r\n', b'\n', b''):
                    pass
                return b''.join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch


class FakeHTTP:
    """An app served on 127.0.0.1:<free port>; subclasses define handle()."""

    def __init__(self):
        self.lock = threading.RLock()
        self.requests = []
        self._server = None
        self._thread = None

    def start(self):
        self._server = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                                       _Handler)
        self._server.daemon_threads = True
        self._server.app = self
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={'poll_interval': 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self):
        host, port = self._server.server_address[:2]
        return 'http://%s:%d' % (host, port)

    def requests_to(self, method, pattern):
        with self.lock:
            return [r for r in self.requests if r['method'] == method and
                    re.search(pattern, r['path'])]

    def handle(self, method, path, query, headers, body):
        raise NotImplementedError


# -- Kerbside --------------------------------------------------------------

class FakeKerbside(FakeHTTP):
    """`/nova-console.vv?token=` and `/sf-console.vv?token=`.

    `nova` (a FakeNova) validates Nova tokens, as Kerbside does through
    `validate_console_auth_token`; Shaken Fist tokens are registered by the
    FakeShakenFist that mints them.
    """

    def __init__(self, nova=None):
        super().__init__()
        self.nova = nova
        self.unscraped = 0
        self.sf_tokens = {}       # token -> instance uuid
        self.used = set()
        self.served = []          # (console id, password) of each .vv

    def _vv(self, console):
        password = secrets.token_urlsafe(36)[:48]
        self.served.append((console, password))
        return '\n'.join([
            '[virt-viewer]', 'type=spice', 'host=127.0.0.1', 'port=5901',
            'tls-port=5900', 'password=%s' % password, 'delete-this-file=1',
            'title=%s via proxy session ID %s' % (
                console, secrets.token_hex(6)),
            'ca=-----BEGIN CERTIFICATE-----\\nMIIfake\\n'
            '-----END CERTIFICATE-----\\n',
            'host-subject=CN=kerbside-proxy', '']) + '\n'

    def _exchange(self, token, console, bad_status, bad_message):
        """Trade a console token for a .vv: once, and only once scraped."""
        if console is None:
            return bad_status, {}, {'error': bad_message}
        if token in self.used:
            return 401, {}, {'error': 'token already used'}
        if self.unscraped > 0:
            self.unscraped -= 1
            return 404, {}, {'error': 'console not found'}
        self.used.add(token)
        return 200, {'Content-Type': 'application/x-virt-viewer'}, \
            self._vv(console)

    def handle(self, method, path, query, headers, body):
        token = (query.get('token') or [''])[0]
        with self.lock:
            if path == '/nova-console.vv':
                console = self.nova.validate_token(token) if self.nova \
                    else None
                return self._exchange(
                    token, console and console['instance_uuid'], 403,
                    'invalid console token')
            if path == '/sf-console.vv':
                return self._exchange(token, self.sf_tokens.get(token), 401,
                                      'malformed token')
        return 404, {}, {'error': 'no such endpoint'}


# -- Nova ------------------------------------------------------------------

def _version(headers):
    """The requested compute microversion as a tuple, (2, 1) if none."""
    value = headers.get('openstack-api-version', '')
    m = re.match(r'\s*compute\s+(\d+)\.(\d+)', value)
    if not m:
        m = re.match(r'\s*(\d+)\.(\d+)',
                     headers.get('x-openstack-nova-api-version', ''))
    return (int(m.group(1)), int(m.group(2))) if m else (2, 1)


def _nova_error(status, kind, message):
    return status, {}, {kind: {'code': status, 'message': message}}


NOVA_CONTROL_RE = re.compile('[\x00-\x08\x0B-\x1F]')


class FakeNova(FakeHTTP):
    """The compute API under /compute/v2.1."""

    PREFIX = '/compute/v2.1'

    def __init__(self, kerbside_url=None):
        super().__init__()
        self.kerbside_url = kerbside_url
        self.servers = {}
        self.tokens = {}
        self.build_polls = 1
        self.fault = None
        self.delete_polls = 1
        self.delete_status = 204
        self.show_failures = 0

    def validate_token(self, token):
        with self.lock:
            server_id = self.tokens.get(token)
            if server_id is None:
                return None
            return self._console_info(server_id, (2, 99))

    def _console_info(self, server_id, version):
        info = {'instance_uuid': server_id, 'host': '192.0.2.10',
                'port': 5900, 'internal_access_path': None}
        if version >= (2, 99):
            info['tls_port'] = 5901
        return info

    def _links(self, kind, ident):
        """Nova's self (versioned) and bookmark (unversioned) links."""
        return [{'href': '%s%s/%s/%s' % (self.url, self.PREFIX, kind, ident),
                 'rel': 'self'},
                {'href': '%s/compute/%s/%s' % (self.url, kind, ident),
                 'rel': 'bookmark'}]

    def _server_view(self, s, version):
        """GET /servers/{id} as Nova 34 answers it (keys recorded in
        unit_tests/fixtures/openstack/nova-server-show-*.json).
        """
        active = s['status'] == 'ACTIVE'
        building = s['status'] == 'BUILD'
        view = {
            'id': s['id'], 'name': s['name'], 'status': s['status'],
            'image': {'id': s['image'],
                      'links': self._links('images', s['image'])[1:]},
            'flavor': {'id': s['flavor'],
                       'links': self._links('flavors', s['flavor'])[1:]},
            'user_id': 'u1', 'tenant_id': 'p1',
            'created': '2026-11-25T21:00:00Z',
            'updated': '2026-11-25T21:00:01Z',
            'metadata': {}, 'addresses': {},
            'hostId': '' if building else 'h1' * 28,
            'links': self._links('servers', s['id']),
            'progress': 0, 'accessIPv4': '', 'accessIPv6': '',
            'config_drive': '', 'key_name': None,
            'OS-DCF:diskConfig': 'MANUAL',
            'OS-EXT-AZ:availability_zone': '' if building else 'nova',
            'OS-EXT-STS:power_state': 1 if active else 0,
            'OS-EXT-STS:task_state': s.get('task_state') or (
                'scheduling' if building else None),
            'OS-EXT-STS:vm_state': {'BUILD': 'building',
                                    'ERROR': 'error'}.get(
                s['status'], s['status'].lower()),
            'OS-SRV-USG:launched_at': None if building else
            '2026-11-25T21:00:01.000000',
            'OS-SRV-USG:terminated_at': None,
            'os-extended-volumes:volumes_attached': [],
        }
        if version >= (2, 47):   # the flavor is embedded, not linked
            view['flavor'] = {'disk': 1, 'ephemeral': 0, 'extra_specs': {},
                              'original_name': s['flavor'], 'ram': 256,
                              'swap': 0, 'vcpus': 1}
        if version >= (2, 98):   # the image's properties, as Nova's
            view['image']['properties'] = {   # libvirt driver filled them
                'hw_cdrom_bus': 'sata', 'hw_disk_bus': 'sata',
                'hw_firmware_type': 'uefi', 'hw_input_bus': 'usb',
                'hw_machine_type': 'q35', 'hw_pointer_model': 'usbtablet',
                'hw_video_model': 'qxl', 'hw_vif_model': 'virtio',
                'os_secure_boot': 'disabled'}
        if version >= (2, 99):
            view.update({
                'OS-EXT-SRV-ATTR:hostname': s['name'], 'description': None,
                'locked': False, 'locked_reason': None,
                'pinned_availability_zone': None, 'server_groups': [],
                'tags': [], 'trusted_image_certificates': None})
        if s.get('fault'):
            view['fault'] = s['fault']
        return view

    def set_console(self, server_id, text):
        with self.lock:
            self.servers[server_id]['console'] = text

    def set_status(self, server_id, status):
        with self.lock:
            self.servers[server_id]['status'] = status

    def handle(self, method, path, query, headers, body):
        version = _version(headers)
        vstr = '%d.%d' % version
        status, rheaders, rbody = self._route(method, path, headers, body,
                                              version)
        rheaders = dict(rheaders)
        rheaders['OpenStack-API-Version'] = 'compute %s' % vstr
        rheaders['X-OpenStack-Nova-API-Version'] = vstr
        rheaders['Vary'] = 'OpenStack-API-Version'
        return status, rheaders, rbody

    def _route(self, method, path, headers, body, version):
        token = headers.get('x-auth-token')
        if token not in (NOVA_TOKEN, NOVA_ADMIN_TOKEN):
            return _nova_error(401, 'unauthorized', 'auth required')
        if not path.startswith(self.PREFIX):
            return _nova_error(404, 'itemNotFound', 'no such path')
        path = path[len(self.PREFIX):]
        data = json.loads(body) if body else {}
        with self.lock:
            if path == '/servers' and method == 'POST':
                return self._create(data['server'], version)
            m = re.match(r'^/os-console-auth-tokens/([^/]+)$', path)
            if m and method == 'GET':
                if token != NOVA_ADMIN_TOKEN:
                    return _nova_error(403, 'forbidden', 'Policy doesn\'t '
                                       'allow os_compute_api:os-console-'
                                       'auth-tokens to be performed.')
                if version < (2, 31):   # Nova 34's words, recorded
                    return _nova_error(400, 'badRequest',
                                       'The server could not comply with '
                                       'the request since it is either '
                                       'malformed or otherwise incorrect.')
                server_id = self.tokens.get(m.group(1))
                if server_id is None:
                    return _nova_error(404, 'itemNotFound',
                                       'Token not found')
                return 200, {}, {'console': self._console_info(server_id,
                                                               version)}
            m = re.match(r'^/servers/([^/]+)(/.*)?$', path)
            if not m:
                return _nova_error(404, 'itemNotFound', 'no such path')
            server = self.servers.get(m.group(1))
            if server is None or server.get('gone'):
                return _nova_error(404, 'itemNotFound',
                                   'Instance %s could not be found.'
                                   % m.group(1))
            sub = m.group(2) or ''
            if sub == '' and method == 'GET':
                if self.show_failures > 0:
                    self.show_failures -= 1
                    return _nova_error(500, 'computeFault',
                                       'Unexpected API Error.')
                return self._show(server, version)
            if sub == '' and method == 'DELETE':
                if self.delete_status != 204:
                    return _nova_error(self.delete_status, 'computeFault',
                                       'Unexpected API Error.')
                server['deleting'] = self.delete_polls
                server['task_state'] = 'deleting'
                return 204, {}, b''
            if sub == '/action' and method == 'POST':
                if 'os-getConsoleOutput' in data:
                    args = data['os-getConsoleOutput'] or {}
                    text = NOVA_CONTROL_RE.sub('', server['console'])
                    if args.get('length') is not None:
                        lines = text.splitlines(True)
                        text = ''.join(lines[-int(args['length']):])
                    return 200, {}, {'output': text}
                return _nova_error(400, 'badRequest', 'unknown action')
            if sub == '/remote-consoles' and method == 'POST':
                return self._remote_console(server, data, version)
        return _nova_error(404, 'itemNotFound', 'no such path')

    def _create(self, spec, version):
        networks = spec.get('networks')
        if isinstance(networks, str) and version < (2, 37):
            return _nova_error(
                400, 'badRequest', "Invalid input for field/attribute "
                "networks. Value: %s. '%s' is not of type 'array'" % (
                    networks, networks))
        sid = data_utils.rand_uuid()
        self.servers[sid] = {
            'id': sid, 'name': spec['name'], 'image': spec['imageRef'],
            'flavor': spec['flavorRef'], 'status': 'BUILD', 'spec': spec,
            'polls': 0, 'console': '', 'gone': False}
        links = self._links('servers', sid)
        return 202, {'Location': links[0]['href']}, {'server': {
            'id': sid, 'links': links,
            'security_groups': [{'name': 'default'}],
            'OS-DCF:diskConfig': 'MANUAL',
            'adminPass': 'fake-admin-pass'}}

    def _show(self, server, version):
        if 'deleting' in server:
            if server['deleting'] <= 0:
                server['gone'] = True
                return _nova_error(404, 'itemNotFound',
                                   'Instance could not be found.')
            server['deleting'] -= 1
        elif server['status'] == 'BUILD':
            server['polls'] += 1
            if server['polls'] > self.build_polls:
                if self.fault:
                    server['status'] = 'ERROR'
                    server['fault'] = dict(self.fault)
                else:
                    server['status'] = 'ACTIVE'
        return 200, {}, {'server': self._server_view(server, version)}

    def _remote_console(self, server, data, version):
        rc = data.get('remote_console') or {}
        if version < (2, 6):
            return _nova_error(404, 'itemNotFound', 'remote-consoles needs '
                               'microversion 2.6')
        if rc.get('type') == 'spice-direct' and version < (2, 99):
            return _nova_error(
                400, 'badRequest',
                "Invalid input for field/attribute type. Value: "
                "spice-direct. 'spice-direct' is not one of ['novnc', "
                "'xvpvnc', 'spice-html5', 'serial', 'rdp-html5', "
                "'webmks']")
        if rc.get('protocol') != 'spice' or rc.get('type') != 'spice-direct':
            return _nova_error(400, 'badRequest', 'unsupported console')
        if server['status'] != 'ACTIVE':
            return _nova_error(409, 'conflictingRequest',
                               'Instance %s is not ready' % server['id'])
        token = data_utils.rand_uuid()
        self.tokens[token] = server['id']
        return 200, {}, {'remote_console': {
            'protocol': 'spice', 'type': 'spice-direct',
            'url': '%s/nova-console.vv?token=%s' % (
                self.kerbside_url, token)}}


class StubAuthProvider:
    """The part of tempest.lib.auth.AuthProvider that RestClient uses."""

    def __init__(self, base_url, token):
        self._base = base_url.rstrip('/')
        self.token = token
        self.credentials = None

    def auth_request(self, method, url, headers=None, body=None,
                     filters=None):
        headers = dict(headers or {})
        headers['X-Auth-Token'] = self.token
        if url:
            url = '%s/%s' % (self._base, url.lstrip('/'))
        else:
            url = self._base
        return url, headers, body

    def base_url(self, filters, auth_data=None):
        return self._base

    def get_token(self):
        return self.token


def servers_client(nova, token=NOVA_TOKEN):
    """A real tempest ServersClient talking to `nova` (a FakeNova)."""
    from tempest.lib.services.compute import servers_client as sc
    return sc.ServersClient(
        StubAuthProvider(nova.url + FakeNova.PREFIX, token), 'compute',
        'RegionOne')


# -- Glance ----------------------------------------------------------------

class FakeGlance(FakeHTTP):
    """The image v2 API under /image/v2: create, upload, show, delete."""

    PREFIX = '/image/v2'

    def __init__(self):
        super().__init__()
        self.images = {}
        self.data = {}

    def add(self, **props):
        image_id = data_utils.rand_uuid()
        with self.lock:
            self.images[image_id] = self._image(props, image_id, 'active')
        return image_id

    @staticmethod
    def _image(props, image_id, status):
        """An image as Glance 33 shows it (keys recorded in
        unit_tests/fixtures/openstack/glance-image-*.json); extra
        properties sit at the top level beside the core ones.
        """
        image = {
            'checksum': None, 'container_format': None,
            'created_at': '2026-11-25T21:00:00Z', 'disk_format': None,
            'file': '/v2/images/%s/file' % image_id, 'id': image_id,
            'min_disk': 0, 'min_ram': 0, 'name': None,
            'os_hash_algo': None, 'os_hash_value': None,
            'os_hidden': False, 'owner': 'p1', 'protected': False,
            'schema': '/v2/schemas/image', 'self': '/v2/images/%s' %
            image_id, 'size': None, 'status': status, 'tags': [],
            'updated_at': '2026-11-25T21:00:00Z', 'virtual_size': None,
            'visibility': 'shared'}
        image.update(props)
        return image

    @staticmethod
    def _not_found(image_id):
        # Glance's webob error, as JSON when the client accepts it.
        return 404, {}, {'code': '404 Not Found', 'title': 'Not Found',
                         'message': 'No image found with ID %s<br /><br />'
                                    '\n\n\n' % image_id}

    def handle(self, method, path, query, headers, body):
        if headers.get('x-auth-token') not in (NOVA_TOKEN, NOVA_ADMIN_TOKEN):
            return 401, {}, {'code': '401 Unauthorized',
                             'title': 'Unauthorized',
                             'message': 'This server could not verify that '
                                        'you are authorized to access the '
                                        'document you requested.'}
        path = path[len(self.PREFIX):]
        with self.lock:
            if path == '/images' and method == 'POST':
                image_id = data_utils.rand_uuid()
                image = self._image(json.loads(body), image_id, 'queued')
                self.images[image_id] = image
                return 201, {}, image
            m = re.match(r'^/images/([^/]+)(/file)?$', path)
            image = self.images.get(m.group(1)) if m else None
            if image is None:
                return self._not_found(m.group(1) if m else path)
            if m.group(2) and method == 'PUT':
                self.data[image['id']] = body
                image.update(
                    status='active', size=len(body), stores='file',
                    checksum=hashlib.md5(body).hexdigest(),
                    os_hash_algo='sha512',
                    os_hash_value=hashlib.sha512(body).hexdigest(),
                    virtual_size=len(body))
                return 204, {'Content-Type': 'text/html; charset=UTF-8'}, \
                    b''
            if method == 'GET':
                return 200, {}, image
            if method == 'DELETE':
                del self.images[image['id']]
                return 204, {'Content-Type': 'text/html; charset=UTF-8'}, \
                    b''
        return self._not_found(path)


def images_client(glance, token=NOVA_TOKEN):
    """A real tempest image v2 ImagesClient talking to `glance`."""
    from tempest.lib.services.image.v2 import images_client as ic
    return ic.ImagesClient(
        StubAuthProvider(glance.url + FakeGlance.PREFIX, token), 'image',
        'RegionOne')


# -- Shaken Fist -----------------------------------------------------------

def _b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b'=').decode()


class FakeShakenFist(FakeHTTP):
    """The Shaken Fist REST API under /api."""

    PREFIX = '/api'

    def __init__(self, kerbside=None, namespace='ktp', key=SF_KEY):
        super().__init__()
        self.kerbside = kerbside
        self.namespace = namespace
        self.key = key
        self.access_tokens = set()
        self.instances = {}
        self.create_polls = 1
        self.fail_state = None
        self.fail_message = None
        self.delete_polls = 1
        self.reuse_token = False
        self._last_token = None

    @property
    def api_url(self):
        return self.url + self.PREFIX

    def append_console(self, ref, data):
        with self.lock:
            self.instances[ref]['console'] += data

    def set_power_state(self, ref, power_state):
        with self.lock:
            self.instances[ref]['power_state'] = power_state

    def handle(self, method, path, query, headers, body):
        if not path.startswith(self.PREFIX):
            return 404, {}, {'error': 'not found'}
        path = path[len(self.PREFIX):]
        if path in ('', '/') and method == 'GET':
            html = ('<html><body><p>Shaken Fist REST API service</p><ul>%s'
                    '</ul></body></html>' % ''.join(
                        '<li>%s</li>' % c for c in SF_CAPABILITIES))
            return 200, {'Content-Type': 'text/html'}, html
        data = json.loads(body) if body else {}
        with self.lock:
            if path == '/auth' and method == 'POST':
                if (data.get('namespace') != self.namespace or
                        data.get('key') != self.key):
                    return 401, {}, {'error': 'unauthorized'}
                token = secrets.token_hex(16)
                self.access_tokens.add(token)
                return 200, {}, {'access_token': token}
            auth = headers.get('authorization') or ''
            if auth.partition(' ')[2] not in self.access_tokens:
                return 401, {}, {'error': 'unauthenticated'}
            if path == '/instances' and method == 'POST':
                return self._create(data)
            m = re.match(r'^/instances/([^/]+)(/.*)?$', path)
            if not m:
                return 404, {}, {'error': 'not found'}
            inst = self.instances.get(m.group(1))
            if inst is None:
                return 404, {}, {'error': 'instance not found'}
            sub = m.group(2) or ''
            if sub == '' and method == 'GET':
                return 200, {}, self._show(inst)
            if sub == '' and method == 'DELETE':
                inst['deleting'] = self.delete_polls
                inst['state'] = 'deleting'
                return 200, {}, self._view(inst)
            if sub == '/consoledata' and method == 'GET':
                length = int(data.get('length') or 10240)
                return 200, {'Content-Type': 'application/octet-stream'}, \
                    inst['console'][-length:]
            if sub == '/vdiconsoleproxy' and method == 'GET':
                return self._proxy(inst)
            if sub == '/vdiconsolehelper' and method == 'GET':
                return 200, {'Content-Type': 'application/x-virt-viewer'}, (
                    '[virt-viewer]\ntype=spice\nhost=sf-node-1\nport=%d\n'
                    'tls-port=%d\ndelete-this-file=1\n' % (
                        inst['vdi_port'], inst['vdi_tls_port']))
        return 404, {}, {'error': 'not found'}

    def _view(self, inst):
        return {k: v for k, v in inst.items()
                if k not in ('console', 'polls', 'deleting', 'spec')}

    def _create(self, spec):
        ref = data_utils.rand_uuid()
        self.instances[ref] = {
            'uuid': ref, 'name': spec['name'], 'namespace':
            spec.get('namespace') or self.namespace, 'state': 'initial',
            'power_state': None, 'node': 'sf-node-1', 'console_port': 30001,
            'vdi_port': 30002, 'vdi_tls_port': 30003,
            'video': spec.get('video'), 'uefi': spec.get('uefi'),
            'secure_boot': spec.get('secure_boot'), 'error_message': None,
            'spec': spec, 'polls': 0, 'console': b''}
        return 200, {}, self._view(self.instances[ref])

    def _show(self, inst):
        if 'deleting' in inst:
            if inst['deleting'] <= 0:
                inst['state'] = 'deleted'
                inst['power_state'] = 'off'
            inst['deleting'] -= 1
        elif inst['state'] in ('initial', 'creating'):
            inst['polls'] += 1
            if inst['polls'] > self.create_polls:
                if self.fail_state:
                    inst['state'] = self.fail_state
                    inst['error_message'] = self.fail_message
                else:
                    inst['state'] = 'created'
                    inst['power_state'] = 'on'
            else:
                inst['state'] = 'creating'
        return self._view(inst)

    def _proxy(self, inst):
        if self.kerbside is None:
            return 404, {}, {'error': 'KERBSIDE_URL is not configured'}
        video = inst.get('video') or {}
        if not str(video.get('vdi', '')).startswith('spice'):
            return 409, {}, {'error': 'instance does not have a SPICE '
                                      'console'}
        if self.reuse_token and self._last_token:
            token = self._last_token
        else:
            header = _b64(json.dumps({'alg': 'EdDSA', 'kid': 'k1'}).encode())
            claims = _b64(json.dumps({
                'aud': self.kerbside.url, 'sub': inst['uuid'],
                'jti': data_utils.rand_uuid(), 'exp': int(time.time()) + 300,
            }).encode())
            token = '%s.%s.%s' % (header, claims,
                                  _b64(secrets.token_bytes(32)))
            self.kerbside.sf_tokens[token] = inst['uuid']
        self._last_token = token
        return 200, {}, {
            'url': '%s/sf-console.vv?token=%s' % (self.kerbside.url, token),
            'expires_at': int(time.time()) + 300}


def sf_client(sf, key=None):
    """A real shakenfist_client Client talking to `sf`."""
    from kerbside_tempest_plugin.providers import shakenfist
    return shakenfist.make_client(sf.api_url, sf.namespace,
                                  key or sf.key, timeout=10)

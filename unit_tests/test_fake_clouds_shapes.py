"""The fakes answer in the shapes a real cloud does.

unit_tests/fixtures/openstack/ holds Keystone, Glance and Nova answers
recorded once from the lane's real cloud (tools/record_nova_responses.py,
docs/plans/cloud-providers.md). Each recorded request is replayed, in the
recorded order, against FakeNova and FakeGlance, and the answers are
compared: status code, the headers that matter (content type, both
microversion headers, Vary) and the body's shape (keys, value types,
nesting; error bodies like {"itemNotFound": {"code": ..., "message":
...}}). Values are not compared, except through the types.
"""

import glob
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request

import pytest

from unit_tests import fake_clouds

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'openstack')
# Recorded for the record, but no fake serves them: the fakes have no
# Keystone (StubAuthProvider hands out a token), the provider never shows
# a flavor, and only openstacksdk (Kerbside's side, faked by FakeKerbside
# as a whole) reads Nova's version documents.
NOT_FAKED = {'keystone-token-issue', 'keystone-token-wrong-password',
             'nova-flavor-show', 'nova-versions-root', 'nova-version-v21'}
PLACEHOLDER_RE = re.compile(r'^<([a-z]+)-(\d+)>$')
COMPARED_HEADERS = ('openstack-api-version', 'x-openstack-nova-api-version',
                    'vary')
SECRET_PLACEHOLDERS = ('<keystone-token>', '<password>', '<console-token>',
                       '<wrong-password>')


def load_fixtures():
    fixtures = []
    for path in glob.glob(os.path.join(FIXTURES, '*.json')):
        with open(path) as f:
            fixtures.append(json.load(f))
    return sorted(fixtures, key=lambda f: f['order'])


def shape(value):
    """Keys, types and nesting of a JSON value, without the values."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        shapes = []
        for item in value:
            s = shape(item)
            if s not in shapes:
                shapes.append(s)
        return ['list'] + shapes
    if value is None:
        return 'null'
    if isinstance(value, bool):
        return 'bool'
    if isinstance(value, int):
        return 'int'
    return type(value).__name__


def shape_differences(real, fake, path='body'):
    """Human-readable differences between two shapes ([] if none)."""
    if isinstance(real, dict) and isinstance(fake, dict):
        out = []
        for k in sorted(set(real) | set(fake)):
            where = '%s.%s' % (path, k)
            if k not in fake:
                out.append('%s: missing in the fake (real: %s)' % (
                    where, json.dumps(real[k])))
            elif k not in real:
                out.append('%s: only in the fake (%s)' % (
                    where, json.dumps(fake[k])))
            else:
                out.extend(shape_differences(real[k], fake[k], where))
        return out
    if real != fake:
        return ['%s: real %s, fake %s' % (path, json.dumps(real),
                                          json.dumps(fake))]
    return []


def media_type(headers):
    return (headers.get('content-type') or '').split(';')[0].strip()


def compare(fixture, status, headers, kind, body):
    """Every way the fake's answer differs from the recorded one."""
    real = fixture['response']
    out = []
    if status != real['status']:
        out.append('status: real %s, fake %s' % (real['status'], status))
    if kind != real['body_kind']:
        out.append('body kind: real %s, fake %s' % (real['body_kind'],
                                                    kind))
    if real['body_kind'] != 'empty' and \
            media_type(real['headers']) != media_type(headers):
        out.append('content-type: real %r, fake %r' % (
            real['headers'].get('content-type'),
            headers.get('content-type')))
    for h in COMPARED_HEADERS:
        if real['headers'].get(h) != headers.get(h):
            out.append('header %s: real %r, fake %r' % (
                h, real['headers'].get(h), headers.get(h)))
    if kind == real['body_kind'] == 'json':
        out.extend(shape_differences(shape(real['body']), shape(body)))
    return out


class Replay:
    """Sends recorded requests to the fakes, binding the recorded
    placeholders (`<server-1>`, `<console-token>`) to the fakes' values.
    """

    def __init__(self, nova, glance):
        self.nova = nova
        self.glance = glance
        self.bound = {}

    def fill(self, value):
        if isinstance(value, str):
            for placeholder, real in self.bound.items():
                value = value.replace(placeholder, real)
            # Ids the recording made up for unknown objects: fresh ones.
            return re.sub(r'<id-\d+>', lambda m: self.bound.setdefault(
                m.group(0), fake_clouds.data_utils.rand_uuid()), value)
        if isinstance(value, dict):
            return {k: self.fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.fill(v) for v in value]
        return value

    def learn(self, real, fake):
        """Bind placeholders in the recorded body to the fake's values."""
        if isinstance(real, dict) and isinstance(fake, dict):
            for k in real:
                if k in fake:
                    self.learn(real[k], fake[k])
        elif isinstance(real, str) and isinstance(fake, str):
            if PLACEHOLDER_RE.match(real) and real not in self.bound:
                self.bound[real] = fake
            elif 'token=<console-token>' in real and 'token=' in fake:
                self.bound['<console-token>'] = urllib.parse.parse_qs(
                    urllib.parse.urlsplit(fake).query)['token'][0]

    def send(self, fixture):
        req = fixture['request']
        fake = self.nova if fixture['service'] == 'compute' else self.glance
        path = self.fill(req['path'])
        if fixture['service'] == 'image':      # FakeGlance's PREFIX has /v2
            path = path[len('/v2'):]
        headers = {'Accept': 'application/json', 'X-Auth-Token': {
            'admin': fake_clouds.NOVA_ADMIN_TOKEN}.get(
                fixture['auth'], fake_clouds.NOVA_TOKEN)}
        headers.update(req['headers'])
        if req['microversion']:
            headers['OpenStack-API-Version'] = 'compute %s' % \
                req['microversion']
            headers['X-OpenStack-Nova-API-Version'] = req['microversion']
        body = req['body']
        if isinstance(body, str) and re.match(r'^<\d+ bytes>$', body):
            data = b'QFI\xfb' + b'\0' * 1020
        elif body is not None:
            data = json.dumps(self.fill(body)).encode()
            headers.setdefault('Content-Type', 'application/json')
        else:
            data = None
        request = urllib.request.Request(fake.url + fake.PREFIX + path,
                                         data=data,
                                         method=req['method'],
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                status, rheaders, raw = r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            status, rheaders, raw = e.code, e.headers, e.read()
        rheaders = {k.lower(): v for k, v in rheaders.items()}
        text = raw.decode('utf-8', 'replace')
        try:
            rbody = json.loads(text) if text.strip() else None
            kind = 'json' if rbody is not None else 'empty'
        except ValueError:
            rbody, kind = text, 'text'
        if kind == 'json' and fixture['response']['body_kind'] == 'json':
            self.learn(fixture['response']['body'], rbody)
        return status, rheaders, kind, rbody


def before(nova, replay, name):
    """Put the fakes where the real cloud was when `name` was recorded."""
    if name == 'nova-console-output':
        server = replay.bound['<server-1>']
        nova.set_console(server, 'BdsDxe: loading Boot0001\r\n'
                         '\x1b[0mHello from Uncalibrated Sextant\r\n')
    if name == 'nova-server-delete':
        nova.delete_polls = 0        # the recorder waited for the 404


def replay_all(nova_cls=fake_clouds.FakeNova):
    """{fixture name: [differences]} for every replayable fixture."""
    nova = nova_cls(kerbside_url='http://127.0.0.1:9/nova').start()
    glance = fake_clouds.FakeGlance().start()
    try:
        replay = Replay(nova, glance)
        results = {}
        for fixture in load_fixtures():
            if fixture['name'] in NOT_FAKED:
                continue
            before(nova, replay, fixture['name'])
            status, headers, kind, body = replay.send(fixture)
            results[fixture['name']] = compare(fixture, status, headers,
                                               kind, body)
        return results
    finally:
        nova.stop()
        glance.stop()


def test_fixtures_were_recorded():
    names = {f['name'] for f in load_fixtures()}
    assert NOT_FAKED <= names
    for needed in ('nova-server-create', 'nova-server-show-build',
                   'nova-server-show-active', 'nova-server-show-deleted',
                   'nova-console-output', 'nova-console-output-length',
                   'nova-remote-console-spice-direct',
                   'nova-remote-console-spice-direct-v298',
                   'nova-remote-console-unknown-server',
                   'nova-remote-console-not-active',
                   'nova-console-auth-token',
                   'nova-console-auth-token-unknown',
                   'nova-console-auth-token-malformed',
                   'nova-console-auth-token-member', 'nova-server-delete',
                   'glance-image-create', 'glance-image-upload',
                   'glance-image-show'):
        assert needed in names


@pytest.mark.parametrize('name', sorted(
    f['name'] for f in load_fixtures() if f['name'] not in NOT_FAKED))
def test_fake_answers_in_the_recorded_shape(name, replayed):
    assert replayed[name] == [], '\n'.join(replayed[name])


@pytest.fixture(scope='module')
def replayed():
    return replay_all()


def test_a_planted_difference_is_caught():
    """A fake that answers an unknown token the way FakeKerbside answers
    a bad one ({"error": ...}), with a console missing tls_port: caught.
    """
    class DriftedNova(fake_clouds.FakeNova):
        def _console_info(self, server_id, version):
            info = super()._console_info(server_id, version)
            info.pop('tls_port', None)
            return info

        def _route(self, method, path, headers, body, version):
            status, h, b = super()._route(method, path, headers, body,
                                          version)
            if status == 404 and 'itemNotFound' in b and \
                    'Token' in b['itemNotFound']['message']:
                return 404, h, {'error': 'token not found'}
            return status, h, b

    results = replay_all(DriftedNova)
    assert 'body.console.tls_port: missing in the fake (real: "int")' in \
        results['nova-console-auth-token']
    assert any('body.itemNotFound: missing in the fake' in d
               for d in results['nova-console-auth-token-unknown'])
    assert any('body.error: only in the fake' in d
               for d in results['nova-console-auth-token-unknown'])
    # Everything else still matches: the comparison is not just noisy.
    assert results['nova-server-show-active'] == []


def test_shape_comparison_catches_status_type_and_header_drift():
    fixture = {'response': {'status': 404, 'body_kind': 'json', 'headers': {
        'content-type': 'application/json; charset=UTF-8',
        'vary': 'OpenStack-API-Version'},
        'body': {'itemNotFound': {'code': 404, 'message': 'gone'}}}}
    diffs = compare(fixture, 400, {'content-type': 'text/html',
                                   'vary': 'X-Auth-Token'}, 'json',
                    {'itemNotFound': {'code': '404', 'message': 'gone'}})
    assert diffs == [
        'status: real 404, fake 400',
        "content-type: real 'application/json; charset=UTF-8', "
        "fake 'text/html'",
        "header vary: real 'OpenStack-API-Version', fake 'X-Auth-Token'",
        'body.itemNotFound.code: real "int", fake "str"']


SECRET_SHAPES = [
    re.compile(r'gAAAA[A-Za-z0-9_-]{20,}'),            # Fernet token
    re.compile(r'eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}'),   # JWT
    re.compile(r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-'
               r'[0-9a-f]{12}'),                        # unnormalised id
    re.compile(r'(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])'),  # Keystone id
    re.compile(r'127\.0\.0\.1:\d+'),                    # a live port
]


def _walk(value, key=None):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v, key)
    else:
        yield key, value


def test_no_fixture_holds_a_secret():
    for path in glob.glob(os.path.join(FIXTURES, '*.json')):
        with open(path) as f:
            text = f.read()
        for pattern in SECRET_SHAPES:
            assert not pattern.search(text), (path, pattern.pattern)
        for key, value in _walk(json.loads(text)):
            if key and re.search(r'pass(word)?$|token$|secret', key,
                                 re.I) and isinstance(value, str):
                assert value in SECRET_PLACEHOLDERS, (path, key, value)
            if isinstance(value, str) and 'token=' in value:
                assert 'token=<console-token>' in value, (path, value)


def test_the_secret_check_can_fail(tmp_path):
    leaked = {'response': {'headers': {
        'x-subject-token': 'gAAAAABnotreallyafernettokenbutlooksone'}}}
    text = json.dumps(leaked)
    assert any(p.search(text) for p in SECRET_SHAPES)
    (key, value), = _walk(leaked)
    assert key == 'x-subject-token' and value not in SECRET_PLACEHOLDERS

"""The cloud promise story's own logic without a cloud: Kerbside's login
(POST /auth) against a fake Kerbside, what the reused Nova token's answer
is judged to be, the Nova console's .vv and session, the lane adapter
promises.Console needs, and a story's record when it stops.
"""

import base64
import http.server
import json
import os
import threading
import time

import pytest

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import secrets as common_secrets
from kerbside_tempest_plugin.kerbside_api import client as kapi
from kerbside_tempest_plugin.lane.openstack import kerbside as os_kb
from kerbside_tempest_plugin.scenario import promise_cloud as pc
from kerbside_tempest_plugin.scenario import promises as pr

PASSWORD = 'operator-password-123'
KEYSTONE_TOKEN = 'gAAAAABkeystone' + 'k' * 40
CONSOLE_TOKEN = 'C' * 24 + 'd' * 24
NOVA_TOKEN = '0e2bd3f1-8a36-4c1b-9d5e-7f1a2b3c4d5e'


def _b64(obj):
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode() \
        .rstrip('=')


def jwt(exp=None, **claims):
    claims.setdefault('sub', 'admin')
    claims.setdefault('openstack_token', KEYSTONE_TOKEN)
    claims['exp'] = exp if exp is not None else int(time.time()) + 3600
    return '%s.%s.c2lnbmF0dXJl' % (_b64({'alg': 'HS256', 'typ': 'JWT'}),
                                   _b64(claims))


def vv(session, password=CONSOLE_TOKEN):
    return ('[virt-viewer]\ntype=spice\nhost=127.0.0.1\nport=1\n'
            'tls-port=2\npassword=%s\ntitle=srv via proxy session ID %s\n'
            % (password, session))


class _Kerbside(http.server.BaseHTTPRequestHandler):
    """POST /auth as Kerbside 0.8.0 answers it; GET /session wants the
    JWT the last login gave.
    """

    def log_message(self, *args):
        pass

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        srv = self.server
        length = int(self.headers.get('Content-Length') or 0)
        body = json.loads(self.rfile.read(length) or b'{}')
        srv.logins.append(body.get('username'))
        srv.seen.append('POST /auth')
        if srv.poisoned:
            # What 0.8.0 answers on a worker that served /nova-console.vv.
            return self._send(500, {
                'error': 'server error: AttributeError("\'NoneType\' '
                'object has no attribute \'Client\'")', 'status': 500})
        if not body.get('username') or not body.get('password'):
            return self._send(400, {'error': 'bad request', 'status': 400})
        if body['password'] != PASSWORD:
            return self._send(401, {'error': 'unauthorized', 'status': 401})
        if srv.no_token:
            return self._send(200, {'expires_in': 3600})
        srv.jwt = jwt(exp=srv.exp)
        self._send(200, {'access_token': srv.jwt, 'expires_in': 3600,
                         'token_type': 'Bearer'})

    def do_GET(self):
        self.server.seen.append('GET ' + self.path.split('?')[0])
        if self.headers.get('Authorization') != 'Bearer %s' % \
                self.server.jwt:
            return self._send(401, {'error': 'no JWT', 'status': 401})
        self._send(200, {})


@pytest.fixture
def kerbside():
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Kerbside)
    srv.logins, srv.jwt, srv.exp, srv.no_token = [], None, None, False
    srv.poisoned, srv.seen = False, []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    srv.url = 'http://127.0.0.1:%d' % srv.server_port
    yield srv
    srv.shutdown()
    srv.server_close()


# ----------------------------------------------------------------- login


def test_login_gives_the_jwt_and_teaches_every_secret(kerbside):
    red = common_secrets.Redactor()
    info = os_kb.api_login(kerbside.url, 'admin', PASSWORD, redactor=red)
    assert info['access_token'] == kerbside.jwt
    assert (info['status'], info['token_type'], info['expires_in']) == (
        200, 'Bearer', 3600)
    # The password, the JWT and the Keystone token inside it.
    for secret in (PASSWORD, kerbside.jwt, KEYSTONE_TOKEN):
        assert red.redact('x %s y' % secret) == 'x <redacted> y'
    assert os_kb.jwt_claims(info['access_token'])['sub'] == 'admin'


@pytest.mark.parametrize('user,password,status,words', [
    ('admin', 'wrong-password-9', 401, 'unauthorized'),
    ('', PASSWORD, 400, 'bad request')])
def test_a_refused_login_says_what_kerbside_said(kerbside, user, password,
                                                 status, words):
    with pytest.raises(os_kb.LoginError) as e:
        os_kb.api_login(kerbside.url, user, password)
    assert e.value.status == status
    assert words in str(e.value) and words in e.value.body
    assert password not in str(e.value)


def test_a_login_without_a_token_and_no_kerbside_are_errors(kerbside):
    kerbside.no_token = True
    with pytest.raises(os_kb.LoginError, match='without an access_token'):
        os_kb.api_login(kerbside.url, 'admin', PASSWORD)
    url = kerbside.url
    kerbside.shutdown()
    kerbside.server_close()
    with pytest.raises(os_kb.LoginError, match='did not answer') as e:
        os_kb.api_login(url, 'admin', PASSWORD, timeout=2)
    assert e.value.status is None


def test_a_worker_that_served_the_nova_route_is_named_as_the_cause(
        kerbside):
    kerbside.poisoned = True
    with pytest.raises(os_kb.LoginError) as e:
        os_kb.api_login(kerbside.url, 'admin', PASSWORD)
    assert e.value.status == 500
    assert 'known Kerbside 0.8.0 bug' in str(e.value)
    assert '/nova-console.vv' in str(e.value) and '§16.6' in str(e.value)


def test_jwt_claims_of_something_else_are_empty():
    for token in (None, '', 'abc', 'a.%%%.b', 'a.%s.b' % _b64([1, 2])):
        assert os_kb.jwt_claims(token) == {}


def test_cloud_api_logs_in_once_and_records_it_without_secrets(kerbside):
    red = common_secrets.Redactor()
    api = pc.cloud_api(kerbside.url, 'admin', PASSWORD, red)
    api.request('GET', '/session')
    api.request('GET', '/session')
    assert kerbside.logins == ['admin']
    first = api.calls[0]
    assert (first.method, first.path, first.status) == ('POST', '/auth',
                                                        200)
    assert 'login as admin' in first.note and 'expires_in 3600' in \
        first.note
    text = json.dumps(api.call_log())
    for secret in (PASSWORD, kerbside.jwt, KEYSTONE_TOKEN):
        assert secret not in text
    assert [c.path for c in api.calls] == ['/auth', '/session', '/session']


def test_cloud_api_logs_in_again_near_the_jwt_expiry(kerbside):
    kerbside.exp = int(time.time()) + pc.LOGIN_MARGIN_S - 10
    api = pc.cloud_api(kerbside.url, 'admin', PASSWORD,
                       common_secrets.Redactor())
    api.request('GET', '/session')
    api.request('GET', '/session')
    assert kerbside.logins == ['admin', 'admin']


def test_a_shared_login_serves_every_client_and_records_in_the_new_one(
        kerbside):
    red = common_secrets.Redactor()
    login = pc.ApiLogin(kerbside.url, 'admin', PASSWORD, red)
    first = pc.cloud_api(kerbside.url, 'admin', PASSWORD, red, login=login)
    first.request('GET', '/session')
    second = pc.cloud_api(kerbside.url, 'admin', PASSWORD, red, login=login)
    second.request('GET', '/session')
    assert kerbside.logins == ['admin']
    assert [c.path for c in second.calls] == ['/session']
    login._expires = time.time()    # as if its JWT were about to expire
    second.request('GET', '/session')
    assert kerbside.logins == ['admin', 'admin']
    assert [c.path for c in second.calls] == ['/session', '/auth',
                                              '/session']


def test_cloud_api_a_refused_login_is_recorded_and_raised(kerbside):
    api = pc.cloud_api(kerbside.url, 'admin', 'not-the-password',
                       common_secrets.Redactor())
    with pytest.raises(os_kb.LoginError):
        api.request('GET', '/session')
    [call] = api.calls
    assert (call.path, call.status) == ('/auth', 401)
    assert 'refused' in call.note and 'not-the-password' not in call.note


# ---------------------------------------------------------- reuse judged


def _redact(text):
    return text.replace(CONSOLE_TOKEN, '<redacted>')


def test_a_fresh_vv_for_the_reused_token_is_the_recorded_finding():
    ok, msg, facts = pc.judge_nova_token_reuse(
        200, vv('newSESSION12', 'N' * 48), 'oldSESSION12', CONSOLE_TOKEN,
        14.24)
    assert ok
    assert msg.startswith('FINDING (%s)' % pc.FINDING_REF)
    assert 'oldSESSION12' in msg and 'newSESSION12' in msg
    assert '14.2 s' in msg
    assert facts['status'] == 200 and facts['session_id'] == 'newSESSION12'
    assert facts['vv']['has_password'] and 'N' * 48 not in json.dumps(facts)


@pytest.mark.parametrize('text,words', [
    (vv('oldSESSION12', 'N' * 48), 'own session id'),
    (vv('newSESSION12'), 'own console token')])
def test_the_terminated_sessions_own_vv_again_is_not_the_finding(text,
                                                                 words):
    ok, msg, _ = pc.judge_nova_token_reuse(200, text, 'oldSESSION12',
                                           CONSOLE_TOKEN, 3.0)
    assert not ok and words in msg


def test_a_refused_reuse_keeps_the_promise_and_says_what_the_user_saw():
    # A refusal (Kerbside revoking the token, or Nova expiring it) keeps
    # the terminated session dead: not a failure, and not the finding.
    body = json.dumps({'error': 'nova token not found', 'status': 404})
    ok, msg, facts = pc.judge_nova_token_reuse(404, body, 'oldSESSION12',
                                               CONSOLE_TOKEN, 31.0)
    assert ok and not msg.startswith('FINDING')
    assert 'answered 404' in msg and 'nova token not found' in msg
    assert 'token_ttl' in msg and '31.0 s old' in msg
    assert facts['body'] == {'error': 'nova token not found',
                             'status': 404}


def test_a_200_that_is_not_a_vv_is_not_the_finding():
    ok, msg, facts = pc.judge_nova_token_reuse(
        200, '<html>%s</html>' % CONSOLE_TOKEN, 'oldSESSION12',
        CONSOLE_TOKEN, 3.0, redact=_redact)
    assert not ok and 'no proxy .vv' in msg
    assert CONSOLE_TOKEN not in msg + json.dumps(facts)


# ------------------------------------------------------- console and lane


def test_nova_token_of_a_spice_direct_url():
    url = 'http://127.0.0.1:1/nova-console.vv?token=%s' % NOVA_TOKEN
    assert pc.nova_token_of(url) == NOVA_TOKEN
    with pytest.raises(errors.ProviderError) as e:
        pc.nova_token_of('http://127.0.0.1:1/nova-console.vv?x=1')
    assert 'has no token' in str(e.value)


class FakeLane:
    log_dir = None

    def __init__(self):
        self.redactor = common_secrets.Redactor()
        self.ryll = None
        self.booted = []

    def boot_guest(self, image, name=None, banner=None, timeout=None):
        self.booted.append(name)
        return FakeGuest()


class FakeGuest:
    ref = 'c0ffee00-0000-4000-8000-000000000001'

    def __init__(self):
        self.minted = 0
        self.torn_down = False

    def _mint(self):
        self.minted += 1
        return 'http://127.0.0.1:1/nova-console.vv?token=%s-%d' % (
            NOVA_TOKEN, self.minted)

    def teardown(self):
        self.torn_down = True


class FakeAPI:
    def __init__(self):
        self.calls = []
        self.asked = []

    def metrics(self):
        return {}

    def call_log(self):
        return []

    def audit(self, source, uuid):
        return []

    def nova_console_vv(self, token, expect=(200,)):
        self.asked.append(token)
        return kapi.ApiResponse(200, vv('sess%08d' % len(self.asked)),
                                'application/x-virt-viewer')


def test_the_adapter_is_the_lane_with_the_console_in_kerbside():
    lane = FakeLane()
    nl = pc.NovaRouteLane(lane, 'ktp-openstack')
    assert nl.redactor is lane.redactor and nl.log_dir is None
    lane.ryll = 'r'
    assert nl.ryll == 'r'
    route = nl.console_route(FakeGuest(), 'kerbside')
    assert (route.kind, route.source, route.uuid) == (
        'kerbside', 'ktp-openstack', FakeGuest.ref)
    with pytest.raises(AttributeError):
        nl.console_slots


def test_a_nova_console_mints_a_nova_token_then_asks_kerbside(tmp_path):
    lane = pc.NovaRouteLane(FakeLane(), 'ktp-openstack')
    api = FakeAPI()
    run = pr.PromiseRun('promise-cloud-x', 'kerbside', str(tmp_path), lane,
                        ['tokens'], api=api)
    guest = FakeGuest()
    con = pc.NovaConsole(run, lane, guest, 's1')
    assert (con.source, con.uuid) == ('ktp-openstack', guest.ref)
    assert run.console == ('ktp-openstack', guest.ref)
    text = con.fetch_vv()
    assert con.nova_token == '%s-1' % NOVA_TOKEN
    assert api.asked == [con.nova_token]
    assert lane.redactor.redact(con.nova_token) == '<redacted>'
    assert con.session_id == 'sess00000001' == pr.session_of(text)
    assert run.sessions == ['sess00000001']
    assert con.minted_at is not None
    # A second console mints a token of its own.
    con2 = pc.NovaConsole(run, lane, guest, 's2')
    con2.fetch_vv()
    assert con2.nova_token != con.nova_token
    assert run.sessions == ['sess00000001', 'sess00000002']


def test_a_story_that_stops_is_recorded_and_the_server_deleted(tmp_path):
    lane = FakeLane()
    lane.stop_ryll = lambda: None
    api = FakeAPI()
    guests = []

    def boot(image, name=None, banner=None, timeout=None):
        guests.append(FakeGuest())
        guests[-1]._mint = lambda: 'http://x/nova-console.vv'  # no token
        return guests[-1]
    lane.boot_guest = boot
    run = pc.run_cloud_story(lane, pc.terminate_nova_console,
                             'promise-cloud-stop', str(tmp_path), None,
                             ['terminate', 'tokens'], 'ktp-openstack',
                             api=api)
    assert not run.passed and run.stopped == 'error'
    assert 'has no token' in run.error
    assert guests and guests[0].torn_down
    out = json.load(open(os.path.join(run.art.path, 'promise.json')))
    assert out['kind'] == 'promise' and not out['passed']
    # Every check the story planned is reported as not run, none failed.
    assert {c['verdict'] for c in out['checks']} == {'NOT RUN'}
    assert ('tokens', 'nova_token_reuse') in {
        (c['promise'], c['name']) for c in out['checks']}


def test_run_cloud_story_logs_in_first_and_notes_it(tmp_path, kerbside):
    lane = FakeLane()
    api = pc.cloud_api(kerbside.url, 'admin', PASSWORD, lane.redactor)

    def story(run, nlane, image):
        # An operator logs in before any console is opened.
        assert kerbside.seen == ['POST /auth']
        run.api.request('GET', '/session')
        run.check('sessions', 'listed', True, 'fine')
    run = pc.run_cloud_story(lane, story, 'promise-cloud-ok', str(tmp_path),
                             None, ['sessions'], 'ktp-openstack', api=api)
    assert run.passed, run.error
    assert run.facts['api_logins'] == [
        {'status': 200, 'token_type': 'Bearer', 'expires_in': 3600,
         'seconds': run.facts['api_logins'][0]['seconds']}]
    leaks = common_secrets.find_token_shapes(run.art.path)
    assert leaks == []
    for root, _, files in os.walk(run.art.path):
        for name in files:
            data = open(os.path.join(root, name), 'rb').read()
            assert PASSWORD.encode() not in data
            assert KEYSTONE_TOKEN.encode() not in data


def test_a_refused_login_stops_the_story_before_it_starts(tmp_path,
                                                          kerbside):
    kerbside.poisoned = True
    lane = FakeLane()
    api = pc.cloud_api(kerbside.url, 'admin', PASSWORD, lane.redactor)
    started = []
    run = pc.run_cloud_story(lane, lambda *a: started.append(1),
                             'promise-cloud-login', str(tmp_path), None,
                             ['sessions'], 'ktp-openstack', api=api)
    assert not started and not run.passed
    assert run.error.startswith('LoginError') and 'known Kerbside 0.8.0 ' \
        'bug' in run.error

"""The Kerbside API client against a fake Kerbside on loopback: the calls
it records (tokens redacted), the secrets it learns from answers, and the
typed errors for a status nobody expected, a body that is not JSON and a
server that is not there.
"""

import http.server
import json
import threading

import pytest

from kerbside_tempest_plugin.common import secrets as common_secrets
from kerbside_tempest_plugin.kerbside_api import client as kapi

JWT = 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJoYXJuZXNzIn0.c2lnbmF0dXJl'
TOKEN = 'A' * 24 + 'b' * 24
VV = ('[virt-viewer]\ntype=spice\nhost=127.0.0.1\nport=1\ntls-port=2\n'
      'password=%s\ntitle=sextant-harness via proxy session ID abcDEF123456'
      '\n' % TOKEN)
METRICS = '''# HELP kerbside_proxy_denied_total Denied links.
# TYPE kerbside_proxy_denied_total counter
kerbside_proxy_denied_total 3
kerbside_proxy_bytes_relayed_total{direction="client_to_server"} 10
kerbside_proxy_bytes_relayed_total{direction="server_to_client"} 20
kerbside_proxy_active_connections 0
'''


class _Fake(http.server.BaseHTTPRequestHandler):
    routes = {}

    def log_message(self, *args):
        pass

    def _answer(self):
        self.server.seen.append((self.command, self.path,
                                 self.headers.get('Authorization')))
        status, ctype, body = self.routes.get(
            (self.command, self.path.split('?')[0]),
            (404, 'application/json', '{"error": "not found"}'))
        data = body.encode()
        self.send_response(status)
        self.send_header('Content-Type', ctype)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer


@pytest.fixture
def fake():
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Fake)
    srv.seen = []
    _Fake.routes = {
        ('GET', '/session'): (200, 'application/json', json.dumps(
            {'abcDEF123456': {'source': 's', 'uuid': 'u', 'channels': []}})),
        ('POST', '/console/s/u/terminate'): (200, 'application/json',
                                             json.dumps({'result': 'ok',
                                                         'tokens': [TOKEN]})),
        ('POST', '/session/gone/terminate'): (
            404, 'application/json', '{"error": "session not found"}'),
        ('GET', '/console/s/u/audit'): (200, 'application/json', json.dumps(
            {'total': 1, 'audit': [{'message': 'Channel created'}]})),
        ('GET', '/console/proxy/s/u/console.vv'): (
            200, 'application/x-virt-viewer;charset=UTF-8', VV),
        ('GET', '/nova-console.vv'): (401, 'application/json',
                                      '{"error": "token absent"}'),
        ('GET', '/metrics'): (200, 'text/plain', METRICS),
        ('GET', '/broken'): (200, 'application/json', '<html>'),
    }
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _api(srv, **kw):
    base = 'http://127.0.0.1:%d' % srv.server_address[1]
    return kapi.KerbsideAPI(base, token=lambda: JWT,
                            metrics_url=base + '/metrics', **kw)


def test_calls_are_recorded_without_tokens(fake):
    api = _api(fake)
    assert list(api.sessions()) == ['abcDEF123456']
    vv = api.console_vv('s', 'u')
    assert TOKEN in vv
    body = api.terminate_console('s', 'u').json()
    assert body['tokens'] == [TOKEN]
    r = api.nova_console_vv('nova-token-1234', expect=(401,))
    assert r.status == 401
    # the bearer JWT went out; the Nova route took none
    assert fake.seen[0][2] == 'Bearer %s' % JWT
    assert fake.seen[-1][2] is None
    log = json.dumps(api.call_log())
    for secret in (JWT, TOKEN, 'nova-token-1234'):
        assert secret not in log
    assert '/nova-console.vv?token=<redacted>' in log
    assert [c['status'] for c in api.call_log()] == [200, 200, 200, 401]
    # what came back is known to the redactor
    assert TOKEN not in api.redactor.redact('x %s y' % TOKEN)


def test_unexpected_status_is_a_typed_error_with_the_body(fake):
    api = _api(fake)
    with pytest.raises(kapi.KerbsideAPIError) as e:
        api.terminate_session('gone')
    assert e.value.status == 404
    assert 'session not found' in str(e.value)
    assert e.value.path == '/session/gone/terminate'


def test_a_body_that_is_not_json_is_a_typed_error(fake):
    api = _api(fake)
    with pytest.raises(kapi.KerbsideAPIError) as e:
        api.request('GET', '/broken').json()
    assert 'not JSON' in str(e.value)


def test_no_server_is_a_typed_error_and_recorded():
    from kerbside_tempest_plugin.common import ports
    port = ports.free_ports(1)[0]
    api = kapi.KerbsideAPI('http://127.0.0.1:%d' % port, token=JWT,
                           timeout=2)
    with pytest.raises(kapi.KerbsideAPIError) as e:
        api.sessions()
    assert e.value.status is None and 'did not answer' in str(e.value)
    assert api.calls[-1].status is None
    assert JWT not in json.dumps(api.call_log())


def test_audit_and_metrics(fake):
    api = _api(fake)
    assert api.audit('s', 'u') == [{'message': 'Channel created'}]
    assert fake.seen[-1][1] == '/console/s/u/audit?limit=1000'
    before = api.metrics()
    assert before['kerbside_proxy_denied_total'] == 3
    after = dict(before, **{'kerbside_proxy_denied_total': 5,
                            'kerbside_proxy_firewall_verdicts_total'
                            '{rule="size_cap"}': 1})
    delta = kapi.metric_delta(before, after)
    assert delta == {'kerbside_proxy_denied_total': 2,
                     'kerbside_proxy_firewall_verdicts_total'
                     '{rule="size_cap"}': 1}
    assert kapi.metric_sum(after, 'kerbside_proxy_bytes_relayed_total') \
        == 30


def test_no_token_to_call_with():
    api = kapi.KerbsideAPI('http://127.0.0.1:9', token=None)
    with pytest.raises(kapi.KerbsideAPIError):
        api.sessions()


def test_safe_path_masks_credentials_only():
    assert kapi.safe_path('/a?token=x&limit=2') == \
        '/a?token=<redacted>&limit=2'
    assert kapi.safe_path('/a') == '/a'


def test_parse_metrics_ignores_garbage():
    m = kapi.parse_metrics('# c\nok 1\nbad line here\nx{a="b c"} 2.5\n'
                           'nan_value abc\n')
    assert m == {'ok': 1.0, 'x{a="b c"}': 2.5}


def test_the_lane_redactor_learns_console_tokens(fake):
    red = common_secrets.Redactor()
    api = _api(fake, redactor=red)
    api.console_vv('s', 'u')
    assert TOKEN not in red.redact('seen %s' % TOKEN)
    assert JWT not in red.redact(JWT)

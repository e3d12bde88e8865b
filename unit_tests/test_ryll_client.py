"""ControlClient against the fake control-socket server (ryll.fake)."""

import json
import socket
import threading
import time

import pytest

from kerbside_tempest_plugin.ryll import client as rc
from kerbside_tempest_plugin.ryll.fake import FakeRyll
from kerbside_tempest_plugin.sextant import keys


@pytest.fixture
def sock_path(tmp_path):
    # Keep AF_UNIX paths short: pytest's tmp_path can be long.
    import tempfile
    d = tempfile.mkdtemp(prefix='fr-')
    yield d + '/s'
    import shutil
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def server(sock_path):
    srv = FakeRyll(sock_path)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    c = rc.ControlClient(server.path, default_timeout=3.0,
                         resolve_key=keys.resolve)
    c.connect(timeout=3)
    yield c
    c.close()


def _quick(fn, limit=2.0):
    start = time.monotonic()
    try:
        return fn()
    finally:
        assert time.monotonic() - start < limit, 'took too long'


# -- handshake and capabilities


def test_hello_records_capabilities(client, server):
    assert client.protocol_version == '1.5'
    assert client.server_name == 'ryll'
    assert 'stats' in client.supported_methods
    assert 'surface_drawn' in client.supported_events
    hello = server.requests_for('hello')[0]
    assert hello['params']['protocol_version'] == '1.5'
    assert hello['params']['client_name']


def test_other_minor_version_accepted(sock_path):
    with FakeRyll(sock_path, protocol_version='1.9',
                  methods=['hello', 'status']) as srv:
        with rc.ControlClient(srv.path) as c:
            c.connect(timeout=2)
            assert c.protocol_version == '1.9'
            with pytest.raises(rc.RyllUnsupported, match='stats'):
                c.stats()


def test_other_major_version_refused(sock_path):
    with FakeRyll(sock_path, protocol_version='2.0') as srv:
        with rc.ControlClient(srv.path) as c:
            with pytest.raises(rc.RyllProtocolError, match='2.0'):
                c.connect(timeout=2)


def test_version_mismatch_error_is_not_retried(sock_path, server):
    def mismatch(conn, req):
        conn.error(req, 'protocol_version_mismatch', 'major 1 only')
        conn.close()
    server.handlers['hello'] = mismatch
    c = rc.ControlClient(server.path)
    with pytest.raises(rc.RyllRpcError) as e:
        _quick(lambda: c.connect(timeout=2))
    assert e.value.code == 'protocol_version_mismatch'
    assert server.connections == 1


def test_no_hello_yet_is_an_rpc_error(server):
    c = rc.ControlClient(server.path)
    c.connect(timeout=2, hello=False)
    try:
        with pytest.raises(rc.RyllRpcError) as e:
            c.status()
        assert e.value.code == 'no_hello_yet'
        c.hello()
        assert c.status()['spice_connected']
    finally:
        c.close()


# -- matching, events, malformed input


def test_replies_out_of_order_are_matched_by_id(client, server):
    def hold(conn, req):
        conn.held.append(req)

    def answer_both(conn, req):
        conn.reply(req, {'n': req['params']['n']})
        for held in conn.held:
            conn.reply(held, {'n': held['params']['n']})
    server.handlers['first'] = hold
    server.handlers['second'] = answer_both
    results = {}
    t = threading.Thread(target=lambda: results.update(
        first=client.call('first', {'n': 1})))
    t.start()
    while not server.requests_for('first'):
        time.sleep(0.01)
    results['second'] = client.call('second', {'n': 2})
    t.join(3)
    assert results == {'first': {'n': 1}, 'second': {'n': 2}}


def test_events_interleaved_with_replies(client, server):
    client.subscribe(['surface_drawn', 'latency'])

    def status(conn, req):
        conn.event('surface_drawn', {'surface_id': 0, 'wallclock_us': 1})
        conn.reply(req, server.status_result)
        conn.event('latency', {'sample_ms': 1.5,
                               'wallclock_us': time.time_ns() // 1000})
    server.handlers['status'] = status
    assert client.status()['spice_connected']
    ev = client.wait_for_event('latency', 2)
    assert ev.data['sample_ms'] == 1.5
    assert ev.delay_us is not None and ev.delay_us >= 0
    ev = client.wait_for_event('surface_drawn', 2)
    assert ev.wallclock_us == 1
    assert client.event_counts == {'surface_drawn': 1, 'latency': 1}


def test_unknown_events_are_ignored(client, server):
    def status(conn, req):
        conn.send({'event': 'frobnicated', 'data': {'x': 1}})
        conn.send({'event': 'weird', 'data': [1, 2]})
        conn.reply(req, server.status_result)
    server.handlers['status'] = status
    assert client.status()['surfaces']
    assert client.wait_for_event('frobnicated', 1).data == {'x': 1}
    assert client.malformed_total == 0


def test_malformed_reply_fails_the_request_not_hangs(client, server):
    server.handlers['status'] = (
        lambda conn, req: conn.send_raw(b'this is not json\n'))
    with pytest.raises(rc.RyllProtocolError, match='not JSON'):
        _quick(lambda: client.status(timeout=10))
    assert client.malformed_total == 1
    server.handlers.pop('status')
    assert client.status()['spice_connected']


@pytest.mark.parametrize('line', [
    b'[1,2,3]\n', b'{"neither": 1}\n', b'\xff\xfe garbage\n',
    b'{"ok": true, "result": {}}\n', b'{"id": 1, "ok": "yes"}\n'])
def test_malformed_lines_are_typed_errors(client, server, line):
    server.handlers['status'] = lambda conn, req: conn.send_raw(line)
    with pytest.raises(rc.RyllProtocolError):
        _quick(lambda: client.status(timeout=10))


def test_reply_with_bad_ok_value(client, server):
    server.handlers['status'] = lambda conn, req: conn.send(
        {'id': req['id'], 'ok': 'yes'})
    with pytest.raises(rc.RyllProtocolError, match='ok='):
        _quick(lambda: client.status(timeout=10))


def test_malformed_line_with_nothing_in_flight_is_counted(client, server):
    server.active.send_raw(b'garbage\n\n   \n')
    deadline = time.monotonic() + 2
    while client.malformed_total == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.malformed_total == 1
    assert 'garbage' in client.malformed_lines[-1]
    assert client.status()['spice_connected']


def test_idless_error_answers_the_request_in_flight(client, server):
    server.handlers['status'] = lambda conn, req: conn.error(
        None, 'bad_params', 'failed to parse request: trailing characters')
    with pytest.raises(rc.RyllRpcError) as e:
        _quick(lambda: client.status(timeout=10))
    assert e.value.code == 'bad_params'
    assert e.value.method == 'status'


def test_rpc_error_carries_code(client):
    with pytest.raises(rc.RyllRpcError) as e:
        client.call('frobnicate')
    assert e.value.code == 'unknown_method'
    with pytest.raises(rc.RyllRpcError) as e:
        client.call('send_key', {'scancode': 28, 'state': 'sideways'})
    assert e.value.code == 'bad_state'


def test_overlong_line_is_a_protocol_error(server):
    with rc.ControlClient(server.path, max_line=1024) as c:
        c.connect(timeout=2)
        server.handlers['status'] = lambda conn, req: conn.send_raw(
            b'{"id":%d,"ok":true,"result":{"x":"%s"}}\n'
            % (req['id'], b'y' * 5000))
        with pytest.raises(rc.RyllProtocolError, match='longer than'):
            _quick(lambda: c.status(timeout=10))
        with pytest.raises(rc.RyllError):
            c.status()


def test_large_line_within_limit(client, server):
    big = 'z' * (8 * 1024 * 1024)
    server.handlers['clipboard_get'] = (
        lambda conn, req: conn.reply(req, {'text': big}))
    assert client.clipboard_get() == big


# -- EOF, busy, close


def test_early_eof_raises_connection_closed(client, server):
    server.handlers['status'] = lambda conn, req: conn.close()
    with pytest.raises(rc.RyllConnectionClosed, match='EOF'):
        _quick(lambda: client.status(timeout=10))
    assert client.closed
    with pytest.raises(rc.RyllConnectionClosed):
        client.stats()
    with pytest.raises(rc.RyllConnectionClosed):
        client.wait_for_event('latency', 5)


def test_eof_while_waiting_for_event(client, server):
    threading.Timer(0.2, server.active.close).start()
    with pytest.raises(rc.RyllConnectionClosed):
        _quick(lambda: client.wait_for_event('surface_drawn', 10))


def test_queued_events_survive_eof(client, server):
    client.subscribe(['latency'])
    server.active.event('latency', {'sample_ms': 1.0})
    client.wait_for_event(lambda ev: True, 2)  # consume it
    server.active.event('latency', {'sample_ms': 2.0})
    server.active.close()
    deadline = time.monotonic() + 2
    while not client.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.wait_for_event('latency', 1).data['sample_ms'] == 2.0


def test_connect_retries_busy(sock_path, server):
    server.busy_next = 3
    with rc.ControlClient(server.path) as c:
        _quick(lambda: c.connect(timeout=5))
        assert c.status()['spice_connected']
    assert server.refused == 3


def test_second_client_is_refused_busy(client, server):
    other = rc.ControlClient(server.path)
    with pytest.raises(rc.RyllTimeout, match='busy') as e:
        other.connect(timeout=0.5)
    assert e.value.seen.get('busy', 0) >= 1
    other.connect(timeout=0.5, hello=False)
    with pytest.raises(rc.RyllBusy):
        other.status()
    other.close()
    assert client.status()['spice_connected']  # first client unaffected


def test_connect_to_missing_socket_times_out(sock_path):
    c = rc.ControlClient(sock_path + '-none')
    with pytest.raises(rc.RyllTimeout, match='no listener'):
        _quick(lambda: c.connect(timeout=0.3))


def test_connect_stops_at_once_when_abort_says_why(sock_path):
    """ryll that made its socket and then exited: no retrying to the
    deadline once the process is known to be gone.
    """
    asked = []

    def abort():
        asked.append(1)
        return 'ryll exited with status 1' if len(asked) >= 2 else None

    c = rc.ControlClient(sock_path + '-none')
    t0 = time.monotonic()
    with pytest.raises(rc.RyllConnectionClosed,
                       match='ryll exited with status 1') as e:
        c.connect(timeout=30, abort=abort)
    assert time.monotonic() - t0 < 5
    assert e.value.reason == 'ryll exited with status 1'
    assert 'no listener' in str(e.value)


def test_close_frees_the_server_slot(server):
    for _ in range(5):
        c = rc.ControlClient(server.path)
        c.connect(timeout=2)
        c.close()
        assert server.slot_freed.wait(1), 'server still sees a client'
    assert server.refused == 0
    assert server.connections == 5


def test_close_unblocks_pending_calls(client, server):
    server.handlers['status'] = lambda conn, req: None   # never answers
    errors = []

    def call():
        try:
            client.status(timeout=10)
        except rc.RyllError as e:
            errors.append(e)
    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.1)
    client.close()
    t.join(2)
    assert not t.is_alive()
    assert isinstance(errors[0], rc.RyllConnectionClosed)


def test_rpc_timeout_message(client, server):
    client.subscribe(['surface_drawn'])
    client.status()

    def silent(conn, req):
        for _ in range(3):
            conn.event('surface_drawn', {'surface_id': 0})
    server.handlers['stats'] = silent
    with pytest.raises(rc.RyllTimeout) as e:
        client.stats(timeout=0.3)
    msg = str(e.value)
    assert 'no reply to stats' in msg
    assert 'surface_drawn=3' in msg
    assert 'last status' in msg
    assert e.value.elapsed >= 0.3
    # The connection stays usable and the late reply is ignored.
    server.handlers.pop('stats')
    assert 'display' in client.stats()


def test_wait_for_event_timeout_message(client, server):
    client.subscribe(['surface_drawn', 'latency'])

    def later():
        for _ in range(3):
            server.active.event('surface_drawn', {'surface_id': 0})
        server.active.event('latency', {'sample_ms': 1})
    threading.Timer(0.05, later).start()
    with pytest.raises(rc.RyllTimeout) as e:
        client.wait_for_event('paste_completed', 0.3, what='the paste')
    msg = str(e.value)
    assert 'waiting for the paste' in msg
    assert 'surface_drawn=3' in msg and 'latency=1' in msg


def test_wait_for_event_scans_queue_first(client, server):
    client.subscribe(['surface_drawn'])
    for i in range(3):
        server.active.event('surface_drawn', {'surface_id': i})
    time.sleep(0.1)
    ev = client.wait_for_event(
        lambda ev: ev.data.get('surface_id') == 1, 0.5)
    assert ev.data['surface_id'] == 1
    assert [e.data['surface_id'] for e in client.drain_events()] == [0, 2]


# -- paste


def test_paste_completes(client, server):
    assert client.paste('echo hi\n', char_delay_ms=5) == 8
    assert {'paste_completed', 'paste_failed'} <= client.subscribed
    assert server.requests_for('paste')[0]['params']['char_delay_ms'] == 5


def test_paste_event_before_reply(client, server):
    def paste(conn, req):
        conn.event('paste_completed', {'request_id': req['id'],
                                       'chars_sent': 2})
        conn.reply(req)
    server.handlers['paste'] = paste
    assert client.paste('ab') == 2


def test_paste_ignores_other_request_ids(client, server):
    def paste(conn, req):
        conn.reply(req)
        conn.event('paste_completed', {'request_id': 9999, 'chars_sent': 7})
        conn.event('paste_completed', {'request_id': str(req['id']),
                                       'chars_sent': 7})
        conn.event('paste_completed', {'request_id': req['id'],
                                       'chars_sent': 2})
    server.handlers['paste'] = paste
    assert client.paste('ab') == 2


def test_paste_failed(client):
    with pytest.raises(rc.RyllPasteFailed, match='unrepresentable'):
        _quick(lambda: client.paste('caf\u00e9', timeout=5))


def test_paste_never_completes_times_out_with_hint(sock_path):
    with FakeRyll(sock_path, paste_enabled=False) as srv:
        with rc.ControlClient(srv.path) as c:
            c.connect(timeout=2)
            with pytest.raises(rc.RyllTimeout) as e:
                c.paste('abc', timeout=0.3)
            msg = str(e.value)
            assert '--enable-paste-as-keystrokes' in msg
            assert 'another paste' in msg
            with pytest.raises(rc.RyllTimeout, match='earlier paste'):
                c.paste('abc', timeout=0.2)


def test_paste_refuses_text_ryll_would_truncate(client):
    with pytest.raises(ValueError, match='4096'):
        client.paste('a' * 4097)


def test_concurrent_pastes_are_serialised(client, server):
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        client.paste('abcd', char_delay_ms=10))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert results == [4, 4, 4]


# -- keys, screenshots, subscriptions


def test_send_key_default_is_down_then_up(client, server):
    client.send_key(28, gap=0)
    client.send_key(0xE04B, gap=0)
    client.send_key(30, state='press')
    sent = [(r['params']['scancode'], r['params']['state'])
            for r in server.requests_for('send_key')]
    assert sent == [(28, 'down'), (28 | 0x80, 'up'),
                    (0xE04B, 'down'), (0xE04B, 'up'), (30, 'press')]


def test_send_key_gap(client, server):
    start = time.monotonic()
    client.send_key(28, gap=0.05)
    assert time.monotonic() - start >= 0.05


def test_send_key_rejects_bad_keys(client):
    with pytest.raises(ValueError):
        client.send_key(70000)
    with pytest.raises(TypeError):
        client.send_key(None)
    with pytest.raises(ValueError):
        client.send_key(28, state='sideways')


def test_send_key_by_name(client, server):
    keys = pytest.importorskip('kerbside_tempest_plugin.sextant.keys')
    client.send_key('Return', gap=0)
    codes = [r['params']['scancode'] for r in server.requests_for('send_key')]
    assert codes[0] == keys.scancode('Return') == 0x1C
    client.send_key('left', gap=0)
    assert server.requests_for('send_key')[-1]['params'] == {
        'scancode': 0xE04B, 'state': 'up'}
    with pytest.raises(ValueError, match='Shift'):
        client.send_key('A')
    with pytest.raises(ValueError):
        client.send_key('no-such-key')


def test_screenshot_png(client):
    shot = client.screenshot()
    assert (shot.width, shot.height, shot.format) == (4, 2, 'png')
    assert shot.png.startswith(rc.PNG_MAGIC)


def test_screenshot_bad_png_is_protocol_error(client, server):
    server.handlers['screenshot'] = lambda conn, req: conn.reply(
        req, {'width': 1, 'height': 1, 'format': 'png',
              'data_base64': 'aGVsbG8='})
    with pytest.raises(rc.RyllProtocolError, match='png'):
        client.screenshot()


def test_subscribe_reports_dropped_names(client):
    result = client.subscribe(['surface_drawn', 'digest_updated'])
    assert list(result) == ['surface_drawn']
    assert result.dropped == ['digest_updated']
    assert 'digest_updated' in client.rejected_events
    with pytest.raises(rc.RyllUnsupported):
        client.subscribe(['digest_updated'], strict=True)


# -- backpressure, listeners, threads


def test_dropped_counted(client, server):
    client.subscribe(['dropped', 'surface_drawn'])
    server.active.event('surface_drawn', {})
    server.active.event('dropped', {'count': 7441})
    server.active.event('dropped', {'count': 9})
    client.wait_for_event(lambda ev: ev.data.get('count') == 9, 2)
    assert client.dropped_total == client.dropped == 7450
    assert client.dropped_reports == 2


def test_local_queue_is_bounded(server):
    with rc.ControlClient(server.path, event_queue_size=5) as c:
        c.connect(timeout=2)
        c.subscribe(['surface_drawn'])
        for i in range(12):
            server.active.event('surface_drawn', {'n': i})
        deadline = time.monotonic() + 2
        while c.event_counts['surface_drawn'] < 12:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert c.local_dropped_total == 7
        assert [e.data['n'] for e in c.drain_events()] == [7, 8, 9, 10, 11]


def test_listeners_see_every_event_and_survive_errors(client, server):
    seen = []

    def bad(ev):
        raise RuntimeError('boom')
    client.add_listener(bad)
    client.add_listener(seen.append)
    client.subscribe(['surface_drawn'])
    for i in range(3):
        server.active.event('surface_drawn', {'n': i})
    client.wait_for_event(lambda ev: ev.data['n'] == 2, 2)
    assert [e.data['n'] for e in seen] == [0, 1, 2]
    assert client.listener_errors == 3
    client.remove_listener(bad)
    assert client.status()['spice_connected']


def test_concurrent_calls_from_threads(client, server):
    server.handlers['echo'] = lambda conn, req: conn.reply(
        req, {'n': req['params']['n']})
    errors = []

    def worker(base):
        for i in range(100):
            n = base * 1000 + i
            if client.call('echo', {'n': n})['n'] != n:
                errors.append(n)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert len(server.requests_for('echo')) == 800


def test_request_lines_are_compact_ndjson(client, server):
    client.status()
    line = server.lines[-1]
    assert b'\n' not in line and b' ' not in line
    assert json.loads(line)['params'] == {}


def test_raw_busy_line_matches_spec(server):
    """The fake's busy refusal looks like ryll's (no id, then EOF)."""
    with rc.ControlClient(server.path) as first:
        first.connect(timeout=2)
        s = socket.socket(socket.AF_UNIX)
        s.connect(server.path)
        data = s.recv(4096)
        assert json.loads(data)['error']['code'] == 'busy'
        assert s.recv(4096) == b''
        s.close()


def test_idless_error_with_nothing_in_flight_is_not_busy(client, server):
    server.active.error(None, 'bad_params', 'stray')
    time.sleep(0.1)
    server.active.close()
    with pytest.raises(rc.RyllConnectionClosed):
        client.wait_for_event('latency', 2)
    assert any('stray' in line for line in client.malformed_lines)


def test_key_is_released_even_if_gap_is_interrupted(client, server):
    class Stop(Exception):
        pass

    def boom(_):
        raise Stop()
    import unittest.mock
    with unittest.mock.patch.object(rc.time, 'sleep', boom):
        with pytest.raises(Stop):
            client.send_key(28, gap=0.05)
    states = [r['params']['state'] for r in server.requests_for('send_key')]
    assert states == ['down', 'up']

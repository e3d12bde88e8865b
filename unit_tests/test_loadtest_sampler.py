"""Unit tests for the latency loop, against the instant fake control socket.

The fake (loadtest.fake.FakeRyll) is a real Unix-socket NDJSON server: it
answers hello, subscribe and send_key at once and follows a key-down reply
with a surface_drawn stamped with the current wallclock_us. The client is
the project's real ryll ControlClient.
"""

import json
import math
import socket
import time

import pytest

from kerbside_tempest_plugin.loadtest import fake
from kerbside_tempest_plugin.loadtest import floor
from kerbside_tempest_plugin.loadtest import sampler
from kerbside_tempest_plugin.ryll import client as ryll_client


@pytest.fixture
def servers():
    started = []

    def make(**kwargs):
        s = fake.FakeRyll(**kwargs).start()
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def clients():
    opened = []

    def make(path):
        c = ryll_client.ControlClient(path, client_name='test-loadtest')
        c.connect(timeout=5)
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.close()


def _lines(sock, n, timeout=5.0):
    sock.settimeout(timeout)
    buf = b''
    while buf.count(b'\n') < n:
        chunk = sock.recv(65536)
        assert chunk, 'fake closed early; got %r' % buf
        buf += chunk
    return [json.loads(line) for line in buf.split(b'\n')[:n]]


def test_fake_speaks_the_wire_protocol(servers):
    """hello reply, subscribe reply, send_key reply, then surface_drawn.

    The event is stamped with the current wallclock_us.
    """
    server = servers()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(server.path)
        s.sendall(b'{"id":1,"method":"hello","params":{"client_name":"t",'
                  b'"protocol_version":"1.5"}}\n')
        (hello,) = _lines(s, 1)
        assert hello['id'] == 1 and hello['ok'] is True
        assert hello['result']['protocol_version'].startswith('1.')
        assert 'surface_drawn' in hello['result']['supported_events']
        s.sendall(b'{"id":2,"method":"subscribe","params":{"events":'
                  b'["surface_drawn","bogus"]}}\n')
        (sub,) = _lines(s, 1)
        assert sub == {'id': 2, 'ok': True,
                       'result': {'subscribed': ['surface_drawn']}}
        before = time.time_ns() // 1000
        s.sendall(b'{"id":3,"method":"send_key","params":{"scancode":57,'
                  b'"state":"down"}}\n')
        reply, event = _lines(s, 2)
        after = time.time_ns() // 1000
        assert reply == {'id': 3, 'ok': True, 'result': {}}
        assert event['event'] == 'surface_drawn'
        assert before <= event['data']['wallclock_us'] <= after
        assert set(event['data']) >= {'display_channel_id', 'surface_id',
                                      'produced_at_secs', 'wallclock_us'}
    finally:
        s.close()


def test_floor_samples_are_positive_finite_and_small():
    summary, session = floor.measure_floor(30)
    assert summary['samples'] == 30 and summary['timeouts'] == 0
    for s in session.samples:
        assert not s.timeout
        assert math.isfinite(s.latency_ms) and s.latency_ms > 0
        assert s.drawn_us >= s.sent_us
        assert s.draws == 1
    # An instant fake on loopback: the client costs well under 50 ms.
    assert summary['p50_ms'] < 50
    assert summary['event_delivery_ms']['count'] == 30


def test_measure_sees_the_draw_delay(servers, clients):
    server = servers(draw_delay_s=0.03, draws_per_key=3)
    session = sampler.RouteSession('kerbside', clients(server.path))
    session.attach()
    sample = session.measure(0, deadline_s=2, hold_s=0, quiet_s=0.05)
    assert not sample.timeout
    assert 30.0 <= sample.latency_ms < 1000.0
    assert sample.draws == 3
    assert sample.delivery_ms is not None and sample.delivery_ms >= 0


def test_timeout_is_a_sample_not_a_gap(servers, clients):
    server = servers(silent_keys={2})
    session = sampler.RouteSession('direct', clients(server.path))
    session.attach()
    seen = []
    ended = sampler.run_alternating([session], 3, deadline_s=0.3, gap_s=0,
                                    hold_s=0, quiet_s=0,
                                    on_sample=seen.append)
    assert ended == 'done'
    assert [s.timeout for s in seen] == [False, True, False]
    assert seen[1].latency_ms is None and seen[1].drawn_us is None
    assert 'no surface_drawn within 0.3 s' in seen[1].note
    assert session.timeouts == 1 and len(session.latencies_ms) == 2


def test_dead_route_ends_its_series_and_keeps_the_other(servers, clients):
    dying = servers(close_after_keys=2)
    healthy = servers()
    a = sampler.RouteSession('kerbside', clients(dying.path))
    b = sampler.RouteSession('direct', clients(healthy.path))
    a.attach()
    b.attach()
    said = []
    order = []
    ended = sampler.run_alternating(
        [a, b], 5, deadline_s=1.0, gap_s=0, hold_s=0, quiet_s=0,
        on_sample=lambda s: order.append((s.route, s.index)),
        say=said.append)
    assert ended == 'done'
    assert len(b.samples) == 5 and b.timeouts == 0
    # The fake closes right after the second key: that key's sample
    # (if its draw raced the close) or the next send ends the route.
    assert 1 <= len(a.samples) <= 2
    assert a.dead and 'control connection closed' in a.dead
    assert any('route kerbside ended' in m and 'other routes go on' in m
               for m in said)
    # A B A B while both live, then B alone.
    assert order[:2] == [('kerbside', 0), ('direct', 0)]
    assert order[-1] == ('direct', 4)


def test_consecutive_timeouts_end_a_route(servers, clients):
    server = servers(silent_keys=set(range(1, 100)))
    session = sampler.RouteSession('kerbside', clients(server.path))
    session.attach()
    said = []
    sampler.run_alternating([session], 10, deadline_s=0.1, gap_s=0,
                            hold_s=0, quiet_s=0,
                            max_consecutive_timeouts=3, say=said.append)
    assert len(session.samples) == 3 and session.timeouts == 3
    assert '3 timeouts in a row' in session.dead


def test_no_surface_drawn_event_is_refused(servers, clients):
    server = servers(surface_drawn=False)
    session = sampler.RouteSession('direct', clients(server.path))
    with pytest.raises(sampler.RouteDead, match='surface_drawn'):
        session.attach()


def test_draws_before_the_send_are_not_the_answer(servers, clients):
    # A draw from the previous key that lands late (stamped before this
    # send) must not be taken as this key's answer.
    server = servers()
    session = sampler.RouteSession('direct', clients(server.path))
    session.attach()
    stale = sampler.wall_us() - 5000

    class Ev:
        name = 'surface_drawn'
        data = {'wallclock_us': stale}
        received_wall_us = None

    session._on_event(Ev())
    sample = session.measure(0, deadline_s=1, hold_s=0, quiet_s=0)
    assert not sample.timeout and sample.drawn_us >= sample.sent_us


def test_latency_and_dropped_events_are_recorded(servers, clients):
    server = servers(latency_every_keys=1)
    session = sampler.RouteSession('direct', clients(server.path))
    session.attach()
    session.measure(0, deadline_s=1, hold_s=0, quiet_s=0)

    class Dropped:
        name = 'dropped'
        data = {'count': 7}

    session._on_event(Dropped())
    deadline = time.monotonic() + 2
    while not session.pings and time.monotonic() < deadline:
        time.sleep(0.01)
    assert session.pings and session.pings[0][1] == 15000.0
    assert session.dropped_total == 7


def test_csv_row_shape():
    s = sampler.Sample('direct', 3, 100, 1100, 1.0, False, 2, 0.25, '')
    assert s.csv_row() == ['direct', '3', '100', '1100', '1.000', '0', '2',
                           '0.250', '']
    t = sampler.Sample('kerbside', 4, 100, timeout=True, note='x')
    assert t.csv_row()[3:6] == ['', '', '1']


def test_timeout_note_carries_the_route_state(servers, clients):
    server = servers(silent_keys={1})
    session = sampler.RouteSession(
        'kerbside', clients(server.path),
        explain=lambda: 'lane services down: kerbside-daemon exited with 1')
    session.attach()
    sample = session.measure(0, deadline_s=0.2, hold_s=0, quiet_s=0)
    assert sample.timeout
    assert 'kerbside-daemon exited with 1' in sample.note

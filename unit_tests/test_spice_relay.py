"""spice.relay and spice.faults: a fault relay between a SPICE client and
server made of real sockets (a small fake server speaking the real link and
framing of spice.wire), one fault at a time.
"""

import json
import os
import socket
import struct
import threading
import time

import pytest

from kerbside_tempest_plugin.spice import faults
from kerbside_tempest_plugin.spice import relay as relay_mod
from kerbside_tempest_plugin.spice import wire

CAPS = wire.caps_words([wire.CAP_AUTH_SELECTION, wire.CAP_AUTH_SPICE,
                        wire.CAP_MINI_HEADER])
TICKET = b'S' * wire.TICKET_BYTES
DEADLINE = 5.0


def _reply():
    body = wire.LINK_REPLY.pack(0, b'k' * wire.PUBKEY_BYTES, len(CAPS), 0,
                                wire.LINK_REPLY.size)
    body += b''.join(struct.pack('<I', w) for w in CAPS)
    return wire.link_header(len(body)) + body


class FakeServer:
    """Links any channel, records every client message (type, body, time)
    and sends what a test queues with `send`.
    """

    def __init__(self):
        self.ls = socket.socket()
        self.ls.bind(('127.0.0.1', 0))
        self.ls.listen(8)
        self.port = self.ls.getsockname()[1]
        self.got = []
        self.conns = []
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                s, _ = self.ls.accept()
            except OSError:
                return
            self.conns.append(s)
            threading.Thread(target=self._serve, args=(s,),
                             daemon=True).start()

    def _serve(self, s):
        neg = wire.Negotiation()
        framer = wire.Framer(wire.C2S, neg)
        replied = False
        while True:
            try:
                data = s.recv(65536)
            except OSError:
                data = b''
            if not data:
                self.closed.set()
                return
            for u in framer.feed(data):
                if u.kind == 'link' and not replied:
                    wire.Framer(wire.S2C, neg).feed(_reply())
                    s.sendall(_reply())
                    replied = True
                elif u.kind == 'ticket':
                    s.sendall(b'\0\0\0\0')
                elif u.kind == 'message':
                    self.got.append((u.type, u.body, time.monotonic()))
            if replied:
                for u in framer.feed(b''):
                    if u.kind == 'ticket':
                        s.sendall(b'\0\0\0\0')
                    elif u.kind == 'message':
                        self.got.append((u.type, u.body, time.monotonic()))

    def send(self, msg_type, body, conn=-1):
        self.conns[conn].sendall(wire.pack_message(msg_type, body))

    def close(self):
        self.ls.close()
        for s in self.conns:
            s.close()


class Client:
    """A client that links one channel through the relay."""

    def __init__(self, port, channel='inputs'):
        self.s = socket.create_connection(('127.0.0.1', port), DEADLINE)
        self.s.settimeout(DEADLINE)
        self.neg = wire.Negotiation()
        self.framer = wire.Framer(wire.S2C, self.neg)
        self.units = []
        self.s.sendall(wire.pack_link_mess(wire.CHANNEL_TYPES[channel],
                                           common_caps=CAPS))
        wire.Framer(wire.C2S, self.neg).feed(
            wire.pack_link_mess(wire.CHANNEL_TYPES[channel],
                                common_caps=CAPS))
        self.read_until(lambda: any(u.kind == 'link' for u in self.units))
        self.s.sendall(struct.pack('<I', 1) + TICKET)
        self.read_until(lambda: any(u.kind == 'link_result'
                                    for u in self.units))

    def read_until(self, cond, deadline=DEADLINE):
        end = time.monotonic() + deadline
        while not cond():
            if time.monotonic() > end:
                raise AssertionError('waited %.0f s; saw %s' % (
                    deadline, [u.name or u.kind for u in self.units]))
            try:
                data = self.s.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise ConnectionError('closed')
            self.units += self.framer.feed(data)

    def messages(self):
        return [u for u in self.units if u.kind == 'message']

    def send(self, msg_type, body=b''):
        self.s.sendall(wire.pack_message(msg_type, body))

    def key(self, scancode):
        self.send(wire.INPUTS_KEY_DOWN, struct.pack('<I', scancode))
        self.send(wire.INPUTS_KEY_UP, struct.pack('<I', scancode | 0x80))


@pytest.fixture
def rig(tmp_path):
    server = FakeServer()
    made = []

    def make(fault=None):
        r = relay_mod.Relay(server.port, fault=fault,
                            log_path=str(tmp_path / 'faults.jsonl'),
                            control_path=str(tmp_path / 'relay.sock'))
        made.append(r.start())
        return r

    yield server, make, tmp_path
    for r in made:
        r.stop()
    server.close()


def wait_for(cond, what, deadline=DEADLINE):
    end = time.monotonic() + deadline
    while not cond():
        if time.monotonic() > end:
            raise AssertionError('waited %.0f s for %s' % (deadline, what))
        time.sleep(0.02)


def log(tmp_path):
    path = tmp_path / 'faults.jsonl'
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def keys_seen(server):
    return [struct.unpack('<I', b)[0] for t, b, _ in server.got
            if t == wire.INPUTS_KEY_DOWN]


def test_a_clean_relay_forwards_everything(rig):
    server, make, tmp = rig
    r = make()
    c = Client(r.port)
    for sc in (0x10, 0x11, 0x12):
        c.key(sc)
    wait_for(lambda: len(server.got) == 6, 'six messages')
    assert keys_seen(server) == [0x10, 0x11, 0x12]
    server.send(101, b'\0\0')
    c.read_until(lambda: len(c.messages()) == 1)
    assert r.status()['keys'] == 3
    events = [e['event'] for e in log(tmp) if e['event'] != 'key']
    assert events == ['link']
    # one compact record per key message forwarded, no bytes
    keys = [(e['key'], e['code']) for e in log(tmp) if e['event'] == 'key']
    assert keys == [('down', 0x10), ('up', 0x90), ('down', 0x11),
                    ('up', 0x91), ('down', 0x12), ('up', 0x92)]
    assert all(set(e) == {'t', 't_rel', 'event', 'channel', 'conn', 'key',
                          'code'} for e in log(tmp) if e['event'] == 'key')
    assert 'SSSS' not in (tmp / 'faults.jsonl').read_text()


def test_drop_the_key_after_the_second(rig):
    server, make, tmp = rig
    r = make('drop,channel=inputs,type=key_down,after_keys=2')
    c = Client(r.port)
    for sc in (0x10, 0x11, 0x12, 0x13):
        c.key(sc)
    wait_for(lambda: len(server.got) == 7, 'seven messages')
    assert keys_seen(server) == [0x10, 0x11, 0x13]
    inj = [e for e in log(tmp) if e['event'] == 'inject']
    assert len(inj) == 1 and inj[0]['name'] == 'key_down' and \
        inj[0]['keys'] == 2 and inj[0]['channel'] == 'inputs'
    # the dropped key names its scancode, and has no `key` record
    assert inj[0]['code'] == 0x12
    downs = [e['code'] for e in log(tmp)
             if e['event'] == 'key' and e['key'] == 'down']
    assert downs == [0x10, 0x11, 0x13]


@pytest.mark.parametrize('spec,expect', [
    ('duplicate,channel=inputs,type=key_down,nth=2',
     [0x10, 0x11, 0x11, 0x12]),
    ('reorder,channel=inputs,type=key_down,nth=1', [0x11, 0x10, 0x12]),
    ('corrupt,channel=inputs,type=key_down,nth=3',
     [0x10, 0x11, 0x12 ^ 0x5A]),
])
def test_key_faults(rig, spec, expect):
    server, make, tmp = rig
    r = make(spec)
    c = Client(r.port)
    for sc in (0x10, 0x11, 0x12):
        c.key(sc)
    wait_for(lambda: len(keys_seen(server)) == len(expect),
             '%d key_downs' % len(expect))
    assert keys_seen(server) == expect
    # the relay's key records are what the hypervisor got, in its order
    wait_for(lambda: len([e for e in log(tmp) if e['event'] == 'key']) == 6
             + len(expect) - 3, 'the key records')
    assert [e['code'] for e in log(tmp)
            if e['event'] == 'key' and e['key'] == 'down'] == expect
    inj = [e for e in log(tmp) if e['event'] == 'inject']
    assert inj and inj[0]['code'] in (0x10, 0x11, 0x12)


def test_duplicate_a_whole_keystroke(rig):
    server, make, tmp = rig
    # after key 1, skip its key_up, then repeat key 2's down and up
    r = make('duplicate,channel=inputs,after_keys=1,nth=2,span=2')
    c = Client(r.port)
    for sc in (0x10, 0x11, 0x12):
        c.key(sc)
    wait_for(lambda: len(server.got) == 8, 'eight messages')
    assert [(t, struct.unpack('<I', b)[0]) for t, b, _ in server.got] == [
        (101, 0x10), (102, 0x90), (101, 0x11), (102, 0x91), (101, 0x11),
        (102, 0x91), (101, 0x12), (102, 0x92)]
    inj = [e for e in log(tmp) if e['event'] == 'inject']
    assert len(inj) == 1 and inj[0]['span'] == 2


def test_a_timed_cut_fires_on_a_quiet_channel(rig):
    server, make, tmp = rig
    r = make('cut,channel=main,after=0.3')
    c = Client(r.port, 'main')
    t0 = time.monotonic()
    with pytest.raises((ConnectionError, OSError)):
        c.read_until(lambda: False, deadline=3)
    assert time.monotonic() - t0 < 2
    inj = [e for e in log(tmp) if e['event'] == 'inject']
    assert inj[0]['channel'] == 'main' and inj[0]['action'] == 'cut'


def test_reorder_releases_alone_when_no_second_comes(rig):
    server, make, tmp = rig
    r = make('reorder,channel=inputs,type=key_down,nth=1,hold=0.3')
    c = Client(r.port)
    c.key(0x10)
    wait_for(lambda: keys_seen(server) == [0x10], 'the held key')
    wait_for(lambda: [e['event'] for e in log(tmp)][-1] == 'key',
             'the held key\'s record')
    # the release, then the held key's record as it is sent
    assert [e['event'] for e in log(tmp)][-2:] == ['release', 'key']


def test_corrupt_a_draw_names_its_rectangle(rig):
    server, make, tmp = rig
    r = make('corrupt,channel=display,type=draw_copy,nth=2')
    c = Client(r.port, 'display')
    base = struct.pack('<Iiiii', 0, 10, 20, 42, 84) + b'\0' * 10
    pixels = bytes(range(256)) * 4
    for _ in range(3):
        server.send(304, base + pixels)
    c.read_until(lambda: len(c.messages()) == 3)
    bodies = [u.body for u in c.messages()]
    assert bodies[0] == bodies[2] == base + pixels
    assert bodies[1][:len(base)] == base and bodies[1] != bodies[0]
    inj = [e for e in log(tmp) if e['event'] == 'inject'][0]
    assert inj['rect'] == [20, 10, 64, 32] and inj['direction'] == 's2c'
    assert inj['bytes'] == len(base + pixels) // 4


def test_cut_resets_both_legs(rig):
    server, make, tmp = rig
    r = make('cut,channel=display,type=draw_copy')
    c = Client(r.port, 'display')
    server.send(304, b'x' * 40)
    with pytest.raises((ConnectionError, OSError)):
        c.read_until(lambda: False, deadline=2)
    wait_for(server.closed.is_set, 'the server leg to close')
    closes = [e for e in log(tmp) if e['event'] == 'close']
    assert 'cut the display channel' in closes[0]['reason']


def test_stall_then_release_keeps_order(rig):
    server, make, tmp = rig
    r = make('stall,channel=display,type=draw_copy,nth=1,duration=0.6')
    c = Client(r.port, 'display')
    t0 = time.monotonic()
    for i in range(3):
        server.send(304, bytes([i]) * 30)
    c.read_until(lambda: len(c.messages()) == 3)
    assert time.monotonic() - t0 >= 0.55
    assert [u.body[0] for u in c.messages()] == [0, 1, 2]
    assert [e['event'] for e in log(tmp)][-2:] == ['inject', 'release']


def test_delay_every_input_message(rig):
    server, make, tmp = rig
    r = make('delay,channel=inputs,ms=100,count=all')
    c = Client(r.port)
    t0 = time.monotonic()
    c.key(0x10)
    wait_for(lambda: len(server.got) == 2, 'two messages')
    assert server.got[1][2] - t0 >= 0.19


def test_fragment_still_arrives_whole(rig):
    server, make, tmp = rig
    r = make('fragment,channel=display,size=1,count=all')
    c = Client(r.port, 'display')
    server.send(304, b'abcdefgh' * 8)
    c.read_until(lambda: len(c.messages()) == 1)
    assert c.messages()[0].body == b'abcdefgh' * 8


def test_control_socket_arms_and_tells(rig):
    server, make, tmp = rig
    r = make()
    sock = str(tmp / 'relay.sock')
    assert relay_mod.control(sock, 'arm', 'drop,channel=inputs,'
                             'type=key_down')['armed']
    c = Client(r.port)
    c.key(0x10)
    c.key(0x11)
    wait_for(lambda: keys_seen(server) == [0x11], 'the second key')
    st = relay_mod.control(sock, 'status')
    assert st['ok'] and st['faults'][0]['fired'] == 1 and st['keys'] == 2
    assert st['connections'][0]['channel'] == 'inputs'
    bad = relay_mod.control(sock, 'arm', 'explode')
    assert not bad['ok'] and 'no action' in bad['error']
    assert relay_mod.control(sock, 'clear')['cleared'] == 1


@pytest.mark.parametrize('line,match', [
    ('{not json', 'not JSON'), ('[1, 2]', 'JSON object'),
    ('{"op": "dance"}', 'unknown op'), ('{"op": "arm"}', 'needs a "spec"'),
])
def test_malformed_control_lines(rig, line, match):
    _server, make, tmp = rig
    r = make()
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(DEADLINE)
    s.connect(str(tmp / 'relay.sock'))
    s.sendall(line.encode() + b'\n')
    answer = json.loads(s.makefile().readline())
    s.close()
    assert answer['ok'] is False and match in answer['error']
    assert r.status()['port'] == r.port


def test_triggers_count_from_arming(rig):
    server, make, tmp = rig
    r = make()
    c = Client(r.port)
    for sc in (0x10, 0x11, 0x12):
        c.key(sc)
    wait_for(lambda: len(keys_seen(server)) == 3, 'three keys')
    r.arm('drop,channel=inputs,type=key_down,after_keys=1')
    for sc in (0x13, 0x14, 0x15):
        c.key(sc)
    wait_for(lambda: len(keys_seen(server)) == 5, 'five keys')
    assert keys_seen(server) == [0x10, 0x11, 0x12, 0x13, 0x15]
    r.arm('drop,channel=inputs,type=key_down,after=0.3')
    c.key(0x16)                     # the clock started at arming: open
    time.sleep(0.4)
    c.key(0x17)
    wait_for(lambda: len(keys_seen(server)) == 6, 'six keys')
    assert keys_seen(server)[-1] == 0x16


def test_control_on_a_dead_relay_is_a_typed_error(tmp_path):
    from kerbside_tempest_plugin.common import errors
    with pytest.raises(errors.HarnessError, match='cannot reach'):
        relay_mod.control(str(tmp_path / 'none.sock'), 'status')


def test_garbage_from_the_client_closes_that_channel_only(rig):
    server, make, tmp = rig
    r = make()
    s = socket.create_connection(('127.0.0.1', r.port), DEADLINE)
    s.sendall(b'GET / HTTP/1.1\r\n\r\n')
    wait_for(lambda: any(e['event'] == 'close' for e in log(tmp)),
             'the close')
    assert 'not SPICE' in [e for e in log(tmp)
                           if e['event'] == 'close'][0]['reason']
    s.close()
    c = Client(r.port)      # the relay still serves others
    c.key(0x10)
    wait_for(lambda: keys_seen(server) == [0x10], 'a key')


def test_an_unreachable_hypervisor_is_logged(tmp_path):
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    r = relay_mod.Relay(port, log_path=str(tmp_path / 'f.jsonl')).start()
    try:
        try:        # the reset may come at connect or at the first read
            c = socket.create_connection(('127.0.0.1', r.port), DEADLINE)
            c.settimeout(DEADLINE)
            assert c.recv(10) == b''
        except ConnectionResetError:
            pass
        wait_for(lambda: os.path.exists(tmp_path / 'f.jsonl'), 'the log')
        assert 'could not reach' in (tmp_path / 'f.jsonl').read_text()
    finally:
        r.stop()


@pytest.mark.parametrize('spec,match', [
    ('', None), ('melt', 'no action'), ('drop,channel=sound', 'no SPICE'),
    ('drop,chanel=inputs', 'unknown key'), ('drop,nth=0', 'below'),
    ('drop,channel=inputs,type=draw_copy', 'no c2s message'),
    ('drop,type=key_down', 'needs one channel'), ('delay', 'needs ms'),
    ('stall,channel=display', 'needs duration'), ('drop,nth', 'key=value'),
    ('drop,after=soon', 'not a number'),
])
def test_fault_spec_errors(spec, match):
    if match is None:
        assert faults.parse(spec) == []
        return
    with pytest.raises(faults.FaultSpecError, match=match):
        faults.parse(spec)


def test_fault_spec_defaults_and_triggers():
    f, g = faults.parse('drop,channel=inputs,type=key_down,after_keys=3;'
                        'stall,channel=display,after=8s,duration=20')
    assert (f.direction, f.msg_type, f.count) == ('c2s', 101, 1)
    assert g.direction == 's2c' and g.after_s == 8.0
    assert not f.take('inputs', 'c2s', 101, 2, 0)
    assert f.take('inputs', 'c2s', 101, 3, 0)
    assert not f.take('inputs', 'c2s', 101, 4, 0)      # fired once
    assert not g.take('display', 's2c', 304, 0, 100)   # no link yet
    g.linked(100.0)
    g.linked(105.0)                                    # the first counts
    assert not g.take('display', 's2c', 304, 0, 107.9)
    assert g.take('display', 's2c', 304, 0, 108.0)
    k = faults.parse_one('drop,channel=inputs,type=key_down,after_keys=2')
    k.arm(keys=40)                                     # counted from arming
    assert not k.take('inputs', 'c2s', 101, 41, 0)
    assert k.take('inputs', 'c2s', 101, 42, 0)
    h = faults.parse_one('corrupt,channel=display,type=draw_copy,nth=3,'
                         'count=all')
    assert [h.take('display', 's2c', 304, 0, 0) for _ in range(5)] == \
        [False, False, True, True, True]


# -- a recorded real capture through the relay ------------------------------

DRAW_COPY = wire.message_type('display', wire.S2C, 'draw_copy')


def _recorded_display():
    """The server's messages of a real clean canonical walk's display
    channel (ryll's capture, unit_tests/fixtures/display), in the pieces
    the pcap holds them.
    """
    import gzip

    from kerbside_tempest_plugin.scenario import frames
    here = os.path.dirname(os.path.abspath(__file__))
    with gzip.open(os.path.join(here, 'fixtures', 'display',
                                'canonical-direct.pcap.gz')) as f:
        records, _left = frames.display_records(f.read())
    return [b''.join(u.raw for u in units) for _t, units in records
            if units]


def _replay_through(rig, spec):
    server, make, tmp = rig
    chunks = _recorded_display()
    sent = wire.Framer(wire.S2C, wire.Negotiation(), skip_link=True).feed(
        b''.join(chunks))
    r = make(spec)
    c = Client(r.port, 'display')
    for chunk in chunks:
        server.conns[-1].sendall(chunk)
    want = len(sent) - (1 if spec and spec.startswith('drop') else 0)
    c.read_until(lambda: len(c.messages()) >= want, deadline=20)
    return sent, c.messages(), [e for e in log(tmp)
                                if e['event'] == 'inject']


def test_a_recorded_display_stream_crosses_a_clean_relay_unchanged(rig):
    sent, got, inj = _replay_through(rig, None)
    assert len(sent) > 1000 and not inj
    assert [u.raw for u in got] == [u.raw for u in sent]


def test_a_recorded_draw_corrupted_in_its_pixels_only(rig):
    sent, got, inj = _replay_through(
        rig, 'corrupt,channel=display,type=draw_copy,nth=40')
    diff = [i for i, (a, b) in enumerate(zip(sent, got)) if a.raw != b.raw]
    assert len(got) == len(sent) and len(diff) == 1
    a, b = sent[diff[0]], got[diff[0]]
    assert a.type == DRAW_COPY and len(a.raw) == len(b.raw)
    assert [u.type for u in sent[:diff[0] + 1]].count(DRAW_COPY) == 40
    assert inj[0]['rect'] == faults.draw_rect(a.type, a.body)
    # only the last quarter changed: the draw's header and box are intact
    first = next(i for i, (x, y) in enumerate(zip(a.raw, b.raw)) if x != y)
    assert first >= len(a.raw) - len(a.body) // 4 - 1


def test_a_recorded_draw_dropped(rig):
    sent, got, inj = _replay_through(
        rig, 'drop,channel=display,type=draw_copy,nth=40')
    k = [i for i, u in enumerate(sent) if u.type == DRAW_COPY][39]
    assert [u.raw for u in got] == [u.raw for u in sent[:k] + sent[k + 1:]]
    assert inj[0]['index'] == 40


def _box(x0, y0, x1, y1):
    """A display draw body whose box is (x0, y0)-(x1, y1)."""
    return struct.pack('<Iiiii', 0, y0, x0, y1, x1) + b'\0' * 20


@pytest.mark.parametrize('where,kept,hit', [
    # outside=: a draw touching the rectangle is let through
    ('outside', _box(10, 10, 20, 20), _box(200, 200, 210, 210)),
    # inside=: a draw reaching out of the rectangle is let through
    ('inside', _box(90, 90, 110, 110), _box(10, 10, 20, 20)),
])
def test_outside_and_inside_pick_draws_by_the_rectangle(
        rig, where, kept, hit):
    server, make, tmp = rig
    r = make('drop,channel=display,type=draw_copy,%s=0:0:100:100' % where)
    c = Client(r.port, 'display')
    for body in (kept, hit, hit):
        server.send(304, body)
    c.read_until(lambda: len(c.messages()) == 2)
    assert [u.body for u in c.messages()] == [kept, hit]
    inj = [e for e in log(tmp) if e['event'] == 'inject']
    assert inj[0]['rect'] == list(faults.draw_rect(304, hit))
    with pytest.raises(faults.FaultSpecError, match='%s=X:Y:W:H' % where):
        faults.parse('drop,channel=display,%s=1:2' % where)

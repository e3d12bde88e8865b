"""loadtest.packets on real captures of the kerbside route (recorded once,
unit_tests/fixtures/packets/README.md), on garbled and mismatched copies
of them, and dumpcap itself on a loopback socket."""

import gzip
import os
import shutil
import socket
import struct
import threading

import pytest

from kerbside_tempest_plugin.cmd import latency
from kerbside_tempest_plugin.loadtest import packets
from kerbside_tempest_plugin.spice import wire

HERE = os.path.join(os.path.dirname(__file__), 'fixtures', 'packets')
PCAPNG = os.path.join(HERE, 'kerbside-legs.pcapng.gz')
PCAP = os.path.join(HERE, 'kerbside-legs-usec.pcap.gz')
PROXY, QEMU = 60385, 54641
KEYS = 5


def _raw(path=PCAPNG):
    with gzip.open(path, 'rb') as f:
        return bytearray(f.read())


def _write(tmp_path, data, name='cap.pcapng'):
    p = tmp_path / name
    p.write_bytes(bytes(data))
    return str(p)


def _conns(data):
    return packets.tcp_connections(packets.read_packets('x', bytes(data)))


# -- the real capture ----------------------------------------------------

def test_real_capture_pairs_every_key_and_draw():
    summary, pairs = packets.analyse(PCAPNG, PROXY, QEMU)
    assert summary['timestamp_resolution_ns'] == 1
    # 5 keys: a KEY_DOWN and a KEY_UP each; 4 draws per key plus the
    # first screen.
    assert summary['upstream']['samples'] == 2 * KEYS
    assert summary['downstream']['samples'] == 4 * KEYS + 1
    by_channel = {c['channel']: c for c in summary['channels']}
    assert set(by_channel) == {'display', 'cursor', 'inputs'}
    for c in by_channel.values():
        assert c['unpaired'] == 0, c
        assert c['tls'] == 'TLSv1.3' and c['mini_header']
    for d in ('upstream', 'downstream'):
        r = summary[d]
        assert 0 < r['min_us'] <= r['p50_us'] <= r['p95_us'] <= \
            r['p99_us'] <= r['max_us']
        # Far below the ~30 ms of a keypress: the proxy relays in
        # microseconds on an idle lane.
        assert r['max_us'] < 2000
    assert all(p.added_us > 0 for p in pairs)
    keys = [p for p in pairs if packets.is_key(p)]
    assert sorted({p.type for p in keys}) == [
        packets.INPUTS_KEY_DOWN, packets.INPUTS_KEY_UP]
    assert all(p.size == 10 for p in keys)     # 6-byte header + scancode


def test_classic_pcap_gives_the_same_pairs_at_microseconds():
    ns, ns_pairs = packets.analyse(PCAPNG, PROXY, QEMU)
    us, us_pairs = packets.analyse(PCAP, PROXY, QEMU)
    assert us['timestamp_resolution_ns'] == 1000
    assert len(us_pairs) == len(ns_pairs)
    for a, b in zip(sorted(ns_pairs, key=lambda p: p.plain_ns),
                    sorted(us_pairs, key=lambda p: p.plain_ns)):
        assert (a.channel, a.type, a.size) == (b.channel, b.type, b.size)
        assert abs(a.added_us - b.added_us) <= 1.0


def test_since_leaves_out_the_channel_setup():
    _, pairs = packets.analyse(PCAPNG, PROXY, QEMU)
    first_key = min(p.tls_ns for p in pairs if packets.is_key(p))
    summary, kept = packets.analyse(PCAPNG, PROXY, QEMU,
                                    since_ns=first_key)
    assert summary['before_sampling'] > 0
    assert summary['upstream']['samples'] == 2 * KEYS
    assert summary['downstream']['samples'] == 4 * KEYS
    assert all(min(p.plain_ns, p.tls_ns) >= first_key for p in kept)


def test_fixture_tickets_are_blank():
    for path in (PCAPNG, PCAP):
        for c in _conns(_raw(path)):
            if c.server[1] != QEMU:
                continue
            s = packets.parse_spice(c)
            lo, hi = s.ticket
            assert hi - lo == packets.TICKET_BYTES
            assert bytes(c.up.data[lo:hi]) == bytes(hi - lo)


def test_sanitise_blanks_a_ticket(tmp_path):
    data = _raw()
    conn = next(c for c in _conns(data) if c.server[1] == QEMU)
    lo, hi = packets.parse_spice(conn).ticket
    for foff, n in conn.up.file_ranges(lo, hi):
        data[foff:foff + n] = b'\x5a' * n
    dirty = _write(tmp_path, data)
    assert b'\x5a' * packets.TICKET_BYTES in _raw_plain(dirty)
    out = str(tmp_path / 'clean.pcapng.gz')
    assert packets.sanitise(dirty, out, QEMU) == 3
    assert b'\x5a' * packets.TICKET_BYTES not in _raw(out)
    # Pairing does not depend on the ticket bytes.
    assert packets.analyse(out, PROXY, QEMU)[0]['upstream'] == \
        packets.analyse(PCAPNG, PROXY, QEMU)[0]['upstream']


def _raw_plain(path):
    with open(path, 'rb') as f:
        return f.read()


# -- garbled captures: typed errors --------------------------------------

@pytest.mark.parametrize('cut', [10, 100, 5000, -7])
def test_truncated_capture_is_a_capture_error(tmp_path, cut):
    data = _raw()
    path = _write(tmp_path, data[:cut])
    with pytest.raises(packets.CaptureError):
        packets.analyse(path, PROXY, QEMU)


def test_not_a_capture(tmp_path):
    path = _write(tmp_path, b'this is a serial log, not a capture\n' * 4)
    with pytest.raises(packets.CaptureError, match='not a pcap'):
        packets.read_packets(path)
    with pytest.raises(packets.CaptureError, match='cannot read'):
        packets.read_packets(str(tmp_path / 'missing.pcapng'))


def test_block_length_mismatch(tmp_path):
    data = _raw()
    # The first block is the section header; corrupt its trailing length.
    blen = struct.unpack_from('<I', data, 4)[0]
    struct.pack_into('<I', data, blen - 4, blen + 4)
    with pytest.raises(packets.CaptureError, match='length'):
        packets.read_packets(_write(tmp_path, data))


def _first_payload(data, port, direction='up'):
    conn = next(c for c in _conns(data) if c.server[1] == port)
    half = conn.up if direction == 'up' else conn.down
    return half.file_offs[0]


def test_garbled_spice_magic(tmp_path):
    data = _raw()
    data[_first_payload(data, QEMU)] ^= 0xFF
    with pytest.raises(packets.CaptureError, match='REDQ'):
        packets.analyse(_write(tmp_path, data), PROXY, QEMU)


def _qemu_conn(channel='display'):
    """The display connection of the qemu leg and its last message from
    qemu.
    """
    conn = next(c for c in _conns(_raw()) if c.server[1] == QEMU and
                packets.parse_spice(c).channel == channel)
    last = max((m for m in packets.parse_spice(conn).messages
                if m.direction == 'down'), key=lambda m: m.offset)
    return conn, last


def test_a_cut_plain_leg_keeps_its_messages_and_says_where():
    conn, last = _qemu_conn()
    whole = packets.parse_spice(conn).messages
    del conn.down.data[last.offset + 10:]
    cut = packets.parse_spice(conn)
    assert cut.messages == [m for m in whole if m != last]
    assert cut.truncated == (
        'down: 10 of the %d bytes of message type %d (%s) cut at stream '
        'byte %d' % (last.size, last.type, wire.message_name(
            'display', wire.S2C, last.type), last.offset))


def test_garbled_plain_framing_is_a_capture_error():
    conn, last = _qemu_conn()
    # Its mini header declares 1 GiB: not SPICE framing.
    struct.pack_into('<I', conn.down.data, last.offset + 2, 1 << 30)
    with pytest.raises(packets.CaptureError,
                       match=r'spice 127\.0\.0\.1:\d+->127\.0\.0\.1:%d: '
                             r'display channel, s2c: .*says it has '
                             r'1073741824' % QEMU):
        packets.parse_spice(conn)


def test_a_link_not_captured_is_a_capture_error():
    conn, _last = _qemu_conn()
    del conn.down.data[100:]
    with pytest.raises(packets.CaptureError,
                       match=r'server link reply\): 100 of the \d+ bytes'):
        packets.parse_spice(conn)


def test_garbled_tls_record(tmp_path):
    data = _raw()
    # The client leg's first bytes are a TLS record header (ClientHello).
    data[_first_payload(data, PROXY)] = 0x99
    with pytest.raises(packets.CaptureError, match='no TLS record'):
        packets.analyse(_write(tmp_path, data), PROXY, QEMU)


def test_not_a_server_hello(tmp_path):
    data = _raw()
    data[_first_payload(data, PROXY, 'down') + 5] = 1
    with pytest.raises(packets.CaptureError, match='ServerHello'):
        packets.analyse(_write(tmp_path, data), PROXY, QEMU)


# -- mismatched captures: pairing can fail -------------------------------

def test_wrong_ports_are_a_pairing_error():
    with pytest.raises(packets.PairingError, match='no SPICE connection'):
        packets.analyse(PCAPNG, PROXY, 1)
    with pytest.raises(packets.PairingError, match='no TLS connection'):
        packets.analyse(PCAPNG, 1, QEMU)


def _shift(data, port, delta_ns):
    """Move the timestamps of every packet to or from `port`."""
    for pkt in packets.read_packets('x', bytes(data)):
        ip = pkt.data[14:]
        sport, dport = struct.unpack_from('>HH', ip, (ip[0] & 15) * 4)
        if port not in (sport, dport):
            continue
        ts = pkt.ts_ns + delta_ns
        struct.pack_into('<II', data, pkt.file_off - 16, ts >> 32,
                         ts & 0xFFFFFFFF)
    return data


def test_client_leg_out_of_time_does_not_pair(tmp_path):
    # The client leg two seconds late: its records no longer surround
    # the qemu leg's messages, so nothing may pair (no made-up figures).
    data = _shift(_raw(), PROXY, 2 * 10 ** 9)
    with pytest.raises(packets.PairingError, match='could be paired'):
        packets.analyse(_write(tmp_path, data), PROXY, QEMU)


def test_legs_of_different_sessions_do_not_pair(tmp_path):
    # Drop the inputs channel's client leg: the qemu leg's key messages
    # have no records to pair with; the other channels still pair.
    data = _raw()
    conns = _conns(data)
    inputs = next(packets.parse_spice(c) for c in conns
                  if c.server[1] == QEMU and
                  packets.parse_spice(c).channel == 'inputs')
    tls_inputs = max((c for c in conns if c.server[1] == PROXY
                      and c.syn_ns < inputs.conn.syn_ns),
                     key=lambda c: c.syn_ns)
    cut = _without_port(data, tls_inputs.client[1])
    with pytest.raises(packets.PairingError, match='no inputs channel'):
        packets.analyse(_write(tmp_path, cut), PROXY, QEMU)


def _without_port(data, port):
    """A copy of a pcapng without the packets of one TCP port."""
    out = bytearray()
    off = 0
    keep_all = True
    while off < len(data):
        btype, blen = struct.unpack_from('<II', data, off)
        block = data[off:off + blen]
        keep = True
        if btype == packets.PCAPNG_EPB:
            ip = block[28 + 14:]
            sport, dport = struct.unpack_from('>HH', ip, (ip[0] & 15) * 4)
            keep = port not in (sport, dport)
        keep_all = keep_all and keep
        if keep:
            out += block
        off += blen
    assert not keep_all
    return out


def test_pair_direction_by_size_and_order():
    m = packets.Message
    r = packets.Record
    msgs = [m('display', 'down', 304, 159, 1000, 0),
            m('display', 'down', 304, 148, 1000, 159),
            m('display', 'down', 4, 18, 5000, 307),
            m('display', 'down', 304, 40000, 9000, 325)]
    recs = [r('down', 23, 159 + 17, 900),        # before its message: no
            r('down', 23, 159 + 17, 1100),
            r('down', 23, 148 + 17, 1200),
            # a record of another size is no pairing
            r('down', 23, 19 + 17, 5100),
            r('down', 23, 16384 + 17, 9100),
            r('down', 23, 16384 + 17, 9200),
            r('down', 23, 40000 - 2 * 16384 + 17, 9300)]
    pairs, unpaired = packets.pair_direction(msgs, recs, 17, 'down')
    assert [(p.size, p.tls_ns) for p in pairs] == [
        (159, 1100), (148, 1200), (40000, 9300)]
    assert [u.size for u in unpaired] == [18]
    assert pairs[0].added_us == pytest.approx(0.1)


def test_pair_direction_never_sums_messages_into_a_record():
    m = packets.Message
    r = packets.Record
    # ryll's 42-byte link record, then PONG + ATTACH_CHANNELS + PONG
    # (18 + 6 + 18 = 42) relayed later, each in its own record.
    recs = [r('up', 23, 42 + 17, 100), r('up', 23, 18 + 17, 300),
            r('up', 23, 6 + 17, 310), r('up', 23, 18 + 17, 320)]
    msgs = [m('main', 'up', 3, 18, 400, 0), m('main', 'up', 104, 6, 410, 18),
            m('main', 'up', 3, 18, 420, 24)]
    pairs, unpaired = packets.pair_direction(msgs, recs, 17, 'up')
    assert not unpaired
    assert [p.tls_ns for p in pairs] == [300, 310, 320]


def test_pair_direction_upstream_skips_records_never_relayed():
    m = packets.Message
    r = packets.Record
    # ryll sent three PONGs; the proxy relayed one, then a later one.
    recs = [r('up', 23, 18 + 17, 100), r('up', 23, 18 + 17, 200),
            r('up', 23, 18 + 17, 5000)]
    msgs = [m('main', 'up', 3, 18, 250, 0), m('main', 'up', 3, 18, 5100, 18)]
    pairs, unpaired = packets.pair_direction(msgs, recs, 17, 'up')
    assert not unpaired
    assert [(p.plain_ns, p.tls_ns) for p in pairs] == [(250, 200),
                                                       (5100, 5000)]


def test_dumpcap_stats_lines():
    text = ("Capturing on 'Loopback: lo'\nFile: x\n"
            "Packets received/dropped on interface 'Loopback: lo': "
            "344/2 (pcap:0/dumpcap:0/flushed:2/ps_ifdrop:0) (99.4%)\n")
    assert packets.parse_dumpcap_stats(text) == {'packets': 344,
                                                 'dropped': 2}
    assert packets.parse_dumpcap_stats('') == {'packets': None,
                                               'dropped': None}


# -- the CLI and the summary ----------------------------------------------

def test_packets_needs_real_kerbside_lanes():
    for argv in (['--packets', '--fake'], ['--packets', '--routes',
                                           'direct'],
                 ['--packets', '--floor-only']):
        with pytest.raises(SystemExit) as e:
            latency.parse_args(argv)
        assert e.value.code == 2


def test_beside_end_to_end_and_lines():
    section, _ = packets.analyse(PCAPNG, PROXY, QEMU)
    packets.beside_end_to_end(section, {'samples': 5, 'p50_ms': 20.0,
                                        'p95_ms': 40.0, 'p99_ms': 45.0})
    share = section['proxy_share_of_end_to_end']
    assert share['p50'] == pytest.approx(
        (section['upstream']['p50_us'] + section['downstream']['p50_us'])
        / 1000 / 20.0, abs=1e-5)
    lines = packets.text_lines(section)
    assert lines[0].startswith('LOADTEST packets upstream proxy_added_us '
                               'samples=10 ')
    assert 'share' in lines[-1]
    assert packets.text_lines({'error': 'PairingError: x'}) == [
        'LOADTEST packets error: PairingError: x']


# -- dumpcap itself ------------------------------------------------------

@pytest.mark.skipif(shutil.which('dumpcap') is None or os.geteuid() != 0,
                    reason='needs dumpcap and root (capture on lo)')
def test_capture_records_a_loopback_connection(tmp_path):
    srv = socket.socket()
    srv.bind(('127.0.0.1', 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    path = str(tmp_path / 'lo.pcapng')

    def echo():
        c, _ = srv.accept()
        with c:
            c.sendall(c.recv(100))

    with packets.Capture(path, [port]) as cap:
        t = threading.Thread(target=echo)
        t.start()
        with socket.create_connection(('127.0.0.1', port)) as c:
            c.sendall(b'hello proxy')
            assert c.recv(100) == b'hello proxy'
        t.join(5)
    srv.close()
    assert cap.stats['returncode'] == 0, cap.stats
    assert cap.stats['packets'] and cap.stats['dropped'] == 0, cap.stats
    conns = packets.tcp_connections(packets.read_packets(path))
    assert len(conns) == 1
    assert bytes(conns[0].up.data) == b'hello proxy'
    assert bytes(conns[0].down.data) == b'hello proxy'
    assert conns[0].up.tick_ns == 1


def test_load_consoles_need_real_kerbside_lanes():
    for argv in (['--load-consoles', '2', '--fake'],
                 ['--load-consoles', '2', '--routes', 'direct'],
                 ['--load-consoles', '-1']):
        with pytest.raises(SystemExit) as e:
            latency.parse_args(argv)
        assert e.value.code == 2
    args = latency.parse_args(['--packets', '--load-consoles', '3'])
    settings = latency.settings_of(args)
    assert settings['load_consoles'] == 3 and settings['packets']


def test_per_key_attributes_a_key_and_its_first_draw():
    from kerbside_tempest_plugin.loadtest import sampler
    _, pairs = packets.analyse(PCAPNG, PROXY, QEMU)
    downs = sorted((p for p in pairs if packets.is_key(p) and
                    p.type == packets.INPUTS_KEY_DOWN),
                   key=lambda p: p.tls_ns)
    draws = sorted((p for p in pairs if packets.is_draw(p)),
                   key=lambda p: p.plain_ns)
    samples = []
    for i, key in enumerate(downs):
        first = next(d for d in draws if d.plain_ns >= key.plain_ns)
        sent = key.tls_ns // 1000 - 100
        drawn = first.tls_ns // 1000 + 50
        samples.append(sampler.Sample('kerbside', i, sent, drawn,
                                      (drawn - sent) / 1000.0))
    samples.append(sampler.Sample('kerbside', 9, 0, timeout=True))
    out = packets.per_key(samples, pairs)
    assert out['keys'] == KEYS
    assert 0 < out['share_of_key']['p50'] < 0.5
    assert out['proxy_us']['samples'] == KEYS

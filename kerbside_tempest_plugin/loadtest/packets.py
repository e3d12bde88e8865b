"""The proxy's own cost at packet resolution (issue 13 §2).

Both legs of the kerbside route are captured on loopback with dumpcap
(kernel timestamps): the client leg (ryll <-> kerbside-proxy's secure port,
always TLS: the insecure port only redirects and ryll does not follow) and
the hypervisor leg (kerbside-proxy <-> qemu's SPICE port, plain SPICE: the
rig runs the lane with ``hypervisor_tls=False``). Then:

- the plain leg is parsed as SPICE by spice.wire's framer: each TCP
  connection's link (channel type, whether the mini header was
  negotiated), then every message with the capture time of the packet
  that completed it;
- the TLS leg is parsed as TLS records: each record's length and the
  capture time of the packet that completed it (contents unreadable);
- each plain connection is matched to the TLS connection the proxy relays
  it to, and messages are paired with records by **size and order**:
  kerbside-proxy writes one TLS record per SPICE message, so a message
  pairs with the record (run) whose plaintext (record length minus the
  AEAD overhead) is exactly its size, the proxy's output after its input.

The proxy's added latency of a message is then ``t(record) - t(message)``
downstream (qemu -> proxy -> ryll) and ``t(message) - t(record)`` upstream
(ryll -> proxy -> qemu). A message with no such record is not paired (it
is counted, by type); a capture that cannot be read raises
`CaptureError`; one whose legs cannot be matched raises `PairingError`.
"""

import bisect
import collections
import dataclasses
import gzip
import logging
import os
import signal
import struct
import subprocess
import time

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import tools
from kerbside_tempest_plugin.common import waiting
from kerbside_tempest_plugin.loadtest import stats
from kerbside_tempest_plugin.spice import wire

LOG = logging.getLogger(__name__)


class CaptureError(errors.HarnessError):
    """A capture file that cannot be read (truncated, garbled, not a
    capture, not TCP/IPv4 on loopback); the message says where.
    """


class PairingError(errors.HarnessError):
    """The two legs of a capture could not be paired; the message says
    what was expected and what was found.
    """


# -- capturing ---------------------------------------------------------

class Capture:
    """dumpcap on ``lo`` for some TCP ports, into a pcapng file. Use as a
    context manager or `start()` / (always) `stop()`.

    Only the lane's own ports are captured (a BPF filter), so nothing of
    other engineers' lanes or services ends up in the file.

    dumpcap drops what the kernel still holds for it when it is stopped
    (measured: a connection made just before SIGINT was missing from the
    file, present when stop waited 1 s), so `stop()` first waits
    `settle_s`.
    """

    def __init__(self, path, ports, buffer_mib=64, start_timeout=15.0,
                 settle_s=1.5):
        self.path = path
        self.ports = sorted(set(int(p) for p in ports if p))
        if not self.ports:
            raise ValueError('Capture needs at least one port')
        self.buffer_mib = buffer_mib
        self.start_timeout = start_timeout
        self.settle_s = settle_s
        self.err_path = path + '.stderr'
        self.proc = None
        self.stats = None

    @property
    def bpf(self):
        return ' or '.join('tcp port %d' % p for p in self.ports)

    def _stderr(self):
        try:
            with open(self.err_path, errors='replace') as f:
                return f.read()[-800:]
        except OSError:
            return ''

    def start(self):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)),
                    exist_ok=True)
        argv = [tools.find('dumpcap'), '-i', 'lo', '-f', self.bpf,
                '-B', str(self.buffer_mib), '-s', '0', '-w', self.path]
        with open(self.err_path, 'wb') as err:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=err, start_new_session=True)

        def dead():
            if self.proc.poll() is not None:
                return 'dumpcap exited with status %s' % self.proc.returncode
            return None

        waiting.wait_until(lambda: 'Capturing on' in self._stderr(),
                           self.start_timeout,
                           'dumpcap to start capturing on lo',
                           seen=self._stderr, abort=dead)
        # A margin after the banner: one unit run missed a connection
        # made right after it.
        time.sleep(0.3)
        return self

    def stop(self, timeout=15.0):
        """Stop dumpcap (SIGINT: it flushes and reports drops). Returns
        {'packets', 'dropped'} as dumpcap reported them (None when it
        said nothing). Never raises.
        """
        p = self.proc
        if p is None:
            return self.stats
        if p.poll() is None:
            if self.settle_s:
                time.sleep(self.settle_s)
            try:
                os.killpg(p.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                LOG.error('dumpcap ignored SIGINT for %.0f s; killing it',
                          timeout)
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=5)
        self.proc = None
        self.stats = parse_dumpcap_stats(self._stderr())
        self.stats['returncode'] = p.returncode
        return self.stats

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def parse_dumpcap_stats(text):
    """dumpcap's closing lines: 'Packets captured: N' / 'Packets received/
    dropped on interface 'lo': N/M (...)'.
    """
    out = {'packets': None, 'dropped': None}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith('Packets captured:'):
            try:
                out['packets'] = int(line.split(':', 1)[1])
            except ValueError:
                pass
        elif line.startswith('Packets received/dropped'):
            try:
                nums = line.rsplit("': ", 1)[1].split()[0]
                got, dropped = nums.split('/')
                out['packets'] = int(got)
                out['dropped'] = int(dropped)
            except (ValueError, IndexError):
                pass
    return out


# -- reading a capture (pcapng or classic pcap, optionally gzipped) ----

PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_IDB = 1
PCAPNG_SPB = 3
PCAPNG_EPB = 6
PCAPNG_OBSOLETE_PB = 2
PCAPNG_BOM = 0x1A2B3C4D
PCAP_MAGIC = {0xA1B2C3D4: 1000, 0xA1B23C4D: 1}   # -> ns per tick

LINK_NULL, LINK_ETHERNET, LINK_RAW, LINK_SLL, LINK_SLL2 = 0, 1, 101, 113, 276
LINK_LOOP = 108


@dataclasses.dataclass
class Packet:
    ts_ns: int
    linktype: int
    data: bytes
    file_off: int = None    # where `data` starts in the (unzipped) file
    tick_ns: int = 1000     # the timestamp resolution


def _read_bytes(path):
    try:
        with open(path, 'rb') as f:
            head = f.read(2)
            f.seek(0)
            if head == b'\x1f\x8b':
                with gzip.GzipFile(fileobj=f) as g:
                    return g.read()
            return f.read()
    except (OSError, EOFError) as e:
        raise CaptureError('cannot read the capture %s: %s' % (path, e))


def read_packets(path, data=None):
    """Every packet of a pcapng or pcap file (gzip accepted), with its
    timestamp in ns. Raises CaptureError on anything malformed.
    """
    if data is None:
        data = _read_bytes(path)
    if len(data) < 24:
        raise CaptureError('%s: %d bytes is too short for a capture file'
                           % (path, len(data)))
    if struct.unpack_from('<I', data, 0)[0] == PCAPNG_SHB:
        return list(_pcapng(data, path))
    for endian in '<>':
        magic = struct.unpack_from(endian + 'I', data, 0)[0]
        if magic in PCAP_MAGIC:
            return list(_pcap(data, path, endian, PCAP_MAGIC[magic]))
    raise CaptureError('%s: not a pcap or pcapng file (starts with %s)'
                       % (path, data[:4].hex()))


def _pcap(data, path, e, ns_per_tick):
    linktype = struct.unpack_from(e + 'I', data, 20)[0] & 0x0FFFFFFF
    off = 24
    n = 0
    while off < len(data):
        if off + 16 > len(data):
            raise CaptureError('%s: truncated packet header at byte %d '
                               '(packet %d)' % (path, off, n + 1))
        sec, sub, incl, orig = struct.unpack_from(e + 'IIII', data, off)
        off += 16
        if incl > 262144 or off + incl > len(data):
            raise CaptureError('%s: packet %d claims %d bytes at byte %d, '
                               'the file has %d left' % (
                                   path, n + 1, incl, off - 16,
                                   len(data) - off))
        n += 1
        yield Packet(sec * 1000000000 + sub * ns_per_tick, linktype,
                     data[off:off + incl], off, ns_per_tick)
        off += incl


def _pcapng(data, path):
    off = 0
    e = '<'
    ifaces = []     # (linktype, ns per tick)
    n = 0
    while off < len(data):
        if off + 12 > len(data):
            raise CaptureError('%s: truncated pcapng block header at byte '
                               '%d' % (path, off))
        btype = struct.unpack_from(e + 'I', data, off)[0]
        if btype == PCAPNG_SHB:
            bom = data[off + 8:off + 12]
            if struct.unpack('<I', bom)[0] == PCAPNG_BOM:
                e = '<'
            elif struct.unpack('>I', bom)[0] == PCAPNG_BOM:
                e = '>'
            else:
                raise CaptureError('%s: pcapng section at byte %d has a bad '
                                   'byte-order magic %s' % (path, off,
                                                            bom.hex()))
            ifaces = []
        blen = struct.unpack_from(e + 'I', data, off + 4)[0]
        if blen < 12 or blen % 4 or off + blen > len(data):
            raise CaptureError('%s: pcapng block at byte %d claims %d bytes '
                               '(file has %d left)' % (path, off, blen,
                                                       len(data) - off))
        trailer = struct.unpack_from(e + 'I', data, off + blen - 4)[0]
        if trailer != blen:
            raise CaptureError('%s: pcapng block at byte %d: length %d at '
                               'its start, %d at its end' % (
                                   path, off, blen, trailer))
        body = data[off + 8:off + blen - 4]
        if btype == PCAPNG_IDB:
            if len(body) < 8:
                raise CaptureError('%s: short interface block at byte %d'
                                   % (path, off))
            linktype = struct.unpack_from(e + 'H', body, 0)[0]
            ifaces.append((linktype, _tsresol(body[8:], e, path, off)))
        elif btype == PCAPNG_EPB:
            if len(body) < 20:
                raise CaptureError('%s: short packet block at byte %d'
                                   % (path, off))
            iface, hi, lo, cap, _orig = struct.unpack_from(e + 'IIIII',
                                                           body, 0)
            if iface >= len(ifaces):
                raise CaptureError('%s: packet block at byte %d names '
                                   'interface %d; %d are described' % (
                                       path, off, iface, len(ifaces)))
            if 20 + cap > len(body):
                raise CaptureError('%s: packet block at byte %d holds %d '
                                   'bytes, claims %d' % (path, off,
                                                         len(body) - 20,
                                                         cap))
            linktype, tick = ifaces[iface]
            n += 1
            yield Packet(((hi << 32) | lo) * tick, linktype,
                         bytes(body[20:20 + cap]), off + 28, tick)
        elif btype in (PCAPNG_SPB, PCAPNG_OBSOLETE_PB):
            raise CaptureError('%s: packet block type %d at byte %d has no '
                               'usable timestamp' % (path, btype, off))
        off += blen


def _tsresol(opts, e, path, where):
    """ns per timestamp tick from an interface block's options
    (if_tsresol, code 9; default microseconds).
    """
    off = 0
    while off + 4 <= len(opts):
        code, length = struct.unpack_from(e + 'HH', opts, off)
        if code == 0:
            break
        val = opts[off + 4:off + 4 + length]
        if code == 9 and length >= 1:
            r = val[0]
            if r & 0x80:
                raise CaptureError('%s: interface block at byte %d uses a '
                                   'power-of-two timestamp resolution' % (
                                       path, where))
            if r > 9:
                raise CaptureError('%s: interface block at byte %d has '
                                   'timestamps finer than 1 ns (10^-%d)' % (
                                       path, where, r))
            return 10 ** (9 - r)
        off += 4 + ((length + 3) & ~3)
    return 1000


# -- TCP streams -------------------------------------------------------

@dataclasses.dataclass
class Half:
    """One direction of a TCP connection: its payload bytes in order and
    for each segment (end offset, capture time ns).
    """
    src: tuple
    dst: tuple
    isn: int = None
    data: bytearray = dataclasses.field(default_factory=bytearray)
    ends: list = dataclasses.field(default_factory=list)
    times: list = dataclasses.field(default_factory=list)
    gap_at: int = None      # stream offset where bytes went missing
    retransmits: int = 0
    file_offs: list = dataclasses.field(default_factory=list)
    tick_ns: int = None

    def file_ranges(self, start, end):
        """(file offset, length) pieces holding stream bytes
        [start, end).
        """
        out = []
        prev = 0
        for seg_end, foff in zip(self.ends, self.file_offs):
            lo, hi = max(start, prev), min(end, seg_end)
            if lo < hi:
                out.append((foff + lo - prev, hi - lo))
            prev = seg_end
        return out

    def time_of(self, end_offset):
        """Capture time (ns) of the segment that carried byte
        ``end_offset - 1`` of the stream.
        """
        i = bisect.bisect_left(self.ends, end_offset)
        if i >= len(self.ends):
            raise IndexError(end_offset)
        return self.times[i]


@dataclasses.dataclass
class Conn:
    client: tuple
    server: tuple
    syn_ns: int
    up: Half = None         # client -> server
    down: Half = None       # server -> client


def _ip_payload(pkt, path, index):
    d = pkt.data
    lt = pkt.linktype
    if lt == LINK_ETHERNET:
        if len(d) < 14:
            raise CaptureError('%s: packet %d: %d bytes is no Ethernet '
                               'frame' % (path, index, len(d)))
        etype = struct.unpack_from('>H', d, 12)[0]
        return (d[14:], 14) if etype == 0x0800 else None
    if lt == LINK_SLL:
        if len(d) < 16:
            raise CaptureError('%s: packet %d: short SLL header' % (
                path, index))
        return (d[16:], 16) if struct.unpack_from('>H', d, 14)[0] == \
            0x0800 else None
    if lt == LINK_SLL2:
        if len(d) < 20:
            raise CaptureError('%s: packet %d: short SLL2 header' % (
                path, index))
        return (d[20:], 20) if struct.unpack_from('>H', d, 0)[0] == \
            0x0800 else None
    if lt in (LINK_NULL, LINK_LOOP):
        if len(d) < 4:
            raise CaptureError('%s: packet %d: short loopback header' % (
                path, index))
        fam = struct.unpack_from('<I', d, 0)[0]
        if fam not in (2, 0x02000000):
            return None
        return d[4:], 4
    if lt == LINK_RAW:
        return (d, 0) if d[:1] and d[0] >> 4 == 4 else None
    raise CaptureError('%s: link type %d is not supported (Ethernet, SLL, '
                       'SLL2, null/loop or raw IPv4)' % (path, lt))


def tcp_connections(packets, path='capture'):
    """Reassemble the TCP connections of a capture (IPv4). Connections
    whose SYN was not captured are ignored. Returns a list of Conn in the
    order their SYNs were seen.
    """
    conns = {}
    order = []
    for i, pkt in enumerate(packets, 1):
        got = _ip_payload(pkt, path, i)
        if got is None:
            continue
        ip, link_len = got
        if len(ip) < 20 or ip[0] >> 4 != 4:
            raise CaptureError('%s: packet %d: not an IPv4 header' % (path,
                                                                      i))
        ihl = (ip[0] & 15) * 4
        total = struct.unpack_from('>H', ip, 2)[0]
        if ihl < 20 or total < ihl or total > len(ip):
            raise CaptureError('%s: packet %d: IPv4 header says %d bytes '
                               '(header %d), %d captured (snap length too '
                               'short?)' % (path, i, total, ihl, len(ip)))
        if ip[9] != 6:
            continue
        src_ip = '.'.join(str(b) for b in ip[12:16])
        dst_ip = '.'.join(str(b) for b in ip[16:20])
        tcp = ip[ihl:total]
        if len(tcp) < 20:
            raise CaptureError('%s: packet %d: short TCP header' % (path, i))
        sport, dport, seq = struct.unpack_from('>HHI', tcp, 0)
        doff = (tcp[12] >> 4) * 4
        flags = tcp[13]
        if doff < 20 or doff > len(tcp):
            raise CaptureError('%s: packet %d: TCP data offset %d in a '
                               '%d-byte segment' % (path, i, doff, len(tcp)))
        payload = tcp[doff:]
        src, dst = (src_ip, sport), (dst_ip, dport)
        syn, ack = flags & 0x02, flags & 0x10
        if syn and not ack:
            c = Conn(client=src, server=dst, syn_ns=pkt.ts_ns)
            c.up = Half(src, dst, isn=(seq + 1) & 0xFFFFFFFF)
            c.down = Half(dst, src)
            conns[(src, dst)] = c
            order.append(c)
            continue
        c = conns.get((src, dst)) or conns.get((dst, src))
        if c is None:
            continue
        half = c.up if src == c.client else c.down
        if syn:
            half.isn = (seq + 1) & 0xFFFFFFFF
            continue
        if not payload or half.isn is None or half.gap_at is not None:
            continue
        rel = (seq - half.isn) & 0xFFFFFFFF
        have = len(half.data)
        if rel + len(payload) <= have:
            half.retransmits += 1
            continue
        if rel > have:
            half.gap_at = have
            continue
        skip = 0
        if rel < have:
            half.retransmits += 1
            skip = have - rel
            payload = payload[skip:]
        half.data.extend(payload)
        half.ends.append(len(half.data))
        half.times.append(pkt.ts_ns)
        if pkt.file_off is not None:
            half.file_offs.append(pkt.file_off + link_len + ihl + doff +
                                  skip)
        half.tick_ns = max(half.tick_ns or 0, pkt.tick_ns)
    return order


# -- SPICE (the plain hypervisor leg) ----------------------------------
# Framing is spice.wire's: a Framer per direction of each connection.

INPUTS_KEY_DOWN, INPUTS_KEY_UP = wire.INPUTS_KEY_DOWN, wire.INPUTS_KEY_UP
TICKET_BYTES = wire.TICKET_BYTES
_DIRECTIONS = {wire.C2S: 'up', wire.S2C: 'down'}


@dataclasses.dataclass
class Message:
    """One SPICE message (header included) of a plain connection."""
    channel: str
    direction: str          # 'up' (to qemu) or 'down' (from qemu)
    type: int
    size: int               # bytes on the wire, header included
    end_ns: int             # capture time of the packet completing it
    offset: int             # stream offset of its first byte


@dataclasses.dataclass
class SpiceConn:
    conn: Conn
    channel: str
    channel_id: int
    mini_header: bool
    messages: list          # Message, both directions, by end time
    truncated: str = ''     # why parsing stopped early ('' = clean end)
    ticket: tuple = None    # (start, end) of the ticket in the up stream
    linked_ns: int = None   # when qemu's link result passed


def parse_spice(conn, where='spice'):
    """A plain SPICE connection: its link, then its messages. Raises
    CaptureError when the link cannot be read.
    """
    where = '%s %s:%d->%s:%d' % (where, conn.client[0], conn.client[1],
                                 conn.server[0], conn.server[1])
    neg = wire.Negotiation()
    framers = {d: wire.Framer(d, neg) for d in _DIRECTIONS}
    halves = {wire.C2S: conn.up, wire.S2C: conn.down}
    try:
        # The client's link, the server's reply (and its messages), then
        # the client's auth, ticket and messages: a link's own order.
        units = {d: framers[d].feed(bytes(halves[d].data))
                 for d in (wire.C2S, wire.S2C)}
        units[wire.C2S] += framers[wire.C2S].feed(b'')
    except wire.WireError as e:
        raise CaptureError('%s: %s' % (where, e)) from None
    for got, d, what in ((neg.mess, wire.C2S, 'client link'),
                         (neg.reply, wire.S2C, 'server link reply')):
        if got is None:
            raise CaptureError('%s (%s): %s captured' % (
                where, what, framers[d].partial() or 'no bytes'))
    if neg.reply.error:
        raise CaptureError('%s: qemu refused the link (error %d)' % (
            where, neg.reply.error))
    msgs, notes, linked, channel = [], [], None, neg.channel
    for d, half in halves.items():
        direction = _DIRECTIONS[d]
        for u in units[d]:
            end = u.offset + len(u.raw)
            if u.kind == 'message':
                msgs.append(Message(channel, direction, u.type,
                                    len(u.raw), half.time_of(end),
                                    u.offset))
            elif u.kind == 'link_result':
                linked = half.time_of(end)
        if framers[d].pending():
            notes.append('%s: %s cut at stream byte %d' % (
                direction, framers[d].partial(), framers[d].offset))
        elif half.gap_at is not None:
            notes.append('%s: capture lost bytes at stream byte %d' % (
                direction, half.gap_at))
    msgs.sort(key=lambda m: m.end_ns)
    ticket = len(units[wire.C2S][0].raw) + (
        wire.AUTH_MECHANISM_BYTES if neg.auth_selection else 0)
    return SpiceConn(conn, channel, neg.mess.channel_id,
                     neg.mini_header, msgs, '; '.join(notes),
                     (ticket, ticket + TICKET_BYTES), linked)


# -- TLS (the client leg) ----------------------------------------------

TLS_APPDATA, TLS_HANDSHAKE = 23, 22


@dataclasses.dataclass
class Record:
    direction: str          # 'up' (to the proxy) or 'down' (to ryll)
    type: int
    length: int             # record payload length
    end_ns: int


@dataclasses.dataclass
class TlsConn:
    conn: Conn
    overhead: int           # record length - plaintext length
    version: str
    records: list           # Record, both directions, by end time
    truncated: str = ''


def _records(half, direction, out, where):
    data = half.data
    off = 0
    while off < len(data):
        if off + 5 > len(data):
            return 'a record header cut at stream byte %d' % off
        rtype, major, _minor, length = struct.unpack_from('>BBBH', data,
                                                          off)
        if rtype not in (20, 21, 22, 23) or major != 3 or length > 18432:
            raise CaptureError('%s %s: no TLS record at stream byte %d '
                               '(type %d, version %d, length %d)' % (
                                   where, direction, off, rtype, major,
                                   length))
        end = off + 5 + length
        if end > len(data):
            return 'record of %d bytes cut at stream byte %d' % (length, off)
        out.append(Record(direction, rtype, length, half.time_of(end)))
        off = end
    if half.gap_at is not None:
        return 'capture lost bytes at stream byte %d' % half.gap_at
    return ''


def _server_hello(data, where):
    """(version name, AEAD overhead) from the first server record."""
    if len(data) < 5 + 4 + 2 + 32 + 1 or data[0] != TLS_HANDSHAKE or \
            data[5] != 2:
        raise CaptureError('%s: the server did not start with a '
                           'ServerHello' % where)
    p = 5 + 4 + 2 + 32
    sid = data[p]
    p += 1 + sid
    if p + 3 > len(data):
        raise CaptureError('%s: ServerHello cut short' % where)
    suite = struct.unpack_from('>H', data, p)[0]
    p += 3
    tls13 = False
    if p + 2 <= len(data):
        ext_end = p + 2 + struct.unpack_from('>H', data, p)[0]
        p += 2
        while p + 4 <= min(ext_end, len(data)):
            etype, elen = struct.unpack_from('>HH', data, p)
            if etype == 0x002b and elen == 2 and \
                    data[p + 4:p + 6] == b'\x03\x04':
                tls13 = True
            p += 4 + elen
    if tls13:
        return 'TLSv1.3', 17    # 16-byte tag + the inner content type
    if suite in (0xCCA8, 0xCCA9):
        return 'TLSv1.2', 16
    if suite in (0xC02B, 0xC02C, 0xC02F, 0xC030, 0x009C, 0x009D):
        return 'TLSv1.2', 24    # explicit 8-byte nonce + 16-byte tag
    raise PairingError('%s: TLS 1.2 cipher suite 0x%04x: its record '
                       'overhead is not known, so records cannot be sized '
                       'against messages' % (where, suite))


def parse_tls(conn, where='tls'):
    where = '%s %s:%d->%s:%d' % (where, conn.client[0], conn.client[1],
                                 conn.server[0], conn.server[1])
    version, overhead = _server_hello(conn.down.data, where)
    recs = []
    notes = []
    for half, direction in ((conn.up, 'up'), (conn.down, 'down')):
        note = _records(half, direction, recs, where)
        if note:
            notes.append('%s: %s' % (direction, note))
    recs.sort(key=lambda r: r.end_ns)
    return TlsConn(conn, overhead, version, recs, '; '.join(notes))


# -- pairing the legs ---------------------------------------------------

LOOKAHEAD = 64              # records searched past the last pairing
WINDOW_NS = 1000000000      # a relay slower than 1 s is no pairing


@dataclasses.dataclass
class Pair:
    channel: str
    direction: str
    type: int
    size: int
    plain_ns: int           # the message completed on the qemu leg
    tls_ns: int             # its last record completed on the ryll leg

    @property
    def added_us(self):
        """What the proxy added: time from entering to leaving it."""
        d = self.tls_ns - self.plain_ns
        return (d if self.direction == 'down' else -d) / 1000.0


def pair_direction(messages, records, overhead, direction,
                   window_ns=WINDOW_NS, lookahead=LOOKAHEAD):
    """Pair one direction's messages with its TLS records by size (the
    run of whole records carrying exactly one message: kerbside-proxy
    0.8.0 writes one record per message, TLS splits those over 16 KiB)
    and order, within `window_ns`, the proxy's output always after its
    input.

    Downstream (qemu -> ryll) each message takes the earliest free record
    after it, walking forward in time; upstream (ryll -> qemu) each
    message takes the latest free record before it, walking backward.
    A record holding several messages is not paired: a sum of small
    messages can equal an unrelated record (ryll's 42-byte link record
    equals PONG + ATTACH_CHANNELS + PONG, which a first version paired),
    and the proxy was never seen to coalesce. Returns (pairs, unpaired
    messages).
    """
    msgs = sorted((m for m in messages if m.direction == direction),
                  key=lambda m: m.offset)
    recs = [r for r in records
            if r.direction == direction and r.type == TLS_APPDATA]
    sign = 1 if direction == 'down' else -1
    m_t = [sign * m.end_ns for m in msgs]
    r_t = [sign * r.end_ns for r in recs]
    m_size = [m.size for m in msgs]
    r_size = [r.length - overhead for r in recs]
    if sign < 0:
        for lst in (m_t, r_t, m_size, r_size):
            lst.reverse()
    matched = _walk(m_t, m_size, r_t, r_size, window_ns, lookahead)
    pairs, unpaired = [], []
    n = len(msgs)
    for i, t in enumerate(matched):
        m = msgs[i if sign > 0 else n - 1 - i]
        if t is None:
            unpaired.append(m)
        else:
            pairs.append(Pair(m.channel, direction, m.type, m.size,
                              m.end_ns, sign * t))
    if sign < 0:
        pairs.reverse()
        unpaired.reverse()
    return pairs, unpaired


def _walk(m_t, m_size, r_t, r_size, window_ns, lookahead):
    """The forward walk of `pair_direction`: for each message (time,
    size) the time of the record run that carried it, or None.
    """
    out = [None] * len(m_t)
    i = j = 0
    while i < len(m_t):
        got = _match(i, m_t, m_size, j, r_t, r_size, window_ns, lookahead)
        if got is None:
            i += 1
            continue
        n_msgs, j, t = got
        for k in range(i, i + n_msgs):
            out[k] = t
        i += n_msgs
    return out


def _match(i, m_t, m_size, j, r_t, r_size, window_ns, lookahead):
    for k in range(j, min(len(r_t), j + lookahead)):
        if r_t[k] > m_t[i] + window_ns:
            return None
        if r_t[k] < m_t[i]:
            continue
        # Several records for one message (TLS's 16 KiB limit).
        total, q = 0, k
        while q < len(r_t) and total < m_size[i]:
            total += r_size[q]
            q += 1
        if total == m_size[i]:
            return 1, q, r_t[q - 1]
    return None


def match_legs(spice_conns, tls_conns):
    """For each plain connection, the TLS connection the proxy relays it
    to: the one whose records pair with most of its messages (ties: the
    smallest total delay; with other consoles on the same proxy port
    their TLS connections are candidates too). Returns a list of
    (SpiceConn, TlsConn or None, pairs, unpaired).
    """
    scored = []
    for s in spice_conns:
        for t in tls_conns:
            if t.conn.syn_ns > s.conn.syn_ns:
                continue    # the proxy dials qemu after ryll dials it
            pairs, unpaired = [], []
            for d in ('up', 'down'):
                p, u = pair_direction(s.messages, t.records, t.overhead, d)
                pairs += p
                unpaired += u
            if pairs:
                spread = sum(abs(p.added_us) for p in pairs)
                scored.append((len(pairs), spread, id(s), id(t), s, t,
                               pairs, unpaired))
    scored.sort(key=lambda x: (-x[0], x[1]))
    used_s, used_t, out = set(), set(), []
    for _n, _spread, sid, tid, s, t, pairs, unpaired in scored:
        if sid in used_s or tid in used_t:
            continue
        used_s.add(sid)
        used_t.add(tid)
        out.append((s, t, pairs, unpaired))
    for s in spice_conns:
        if id(s) not in used_s:
            out.append((s, None, [], list(s.messages)))
    out.sort(key=lambda x: x[0].conn.syn_ns)
    return out


# -- the analysis of one capture -----------------------------------------

def _percentiles(values):
    if not values:
        return {'samples': 0}
    v = sorted(values)
    return {'samples': len(v), 'min_us': round(v[0], 1),
            'p50_us': round(stats.nearest_rank(v, 50), 1),
            'p95_us': round(stats.nearest_rank(v, 95), 1),
            'p99_us': round(stats.nearest_rank(v, 99), 1),
            'max_us': round(v[-1], 1),
            'mean_us': round(sum(v) / len(v), 1)}


def is_key(p):
    return p.channel == 'inputs' and p.direction == 'up' and \
        p.type in (INPUTS_KEY_DOWN, INPUTS_KEY_UP)


def is_draw(p):
    return p.channel == 'display' and p.direction == 'down' and \
        p.type in wire.DISPLAY_DRAWS


def analyse(path, proxy_port, qemu_port, since_ns=None):
    """Pair the two legs of one capture. Returns (summary dict, pairs).

    `proxy_port`: kerbside-proxy's TLS port (the client leg);
    `qemu_port`: qemu's plain SPICE port (the hypervisor leg);
    `since_ns`: when set (the first key's send time), the figures count
    only pairs from then on, leaving out the channels' setup. Raises
    CaptureError (unreadable capture) or PairingError (no channel of
    the legs could be paired, or inputs/display are missing).
    """
    conns = tcp_connections(read_packets(path), path)
    spice, tls, notes = [], [], []
    for c in conns:
        if c.server[1] == qemu_port:
            if not c.up.data:
                continue
            spice.append(parse_spice(c, path))
        elif c.server[1] == proxy_port:
            if not c.down.data:
                continue
            tls.append(parse_tls(c, path))
    if not spice:
        raise PairingError('%s: no SPICE connection to qemu port %d '
                           '(%d TCP connections in the capture)' % (
                               path, qemu_port, len(conns)))
    if not tls:
        raise PairingError('%s: no TLS connection to the proxy port %d '
                           '(%d TCP connections in the capture)' % (
                               path, proxy_port, len(conns)))
    matched = match_legs(spice, tls)
    channels, pairs = [], []
    queued = 0
    for s, t, p, u in matched:
        # Sent by ryll before the proxy had linked to qemu: they waited
        # for the link, which is not the relay's cost.
        early = [x for x in p if x.direction == 'up' and
                 s.linked_ns is not None and x.tls_ns < s.linked_ns]
        queued += len(early)
        p = [x for x in p if x not in early]
        pairs += p
        info = {'channel': s.channel, 'channel_id': s.channel_id,
                'qemu_leg': '%s:%d' % s.conn.client,
                'client_leg': '%s:%d' % t.conn.client if t else None,
                'tls': t.version if t else None,
                'mini_header': s.mini_header,
                'messages': len(s.messages), 'paired': len(p),
                'queued_during_link': len(early),
                'unpaired': len(u),
                'unpaired_types': dict(collections.Counter(
                    '%s %d' % (m.direction, m.type) for m in u))}
        for label, obj in (('qemu_leg_note', s), ('client_leg_note', t)):
            if obj is not None and obj.truncated:
                info[label] = obj.truncated
        channels.append(info)
    got = {c['channel'] for c in channels if c['paired']}
    missing = [c for c in ('inputs', 'display') if c not in got]
    if missing:
        raise PairingError('%s: no %s channel could be paired between the '
                           'legs (channels paired: %s; per channel: %s)' % (
                               path, ' or '.join(missing),
                               ', '.join(sorted(got)) or 'none',
                               '; '.join('%s %d/%d' % (
                                   c['channel'], c['paired'],
                                   c['messages']) for c in channels)))
    before = 0
    if since_ns is not None:
        kept = [p for p in pairs if min(p.plain_ns, p.tls_ns) >= since_ns]
        before = len(pairs) - len(kept)
        pairs = kept
    keys = [p.added_us for p in pairs if is_key(p)]
    draws = [p.added_us for p in pairs if is_draw(p)]
    negative = [p for p in pairs if p.added_us < 0]
    if negative:
        notes.append('%d pairs have a negative delta' % len(negative))
    summary = {
        'upstream': dict(_percentiles(keys),
                         what='inputs KEY_DOWN/KEY_UP: the TLS record '
                              'leaving ryll to the message reaching qemu'),
        'downstream': dict(_percentiles(draws),
                           what='display draw messages: the message '
                                'leaving qemu to its TLS record reaching '
                                'ryll'),
        'upstream_all': _percentiles([p.added_us for p in pairs
                                      if p.direction == 'up']),
        'downstream_all': _percentiles([p.added_us for p in pairs
                                        if p.direction == 'down']),
        'channels': channels,
        'connections': {'qemu_leg': len(spice), 'client_leg': len(tls)},
        'queued_during_link': queued,
        'before_sampling': before,
        'timestamp_resolution_ns': max(
            (h.tick_ns or 0 for c in conns for h in (c.up, c.down)),
            default=None),
    }
    if notes:
        summary['notes'] = notes
    return summary, pairs


def write_pairs_csv(path, pairs):
    import csv
    with open(path, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['channel', 'direction', 'type', 'size', 'qemu_leg_ns',
                    'client_leg_ns', 'added_us'])
        for p in sorted(pairs, key=lambda p: min(p.plain_ns, p.tls_ns)):
            w.writerow([p.channel, p.direction, p.type, p.size, p.plain_ns,
                        p.tls_ns, '%.3f' % p.added_us])


def sanitise(path, out_path, qemu_port):
    """Write a copy of a capture with every SPICE ticket that went to
    qemu (the 128 RSA-encrypted bytes after the client's link) zeroed.
    Returns the number of tickets blanked. The client leg is TLS and
    needs nothing.
    """
    data = bytearray(_read_bytes(path))
    conns = tcp_connections(read_packets(path, bytes(data)), path)
    n = 0
    for c in conns:
        if c.server[1] != qemu_port or not c.up.data:
            continue
        s = parse_spice(c, path)
        lo, hi = s.ticket
        for foff, length in c.up.file_ranges(lo, hi):
            data[foff:foff + length] = bytes(length)
        n += 1
    opener = gzip.open if out_path.endswith('.gz') else open
    with opener(out_path, 'wb') as f:
        f.write(bytes(data))
    return n


# -- kerbside-latency --packets ------------------------------------------

def measure(rig, out_dir):
    """After a --packets run: pair the capture of `rig`, write
    packets.csv and the sanitised capture, remove the raw one. Returns
    the summary's "packets" section; errors are recorded there, never
    raised.
    """
    cap = rig.capture
    ports = rig.capture_ports
    out = {'capture': dict(rig.stop_capture() or {}, ports=ports,
                           tool='dumpcap on lo, BPF %r' % cap.bpf),
           'method': 'both legs of the kerbside route captured on lo; the '
                     'qemu leg parsed as SPICE, the client leg (TLS) as '
                     'records; paired by size and order (loadtest.packets)'}
    raw = cap.path
    samples = [smp for r in rig.routes if r.name == 'kerbside'
               and r.session is not None for smp in r.session.samples]
    sent = [smp.sent_us for smp in samples]
    since = min(sent) * 1000 if sent else None
    try:
        summary, pairs = analyse(raw, ports['proxy'], ports['qemu'],
                                 since_ns=since)
        out.update(summary)
        out['per_key'] = per_key(samples, pairs)
        csv_path = os.path.join(out_dir, 'packets.csv')
        write_pairs_csv(csv_path, pairs)
        out['csv'] = csv_path
        kept = raw + '.gz'
        out['tickets_blanked'] = sanitise(raw, kept, ports['qemu'])
        out['capture']['file'] = kept
        os.remove(raw)
    except (CaptureError, PairingError) as e:
        out['error'] = '%s: %s' % (type(e).__name__, e)
    except Exception as e:
        LOG.debug('pairing failed', exc_info=True)
        out['error'] = '%s: %s' % (type(e).__name__, e)
    finally:
        if os.path.exists(raw):
            # Unsanitised: it holds the encrypted tickets; never kept.
            os.remove(raw)
    return out


def per_key(samples, pairs):
    """For each measured key: the proxy's time on its KEY_DOWN plus on the
    first draw qemu sent after that KEY_DOWN reached it, against the
    key's own keypress-to-screen time. Returns the percentiles of the sum
    (us) and of its share of the key's latency, and how many keys had
    both pairs.
    """
    downs = sorted((p for p in pairs if is_key(p)
                    and p.type == INPUTS_KEY_DOWN), key=lambda p: p.tls_ns)
    draws = sorted((p for p in pairs if is_draw(p)),
                   key=lambda p: p.plain_ns)
    sums, shares = [], []
    for smp in samples:
        if smp.timeout or smp.latency_ms is None:
            continue
        start = smp.sent_us * 1000
        key = next((p for p in downs if p.tls_ns >= start), None)
        if key is None or key.tls_ns > start + 10 ** 9:
            continue
        draw = next((p for p in draws if p.plain_ns >= key.plain_ns), None)
        if draw is None or draw.tls_ns > smp.drawn_us * 1000 + 10 ** 9:
            continue
        total = key.added_us + draw.added_us
        sums.append(total)
        shares.append(total / 1000.0 / smp.latency_ms)
    out = {'keys': len(sums), 'proxy_us': _percentiles(sums),
           'what': 'per key: proxy time on its KEY_DOWN + on the first '
                   'draw after it, and that sum over the key\'s '
                   'keypress-to-screen time'}
    if shares:
        v = sorted(shares)
        out['share_of_key'] = {
            'p50': round(stats.nearest_rank(v, 50), 5),
            'p95': round(stats.nearest_rank(v, 95), 5),
            'max': round(v[-1], 5)}
    return out


def beside_end_to_end(section, route):
    """Put the kerbside route's keypress-to-screen figures next to the
    proxy's and the proxy's share of them.
    """
    if not route:
        return
    e2e = {k: route.get(k)
           for k in ('samples', 'p50_ms', 'p95_ms', 'p99_ms')}
    section['end_to_end_ms'] = e2e
    up, down = section.get('upstream') or {}, section.get('downstream') or {}
    share = {}
    for p in ('p50', 'p95', 'p99'):
        u, d, e = up.get(p + '_us'), down.get(p + '_us'), e2e.get(p + '_ms')
        if u is not None and d is not None and e:
            share[p] = round((u + d) / 1000.0 / e, 5)
    section['proxy_share_of_end_to_end'] = share
    section['proxy_share_definition'] = (
        '(upstream + downstream proxy time at the percentile, in ms) / '
        'the keypress-to-screen time at the same percentile')


def text_lines(section):
    if section.get('error'):
        return ['LOADTEST packets error: %s' % section['error']]
    lines = []
    for d in ('upstream', 'downstream'):
        r = section.get(d) or {}
        lines.append('LOADTEST packets %s proxy_added_us samples=%d p50=%s '
                     'p95=%s p99=%s max=%s' % (
                         d, r.get('samples', 0), r.get('p50_us'),
                         r.get('p95_us'), r.get('p99_us'),
                         r.get('max_us')))
    pk = section.get('per_key') or {}
    if pk.get('keys'):
        lines.append('LOADTEST packets per key (KEY_DOWN + first draw) '
                     'proxy_us p50=%s p95=%s, share of the key p50=%.2f%% '
                     'p95=%.2f%% (%d keys)' % (
                         pk['proxy_us']['p50_us'], pk['proxy_us']['p95_us'],
                         pk['share_of_key']['p50'] * 100,
                         pk['share_of_key']['p95'] * 100, pk['keys']))
    share = section.get('proxy_share_of_end_to_end') or {}
    if share:
        lines.append('LOADTEST packets proxy share of keypress-to-screen: '
                     + ' '.join('%s=%.2f%%' % (k, v * 100)
                                for k, v in sorted(share.items())))
    return lines

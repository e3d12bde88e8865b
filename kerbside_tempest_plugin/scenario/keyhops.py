"""Where every key of a walk went: one row per key, hop by hop (issue 21).

A key typed by the walk crosses these hops, each seen by its own
evidence:

1. **left ryll** - ryll's inputs capture (`ryll/capture-inputs.pcap`,
   ryll's ``--capture``): every key_down and key_up message with its AT
   set-1 scancode, in order.
2. **crossed the proxy** - the fault relay's log on the hypervisor leg,
   when the lane has a relay: one compact `key` record per key message
   it forwarded (time, direction, scancode; never bytes), and an `inject`
   record for one a fault dropped. Without a relay the leg is TLS or not
   ours to read: "not observed (no plain leg)".
3. **reached qemu** - qemu's PS/2 trace (the direct-qemu provider starts
   qemu with ``-trace`` for `ps2_keyboard_event`, `ps2_put_keycode`,
   `ps2_read_data` and `pckbd_kbd_read_data`, ``-msg timestamp=on``):
   the keyboard took the key and put its scancode byte(s) in its queue.
   qemu 7.2's queue holds 16 bytes (PS2_QUEUE_SIZE); a byte put while it
   holds 16 is dropped without a word, so the trace shows the put and
   never a read of it. A key is one byte each way on this guest (the
   i8042 translates set 2 to set 1; an extended key is two).
4. **read by the guest** - `ps2_read_data` took the byte off the queue as
   the guest's poll read the controller, and `pckbd_kbd_read_data` gives
   the value it read.
5. **registered** - the guest recorded the key: a keypress record of the
   serial drain, else (no drain: the walk stopped first) one seen in a
   captured digest.

The rows are aligned by order (every hop is a FIFO: one TCP stream, one
queue) and key identity (make code and direction): a longest common
subsequence between neighbouring hops, so a key missing at a hop is the
one the next hops lack. Two identical keys in a row (`LL`) with one lost
cannot be told apart; the later one is reported.

Each keystroke (a character or named key with its Shift) gets the last
hop it reached; a lost one gets one line: "key 19 of the paste (`P`)
reached qemu but was never read by the guest: ...". A hop with no
evidence (no capture, no trace, no relay) says so and never fails
anything. Bad evidence (a truncated pcap, a garbled trace line) raises
KeyHopsError naming the file and the place.
"""

import collections
import dataclasses
import os
import re
import struct
import typing

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.scenario import evidence
from kerbside_tempest_plugin.sextant import keys as keys_mod
from kerbside_tempest_plugin.spice import wire

NAME = 'keyhops.json'
INPUTS_CAPTURE = 'ryll/capture-inputs.pcap'
TRACE = 'guest__ps2-trace.log'
SPICE_SERVER_PORT = 5900
PS2_QUEUE_SIZE = 16         # qemu 7.2 hw/input/ps2.c
ACK = 0xFA                  # a keyboard command's reply, not a key
# s: key events closer than this reached qemu together (a burst). ryll
# paces a paste at ~53 ms a character; one key's down and up are ~26 ms
# apart.
BURST_GAP_S = 0.005

# Hops, in the order a key crosses them.
SENT, RELAY, QEMU, READ, REGISTERED = (
    'left ryll', 'crossed the proxy', 'reached qemu', 'read by the guest',
    'registered')
HOPS = (SENT, RELAY, QEMU, READ, REGISTERED)

MODIFIERS = frozenset([0x2A, 0x36, 0x1D, 0x38, 0xE01D, 0xE038])

# AT set 2 -> set 1 make codes of the keys the walks type (the i8042's
# translation, which qemu does when the guest asks for it: xlate 1). Used
# only for a key whose byte the guest never read; a read byte gives its
# set-1 code itself.
SET2_TO_SET1 = {
    0x76: 0x01, 0x16: 0x02, 0x1E: 0x03, 0x26: 0x04, 0x25: 0x05, 0x2E: 0x06,
    0x36: 0x07, 0x3D: 0x08, 0x3E: 0x09, 0x46: 0x0A, 0x45: 0x0B, 0x4E: 0x0C,
    0x55: 0x0D, 0x66: 0x0E, 0x0D: 0x0F, 0x15: 0x10, 0x1D: 0x11, 0x24: 0x12,
    0x2D: 0x13, 0x2C: 0x14, 0x35: 0x15, 0x3C: 0x16, 0x43: 0x17, 0x44: 0x18,
    0x4D: 0x19, 0x54: 0x1A, 0x5B: 0x1B, 0x5A: 0x1C, 0x14: 0x1D, 0x1C: 0x1E,
    0x1B: 0x1F, 0x23: 0x20, 0x2B: 0x21, 0x34: 0x22, 0x33: 0x23, 0x3B: 0x24,
    0x42: 0x25, 0x4B: 0x26, 0x4C: 0x27, 0x52: 0x28, 0x0E: 0x29, 0x12: 0x2A,
    0x5D: 0x2B, 0x1A: 0x2C, 0x22: 0x2D, 0x21: 0x2E, 0x2A: 0x2F, 0x32: 0x30,
    0x31: 0x31, 0x3A: 0x32, 0x41: 0x33, 0x49: 0x34, 0x4A: 0x35, 0x59: 0x36,
    0x7C: 0x37, 0x11: 0x38, 0x29: 0x39, 0x58: 0x3A, 0x05: 0x3B, 0x06: 0x3C,
    0x04: 0x3D, 0x0C: 0x3E, 0x03: 0x3F, 0x0B: 0x40, 0x83: 0x41, 0x0A: 0x42,
    0x01: 0x43, 0x09: 0x44, 0x77: 0x45, 0x7E: 0x46, 0x6C: 0x47, 0x75: 0x48,
    0x7D: 0x49, 0x7B: 0x4A, 0x6B: 0x4B, 0x73: 0x4C, 0x74: 0x4D, 0x79: 0x4E,
    0x69: 0x4F, 0x72: 0x50, 0x7A: 0x51, 0x70: 0x52, 0x71: 0x53, 0x78: 0x57,
    0x07: 0x58,
}

_CHAR_OF = {}
for _c, _code in keys_mod.CHARS.items():
    if _c.isprintable():
        _CHAR_OF.setdefault(_code, _c)
_SHIFTED_OF = {v: k for k, v in keys_mod._SHIFTED.items()}
_NAME_OF = {}
for _n, _code in keys_mod.NAMED.items():
    _NAME_OF.setdefault(_code, _n)
_NAME_OF[0x1C] = 'Enter'


class KeyHopsError(errors.HarnessError):
    """Evidence of a hop that cannot be read: `what` names the file."""


# ----------------------------------------------------------------- keys


def split_code(code):
    """(make code, down) of a SPICE key message's scancode: set 1, the
    break bit 0x80; an extended key is 0xE0 in the low byte (0x48E0 is
    Up pressed, 0xC8E0 released) and comes back as 0xE0xx.
    """
    if code & 0xFF == 0xE0:
        second = (code >> 8) & 0xFF
        return 0xE000 | (second & 0x7F), not second & 0x80
    return code & 0x7F, not code & 0x80


def char_of(make, shift):
    """The character a make code types on a US layout (with Shift), or
    the key's name ('Enter', 'lshift'), or 'scancode 0xNN'.
    """
    if make == 0x1C:
        return 'Enter'
    c = _CHAR_OF.get(make)
    if c is not None and c != ' ':
        if shift:
            return c.upper() if c.isalpha() else _SHIFTED_OF.get(c, c)
        return c
    return _NAME_OF.get(make) or 'scancode 0x%02x' % make


def unicode_of(char):
    """The unicode the guest records for a typed character (Enter is
    0x0d), or None for a key it records no character for.
    """
    if char == 'Enter':
        return 0x0D
    if char == 'space':
        return 0x20
    if len(char) == 1:
        return ord(char)
    return None


@dataclasses.dataclass
class Msg:
    """One key message and what each hop saw of it."""
    index: int                  # order in ryll's capture, from 0
    make: int
    down: bool
    t_sent: float               # the capture's clock (s)
    relay: typing.Optional[str] = None   # 'crossed', 'dropped', 'lost'
    t_relay: typing.Optional[float] = None
    relay_fault: typing.Optional[str] = None
    relay_order: typing.Optional[int] = None   # its place in what crossed
    reordered: typing.Optional[str] = None     # the reorder fault's spec
    qemu: typing.Optional[bool] = None
    t_qemu: typing.Optional[float] = None
    bytes_put: int = 0
    bytes_dropped: int = 0
    depth: int = 0              # queue bytes held when its first was put
    bytes_read: int = 0
    t_read: typing.Optional[float] = None
    values: typing.List[int] = dataclasses.field(default_factory=list)
    # the run of key events that reached qemu together with it (gaps
    # under BURST_GAP_S): how many, and over how long
    burst: int = 1
    burst_s: float = 0.0
    # for a message whose byte(s) a full queue dropped: how long the
    # guest took to read the bytes of its burst queued ahead of it
    ahead_read_s: typing.Optional[float] = None

    @property
    def key(self):
        return self.make, self.down

    def to_json(self):
        out = dataclasses.asdict(self)
        out['make'] = '0x%02x' % self.make
        out['values'] = ['0x%02x' % v for v in self.values]
        return out


# ---------------------------------------------------------- ryll's capture


def sent_messages(data, what=INPUTS_CAPTURE, server_port=SPICE_SERVER_PORT):
    """[Msg] for every key_down / key_up ryll sent on its inputs channel
    (a capture that starts after the link, as ryll's does).
    """
    try:
        _, packets = evidence.read_pcap(data)
    except evidence.EvidenceError as e:
        raise KeyHopsError('%s is unreadable: %s' % (what, e)) from None
    neg = wire.Negotiation()
    neg.mess = wire.LinkMess(0, wire.CHANNEL_TYPES['inputs'], 0, (), ())
    framer = wire.Framer(wire.C2S, neg, skip_link=True, mini=True)
    out = []
    for p in packets:
        parsed = evidence.tcp_payload(p.data)
        if not parsed or parsed[0] == server_port or not parsed[2]:
            continue
        try:
            units = framer.feed(parsed[2])
        except wire.WireError as e:
            raise KeyHopsError('%s is not SPICE framing: %s' % (what, e)
                               ) from None
        for u in units:
            if u.type not in (wire.INPUTS_KEY_DOWN, wire.INPUTS_KEY_UP):
                continue
            if len(u.body) < 4:
                raise KeyHopsError('%s: a %s of %d bytes (a scancode is 4)'
                                   % (what, u.name, len(u.body)))
            make, _ = split_code(struct.unpack_from('<I', u.body)[0])
            out.append(Msg(len(out), make, u.type == wire.INPUTS_KEY_DOWN,
                           round(p.ts, 6)))
    return out


# ------------------------------------------------------------- the relay


def relay_records(events):
    """(crossed, dropped, moved): the relay's `key` records [(t, make,
    down)] in the order it sent them, the key messages a fault dropped,
    corrupted or cut at [(t, make, down, spec, what it did)], and those a
    fault reordered or duplicated [(t, make, down, spec, action)].
    """
    crossed, dropped, moved = [], [], []
    for e in events or ():
        if e.get('channel') not in (None, 'inputs'):
            continue
        if e.get('event') == 'key' and 'code' in e:
            make, down = split_code(int(e['code']))
            crossed.append((e.get('t'), make, down))
        elif e.get('event') == 'inject' and e.get('action') in LOSING and \
                e.get('name') in ('key_down', 'key_up') and 'code' in e:
            make, down = split_code(int(e['code']))
            dropped.append((e.get('t'), make, down, e.get('fault'),
                            LOSING[e['action']]))
        elif e.get('event') == 'inject' and e.get('action') in (
                'reorder', 'duplicate') and 'code' in e:
            make, down = split_code(int(e['code']))
            moved.append((e.get('t'), make, down, e.get('fault'),
                          e['action']))
    return crossed, dropped, moved


# a relay fault's action on a key message -> what became of the key
LOSING = {'drop': 'dropped', 'corrupt': 'corrupted',
          'cut': 'cut the channel at'}


# ------------------------------------------------------------ qemu's trace


TRACE_LINE = re.compile(r'^(\d+)@(\d+\.\d+):(\w+)(?: (.*))?$')
_FIELDS = {
    'ps2_keyboard_event': re.compile(
        r'^(0x[0-9a-f]+|\(nil\)) qcode (\d+) down (\d) .*xlate (\d)$'),
    'ps2_put_keycode': re.compile(
        r'^(0x[0-9a-f]+|\(nil\)) keycode 0x([0-9a-f]+)$'),
    'ps2_read_data': re.compile(r'^(0x[0-9a-f]+|\(nil\))$'),
    'pckbd_kbd_read_data': re.compile(r'^0x([0-9a-f]+)$'),
}


@dataclasses.dataclass
class QemuKey:
    """One key event of qemu's PS/2 keyboard and what became of its
    bytes.
    """
    t: float
    qcode: int
    down: bool
    xlate: bool
    codes: typing.List[int] = dataclasses.field(default_factory=list)
    put: int = 0
    dropped: int = 0
    depth: int = 0
    read: int = 0
    t_read: typing.Optional[float] = None
    values: typing.List[int] = dataclasses.field(default_factory=list)
    burst: int = 1
    burst_s: float = 0.0

    def make(self, learned=None):
        """Its set-1 make code: from the bytes the guest read, else the
        set-2 code put (learned from this trace, else the table); None
        when unknown.
        """
        vals = [v for v in self.values if v != 0xE0]
        if vals:
            base = vals[0] & 0x7F
            return (0xE000 | base) if 0xE0 in self.values else base
        codes = [c for c in self.codes if c not in (0xF0, 0xE0)]
        if not codes:
            return None
        set2 = codes[-1]
        base = (learned or {}).get(set2, SET2_TO_SET1.get(set2))
        if base is None:
            return None
        return (0xE000 | base) if 0xE0 in self.codes else base

    @property
    def key(self):
        return self.make(), self.down


@dataclasses.dataclass
class Trace:
    keys: typing.List[QemuKey]
    max_depth: int = 0
    drops: int = 0
    slowest_read_s: float = 0.0
    left_in_queue: int = 0
    lines: int = 0
    learned: dict = dataclasses.field(default_factory=dict)


class Replay:
    """qemu's PS/2 queue replayed line by line from its trace (`feed`),
    so the same rules serve a finished walk (parse_trace) and a walk
    still typing (Ps2Gauge). `trace` is the Trace so far; `bytes_read`
    and `trace.drops` count the keys' bytes the guest read and the ones
    the full queue dropped; `queued` is what the queue holds now.
    """

    def __init__(self, what=TRACE):
        self.what = what
        self.trace = Trace([])
        self.queue = collections.deque()
        self.kbd = None
        self.cur = None
        self.pending = None         # the key whose byte was just read
        self.bytes_read = 0
        self.events = 0             # keyboard events of this keyboard

    @property
    def queued(self):
        return len(self.queue)

    def feed(self, line, no=None):
        """One line of the trace; lines that are not trace lines of the
        four events are skipped. A line of one of them that does not
        parse raises KeyHopsError naming line `no`.
        """
        m = TRACE_LINE.match(line.strip())
        if not m:
            return
        trace = self.trace
        trace.lines += 1
        event, rest = m.group(3), m.group(4) or ''
        fields = _FIELDS.get(event)
        if fields is None:
            return
        f = fields.match(rest.strip())
        if f is None:
            raise KeyHopsError('%s line %s: a %s line that does not parse: '
                               '%r' % (self.what, no or trace.lines, event,
                                       line[:120]))
        t = float(m.group(2))
        keys, queue = trace.keys, self.queue
        if event == 'ps2_keyboard_event':
            self.kbd = self.kbd or f.group(1)
            if f.group(1) != self.kbd:
                return
            cur = self.cur = QemuKey(t, int(f.group(2)), f.group(3) == '1',
                                     f.group(4) == '1')
            self.events += 1
            if keys and t - keys[-1].t < BURST_GAP_S:
                cur.burst = keys[-1].burst + 1
                cur.burst_s = keys[-1].burst_s + (t - keys[-1].t)
            keys.append(cur)
        elif event == 'ps2_put_keycode':
            cur = self.cur
            if cur is None or f.group(1) != self.kbd:
                return
            code = int(f.group(2), 16)
            cur.codes.append(code)
            if cur.xlate and code == 0xF0:
                return          # the next byte gets the break bit instead
            if len(queue) >= PS2_QUEUE_SIZE:
                cur.dropped += 1
                trace.drops += 1
                cur.depth = max(cur.depth, len(queue))
                return
            if not cur.put:
                cur.depth = len(queue)
            queue.append((cur, t))
            cur.put += 1
            trace.max_depth = max(trace.max_depth, len(queue))
        elif event == 'ps2_read_data':
            self.pending = None
            if self.kbd is None or f.group(1) != self.kbd or not queue:
                return
            key, t_put = queue.popleft()
            key.read += 1
            self.bytes_read += 1
            key.t_read = t
            trace.slowest_read_s = max(trace.slowest_read_s, t - t_put)
            self.pending = (key, t_put)
        elif event == 'pckbd_kbd_read_data':
            if self.pending is None:
                return
            value = int(f.group(1), 16)
            key, t_put = self.pending
            self.pending = None
            if value == ACK and key.values == [] and key.put:
                # a command's reply queued at the head: not this key's
                key.read -= 1
                self.bytes_read -= 1
                queue.appendleft((key, t_put))
                return
            key.values.append(value)

    def finish(self):
        trace = self.trace
        trace.left_in_queue = len(self.queue)
        for k in trace.keys:
            vals = [v for v in k.values if v != 0xE0]
            codes = [c for c in k.codes if c not in (0xF0, 0xE0)]
            if vals and codes:
                trace.learned.setdefault(codes[-1], vals[0] & 0x7F)
        return trace


def parse_trace(text, what=TRACE):
    """Replay qemu's PS/2 trace: every keyboard event with the bytes it
    put in the queue (or that were dropped, the queue full) and when the
    guest read them. Lines that are not trace lines are skipped; a cut
    last line (qemu killed) too. A trace line of these events that does
    not parse raises KeyHopsError with its line number.
    """
    replay = Replay(what)
    lines = text.split('\n')
    if lines and not text.endswith('\n'):
        lines = lines[:-1]
    for no, line in enumerate(lines, 1):
        replay.feed(line, no)
    return replay.finish()


class Ps2Gauge:
    """qemu's PS/2 trace file read while the walk types: `poll()` feeds
    the lines written since the last poll (whole lines only) to a
    Replay. Bad lines raise KeyHopsError, as parse_trace does.
    """

    def __init__(self, path):
        self.path = path
        self.replay = Replay(os.path.basename(path))
        self._offset = 0
        self._rest = b''
        self._no = 0

    def poll(self):
        try:
            with open(self.path, 'rb') as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return self.replay
        self._offset += len(data)
        data = self._rest + data
        end = data.rfind(b'\n')
        if end < 0:
            self._rest = data
            return self.replay
        self._rest = data[end + 1:]
        for line in data[:end].decode('utf-8', 'replace').split('\n'):
            self._no += 1
            self.replay.feed(line, self._no)
        return self.replay


# ------------------------------------------------------------- alignment


def align(a, b, key_a, key_b):
    """Longest common subsequence of two sequences by key: {index in a:
    index in b}. Ties keep the earlier element of `a` (a lost one of two
    identical neighbours is the later).
    """
    ka = [key_a(x) for x in a]
    kb = [key_b(y) for y in b]
    n, m = len(ka), len(kb)
    if not n or not m:
        return {}
    # lengths of the LCS of the suffixes
    L = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        row, nxt = L[i], L[i + 1]
        for j in range(m - 1, -1, -1):
            if ka[i] == kb[j] and ka[i][0] is not None:
                row[j] = nxt[j + 1] + 1
            else:
                row[j] = max(nxt[j], row[j + 1])
    out = {}
    i = j = 0
    while i < n and j < m:
        if ka[i] == kb[j] and ka[i][0] is not None and \
                L[i][j] == L[i + 1][j + 1] + 1:
            out[i] = j
            i += 1
            j += 1
        elif L[i][j + 1] >= L[i + 1][j]:
            j += 1
        else:
            i += 1
    return out


# ---------------------------------------------------------- keystrokes


@dataclasses.dataclass
class Keystroke:
    """A typed key with its modifiers' messages."""
    index: int                  # 1-based over the walk
    group: str                  # 'paste', or the pressed key's name
    pos: int                    # 1-based within its group
    char: str
    msgs: typing.List[Msg]
    registered: typing.Optional[bool] = None
    hop: str = SENT             # the last hop it reached
    lost: typing.Optional[str] = None   # why, for a lost keystroke

    @property
    def main(self):
        downs = [m for m in self.msgs if m.down and m.make not in MODIFIERS]
        return downs[0] if downs else self.msgs[0]

    def label(self):
        if self.group == 'paste':
            return 'key %d of the paste (`%s`)' % (self.pos, self.char)
        return 'key %d (`%s`)' % (self.index, self.char)

    def to_json(self):
        return {'index': self.index, 'group': self.group, 'pos': self.pos,
                'char': self.char, 'hop': self.hop, 'lost': self.lost,
                'registered': self.registered,
                'messages': [m.to_json() for m in self.msgs]}


def keystrokes(msgs):
    """Group key messages into keystrokes: the modifiers pressed before a
    key, the key, and its release and theirs.
    """
    out, pending, held = [], [], set()
    current = None
    for m in msgs:
        if m.make in MODIFIERS:
            if m.down:
                held.add(m.make)
                pending.append(m)
            else:
                held.discard(m.make)
                (current.msgs if current else pending).append(m)
            continue
        if m.down:
            shift = bool(held & {0x2A, 0x36})
            current = Keystroke(len(out) + 1, '', 0, char_of(m.make, shift),
                                pending + [m])
            pending = []
            out.append(current)
        elif current is not None:
            current.msgs.append(m)
    if pending:                 # modifiers alone
        out.append(Keystroke(len(out) + 1, '', 0, char_of(
            pending[0].make, False), pending))
    return out


def label_groups(strokes, sent):
    """Name each keystroke by what the walk sent (`sent`: the walker's
    key labels in order: a key name, or 'paste(N chars)'). Keystrokes
    beyond the labels keep their character as the group. Returns the
    (group, position) of each key the walk typed that ryll's capture
    does not have.
    """
    i = 0
    unsent = []
    for label in sent or ():
        m = re.match(r'^paste\((\d+) chars?\)$', str(label))
        n = int(m.group(1)) if m else 1
        for pos in range(1, n + 1):
            group = 'paste' if m else str(label)
            if i >= len(strokes):
                unsent.append((group, pos, i + 1))
            else:
                strokes[i].group = group
                strokes[i].pos = pos
            i += 1
    for s in strokes[i:]:
        s.group, s.pos = s.char, 1
    return unsent


# ------------------------------------------------------------- the table


@dataclasses.dataclass
class KeyHops:
    keys: typing.List[Keystroke]
    observed: dict              # hop -> None (observed) or why not
    trace: typing.Optional[Trace] = None
    load: typing.Optional[str] = None
    notes: typing.List[str] = dataclasses.field(default_factory=list)
    # key records the relay sent that ryll did not: [((t, make, down),
    # the duplicate fault's spec or None)]
    extra: list = dataclasses.field(default_factory=list)
    short_paste: typing.Optional[str] = None
    unsent: typing.Optional[str] = None

    def lost(self):
        return [k for k in self.keys if k.lost]

    def counts(self):
        out = collections.OrderedDict((h, 0) for h in HOPS)
        for k in self.keys:
            out[k.hop] += 1
        return out

    def headline(self):
        if not self.keys:
            why = self.observed.get(SENT)
            return 'no key to follow%s' % (': %s' % why if why else '')
        lost = self.lost()
        counts = self.counts()
        reached = ', '.join('%d %s' % (n, h) for h, n in counts.items()
                            if n)
        head = '%d key(s) followed, %s' % (len(self.keys), 'none lost'
                                           if not lost else
                                           '%d lost' % len(lost))
        return '%s (last hop: %s)' % (head, reached)

    def extra_line(self):
        """One line for key messages the relay sent that ryll did not (a
        duplicated key), naming the key; None when there were none.
        """
        downs = [x for x in self.extra if x[0][2]] or self.extra
        if not downs:
            return None
        (_, make, down), spec = downs[0]
        stroke = next((k for k in self.keys if k.main.key == (make, down)),
                      None)
        what = stroke.label() if stroke else 'a key (`%s`)' % char_of(
            make, False)
        return '%s crossed the proxy %s: the relay sent %d key message(s) ' \
            'ryll did not send%s' % (
                what, 'twice' if spec else 'again', len(self.extra),
                ' (fault %s)' % spec if spec else '')

    def overflow_line(self):
        """One line for key messages whose bytes qemu's full PS/2 queue
        dropped (a release, or a lost key), or None.
        """
        dropped = [(k, m) for k in self.keys for m in k.msgs
                   if m.bytes_dropped]
        if not dropped:
            return None
        k, m = dropped[0]
        first = [x for x in (x for kk in self.keys for x in kk.msgs)
                 if x.t_qemu is not None and m.t_qemu is not None and
                 0 <= m.t_qemu - x.t_qemu <= m.burst_s + 1e-6]
        sent = ''
        if len(first) > 1:
            sent = ', which ryll had sent over %.2f s' % (
                max(x.t_sent for x in first) - min(x.t_sent for x in first))
        return 'qemu\'s PS/2 queue overflowed: %d byte(s) dropped (%s)%s%s' \
            % (sum(x.bytes_dropped for _, x in dropped),
               ', '.join('%s %s' % (kk.label(), _what(x, kk).split(' ')[-1]
                                    if x.make not in (0x2A, 0x36) else
                                    'Shift ' + _what(x, kk).split(' ')[-1])
                         for kk, x in dropped),
               _burst(m), sent)

    def first_lost_line(self):
        lost = self.lost()
        if not lost:
            return self.short_paste or self.unsent or \
                self.overflow_line() or self.extra_line()
        more = ' (and %d more lost)' % (len(lost) - 1) if len(lost) > 1 \
            else ''
        also = '; and %s' % self.short_paste if self.short_paste else ''
        return '%s %s%s%s' % (lost[0].label(), lost[0].lost, more, also)

    def to_json(self):
        tr = self.trace
        return {
            'headline': self.headline(),
            'lost': [('%s %s' % (k.label(), k.lost)) for k in self.lost()],
            'extra': self.extra_line(),
            'short_paste': self.short_paste,
            'unsent': self.unsent,
            'overflow': self.overflow_line(),
            'observed': {h: ('yes' if why is None else 'no: %s' % why)
                         for h, why in self.observed.items()},
            'ps2_queue': None if tr is None else {
                'size': PS2_QUEUE_SIZE, 'max_depth': tr.max_depth,
                'bytes_dropped': tr.drops,
                'slowest_read_s': round(tr.slowest_read_s, 4),
                'left_in_queue': tr.left_in_queue,
                'keyboard_events': len(tr.keys)},
            'load': self.load,
            'notes': self.notes,
            'keys': [k.to_json() for k in self.keys],
        }


def _registered_keys(drain_keypresses, digest_keypresses):
    """(unicodes in order, source) of the keypresses the guest recorded:
    the drain's, else the ones captured digests showed, else (None, why).
    """
    if drain_keypresses is not None:
        return list(drain_keypresses), 'the drain'
    if digest_keypresses:
        seen = sorted(set(digest_keypresses))
        return [u for _, u in seen], 'captured digests (no drain)'
    return None, 'no drain and no keypress in a captured digest'


def build(inputs_pcap=None, relay_events=None, trace_text=None,
          drain_keypresses=None, digest_keypresses=None, sent=None,
          load=None, inputs_missing='no inputs capture (ryll ran without '
          '--capture)', trace_missing='no PS/2 trace (qemu ran without '
          '-trace)', pastes=None):
    """The per-key table of one walk. Every argument may be None (that
    hop is then not observed, and says why):

    - `inputs_pcap`: bytes of ryll's inputs capture;
    - `relay_events`: the relay's log records of the walk (None: the lane
      has no relay);
    - `trace_text`: qemu's PS/2 trace;
    - `drain_keypresses`: the drain's keypress unicodes in order;
    - `digest_keypresses`: [(t, unicode)] of keypress records captured
      digests showed;
    - `sent`: the walker's key labels in order;
    - `load`: /proc/loadavg's first figure, for the message;
    - `pastes`: the lengths of the guest's paste_received records in
      order (a paste the guest took shorter than the keys it read says
      where those went when no drain names them).
    """
    observed = collections.OrderedDict((h, None) for h in HOPS)
    if inputs_pcap is None:
        observed[SENT] = inputs_missing
        msgs = []
    else:
        msgs = sent_messages(inputs_pcap)
    result = KeyHops([], observed, load=load)

    # 2. the relay
    if relay_events is None:
        observed[RELAY] = 'no plain leg (no relay on the hypervisor leg)'
    else:
        crossed, dropped, moved = relay_records(relay_events)
        if not crossed and not dropped and msgs:
            observed[RELAY] = 'the relay logged no key (a relay older ' \
                'than its per-key records)'
        else:
            got = align(msgs, crossed, lambda m: m.key,
                        lambda c: (c[1], c[2]))
            rest = [m for i, m in enumerate(msgs) if i not in got]
            drops = align(rest, dropped, lambda m: m.key,
                          lambda d: (d[1], d[2]))
            for i, m in enumerate(msgs):
                if i in got:
                    m.relay, m.t_relay = 'crossed', crossed[got[i]][0]
                    m.relay_order = got[i]
            used = set(got.values())
            reorders = [x for x in moved if x[4] == 'reorder']
            for i, m in enumerate(rest):
                if i in drops:
                    d = dropped[drops[i]]
                    m.relay, m.t_relay = 'dropped', d[0]
                    m.relay_fault = '%s|%s' % (d[4], d[3])
                    continue
                # crossed, out of order: the same key later or earlier
                j = next((j for j in range(len(crossed)) if j not in used
                          and (crossed[j][1], crossed[j][2]) == m.key),
                         None)
                if j is None:
                    m.relay = 'lost'
                    continue
                used.add(j)
                m.relay, m.t_relay, m.relay_order = 'crossed', \
                    crossed[j][0], j
            # the message a reorder fault held went out after the next
            for x in reorders:
                m = next((m for m, n in zip(msgs, msgs[1:])
                          if m.key == (x[1], x[2]) and not m.reordered and
                          m.relay_order is not None and
                          n.relay_order is not None and
                          m.relay_order > n.relay_order), None)
                if m is not None:
                    m.reordered = x[3]
            result.extra = [(crossed[j], next(
                (x[3] for x in moved if x[4] == 'duplicate' and
                 (x[1], x[2]) == (crossed[j][1], crossed[j][2])), None))
                for j in range(len(crossed)) if j not in used]

    # 3, 4. qemu
    trace = None
    if trace_text is None:
        observed[QEMU] = observed[READ] = trace_missing
    else:
        trace = parse_trace(trace_text)
        result.trace = trace
        upstream = [m for m in msgs if m.relay in (None, 'crossed')]
        if observed[RELAY] is None:     # qemu got them in the relay's order
            upstream.sort(key=lambda m: (m.relay_order is None,
                                         m.relay_order or 0))
        got = align(upstream, trace.keys, lambda m: m.key,
                    lambda q: (q.make(trace.learned), q.down))
        for i, m in enumerate(upstream):
            m.qemu = i in got
            if i in got:
                q = trace.keys[got[i]]
                m.t_qemu, m.bytes_put = q.t, q.put
                m.bytes_dropped, m.depth = q.dropped, q.depth
                m.bytes_read, m.t_read = q.read, q.t_read
                m.values = list(q.values)
                m.burst, m.burst_s = q.burst, q.burst_s
        for m in upstream:
            if not m.bytes_dropped or m.t_qemu is None:
                continue
            ahead = [x.t_read - x.t_qemu for x in upstream
                     if x is not m and x.t_qemu is not None and
                     x.t_read is not None and
                     0 <= m.t_qemu - x.t_qemu <= m.burst_s + 1e-6]
            m.ahead_read_s = max(ahead) if ahead else None

    # 5. the guest
    strokes = keystrokes(msgs)
    unsent = label_groups(strokes, sent) if observed[SENT] is None else []
    registered, source = _registered_keys(drain_keypresses,
                                          digest_keypresses)
    if registered is None:
        observed[REGISTERED] = source
    else:
        candidates = [s for s in strokes if _reached_guest(s, trace)]
        got = align(candidates, registered,
                    lambda s: (unicode_of(s.char), True),
                    lambda u: (u, True))
        for i, s in enumerate(candidates):
            if i in got:
                s.registered = True
            elif source == 'the drain':
                s.registered = False
        if source != 'the drain':
            result.notes.append('registration from %s: a key no digest '
                                'showed is not known lost' % source)
    for s in strokes:
        _place(s, observed, trace, load)
    result.keys = strokes
    result.short_paste = _short_paste(strokes, pastes, trace)
    if unsent:
        group, pos, index = unsent[0]
        first = 'key %d of the paste' % pos if group == 'paste' else \
            'key %d (%s)' % (index, group)
        result.unsent = 'ryll sent %d of the %d keys the walk typed: %s%s ' \
            'never left ryll' % (
                len(strokes), len(strokes) + len(unsent), first,
                ' and the %d after it' % (len(unsent) - 1)
                if len(unsent) > 1 else '')
    return result


def _short_paste(strokes, pastes, trace):
    """A line for the first paste the guest took shorter than the keys
    of it it read (qemu traced; none lost before the guest's read), or
    None.
    """
    if trace is None or not pastes:
        return None
    groups, cur = [], None
    for k in strokes:
        if k.group != 'paste':
            cur = None
            continue
        if cur is None or k.pos == 1:
            cur = []
            groups.append(cur)
        cur.append(k)
    for keys, took in zip(groups, pastes):
        read = [k for k in keys if k.hop in (READ, REGISTERED)]
        if took >= len(read):
            continue
        return 'the guest read %s keys of the paste from qemu\'s PS/2 ' \
            'queue but its paste took %d (paste_received len=%d): %d lost ' \
            'inside the guest, after the PS/2 read (the firmware\'s key ' \
            'buffer or the guest\'s own poll)' % (
                'all %d' % len(read) if len(read) == len(keys) else
                '%d of the %d' % (len(read), len(keys)), took, took,
                len(read) - took)
    return None


def _reached_guest(stroke, trace):
    """Whether every down message of the keystroke was read by the guest
    (or no trace says otherwise).
    """
    for m in stroke.msgs:
        if not m.down:
            continue
        if m.relay in ('dropped', 'lost'):
            return False
        if trace is not None and (not m.qemu or m.bytes_read < 1):
            return False
    return True


def _place(stroke, observed, trace, load):
    """The last hop the keystroke reached and, when lost, why; a key the
    relay reordered that was then lost says so first.
    """
    _place_hop(stroke, observed, trace, load)
    moved = next((m for m in stroke.msgs if m.reordered), None)
    if stroke.lost and moved is not None:
        stroke.lost = 'crossed the proxy out of order: the relay reordered ' \
            'its %s (fault %s); then it %s' % (
                _what(moved, stroke), moved.reordered, stroke.lost)


def _place_hop(stroke, observed, trace, load):
    downs = [m for m in stroke.msgs if m.down] or stroke.msgs
    stroke.hop = SENT
    relay_seen = observed[RELAY] is None
    for m in downs:
        if m.relay == 'dropped':
            did, spec = (m.relay_fault or 'dropped|?').split('|', 1)
            stroke.lost = 'left ryll but %s the proxy: the relay %s its ' \
                '%s (fault %s)' % (
                    'was changed crossing' if did == 'corrupted' else
                    'never crossed', did, _what(m, stroke), spec)
            return
        if m.relay == 'lost':
            stroke.lost = 'left ryll but never crossed the proxy (the ' \
                'relay never forwarded its %s)' % _what(m, stroke)
            return
    if relay_seen:
        stroke.hop = RELAY
    if trace is None:
        if stroke.registered:
            stroke.hop = REGISTERED
        elif stroke.registered is False:
            stroke.lost = '%s but the guest never registered it (qemu not ' \
                'traced)' % ('crossed the proxy' if relay_seen else
                             'left ryll')
        return
    for m in downs:
        if not m.qemu:
            stroke.lost = '%s but qemu\'s PS/2 keyboard never took its %s' \
                % ('crossed the proxy' if relay_seen else 'left ryll',
                   _what(m, stroke))
            return
    stroke.hop = QEMU
    for m in downs:
        if m.bytes_dropped:
            stroke.lost = 'reached qemu but was never read by the guest: ' \
                'PS/2 queue full (qemu\'s queue held %d bytes, its %s ' \
                'dropped)%s%s' % (m.depth, _what(m, stroke),
                                  _burst(m, stroke.msgs), _ahead(m, load))
            return
        if m.bytes_read < m.bytes_put or not m.bytes_put:
            stroke.lost = 'reached qemu but was never read by the guest: ' \
                'its %s was still in the PS/2 queue at the end (%d ' \
                'byte(s) left)%s' % (_what(m, stroke), trace.left_in_queue,
                                     _starved(trace, load))
            return
    stroke.hop = READ
    if stroke.registered:
        stroke.hop = REGISTERED
    elif stroke.registered is False:
        stroke.lost = 'was read by the guest but never registered (not ' \
            'in the drain\'s keypress records)'


def _burst(msg, msgs=()):
    """', when 18 key events reached qemu within 0.2 ms' for a message
    that came in a burst (more than one event), else ''.
    """
    if msg.burst < 2:
        return ''
    return ': %d key events reached qemu within %.1f ms' % (
        msg.burst, msg.burst_s * 1000)


def _what(msg, stroke):
    name = 'Shift' if msg.make in (0x2A, 0x36) else stroke.char
    return '%s %s' % (name, 'press' if msg.down else 'release')


def _ahead(msg, load):
    """How fast the guest read the bytes queued ahead of a dropped one
    ('guest starved' when that took 0.2 s or more), and the load.
    """
    parts = []
    if msg.ahead_read_s is not None:
        parts.append('the guest read the bytes queued ahead of it within '
                     '%.3f s' % msg.ahead_read_s)
    if load:
        parts.append('load %s' % load)
    if not parts:
        return ''
    starved = msg.ahead_read_s is not None and msg.ahead_read_s >= 0.2
    return '%s (%s)' % (', guest starved' if starved else '',
                        ', '.join(parts))


def _starved(trace, load):
    parts = ['the guest\'s slowest read came %.2f s after its byte was '
             'queued' % trace.slowest_read_s]
    if load:
        parts.append('load %s' % load)
    return ', guest starved (%s)' % ', '.join(parts) \
        if trace.slowest_read_s >= 0.2 else ' (%s)' % ', '.join(parts)


# --------------------------------------------------------------- report


REPORT_COLUMNS = ('key', 'char', 'last hop', 'left ryll (s)', 'proxy',
                  'qemu queue (bytes held)', 'read after (s)', 'registered',
                  'why lost')


def report_section(data):
    """{'headline', 'verdict', 'rows'} for report.html from keyhops.json
    (every lost key, then the keys of the paste), or None.
    """
    if not data:
        return None
    rows = []
    for k in data.get('keys', []):
        msgs = k.get('messages') or []
        main = next((m for m in msgs if m.get('down') and
                     int(m['make'], 16) not in MODIFIERS),
                    msgs[0] if msgs else {})
        read_after = None
        if main.get('t_read') is not None and main.get('t_qemu') is not None:
            read_after = '%.3f' % (main['t_read'] - main['t_qemu'])
        rows.append((
            k['group'] if k['group'] != 'paste' else 'paste %d' % k['pos'],
            k['char'], k['hop'], '%.3f' % main.get('t_sent', 0.0),
            main.get('relay') or '-',
            '-' if main.get('qemu') is None else (
                'not taken' if not main.get('qemu') else '%d%s' % (
                    main.get('depth', 0), ', dropped'
                    if main.get('bytes_dropped') else '')),
            read_after or '-',
            {True: 'yes', False: 'no', None: '?'}[k.get('registered')],
            k.get('lost') or ''))
    lines = list(data.get('lost') or []) + [
        data[k] for k in ('short_paste', 'unsent', 'overflow', 'extra')
        if data.get(k)]
    return {'headline': data.get('headline', ''),
            'verdict': 'FAIL' if lines else 'PASS', 'rows': rows,
            'lost': lines,
            'observed': data.get('observed') or {},
            'ps2_queue': data.get('ps2_queue')}


# ------------------------------------------------------------ for a walk


def _read(path, binary=False):
    if not path or not os.path.exists(path):
        return None
    with open(path, 'rb' if binary else 'r',
              **({} if binary else {'errors': 'replace'})) as f:
        return f.read()


def loadavg():
    """/proc/loadavg's 1-minute figure as text, or None."""
    try:
        with open('/proc/loadavg') as f:
            return f.read().split()[0]
    except (OSError, IndexError):
        return None


def for_walk(art_path, relay_events=None, drain=None, digests=(),
             sent=None, load=None):
    """The table of the walk whose artifacts are in `art_path` (ryll's
    inputs capture and qemu's trace, as the runner copies them), as
    keyhops.json holds it. Never raises: evidence that cannot be read is
    said in 'error', and the check does not run.
    """
    pcap = _read(os.path.join(art_path, INPUTS_CAPTURE), binary=True)
    trace = _read(os.path.join(art_path, TRACE))
    drain_keys = None
    # a walk that stopped first left no drain (only what serial held)
    if drain is not None and drain.complete:
        drain_keys = [r.fields.get('unicode') for r in drain.records
                      if r.type == 'keypress']
    seen, pastes = [], {}
    for cd in digests or ():
        for e in getattr(cd, 'events', ()):
            if getattr(e, 'kind', None) == 'keypress':
                seen.append((e.timestamp_ms, e.unicode))
            elif getattr(e, 'kind', None) == 'paste_received':
                pastes[e.timestamp_ms] = e.length
    pastes = [pastes[t] for t in sorted(pastes)]
    if drain is not None and drain.complete:
        pastes = [r.fields.get('len') for r in drain.records
                  if r.type == 'paste']
    try:
        hops = build(pcap, relay_events, trace, drain_keys, seen, sent,
                     load=load, pastes=pastes)
    except KeyHopsError as e:
        return None, {'headline': 'not run: %s' % e, 'error': str(e),
                      'keys': [], 'lost': []}
    return hops, hops.to_json()


CANONICAL_SENT = ('enter', 'i', 'paste(23 chars)', 'enter', 'enter')


def main(argv=None):
    """Rebuild keyhops.json's table for kept artifact directories (ryll's
    inputs capture, qemu's trace, serial.log, fault-relay.jsonl there)
    and print each one's headline and lost keys.
    """
    import argparse
    import json
    from kerbside_tempest_plugin.lane import relay as lane_relay
    from kerbside_tempest_plugin.sextant import drain as drain_mod
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument('dirs', nargs='+')
    p.add_argument('--sent', default=None,
                   help="the walk's keys in order, comma-separated (the "
                   "canonical walk's by default, and then keys it did not "
                   "reach are not reported as never sent)")
    p.add_argument('--write', action='store_true',
                   help='write keyhops.json in each directory')
    args = p.parse_args(argv)
    for d in args.dirs:
        text = _read(os.path.join(d, 'serial.log'))
        drain = None
        if text:
            try:
                drain = drain_mod.parse(text)
            except drain_mod.SerialParseError:
                drain = None
        relay_path = os.path.join(d, 'fault-relay.jsonl')
        relay = lane_relay.read_log(relay_path) \
            if os.path.exists(relay_path) else None
        _, data = for_walk(d, relay_events=relay, drain=drain,
                           sent=(args.sent or ','.join(CANONICAL_SENT)
                                 ).split(','))
        if args.sent is None:
            data['unsent'] = None
        print('%s: %s' % (d, data['headline']))
        for line in data.get('lost') or ():
            print('  ' + line)
        if args.write:
            with open(os.path.join(d, NAME), 'w') as f:
                json.dump(data, f, indent=1)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())

"""Fault specifications for the SPICE fault relay (spice.relay).

A fault is written as one line a person can type:

    ACTION[,key=value ...]        several faults: joined by ';'

    drop,channel=inputs,type=key_down,after_keys=5
    corrupt,channel=display,type=draw_copy,nth=40
    stall,channel=display,after=8,duration=20
    cut,channel=display,after_keys=12
    delay,channel=inputs,dir=c2s,ms=150,count=all

Actions, each on the messages that match `channel`, `dir` and `type`:

- corrupt: XOR 0x5A over the body's last quarter (at most 4 KiB; for a
  draw that is its pixels), or over the first byte of a body of at most 8
  bytes (a key's scancode);
  `offset=`/`length=` choose other bytes of the body;
- drop: not forwarded;
- duplicate: forwarded twice; with `span=N` the next N matching
  messages are forwarded as a block, then the block again (a keystroke
  is a key_down and its key_up: `span=2` on the inputs channel repeats
  it; qemu takes a second key_down of a key already down as nothing);
- reorder: held, then forwarded after the next matching message (released
  alone after `hold=` seconds, 2 by default, when none comes);
- delay: forwarded `ms=` milliseconds late (and so is what follows it);
- stall: nothing more in that direction of that connection is forwarded
  for `duration=` seconds, then all of it is released in order;
- fragment: forwarded in writes of `size=` bytes (1 by default);
- cut: the connection is reset (both legs) instead of forwarding it;
  a cut without `type=` or `nth=` fires as soon as its trigger holds,
  even on a channel that sends nothing (main is quiet for seconds).

Which messages match: `channel=` main|display|inputs|cursor|... or `*`
(default `*`); `dir=` s2c (from the hypervisor), c2s (to it) or both
(default: c2s on inputs, both on `*`, s2c elsewhere); `type=` a message
name of spice.wire (`draw_copy`, `key_down`, `type-N`) or any message.

When it fires (the trigger; all given must hold, default: at once), all
counted from when the fault was armed: `nth=N` the Nth matching message
(1-based); `after_keys=K` once K key_down messages went to the
hypervisor; `after=T` once T seconds passed since the clock started: at
arming when a channel is open then, else at the next channel's link (so a
fault armed before a test's client connects counts from its connection).
`outside=X:Y:W:H` only display draws that paint nothing of that
rectangle (a fault away from the digest's QR, whose error correction
would hide it); `inside=X:Y:W:H` only draws that paint within it (a
tile of that QR). `count=M` messages are affected from the trigger on
(default 1; `all`:
every later match). A fault fires once per relay unless `count=all`.

Everything here is pure: parsing and the trigger's bookkeeping. A spec
that cannot be understood raises FaultSpecError naming the part.
"""

import dataclasses
import struct
import typing

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.spice import wire

ACTIONS = ('corrupt', 'drop', 'duplicate', 'reorder', 'delay', 'stall',
           'fragment', 'cut')
# Faults that change what arrives, and those that only change when and in
# what pieces it arrives (the "benign" ones a healthy harness must pass,
# unless they last long enough to be a fault of their own).
CONTENT_ACTIONS = ('corrupt', 'drop', 'duplicate', 'reorder', 'cut')
CORRUPT_XOR = 0x5A
CORRUPT_MAX = 4096
SMALL_BODY = 8
_KEYS = {'channel', 'dir', 'type', 'nth', 'after_keys', 'after', 'count',
         'ms', 'duration', 'size', 'offset', 'length', 'hold', 'span',
         'outside', 'inside'}


class FaultSpecError(errors.HarnessError, ValueError):
    """A fault spec that cannot be understood."""


def _number(text, key, spec, kind=float, minimum=0):
    raw = text[:-1] if kind is float and text.endswith('s') else text
    try:
        value = kind(raw)
    except ValueError:
        raise FaultSpecError('fault %r: %s=%s is not a %s' % (
            spec, key, text, 'number' if kind is float else 'whole number'))
    if value < minimum:
        raise FaultSpecError('fault %r: %s=%s is below %s' % (
            spec, key, text, minimum))
    return value


@dataclasses.dataclass
class Fault:
    action: str
    channel: str = '*'
    direction: str = 'both'
    msg_type: typing.Optional[int] = None
    type_name: str = ''
    nth: typing.Optional[int] = None
    after_keys: typing.Optional[int] = None
    after_s: typing.Optional[float] = None
    count: typing.Optional[int] = 1         # None: every later match
    delay_ms: float = 0.0
    duration_s: float = 0.0
    size: int = 1
    offset: typing.Optional[int] = None
    length: typing.Optional[int] = None
    hold_s: float = 2.0
    span: int = 1
    outside: typing.Optional[tuple] = None     # x, y, w, h
    inside: typing.Optional[tuple] = None      # x, y, w, h
    spec: str = ''
    # bookkeeping (relay side): counted from arming
    matched: int = 0
    fired: int = 0
    base_keys: int = 0
    t_start: typing.Optional[float] = None      # monotonic; None: not yet

    def text(self):
        return self.spec

    def directions(self):
        return wire.DIRECTIONS if self.direction == 'both' else \
            (self.direction,)

    def matches(self, channel, direction, msg_type):
        if self.channel != '*' and channel != self.channel:
            return False
        if direction not in self.directions():
            return False
        return self.msg_type is None or msg_type == self.msg_type

    @property
    def exhausted(self):
        return self.count is not None and self.fired >= self.count

    def arm(self, keys, now=None):
        """Start counting: `keys` have crossed so far; `now` (monotonic)
        starts the clock, None leaves it for the next link (`linked`).
        """
        self.base_keys = keys
        self.t_start = now

    def linked(self, now):
        if self.t_start is None:
            self.t_start = now

    def armed(self, keys, now):
        """Whether the time and key triggers hold (the message one is
        counted in `take`).
        """
        if self.after_keys is not None and \
                keys - self.base_keys < self.after_keys:
            return False
        if self.after_s is None:
            return True
        return self.t_start is not None and now - self.t_start >= \
            self.after_s

    def take(self, channel, direction, msg_type, keys, now, rect=None):
        """Whether this message is one the fault acts on; counts it.
        `keys` is the relay's key count, `now` a monotonic time, `rect`
        what a draw paints (for `outside=`).
        """
        if self.exhausted or not self.matches(channel, direction, msg_type):
            return False
        if self.outside is not None and (
                rect is None or _overlap(rect, self.outside)):
            return False
        if self.inside is not None and (
                rect is None or not _within(rect, self.inside)):
            return False
        if not self.armed(keys, now):
            return False
        self.matched += 1
        if self.nth is not None and self.matched < self.nth:
            return False
        self.fired += 1
        return True

    def corrupt(self, body: bytes) -> typing.Tuple[bytes, int, int]:
        """`body` with the chosen bytes XORed; (new body, offset, length)."""
        n = len(body)
        if n == 0:
            return body, 0, 0
        if self.offset is not None:
            start = min(self.offset, n - 1)
            length = self.length or 1
        elif n <= SMALL_BODY:
            start, length = 0, self.length or 1     # a key's scancode
        else:
            length = self.length or max(1, min(CORRUPT_MAX, n // 4))
            start = n - length
        end = min(n, start + length)
        out = bytearray(body)
        for i in range(start, end):
            out[i] ^= CORRUPT_XOR
        return bytes(out), start, end - start


def _default_direction(channel):
    if channel == '*':
        return 'both'
    return wire.C2S if channel == 'inputs' else wire.S2C


def parse_one(spec: str) -> Fault:
    text = spec.strip()
    parts = [p.strip() for p in text.split(',') if p.strip()]
    if not parts:
        raise FaultSpecError('an empty fault spec')
    action = parts[0].lower()
    if action not in ACTIONS:
        raise FaultSpecError('fault %r: %r is no action (one of %s)' % (
            text, parts[0], ', '.join(ACTIONS)))
    kv = {}
    for p in parts[1:]:
        key, sep, value = p.partition('=')
        key = key.strip().lower().replace('-', '_')
        if not sep or not value.strip():
            raise FaultSpecError('fault %r: %r is not key=value' % (text, p))
        if key not in _KEYS:
            raise FaultSpecError('fault %r: unknown key %r (known: %s)' % (
                text, key, ', '.join(sorted(_KEYS))))
        kv[key] = value.strip()
    channel = kv.get('channel', '*').lower()
    if channel != '*' and channel not in wire.CHANNEL_TYPES:
        raise FaultSpecError('fault %r: channel=%s is no SPICE channel (%s)'
                             % (text, channel,
                                ', '.join(sorted(wire.CHANNEL_TYPES))))
    direction = kv.get('dir', _default_direction(channel)).lower()
    if direction not in ('both',) + wire.DIRECTIONS:
        raise FaultSpecError('fault %r: dir=%s (s2c, c2s or both)' % (
            text, direction))
    f = Fault(action=action, channel=channel, direction=direction,
              spec=text)
    if 'type' in kv:
        if channel == '*' or direction == 'both':
            raise FaultSpecError('fault %r: type= needs one channel and '
                                 'one dir' % text)
        try:
            f.msg_type = wire.message_type(channel, direction, kv['type'])
        except ValueError as e:
            raise FaultSpecError('fault %r: %s' % (text, e))
        f.type_name = wire.message_name(channel, direction, f.msg_type)
    if 'nth' in kv:
        f.nth = _number(kv['nth'], 'nth', text, int, 1)
    if 'after_keys' in kv:
        f.after_keys = _number(kv['after_keys'], 'after_keys', text, int)
    if 'after' in kv:
        f.after_s = _number(kv['after'], 'after', text)
    if 'count' in kv:
        f.count = None if kv['count'].lower() == 'all' else \
            _number(kv['count'], 'count', text, int, 1)
    if 'ms' in kv:
        f.delay_ms = _number(kv['ms'], 'ms', text)
    if 'duration' in kv:
        f.duration_s = _number(kv['duration'], 'duration', text)
    if 'size' in kv:
        f.size = _number(kv['size'], 'size', text, int, 1)
    if 'offset' in kv:
        f.offset = _number(kv['offset'], 'offset', text, int)
    if 'length' in kv:
        f.length = _number(kv['length'], 'length', text, int, 1)
    if 'hold' in kv:
        f.hold_s = _number(kv['hold'], 'hold', text)
    for key, what in (('outside', 'draws must not touch'),
                      ('inside', 'draws must lie within')):
        if key not in kv:
            continue
        parts = kv[key].split(':')
        if len(parts) != 4:
            raise FaultSpecError('fault %r: %s=X:Y:W:H (a rectangle %s)'
                                 % (text, key, what))
        setattr(f, key, tuple(_number(v, key, text, int) for v in parts))
    if 'span' in kv:
        f.span = _number(kv['span'], 'span', text, int, 1)
        if 'count' not in kv:
            f.count = f.span            # the whole block, once
    needs = {'delay': ('ms', f.delay_ms),
             'stall': ('duration', f.duration_s)}
    if action in needs and not needs[action][1]:
        raise FaultSpecError('fault %r: %s needs %s=' % (
            text, action, needs[action][0]))
    return f


def parse(spec: typing.Optional[str]) -> typing.List[Fault]:
    """Every fault of `spec` (';'-separated; None or '' gives none)."""
    if not spec or not spec.strip():
        return []
    return [parse_one(s) for s in spec.split(';') if s.strip()]


def _overlap(a, b):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah


def _within(a, b):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return bx <= ax and by <= ay and ax + aw <= bx + bw and \
        ay + ah <= by + bh


def draw_rect(msg_type: int, body: bytes):
    """(x, y, w, h) a display draw message says it paints (its
    SpiceMsgDisplayBase box), or None for a message without one.
    """
    if msg_type not in wire.DISPLAY_DRAWS or msg_type in (123, 316):
        return None
    if len(body) < 20:
        return None
    top, left, bottom, right = struct.unpack_from('<iiii', body, 4)
    return [left, top, right - left, bottom - top]

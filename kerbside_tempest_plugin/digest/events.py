"""Digest event records (contract §1.5): one frozen dataclass per kind.

Every event knows its wire tag, the hash channel it feeds (§1.3), its TLV
bytes (`tlv()`, exactly what the guest emits and hashes) and a JSON form
using the snake_case names of the newest crate. `from_value()` parses the
value bytes of a TLV record and raises typed errors naming the byte offset.
"""

import dataclasses
import struct
import typing

from kerbside_tempest_plugin.digest import errors

PHASES = {0x00: 'awaiting', 0x01: 'booting', 0x02: 'parked',
          0x03: 'stream_exercise'}
PHASE_CODES = {v: k for k, v in PHASES.items()}
CHOICES = {0x00: 'retry', 0x01: 'ignore', 0x02: 'abort'}
CHOICE_CODES = {v: k for k, v in CHOICES.items()}

U16 = 0xFFFF


def _code(table, value, what):
    try:
        return table[value]
    except KeyError:
        raise errors.EncodeError('unknown %s %r' % (what, value)) from None


def _flag(value, what, offset):
    if value not in (0, 1):
        raise errors.BadEnumValue(
            '%s byte must be 0 or 1, got 0x%02x' % (what, value), offset)
    return bool(value)


def _lookup(table, value, what, offset):
    if value not in table:
        raise errors.BadEnumValue(
            'unknown %s discriminant 0x%02x' % (what, value), offset)
    return table[value]


class Event:
    """Common behaviour; subclasses are frozen dataclasses."""

    TAG = None
    KIND = None
    SERIAL_TYPE = None
    # struct format of the value fields after the u64 timestamp.
    FIELDS_FMT = ''

    @property
    def kind(self):
        return self.KIND

    @property
    def channel_tag(self):
        return self.TAG + 0x10

    def _fields(self):
        """Wire integers after the timestamp, in FIELDS_FMT order."""
        return ()

    def value(self):
        fmt = '<Q' + self.FIELDS_FMT
        try:
            return struct.pack(fmt, self.timestamp_ms, *self._fields())
        except struct.error as e:
            raise errors.EncodeError(
                'cannot encode %s %r: %s' % (self.KIND, self, e)) from None

    def tlv(self):
        value = self.value()
        return bytes((self.TAG, len(value))) + value

    @classmethod
    def value_length(cls):
        return struct.calcsize('<Q' + cls.FIELDS_FMT)

    @classmethod
    def record_size(cls):
        return 2 + cls.value_length()

    @classmethod
    def from_value(cls, value, offset=0):
        """Parse TLV value bytes; `offset` is where the value starts."""
        if len(value) != cls.value_length():
            raise errors.BadRecordLength(
                '%s record (tag 0x%02x) must carry %d value bytes, got %d'
                % (cls.KIND, cls.TAG, cls.value_length(), len(value)),
                offset - 2)
        t, *rest = struct.unpack('<Q' + cls.FIELDS_FMT, value)
        return cls._build(t, rest, offset + 8)

    @classmethod
    def _build(cls, t, rest, offset):
        return cls(t, *rest)

    def _json_fields(self):
        return {}

    def to_json(self):
        out = {'kind': self.KIND, 'timestamp_ms': self.timestamp_ms}
        out.update(self._json_fields())
        return out


@dataclasses.dataclass(frozen=True)
class Keypress(Event):
    timestamp_ms: int
    unicode: int
    scancode: int

    TAG = 0x01
    KIND = 'keypress'
    SERIAL_TYPE = 'keypress'
    FIELDS_FMT = 'HH'

    def _fields(self):
        # The guest truncates the char value to u16.
        return (self.unicode & U16, self.scancode)

    @classmethod
    def _build(cls, t, rest, offset):
        uni, scan = rest
        if 0xD800 <= uni <= 0xDFFF:
            uni = 0xFFFD    # not a valid code point (upstream rule §1.7)
        return cls(t, uni, scan)

    def _json_fields(self):
        return {'unicode': self.unicode, 'scancode': self.scancode}


@dataclasses.dataclass(frozen=True)
class LineRendered(Event):
    timestamp_ms: int
    row: int

    TAG = 0x02
    KIND = 'line_rendered'
    SERIAL_TYPE = 'line'
    FIELDS_FMT = 'H'

    def _fields(self):
        return (self.row & U16,)

    def _json_fields(self):
        return {'row': self.row}


@dataclasses.dataclass(frozen=True)
class SceneTransition(Event):
    timestamp_ms: int
    from_phase: str
    to_phase: str

    TAG = 0x03
    KIND = 'scene_transition'
    SERIAL_TYPE = 'transition'
    FIELDS_FMT = 'BB'

    def _fields(self):
        return (_code(PHASE_CODES, self.from_phase, 'phase'),
                _code(PHASE_CODES, self.to_phase, 'phase'))

    @classmethod
    def _build(cls, t, rest, offset):
        return cls(t, _lookup(PHASES, rest[0], 'phase', offset),
                   _lookup(PHASES, rest[1], 'phase', offset + 1))

    def _json_fields(self):
        return {'from': self.from_phase, 'to': self.to_phase}


@dataclasses.dataclass(frozen=True)
class BootloaderDecision(Event):
    timestamp_ms: int
    choice: str
    attempt: int

    TAG = 0x04
    KIND = 'bootloader_decision'
    SERIAL_TYPE = 'bootloader_decision'
    FIELDS_FMT = 'BI'

    def _fields(self):
        return (_code(CHOICE_CODES, self.choice, 'choice'), self.attempt)

    @classmethod
    def _build(cls, t, rest, offset):
        return cls(t, _lookup(CHOICES, rest[0], 'choice', offset), rest[1])

    def _json_fields(self):
        return {'choice': self.choice, 'attempt': self.attempt}


@dataclasses.dataclass(frozen=True)
class PasteReceived(Event):
    timestamp_ms: int
    length: int
    correct: bool

    TAG = 0x05
    KIND = 'paste_received'
    SERIAL_TYPE = 'paste'
    FIELDS_FMT = 'HB'

    def _fields(self):
        return (self.length & U16, 1 if self.correct else 0)

    @classmethod
    def _build(cls, t, rest, offset):
        return cls(t, rest[0], _flag(rest[1], 'paste correct', offset + 2))

    def _json_fields(self):
        return {'len': self.length, 'correct': self.correct}


@dataclasses.dataclass(frozen=True)
class BootloaderTimeout(Event):
    timestamp_ms: int

    TAG = 0x06
    KIND = 'bootloader_timeout'
    SERIAL_TYPE = 'bootloader_timeout'


@dataclasses.dataclass(frozen=True)
class ModeSwitch(Event):
    timestamp_ms: int
    req_w: int
    req_h: int
    app_w: int
    app_h: int

    TAG = 0x07
    KIND = 'mode_switch'
    SERIAL_TYPE = 'mode_switch'
    FIELDS_FMT = 'HHHH'

    @property
    def requested(self):
        return (self.req_w, self.req_h)

    @property
    def applied(self):
        return (self.app_w, self.app_h)

    def _fields(self):
        return (self.req_w & U16, self.req_h & U16,
                self.app_w & U16, self.app_h & U16)

    def _json_fields(self):
        return {'requested': list(self.requested),
                'applied': list(self.applied)}


@dataclasses.dataclass(frozen=True)
class ModeCycle(Event):
    timestamp_ms: int
    count: int
    interrupted: bool

    TAG = 0x08
    KIND = 'mode_cycle'
    SERIAL_TYPE = 'mode_cycle'
    FIELDS_FMT = 'IB'

    def _fields(self):
        return (self.count, 1 if self.interrupted else 0)

    @classmethod
    def _build(cls, t, rest, offset):
        return cls(t, rest[0], _flag(rest[1], 'mode_cycle interrupted',
                                     offset + 4))

    def _json_fields(self):
        return {'count': self.count, 'interrupted': self.interrupted}


@dataclasses.dataclass(frozen=True)
class UnknownRecord:
    """A TLV record with a reserved tag: kept, not rejected (§1.7)."""

    tag: int
    value: bytes

    kind = 'unknown'
    timestamp_ms = None

    def tlv(self):
        if not 0 <= self.tag <= 0xFF or len(self.value) > 0xFF:
            raise errors.EncodeError('unknown record does not fit a TLV: '
                                     'tag %r, %d value bytes'
                                     % (self.tag, len(self.value)))
        return bytes((self.tag, len(self.value))) + bytes(self.value)

    def to_json(self):
        return {'kind': 'unknown', 'tag': self.tag,
                'value': bytes(self.value).hex()}


EVENT_TYPES: typing.Tuple[type, ...] = (
    Keypress, LineRendered, SceneTransition, BootloaderDecision,
    PasteReceived, BootloaderTimeout, ModeSwitch, ModeCycle)
BY_TAG = {cls.TAG: cls for cls in EVENT_TYPES}
BY_KIND = {cls.KIND: cls for cls in EVENT_TYPES}
BY_SERIAL_TYPE = {cls.SERIAL_TYPE: cls for cls in EVENT_TYPES}
# Hash-block channel names in wire order (tags 0x11..0x18).
CHANNELS = tuple(cls.KIND for cls in EVENT_TYPES)
CHANNEL_TAGS = {cls.KIND: cls.TAG + 0x10 for cls in EVENT_TYPES}

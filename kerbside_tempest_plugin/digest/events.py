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


def _lookup(table, value, what, offset):
    if value not in table:
        raise errors.BadEnumValue(
            'unknown %s discriminant 0x%02x' % (what, value), offset)
    return table[value]


class Codec:
    """How one value field maps between the dataclass and the wire."""

    def __init__(self, encode=None, decode=None):
        self.encode = encode or (lambda v: v)
        self.decode = decode or (lambda v, offset, what: v)


def _decode_unicode(value, offset, what):
    # Not a valid code point becomes U+FFFD (upstream rule §1.7).
    return 0xFFFD if 0xD800 <= value <= 0xDFFF else value


def _decode_flag(value, offset, what):
    if value not in (0, 1):
        raise errors.BadEnumValue(
            '%s byte must be 0 or 1, got 0x%02x' % (what, value), offset)
    return bool(value)


INT = Codec()
# The guest narrows these to u16 (stored wider in memory).
U16_TRUNC = Codec(encode=lambda v: v & U16)
UNICODE = Codec(encode=lambda v: v & U16, decode=_decode_unicode)
FLAG = Codec(encode=lambda v: 1 if v else 0, decode=_decode_flag)
PHASE = Codec(encode=lambda v: _code(PHASE_CODES, v, 'phase'),
              decode=lambda v, off, what: _lookup(PHASES, v, 'phase', off))
CHOICE = Codec(encode=lambda v: _code(CHOICE_CODES, v, 'choice'),
               decode=lambda v, off, what: _lookup(CHOICES, v, 'choice',
                                                   off))


class Event:
    """Common behaviour; subclasses are frozen dataclasses.

    WIRE lists the value fields after the u64 timestamp as
    (attribute, struct format, Codec, JSON name), in wire order.
    """

    TAG = None
    KIND = None
    SERIAL_TYPE = None
    WIRE = ()

    @property
    def kind(self):
        return self.KIND

    @property
    def channel_tag(self):
        return self.TAG + 0x10

    @classmethod
    def _fmt(cls):
        return '<Q' + ''.join(f[1] for f in cls.WIRE)

    def value(self):
        try:
            return struct.pack(self._fmt(), self.timestamp_ms, *(
                codec.encode(getattr(self, attr))
                for attr, _, codec, _ in self.WIRE))
        except (struct.error, TypeError) as e:
            raise errors.EncodeError(
                'cannot encode %s %r: %s' % (self.KIND, self, e)) from None

    def tlv(self):
        value = self.value()
        return bytes((self.TAG, len(value))) + value

    @classmethod
    def value_length(cls):
        return struct.calcsize(cls._fmt())

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
        t, *rest = struct.unpack(cls._fmt(), value)
        args = []
        pos = offset + 8
        for (attr, fmt, codec, _), raw in zip(cls.WIRE, rest):
            args.append(codec.decode(raw, pos, '%s %s' % (cls.KIND, attr)))
            pos += struct.calcsize('<' + fmt)
        return cls(t, *args)

    def _json_fields(self):
        return {name: getattr(self, attr) for attr, _, _, name in self.WIRE}

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
    WIRE = (('unicode', 'H', UNICODE, 'unicode'),
            ('scancode', 'H', INT, 'scancode'))


@dataclasses.dataclass(frozen=True)
class LineRendered(Event):
    timestamp_ms: int
    row: int

    TAG = 0x02
    KIND = 'line_rendered'
    SERIAL_TYPE = 'line'
    WIRE = (('row', 'H', U16_TRUNC, 'row'),)


@dataclasses.dataclass(frozen=True)
class SceneTransition(Event):
    timestamp_ms: int
    from_phase: str
    to_phase: str

    TAG = 0x03
    KIND = 'scene_transition'
    SERIAL_TYPE = 'transition'
    WIRE = (('from_phase', 'B', PHASE, 'from'),
            ('to_phase', 'B', PHASE, 'to'))


@dataclasses.dataclass(frozen=True)
class BootloaderDecision(Event):
    timestamp_ms: int
    choice: str
    attempt: int

    TAG = 0x04
    KIND = 'bootloader_decision'
    SERIAL_TYPE = 'bootloader_decision'
    WIRE = (('choice', 'B', CHOICE, 'choice'),
            ('attempt', 'I', INT, 'attempt'))


@dataclasses.dataclass(frozen=True)
class PasteReceived(Event):
    timestamp_ms: int
    length: int
    correct: bool

    TAG = 0x05
    KIND = 'paste_received'
    SERIAL_TYPE = 'paste'
    WIRE = (('length', 'H', U16_TRUNC, 'len'),
            ('correct', 'B', FLAG, 'correct'))


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
    WIRE = tuple((attr, 'H', U16_TRUNC, attr)
                 for attr in ('req_w', 'req_h', 'app_w', 'app_h'))

    @property
    def requested(self):
        return (self.req_w, self.req_h)

    @property
    def applied(self):
        return (self.app_w, self.app_h)

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
    WIRE = (('count', 'I', INT, 'count'),
            ('interrupted', 'B', FLAG, 'interrupted'))


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

"""The visual-digest payload codec, schema v2 (docs/contracts/sextant.md §1).

`decode` follows the upstream decoder's rules (§1.7) byte for byte; every
rejection is a DigestError subclass naming the offset. `encode` applies the
guest's raw-window selection rule (§1.5), so encode and decode round-trip.
"""

import dataclasses
import struct
import typing

from kerbside_tempest_plugin.digest import errors
from kerbside_tempest_plugin.digest import events as ev

MAGIC = b'SXDG'
SCHEMA_VERSION = 0x02
HEADER_LEN = 10
HASH_BLOCK_LEN = 48
HASH_BLOCK_OFFSET = HEADER_LEN
RAW_OFFSET = HEADER_LEN + HASH_BLOCK_LEN      # 58
TRAILER_LEN = 4
MIN_LEN = RAW_OFFSET + TRAILER_LEN            # 62
CAPACITY = 106                                # V5-L byte-mode capacity
RAW_BUDGET = CAPACITY - 14 - HASH_BLOCK_LEN   # 44
MAX_RAW_RECORDS = 255 - 8


@dataclasses.dataclass(frozen=True)
class Digest:
    schema_version: int
    frame_counter: int
    record_count: int
    hashes: typing.Dict[str, int]
    events: typing.Tuple[typing.Any, ...]
    framebuffer_hash: int
    raw: bytes

    def to_json(self):
        return {
            'frame_counter': self.frame_counter,
            'schema_version': self.schema_version,
            'record_count': self.record_count,
            'hashes': dict(self.hashes),
            'events': [e.to_json() for e in self.events],
            'framebuffer_hash': self.framebuffer_hash,
        }


def decode(data) -> Digest:
    """Decode a digest payload (bytes) or raise a DigestError subclass."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise errors.DigestError('payload must be bytes, not %s'
                                 % type(data).__name__)
    data = bytes(data)
    n = len(data)
    if n < MIN_LEN:
        raise errors.PayloadTooShort(
            'payload is %d bytes; a v2 digest needs at least %d'
            % (n, MIN_LEN), n)
    if data[:4] != MAGIC:
        raise errors.BadMagic('magic is %r, expected %r'
                              % (data[:4], MAGIC), 0)
    if data[4] != SCHEMA_VERSION:
        raise errors.UnsupportedVersion(
            'schema version 0x%02x is not supported (expected 0x%02x)'
            % (data[4], SCHEMA_VERSION), 4)
    frame_counter, count = struct.unpack_from('<IB', data, 5)
    if count < 8:
        raise errors.BadRecordCount(
            'record count %d is below the 8 hash records' % count, 9)

    hashes = {}
    for i, channel in enumerate(ev.CHANNELS):
        off = HASH_BLOCK_OFFSET + 6 * i
        tag, length, value = struct.unpack_from('<BBI', data, off)
        want = ev.CHANNEL_TAGS[channel]
        if tag != want:
            raise errors.BadHashRecord(
                'hash record %d has tag 0x%02x, expected 0x%02x (%s)'
                % (i, tag, want, channel), off)
        if length != 4:
            raise errors.BadHashRecord(
                'hash record %d (%s) has length byte %d, expected 4'
                % (i, channel, length), off + 1)
        hashes[channel] = value

    end = n - TRAILER_LEN
    pos = RAW_OFFSET
    records = []
    while pos < end:
        if end - pos == 1:
            raise errors.TrailingByte(
                'one orphan byte 0x%02x before the trailer' % data[pos], pos)
        tag, length = data[pos], data[pos + 1]
        vstart = pos + 2
        if vstart + length > end:
            raise errors.TruncatedValue(
                'record tag 0x%02x declares %d value bytes but only %d '
                'remain before the trailer' % (tag, length, end - vstart),
                pos)
        value = data[vstart:vstart + length]
        cls = ev.BY_TAG.get(tag)
        if cls is None:
            records.append(ev.UnknownRecord(tag, value))
        else:
            records.append(cls.from_value(value, vstart))
        pos = vstart + length
    (fb_hash,) = struct.unpack_from('<I', data, end)
    return Digest(schema_version=data[4], frame_counter=frame_counter,
                  record_count=count, hashes=hashes, events=tuple(records),
                  framebuffer_hash=fb_hash, raw=data)


def select_window(ring) -> list:
    """Pick the raw window as the guest does (§1.5).

    Walk newest to oldest adding whole record sizes; stop at the first
    record that would push the sum past RAW_BUDGET. Returns the TLV byte
    strings oldest first.
    """
    chosen = []
    used = 0
    for event in reversed(list(ring)):
        record = event.tlv()
        if used + len(record) > RAW_BUDGET or len(chosen) >= MAX_RAW_RECORDS:
            break
        chosen.append(record)
        used += len(record)
    chosen.reverse()
    return chosen


def _check_u32(value, what):
    if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        raise errors.EncodeError('%s must be a u32, got %r' % (what, value))
    return value


def encode(frame_counter, hashes, ring, framebuffer_hash) -> bytes:
    """Build a payload exactly as the guest does.

    `hashes` maps channel names (events.CHANNELS) to u32 (missing channels
    are 0), or is a ChannelChains; `ring` is the guest's event ring oldest
    first (the raw window is selected from its newest end).
    """
    hashes = getattr(hashes, 'hashes', hashes)
    unknown = set(hashes) - set(ev.CHANNELS)
    if unknown:
        raise errors.EncodeError('unknown channel(s): %s'
                                 % ', '.join(sorted(unknown)))
    window = select_window(ring)
    out = bytearray(MAGIC)
    out.append(SCHEMA_VERSION)
    out += struct.pack('<IB', _check_u32(frame_counter, 'frame counter'),
                       8 + len(window))
    for channel in ev.CHANNELS:
        out += struct.pack('<BBI', ev.CHANNEL_TAGS[channel], 4,
                           _check_u32(hashes.get(channel, 0),
                                      'hash of %s' % channel))
    for record in window:
        out += record
    out += struct.pack('<I', _check_u32(framebuffer_hash,
                                        'framebuffer hash'))
    return bytes(out)


def encode_history(frame_counter, history, framebuffer_hash,
                   ring_size=256) -> bytes:
    """Encode from every event since boot: chains over all, ring = tail."""
    from kerbside_tempest_plugin.digest import chains
    history = list(history)
    return encode(frame_counter, chains.ChannelChains.replay(history),
                  history[-ring_size:], framebuffer_hash)

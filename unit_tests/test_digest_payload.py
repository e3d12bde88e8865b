"""Payload codec: golden vectors both ways, the selection rule, errors."""

import struct

import pytest

from kerbside_tempest_plugin.digest import chains
from kerbside_tempest_plugin.digest import errors
from kerbside_tempest_plugin.digest import events as ev
from kerbside_tempest_plugin.digest import payload as pl
from unit_tests import digest_fixtures as fx


def test_golden_empty_decodes():
    d = pl.decode(fx.GOLDEN_EMPTY)
    assert d.schema_version == 2
    assert d.frame_counter == 1
    assert d.record_count == 8
    assert d.hashes == dict.fromkeys(ev.CHANNELS, 0)
    assert d.events == ()
    assert d.framebuffer_hash == 0
    assert d.raw == fx.GOLDEN_EMPTY


def test_golden_empty_encodes():
    assert pl.encode(1, {}, [], 0) == fx.GOLDEN_EMPTY


def test_golden_single_keypress_decodes():
    d = pl.decode(fx.GOLDEN_SINGLE_KEYPRESS)
    assert d.frame_counter == 0x12345678
    assert d.record_count == 9
    assert d.hashes['keypress'] == 0x6f41545a
    assert all(v == 0 for k, v in d.hashes.items() if k != 'keypress')
    assert d.events == (fx.SINGLE_KEYPRESS,)
    assert d.framebuffer_hash == 0xCAFEBABE
    assert d.events[0].to_json() == {
        'kind': 'keypress', 'timestamp_ms': 0x0102030405060708,
        'unicode': 0x41, 'scancode': 0x1234}


def test_golden_single_keypress_encodes():
    hashes = chains.ChannelChains.replay([fx.SINGLE_KEYPRESS])
    assert hashes.hashes['keypress'] == 0x6f41545a
    assert fx.SINGLE_KEYPRESS.tlv() == bytes.fromhex(
        '010c080706050403020141003412')
    data = pl.encode(0x12345678, hashes, [fx.SINGLE_KEYPRESS], 0xCAFEBABE)
    assert data == fx.GOLDEN_SINGLE_KEYPRESS


def test_golden_mixed_decodes():
    d = pl.decode(fx.GOLDEN_MIXED)
    assert d.frame_counter == 0xDEADBEEF
    assert d.record_count == 11
    assert d.hashes == fx.MIXED_HASHES
    assert list(d.events) == fx.MIXED_EVENTS[5:]
    assert d.framebuffer_hash == 0x12345678
    assert [e.to_json() for e in d.events] == [
        {'kind': 'bootloader_timeout', 'timestamp_ms': 0x10000006},
        {'kind': 'mode_switch', 'timestamp_ms': 0x10000007,
         'requested': [1024, 768], 'applied': [800, 600]},
        {'kind': 'mode_cycle', 'timestamp_ms': 0x10000008, 'count': 255,
         'interrupted': False},
    ]


def test_golden_mixed_encodes_from_full_history():
    # Chains over all eight events; the window keeps only the newest 43 B.
    assert chains.ChannelChains.replay(fx.MIXED_EVENTS).hashes == \
        fx.MIXED_HASHES
    data = pl.encode_history(0xDEADBEEF, fx.MIXED_EVENTS, 0x12345678)
    assert data == fx.GOLDEN_MIXED


def test_selection_stops_at_first_record_that_does_not_fit():
    # Newest first: ModeCycle 15 + Keypress 14 = 29; a 18 B ModeSwitch
    # would make 47 > 44, so stop there, never skipping to the older 10 B
    # BootloaderTimeout.
    ring = [ev.BootloaderTimeout(1), ev.ModeSwitch(2, 1, 2, 3, 4),
            ev.Keypress(3, 13, 0), ev.ModeCycle(4, 2, True)]
    window = pl.select_window(ring)
    assert window == [ring[2].tlv(), ring[3].tlv()]
    d = pl.decode(pl.encode(7, {}, ring, 0))
    assert list(d.events) == ring[2:]
    assert d.record_count == 10


def test_selection_fills_exactly_to_budget():
    # Three LineRendered (36) fit; a fourth would not. 44 exactly fits
    # Keypress 14 + 2 x 15 ModeCycle.
    lines = [ev.LineRendered(i, i) for i in range(5)]
    assert len(pl.decode(pl.encode(1, {}, lines, 0)).events) == 3
    ring = [ev.Keypress(1, 65, 0), ev.ModeCycle(2, 1, False),
            ev.ModeCycle(3, 1, True)]
    data = pl.encode(1, {}, ring, 0)
    assert len(data) == pl.CAPACITY
    assert list(pl.decode(data).events) == ring


@pytest.mark.parametrize('events,length', [
    ([], 62),
    ([ev.Keypress(1, 13, 0), ev.SceneTransition(1, 'awaiting', 'booting')],
     88),
    ([ev.LineRendered(1, 1)] * 3, 98),
    ([ev.Keypress(1, 65, 0), ev.Keypress(2, 66, 0),
      ev.PasteReceived(3, 23, True)], 103),
    ([ev.BootloaderTimeout(1), ev.ModeSwitch(2, 1, 1, 1, 1),
      ev.ModeCycle(3, 1, True)], 105),
])
def test_length_examples(events, length):
    # Contract §1.8.
    assert len(pl.encode(1, {}, events, 0)) == length


def test_stream_exercise_phase_accepted():
    e = ev.SceneTransition(5, 'awaiting', 'stream_exercise')
    assert e.tlv()[-2:] == b'\x00\x03'
    assert pl.decode(pl.encode(1, {}, [e], 0)).events == (e,)


def test_unknown_tag_is_kept():
    data = bytearray(pl.encode(1, {}, [], 0))
    data[58:58] = bytes((0x42, 3, 9, 8, 7))
    data[9] = 9
    d = pl.decode(bytes(data))
    assert d.events == (ev.UnknownRecord(0x42, b'\x09\x08\x07'),)
    assert d.events[0].to_json() == {'kind': 'unknown', 'tag': 0x42,
                                     'value': '090807'}
    # And it re-encodes to the same bytes.
    assert pl.encode(1, {}, d.events, 0) == bytes(data)


def test_count_byte_is_not_cross_checked():
    data = bytearray(pl.encode(1, {}, [ev.LineRendered(1, 2)], 0))
    data[9] = 200
    assert len(pl.decode(bytes(data)).events) == 1


def test_surrogate_unicode_becomes_replacement_char():
    data = pl.encode(1, {}, [ev.Keypress(1, 0xD800, 0)], 0)
    assert pl.decode(data).events[0].unicode == 0xFFFD


def _with_raw(raw):
    return pl.encode(1, {}, [], 0)[:58] + raw + b'\0\0\0\0'


@pytest.mark.parametrize('data,exc,offset', [
    (b'', errors.PayloadTooShort, 0),
    (fx.GOLDEN_EMPTY[:61], errors.PayloadTooShort, 61),
    (b'SXDF' + fx.GOLDEN_EMPTY[4:], errors.BadMagic, 0),
    (fx.GOLDEN_EMPTY[:4] + b'\x01' + fx.GOLDEN_EMPTY[5:],
     errors.UnsupportedVersion, 4),
    (fx.GOLDEN_EMPTY[:9] + b'\x07' + fx.GOLDEN_EMPTY[10:],
     errors.BadRecordCount, 9),
    (fx.GOLDEN_EMPTY[:16] + b'\x13' + fx.GOLDEN_EMPTY[17:],
     errors.BadHashRecord, 16),
    (fx.GOLDEN_EMPTY[:23] + b'\x05' + fx.GOLDEN_EMPTY[24:],
     errors.BadHashRecord, 23),
    (_with_raw(b'\x02'), errors.TrailingByte, 58),
    (_with_raw(b'\x02\x0a\x00'), errors.TruncatedValue, 58),
    (_with_raw(b'\x02\x03abc'), errors.BadRecordLength, 58),
    (_with_raw(b'\x03\x0a' + bytes(8) + b'\x00\x04'),
     errors.BadEnumValue, 69),
    (_with_raw(b'\x04\x0d' + bytes(8) + b'\x03' + bytes(4)),
     errors.BadEnumValue, 68),
    (_with_raw(b'\x05\x0b' + bytes(10) + b'\x02'), errors.BadEnumValue, 70),
    (_with_raw(b'\x08\x0d' + bytes(12) + b'\x07'), errors.BadEnumValue, 72),
])
def test_rejections_are_typed_and_name_offset(data, exc, offset):
    with pytest.raises(exc) as info:
        pl.decode(data)
    assert isinstance(info.value, errors.DigestError)
    assert info.value.offset == offset
    assert 'offset %d' % offset in str(info.value)


def test_decode_rejects_non_bytes():
    with pytest.raises(errors.DigestError):
        pl.decode('SXDG')


@pytest.mark.parametrize('kwargs', [
    dict(frame_counter=-1), dict(frame_counter=2 ** 32),
    dict(framebuffer_hash=2 ** 32), dict(hashes={'bogus': 1}),
    dict(hashes={'keypress': -5}),
    dict(ring=[ev.Keypress(-1, 1, 1)]),
    dict(ring=[ev.BootloaderDecision(1, 'maybe', 1)]),
    dict(ring=[ev.SceneTransition(1, 'awaiting', 'nowhere')]),
    dict(ring=[ev.ModeCycle(1, 2 ** 32, False)]),
])
def test_encode_rejects_unrepresentable(kwargs):
    args = dict(frame_counter=1, hashes={}, ring=[], framebuffer_hash=0)
    args.update(kwargs)
    with pytest.raises(errors.EncodeError):
        pl.encode(**args)


def test_narrow_fields_truncate_like_the_guest():
    e = ev.ModeSwitch(1, 0x10280, 768, 1024, 768)
    assert struct.unpack('<H', e.tlv()[10:12])[0] == 0x0280

"""benchmarks/wire_frames.py: replaying a display-channel pcap and
decoding the Sextant QR after each record. The pcap is built the way
ryll writes one (Ethernet/IPv4/TCP frames around the SPICE data, mini
headers); the draws are spice.draw's, the frames rendered and decoded
for real.
"""

import importlib.util
import pathlib
import struct

import numpy as np
import pytest

from kerbside_tempest_plugin.digest import render
from kerbside_tempest_plugin.spice import draw
from kerbside_tempest_plugin.spice import wire

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
W, H = 320, 240


def load_wire_frames():
    path = REPO_ROOT / 'benchmarks' / 'wire_frames.py'
    spec = importlib.util.spec_from_file_location('wire_frames', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


wf = load_wire_frames()


def tcp_frame(payload, sport=5900, dport=10002):
    eth = b'\0' * 12 + b'\x08\x00'
    ip = bytes([0x45, 0]) + struct.pack('>H', (40 + len(payload)) & 0xffff) + \
        b'\0' * 5 + bytes([6]) + b'\0' * 10
    tcp = struct.pack('>HH', sport, dport) + b'\0' * 8 + bytes([0x50]) + \
        b'\0' * 7
    return eth + ip + tcp + payload


def pcap(records):
    """A classic big-endian microsecond pcap of (time, payload)."""
    out = struct.pack('>IHHiIII', 0xa1b2c3d4, 2, 4, 0, 0, 262144, 1)
    for ts, payload in records:
        frame = tcp_frame(payload)
        out += struct.pack('>IIII', int(ts), int(round(ts % 1 * 1e6)),
                           len(frame), len(frame)) + frame
    return out


def surface_create(w=W, h=H):
    return draw.pack_surface_create(w, h)


def draw_copy(rgb, top, left, itype=draw.IMAGE_BITMAP):
    """A draw_copy of `rgb` at (top, left): no clip, an uncompressed
    top-down 32-bit bitmap (or another image type, with no data).
    """
    return draw.pack_draw_copy(draw.bgrx_of(rgb), left, top,
                               image_type=itype)


def guest_frame(fc):
    return render.render_guest_frame(fc, {}, [], width=W, height=H)


def write_run(tmp_path, records, refresh_count):
    run = tmp_path / 'run'
    (run / 'ryll').mkdir(parents=True)
    (run / 'ryll' / 'capture-display.pcap').write_bytes(pcap(records))
    (run / 'serial.log').write_text(
        'type=refresh_stats count=%d total_ms=1 mean_us=1 max_us=1 '
        'p99_us=1\n' % refresh_count)
    (run / 'digests.jsonl').write_text(
        '{"frame_counter": 1}\n{"frame_counter": 4}\n')
    return str(run)


def test_frames_overwritten_within_one_record_never_reach_the_wire(
        tmp_path):
    f1, f2, f3, f4 = (guest_frame(n) for n in (1, 2, 3, 4))
    half = H // 2
    records = [
        (10.0, surface_create() + draw_copy(f1, 0, 0)),
        # frame 2 arrives split over two records: the first half alone
        # shows a QR that does not decode
        (10.030, draw_copy(f2[:half], 0, 0)),
        (10.031, draw_copy(f2[half:], half, 0)),
        # frames 3 and 4 land in one record: only 4 is ever on screen
        (10.090, draw_copy(f3, 0, 0) + draw_copy(f4, 0, 0)),
        # a draw outside the QR region is not a QR update
        (10.200, draw_copy(np.zeros((8, 8, 3), np.uint8), 0, 0)),
    ]
    r = wf.analyse(write_run(tmp_path, records, refresh_count=5))
    assert r['refresh_count'] == 5
    assert r['on_wire'] == 3                     # 1, 2, 4
    assert r['not_on_wire'] == [3, 5]
    assert r['harness_seen'] == 2
    assert r['on_wire_not_seen'] == [2]
    assert r['stats']['qr_updates'] == 4
    assert r['undecodable_wire_updates'] == 1
    # QR changes at 10.000 (1), 10.031 (2), 10.090 (4)
    assert r['qr_change_gap_ms']['min'] == pytest.approx(31.0, abs=0.2)
    assert r['qr_change_gaps_under_25ms'] == 0


def test_a_message_split_across_records_is_reassembled(tmp_path):
    data = surface_create() + draw_copy(guest_frame(7), 0, 0)
    cut = len(data) - 100
    records = [(1.0, data[:cut]), (1.004, data[cut:])]
    wire, stats = wf.replay(str(
        pathlib.Path(write_run(tmp_path, records, 7)) / 'ryll' /
        'capture-display.pcap'))
    assert [w['frame'] for w in wire] == [7]
    assert wire[0]['t'] == pytest.approx(1.004)
    assert stats['draw_copy'] == 1


def test_compressed_images_are_counted_not_replayed(tmp_path):
    records = [(1.0, surface_create() + draw_copy(
        guest_frame(1), 0, 0, itype=102))]
    r = wf.analyse(write_run(tmp_path, records, 1))
    assert r['stats']['compressed'] == 1
    assert r['on_wire'] == 0
    assert r['not_on_wire'] == [1]


def test_a_short_bitmap_is_a_readable_error(tmp_path):
    good = draw_copy(guest_frame(1), 0, 0)
    body = good[6:-50]
    records = [(1.0, surface_create() + wire.pack_message(
        draw.MSG['draw_copy'], body))]
    with pytest.raises(wire.WireError, match='draw_copy at stream byte '
                       r'\d+: \d+ bytes at offset \d+ run past its'):
        wf.analyse(write_run(tmp_path, records, 1))


# -- spice.draw, message by message ------------------------------------------


def units(*messages):
    """The wire.Units of display messages (server to client, after the
    link, mini headers).
    """
    neg = wire.Negotiation()
    neg.mess = wire.LinkMess(0, wire.CHANNEL_TYPES['display'], 0, (), ())
    return wire.Framer(wire.S2C, neg, skip_link=True).feed(b''.join(
        messages))


def replayed(*messages):
    rp = draw.Replay()
    done = [rp.apply(u) for u in units(*messages)]
    return rp, done


def solid(h, w, bgr):
    px = np.zeros((h, w, 4), np.uint8)
    px[:, :, :3] = bgr
    return px


def test_draw_copy_paints_bgrx_and_names_what_it_changed():
    rp, done = replayed(draw.pack_surface_create(64, 32),
                        draw.pack_draw_copy(solid(4, 8, (1, 2, 3)), 10, 5))
    assert [d.name for d in done] == ['surface_create', 'draw_copy']
    assert done[0].created is rp.primary and done[0].rect == draw.Rect(
        0, 0, 64, 32)
    assert done[1].rect == draw.Rect(10, 5, 8, 4)
    px = rp.primary.pixels
    assert (px[5:9, 10:18, :3] == (1, 2, 3)).all()
    assert px[:5].sum() == 0 and px[9:].sum() == 0
    assert (rp.primary.rgb()[5, 10] == (3, 2, 1)).all()
    assert rp.counts == {'surface_create': 1, 'draw_copy': 1}
    assert rp.images == {'bitmap': 1}


def test_clip_rects_limit_a_draw_and_the_surface_edge_too():
    clips = [draw.Rect(0, 0, 4, 100), draw.Rect(6, 0, 100, 1)]
    rp, done = replayed(draw.pack_surface_create(8, 8),
                        draw.pack_draw_copy(solid(4, 8, (9, 9, 9)), 2, 6,
                                            clips=clips))
    px = rp.primary.pixels[:, :, 0]
    # box (2, 6)-(10, 10), inside the 8x8 surface: rows 6..7, cols 2..7;
    # clip 1 keeps cols 2..3; clip 2 keeps row 0 only (none of the box).
    assert np.argwhere(px).tolist() == [[6, 2], [6, 3], [7, 2], [7, 3]]
    assert done[1].rect == draw.Rect(2, 6, 2, 2)


def test_compressed_images_streams_and_rops_are_unreplayable_by_name():
    for msg, what in (
            (draw.pack_draw_copy(solid(2, 2, 0), 0, 0, image_type=102),
             'draw_copy with a glz_rgb (102) image'),
            (draw.pack_draw_copy(solid(2, 2, 0), 0, 0, image_type=1),
             'draw_copy with a quic (1) image'),
            (draw.pack_draw_copy(solid(2, 2, 0), 0, 0, rop=1 << 6),
             'draw_copy with ROP descriptor 0x40'),
            (wire.pack_message(draw.MSG['stream_create'], b'\0' * 40),
             'a video stream (stream_create, lossy)'),
            (wire.pack_message(wire.message_type(
                'display', wire.S2C, 'draw_text'), b'\0' * 40),
             'draw_text (not replayed)')):
        rp = draw.Replay()
        us = units(draw.pack_surface_create(8, 8), msg)
        rp.apply(us[0])
        with pytest.raises(draw.Unreplayable) as e:
            rp.apply(us[1])
        assert e.value.what.startswith(what), e.value.what


def test_a_draw_on_no_surface_or_garbage_is_a_draw_error():
    rp = draw.Replay()
    with pytest.raises(draw.DrawError, match='surface 0, which was never '
                       'created'):
        rp.apply(units(draw.pack_draw_copy(solid(2, 2, 0), 0, 0))[0])
    with pytest.raises(draw.DrawError, match='a 0x9 surface'):
        rp.apply(units(draw.pack_surface_create(0, 9))[0])
    assert isinstance(draw.DrawError('x'), wire.WireError)


def test_fill_blackness_copy_bits_and_the_image_cache():
    fill = wire.pack_message(draw.MSG['draw_fill'], struct.pack(
        '<IiiiiB', 0, 0, 0, 2, 4, 0) + struct.pack('<BI', 1, 0x00aabbcc) +
        struct.pack('<HBiiI', draw.ROPD_OP_PUT, 0, 0, 0, 0))
    black = wire.pack_message(draw.MSG['draw_blackness'], struct.pack(
        '<IiiiiB', 0, 0, 0, 1, 1, 0) + struct.pack('<BiiI', 0, 0, 0, 0))
    bits = wire.pack_message(draw.MSG['copy_bits'], struct.pack(
        '<IiiiiB', 0, 2, 4, 4, 8, 0) + struct.pack('<ii', 0, 0))
    cached = bytearray(draw.pack_draw_copy(solid(1, 1, (7, 7, 7)), 7, 3,
                                           image_id=42))
    # descriptor flags: cache me (the image sits after 6 + 21 + 36 bytes)
    cached[6 + 21 + 36 + 9] = draw.IMAGE_CACHE_ME
    again = draw.pack_draw_copy(solid(1, 1, 0), 6, 3, image_id=42,
                                image_type=draw.IMAGE_FROM_CACHE)
    rp, done = replayed(draw.pack_surface_create(8, 4), fill, black, bits,
                        bytes(cached), again)
    px = rp.primary.pixels
    assert (px[0, 1, :3] == (0xcc, 0xbb, 0xaa)).all()     # filled
    assert px[0, 0, :3].sum() == 0                          # blackness
    assert (px[2, 4:8] == px[0, 0:4]).all()                 # copy_bits
    assert (px[3, 4:6] == px[1, 0:2]).all()
    assert (px[3, 6, :3] == 7).all() and (px[3, 7, :3] == 7).all()
    assert rp.images == {'bitmap': 1, 'from_cache': 1}
    assert [d.rect for d in done[1:4]] == [
        draw.Rect(0, 0, 4, 2), draw.Rect(0, 0, 1, 1), draw.Rect(4, 2, 4, 2)]

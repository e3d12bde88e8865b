"""benchmarks/wire_frames.py: replaying a display-channel pcap and
decoding the Sextant QR after each record. The pcap is built the way
ryll writes one (Ethernet/IPv4/TCP frames around the SPICE data, mini
headers); the frames are rendered and decoded for real.
"""

import importlib.util
import pathlib
import struct

import numpy as np
import pytest

from kerbside_tempest_plugin.digest import render

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


def msg(mtype, body):
    return struct.pack('<HI', mtype, len(body)) + body


def surface_create(w=W, h=H):
    return msg(wf.MSG_SURFACE_CREATE, struct.pack('<IIIII', 0, w, h, 32, 1))


def draw_copy(rgb, top, left, itype=wf.IMAGE_BITMAP):
    """A DRAW_COPY of `rgb` at (top, left): no clip, an uncompressed
    top-down 32-bit bitmap (or another image type, with no data).
    """
    h, w = rgb.shape[:2]
    base = struct.pack('<Iiiii', 0, top, left, top + h, left + w) + b'\0'
    image_at = len(base) + 4 + 16 + 2 + 1 + 1 + 8 + 4
    copy = struct.pack('<I', image_at) + struct.pack('<iiii', 0, 0, h, w) \
        + struct.pack('<HBB', 8, 0, 0) + struct.pack('<iiI', 0, 0, 0)
    desc = struct.pack('<QBBII', 1, itype, 0, w, h)
    if itype != wf.IMAGE_BITMAP:
        return msg(wf.MSG_DRAW_COPY, base + copy + desc)
    bgrx = np.zeros((h, w, 4), np.uint8)
    bgrx[:, :, :3] = rgb[:, :, ::-1]
    bm = struct.pack('<BBIII', wf.BITMAP_32BIT, wf.BITMAP_TOP_DOWN, w, h,
                     w * 4) + struct.pack('<I', 0)
    return msg(wf.MSG_DRAW_COPY, base + copy + desc + bm + bgrx.tobytes())


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
    records = [(1.0, surface_create() + msg(wf.MSG_DRAW_COPY, body))]
    with pytest.raises(wf.WireError, match='bitmap data short'):
        wf.analyse(write_run(tmp_path, records, 1))

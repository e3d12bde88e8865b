#!/usr/bin/env python3
"""Which of the guest's frames reached the SPICE wire.

Reads ryll's display-channel pcap (``ryll/capture-display.pcap`` of a
scenario run), replays the server's draws onto a framebuffer and decodes
the Sextant QR after every pcap record that touched the QR region. It
prints the frame counters that reached the wire, those that did not
(against the run's ``refresh_stats count`` from ``serial.log``), and the
intervals between the wire updates that changed the QR.

Only uncompressed bitmaps can be replayed, so the guest must run with
``-spice image-compression=off`` (a diagnostic setting; the scenario
uses qemu's default). A compressed image is counted and skipped.

    python3 benchmarks/wire_frames.py RUN_DIR [RUN_DIR...] [--json]

RUN_DIR is a test's artifact directory (it holds serial.log, ryll/ and
digests.jsonl).
"""

import argparse
import json
import os
import re
import statistics
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from kerbside_tempest_plugin.scenario import evidence  # noqa: E402

MSG_DRAW_COPY = 304
MSG_SURFACE_CREATE = 314
IMAGE_BITMAP = 0
BITMAP_PAL_FROM_CACHE = 2
BITMAP_TOP_DOWN = 4
BITMAP_32BIT = 8
BITMAP_RGBA = 9


class WireError(Exception):
    pass


def server_stream(pcap_path, server_port=5900):
    """[(record time, payload)] of the server-to-client direction."""
    with open(pcap_path, 'rb') as f:
        _, packets = evidence.read_pcap(f.read())
    out = []
    for p in packets:
        parsed = evidence.tcp_payload(p.data)
        if parsed and parsed[0] == server_port and parsed[2]:
            out.append((p.ts, parsed[2]))
    return out


def messages(records):
    """(time, type, body) of every mini-header message in the stream; the
    time is that of the record the message ends in.
    """
    buf = b''
    for ts, payload in records:
        buf += payload
        while len(buf) >= 6:
            mtype, size = struct.unpack('<HI', buf[:6])
            if len(buf) < 6 + size:
                break
            yield ts, mtype, buf[6:6 + size]
            buf = buf[6 + size:]


def draw_copy(body):
    """(box (top, left, bottom, right), image offset) of a DRAW_COPY."""
    top, left, bottom, right = struct.unpack('<iiii', body[4:20])
    off = 20
    clip = body[off]
    off += 1
    if clip == 1:
        n = struct.unpack('<I', body[off:off + 4])[0]
        off += 4 + 16 * n
    image = struct.unpack('<I', body[off:off + 4])[0]
    return (top, left, bottom, right), image


def bitmap(body, offset):
    """(width, height, BGRX bytes rows top-down) of a BITMAP image, or
    None for another image type.
    """
    _, itype, _, w, h = struct.unpack('<QBBII', body[offset:offset + 18])
    if itype != IMAGE_BITMAP:
        return None
    off = offset + 18
    fmt, flags, x, y, stride = struct.unpack('<BBIII', body[off:off + 14])
    off += 14
    off += 8 if flags & BITMAP_PAL_FROM_CACHE else 4
    if fmt not in (BITMAP_32BIT, BITMAP_RGBA):
        raise WireError('bitmap format %d not replayed' % fmt)
    data = body[off:off + stride * y]
    if len(data) != stride * y:
        raise WireError('bitmap data short: %d of %d'
                        % (len(data), stride * y))
    return x, y, stride, data, bool(flags & BITMAP_TOP_DOWN)


def replay(pcap_path):
    """Wire frames: [{'t': s, 'frame': counter or None}] after each pcap
    record that drew into the QR region; plus counts of what was seen.
    """
    from kerbside_tempest_plugin.digest import errors as derrors
    from kerbside_tempest_plugin.digest import fbhash
    from kerbside_tempest_plugin.digest import payload as pl
    from kerbside_tempest_plugin.digest import qr
    import numpy as np

    fb = None
    region = None
    out = []
    stats = {'draw_copy': 0, 'compressed': 0, 'qr_updates': 0}
    touched_at = None
    last_ts = None

    def judge(ts):
        try:
            hit = qr.find_digest(fb, full_frame=False)
            counter = pl.decode(hit.payload).frame_counter
        except derrors.DigestError:
            counter = None
        out.append({'t': ts, 'frame': counter})

    for ts, mtype, body in messages(server_stream(pcap_path)):
        if touched_at is not None and ts != last_ts:
            judge(touched_at)
            touched_at = None
        last_ts = ts
        if mtype == MSG_SURFACE_CREATE:
            _, w, h = struct.unpack('<III', body[:12])
            fb = np.zeros((h, w, 3), dtype=np.uint8)
            ox, oy = fbhash.digest_origin(w, h)
            region = (oy, ox, oy + 180, ox + 180)
            continue
        if mtype != MSG_DRAW_COPY or fb is None:
            continue
        stats['draw_copy'] += 1
        (top, left, bottom, right), image = draw_copy(body)
        bm = bitmap(body, image)
        if bm is None:
            stats['compressed'] += 1
            continue
        x, y, stride, data, top_down = bm
        px = np.frombuffer(data, dtype=np.uint8).reshape(y, stride)
        px = px[:, :x * 4].reshape(y, x, 4)
        if not top_down:
            px = px[::-1]
        h, w = bottom - top, right - left
        fb[top:bottom, left:right] = px[:h, :w, 2::-1]
        if top < region[2] and bottom > region[0] and \
                left < region[3] and right > region[1]:
            touched_at = ts
    if touched_at is not None:
        judge(touched_at)
    stats['qr_updates'] = len(out)
    return out, stats


def refresh_count(run_dir):
    with open(os.path.join(run_dir, 'serial.log'), errors='replace') as f:
        m = re.search(r'type=refresh_stats count=(\d+)', f.read())
    return int(m.group(1)) if m else None


def harness_frames(run_dir):
    seen = set()
    path = os.path.join(run_dir, 'digests.jsonl')
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    d = json.loads(line)
                except ValueError:
                    continue
                fc = d.get('frame_counter')
                if fc is None:
                    fc = (d.get('digest') or {}).get('frame_counter')
                if fc is not None:
                    seen.add(fc)
    return seen


def analyse(run_dir):
    pcap = os.path.join(run_dir, 'ryll', 'capture-display.pcap')
    wire, stats = replay(pcap)
    count = refresh_count(run_dir)
    on_wire = {w['frame'] for w in wire if w['frame'] is not None}
    changes = [w['t'] for i, w in enumerate(wire) if w['frame'] is not None
               and (i == 0 or wire[i - 1]['frame'] != w['frame'])]
    gaps = [round(1000 * (b - a), 1) for a, b in zip(changes, changes[1:])]
    seen = harness_frames(run_dir)
    drawn = set(range(1, (count or 0) + 1))
    return {
        'run': run_dir, 'refresh_count': count, 'stats': stats,
        'on_wire': len(on_wire & drawn) if count else len(on_wire),
        'not_on_wire': sorted(drawn - on_wire),
        'harness_seen': len(seen & drawn),
        'on_wire_not_seen': sorted((on_wire & drawn) - seen),
        'undecodable_wire_updates': sum(1 for w in wire
                                        if w['frame'] is None),
        'qr_change_gap_ms': {
            'min': min(gaps) if gaps else None,
            'p10': sorted(gaps)[len(gaps) // 10] if gaps else None,
            'median': statistics.median(gaps) if gaps else None},
        'qr_change_gaps_under_25ms': sum(1 for g in gaps if g < 25),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('runs', nargs='+')
    ap.add_argument('--json', action='store_true')
    args = ap.parse_args()
    for run in args.runs:
        r = analyse(run)
        if args.json:
            print(json.dumps(r))
            continue
        c = r['refresh_count']
        print('%s\n  guest drew %s frames; %d reached the wire (%s); the '
              'harness saw %d (%s)' % (
                  run, c, r['on_wire'],
                  '%.2f' % (r['on_wire'] / c) if c else '-',
                  r['harness_seen'],
                  '%.2f' % (r['harness_seen'] / c) if c else '-'))
        print('  never on the wire: %s' % r['not_on_wire'])
        print('  on the wire, not seen by the harness: %s'
              % r['on_wire_not_seen'])
        print('  wire updates touching the QR: %d (%d undecodable); '
              'draw_copy %d, compressed %d' % (
                  r['stats']['qr_updates'], r['undecodable_wire_updates'],
                  r['stats']['draw_copy'], r['stats']['compressed']))
        print('  ms between QR changes on the wire: %s; under 25 ms: %d'
              % (r['qr_change_gap_ms'], r['qr_change_gaps_under_25ms']))


if __name__ == '__main__':
    main()

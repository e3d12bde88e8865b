#!/usr/bin/env python3
"""Which of the guest's frames reached the SPICE wire.

Reads ryll's display-channel pcap (``ryll/capture-display.pcap`` of a
scenario run), replays the server's draws onto a framebuffer (the
package's replay: scenario.frames.display_records cuts the capture with
spice.wire, spice.draw paints it) and decodes the Sextant QR after every
pcap record that touched the QR region. It prints the frame counters that
reached the wire, those that did not (against the run's
``refresh_stats count`` from ``serial.log``), and the intervals between
the wire updates that changed the QR.

Only uncompressed images can be replayed: the lanes run qemu with
``-spice image-compression=off`` and the scenario starts ryll with
``--preferred-compression off`` (ryll's default, auto-glz, overrides
qemu's setting). A draw that cannot be replayed (a compressed image) is
counted and skipped. The scenario's own per-frame check
(scenario.frames, docs/plans/frame-verification.md) judges the same
capture.

    python3 benchmarks/wire_frames.py RUN_DIR [RUN_DIR...] [--json]

RUN_DIR is a test's artifact directory (it holds serial.log, ryll/ and
digests.jsonl).
"""

import argparse
import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from kerbside_tempest_plugin.scenario import frames  # noqa: E402
from kerbside_tempest_plugin.spice import draw  # noqa: E402


def replay(pcap_path):
    """Wire frames: [{'t': s, 'frame': counter or None}] after each pcap
    record that drew into the QR region; plus counts of what was seen.
    Raises frames.CaptureUnreadable, draw.DrawError for a bad capture.
    """
    with open(pcap_path, 'rb') as f:
        records, _cut = frames.display_records(f.read())
    rp = draw.Replay()
    out = []
    skipped = 0
    for ts, units in records:
        touched = False
        for unit in units:
            try:
                drawn = rp.apply(unit)
            except draw.Unreplayable:
                skipped += 1
                continue
            surface = rp.primary
            if surface is None or drawn.rect is None or drawn.created \
                    or drawn.surface_id != surface.surface_id:
                continue
            if drawn.rect.overlaps(frames.qr_rect(surface.width,
                                                  surface.height)):
                touched = True
        if touched:
            digest = frames.decode_qr(rp.primary)
            out.append({'t': ts, 'frame': digest.frame_counter
                        if digest else None})
    stats = {'draw_copy': rp.counts.get('draw_copy', 0),
             'compressed': skipped, 'images': dict(rp.images),
             'qr_updates': len(out)}
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
              'draw_copy %d, not replayable (skipped) %d; images %s' % (
                  r['stats']['qr_updates'], r['undecodable_wire_updates'],
                  r['stats']['draw_copy'], r['stats']['compressed'],
                  r['stats']['images']))
        print('  ms between QR changes on the wire: %s; under 25 ms: %d'
              % (r['qr_change_gap_ms'], r['qr_change_gaps_under_25ms']))


if __name__ == '__main__':
    main()

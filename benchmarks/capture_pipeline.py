#!/usr/bin/env python3
"""What one capture costs, split into grab, decode, QR, hash and total:
the old serial pipeline against the new grab/judge pipeline, in one run.

One direct lane and one Sextant guest (the bundled stand-in by default;
--image images/out/sextant_blits.qcow2 for the per-module QR), one ryll.
The guest sits in Awaiting (it redraws twice a second). Then, for
--seconds each, on the same ryll:

- old: screenshot (PNG), PNG decode, QR (region, full frame on a miss),
  full-frame hash, one after another; the next screenshot waits for all
  of it, as scenario.capture did before issue 14.
- new png / new rgba: scenario.capture.DigestStream grabbing back to back
  (periodic_s=0, so every grab is judged or dropped, none skipped as
  unchanged) with the judge on its own thread; stage times from
  DigestStream.timing_stats(). The hash runs for a new frame and for a
  repeat only when no grab is waiting, so its count is lower. Back to
  back is the worst case: the grabs' JSON and base64 work competes with
  the judge for the interpreter.
- new png, 30 ms pace: the same with min_interval_s=0.03, about the
  pace the scenario grabs at while the guest draws (ryll's screen changes
  once per QEMU display update, ~30 ms; docs/plans/capture-fidelity.md).

Printed side by side: median ms per stage, the critical path between two
grabs (old: the whole capture; new: the grab), grabs per second, and what
the new pipeline dropped. The load average is printed with the figures:
the CPU is shared.

    python3 benchmarks/capture_pipeline.py [--seconds 5] [--image PATH]
"""

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from kerbside_tempest_plugin.digest import errors  # noqa: E402
from kerbside_tempest_plugin.digest import fbhash  # noqa: E402
from kerbside_tempest_plugin.digest import payload as pl  # noqa: E402
from kerbside_tempest_plugin.digest import qr  # noqa: E402
from kerbside_tempest_plugin.scenario import capture as cap  # noqa: E402
from kerbside_tempest_plugin.sextant import contract  # noqa: E402

STAGES = ('grab', 'decode', 'qr', 'hash', 'judge')


def old_pipeline(client, seconds):
    """The serial capture: every stage before the next screenshot."""
    times = {k: [] for k in STAGES + ('total',)}
    failures = mismatches = 0
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        t0 = time.perf_counter()
        png = client.screenshot().png
        t1 = time.perf_counter()
        rgb = qr.load_image(png)
        t2 = time.perf_counter()
        try:
            hit = qr.find_digest(rgb)
            digest = pl.decode(hit.payload)
        except errors.DigestError:
            failures += 1
            continue
        t3 = time.perf_counter()
        h, w = rgb.shape[:2]
        if hit.origin == fbhash.digest_origin(w, h):
            mismatches += fbhash.framebuffer_hash(rgb) != \
                digest.framebuffer_hash
        t4 = time.perf_counter()
        n += 1
        for k, v in (('grab', t1 - t0), ('decode', t2 - t1),
                     ('qr', t3 - t2), ('hash', t4 - t3),
                     ('judge', t4 - t1), ('total', t4 - t0)):
            times[k].append(v)
    med = {k: (1000 * statistics.median(v) if v else None, len(v))
           for k, v in times.items()}
    return {'stages': med, 'critical_ms': med['total'][0],
            'per_s': n / float(seconds), 'dropped': 0, 'unchanged': 0,
            'failures': failures, 'captures': n, 'mismatches': mismatches}


def new_pipeline(client, seconds, fmt, min_interval_s=0.0):
    stream = cap.DigestStream(client, periodic_s=0.0, fmt=fmt,
                              keep_png=False, min_interval_s=min_interval_s)
    stream.start()
    try:
        time.sleep(seconds)
    finally:
        stream.stop()
    ts = stream.timing_stats()
    med = {k: (ts[k]['median_ms'], ts[k]['n']) for k in STAGES}
    # A grab's latency to its verdict: grab + wait + judge (medians).
    parts = [ts[k]['median_ms'] for k in ('grab', 'queued', 'judge')]
    med['total'] = (sum(parts) if None not in parts else None,
                    ts['judge']['n'])
    return {'stages': med, 'critical_ms': ts['grab']['median_ms'],
            'per_s': stream.grabs / float(seconds),
            'dropped': stream.dropped, 'unchanged': stream.unchanged,
            'failures': stream.decode_failures + stream.screenshot_failures,
            'captures': len(stream.captures)}


def fmt_ms(pair):
    value, n = pair
    return '-' if value is None else '%.2f (n=%d)' % (value, n)


def table(columns):
    names = list(columns)
    rows = [['stage (median ms)'] + names]
    labels = {'grab': 'grab (screenshot call)', 'decode': 'decode to pixels',
              'qr': 'QR decode + parse', 'hash': 'framebuffer hash',
              'judge': 'judge (decode+QR+hash)',
              'total': 'total per capture'}
    for k in STAGES + ('total',):
        rows.append([labels[k]] + [fmt_ms(columns[c]['stages'][k])
                                   for c in names])
    rows.append(['critical path between grabs'] + [
        '%.2f' % columns[c]['critical_ms'] if columns[c]['critical_ms']
        is not None else '-' for c in names])
    for key, label, f in (('per_s', 'grabs per second', '%.1f'),
                          ('captures', 'judged captures', '%d'),
                          ('dropped', 'dropped unjudged', '%d'),
                          ('failures', 'decode/screenshot failures', '%d')):
        rows.append([label] + [f % columns[c][key] for c in names])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ['  '.join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, '  '.join('-' * w for w in widths))
    return '\n'.join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--seconds', type=float, default=5.0)
    p.add_argument('--image', default=None,
                   help='default SEXTANT_IMAGE, else the bundled guest')
    args = p.parse_args()
    from kerbside_tempest_plugin import guest_images
    from kerbside_tempest_plugin.lane import lane as lane_mod
    from kerbside_tempest_plugin.sextant import keys
    image = guest_images.sextant_image(args.image)
    workdir = tempfile.mkdtemp(prefix='bench-capture-')
    lane = lane_mod.Lane(workdir, route='direct', kerbside=False)
    columns = {}
    try:
        lane.up()
        guest = lane.boot_guest(image, name='bench-capture',
                                banner=re.escape(contract.BANNER),
                                timeout=120)
        rp = lane.start_ryll(guest, route='direct', timeout=30)
        client = rp.connect(timeout=30, resolve_key=keys.resolve)
        try:
            client.subscribe(['surface_drawn'])
            rp.wait_ready(client, timeout=60)
            load = [os.getloadavg()[0]]
            columns['old (png, serial)'] = old_pipeline(client,
                                                        args.seconds)
            load.append(os.getloadavg()[0])
            columns['new png'] = new_pipeline(client, args.seconds, 'png')
            load.append(os.getloadavg()[0])
            columns['new rgba'] = new_pipeline(client, args.seconds,
                                               'rgba')
            load.append(os.getloadavg()[0])
            columns['new png, 30 ms pace'] = new_pipeline(
                client, args.seconds, 'png', min_interval_s=0.03)
            load.append(os.getloadavg()[0])
        finally:
            client.close()
    finally:
        lane.down()
        shutil.rmtree(workdir, ignore_errors=True)
    print('image %s, %.0f s per pipeline, direct route; 1-min load '
          'average before/between/after: %s' % (
              os.path.basename(image), args.seconds,
              ' / '.join('%.2f' % x for x in load)))
    print()
    print(table(columns))
    return 0


if __name__ == '__main__':
    sys.exit(main())

#!/usr/bin/env python3
"""Time locating + decoding + parsing the digest in a 1024x768 frame.

Prints, side by side in one run, the median time via the region-first path
and via a full-frame search, their ratio, the PNG decoding cost and the
framebuffer-hash cost. Targets: region-first <= 1 ms median and >= 10x
faster than full-frame search.

    python3 benchmarks/digest_decode.py [--repeat N]
"""

import argparse
import io
import os
import statistics
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from kerbside_tempest_plugin.digest import chains  # noqa: E402
from kerbside_tempest_plugin.digest import events as ev  # noqa: E402
from kerbside_tempest_plugin.digest import fbhash  # noqa: E402
from kerbside_tempest_plugin.digest import frame  # noqa: E402
from kerbside_tempest_plugin.digest import payload  # noqa: E402
from kerbside_tempest_plugin.digest import qr  # noqa: E402
from kerbside_tempest_plugin.digest import render  # noqa: E402


def realistic_frame(width=1024, height=768):
    """A Booting-like screen: rows of green 'text' cells, logo, QR."""
    rng = np.random.default_rng(1)
    bg = np.zeros((height, width, 3), np.uint8)
    for row in range(19):
        cols = rng.integers(20, 90)
        cells = rng.integers(0, 2, (16, cols * 8)).astype(bool)
        y = 16 + 16 * row
        bg[y:y + 16, 16:16 + cols * 8][cells] = fbhash.FG
    bg[16:144, 880:1008] = rng.integers(0, 2, (128, 128, 1)) * \
        np.array(fbhash.FG, np.uint8)
    history = [ev.Keypress(2000, 13, 0),
               ev.SceneTransition(2000, 'awaiting', 'booting')] + [
        ev.LineRendered(2000 + 200 * i, i) for i in range(19)]
    return render.render_guest_frame(42, chains.ChannelChains.replay(
        history), history, bg)


def median_ms(func, repeat, warmup=3):
    for _ in range(warmup):
        func()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeat', type=int, default=200)
    args = parser.parse_args(argv)

    rgb = realistic_frame()
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format='PNG')
    png = buf.getvalue()

    def region():
        return payload.decode(qr.find_digest(rgb, full_frame=False).payload)

    def full():
        return payload.decode(qr.find_digest(rgb, region_first=False)
                              .payload)

    assert region() == full(), 'the two paths disagree'
    assert frame.analyse(rgb).framebuffer_hash_ok is True

    full_repeat = max(10, args.repeat // 10)
    t_region = median_ms(region, args.repeat)
    t_full = median_ms(full, full_repeat)
    t_png = median_ms(lambda: qr.load_image(png), max(10, args.repeat // 4))
    t_hash = median_ms(lambda: fbhash.framebuffer_hash(rgb),
                       max(10, args.repeat // 4))
    t_analyse_png = median_ms(lambda: frame.analyse(png),
                              max(10, args.repeat // 4))
    ratio = t_full / t_region

    print('1024x768 frame, PNG %d bytes; medians (ms)' % len(png))
    print('%-38s %10s %10s' % ('', 'median ms', 'runs'))
    print('%-38s %10.3f %10d' % ('locate+decode+parse, region-first',
                                 t_region, args.repeat))
    print('%-38s %10.3f %10d' % ('locate+decode+parse, full-frame',
                                 t_full, full_repeat))
    print('%-38s %10.3f' % ('PNG decode (load_image)', t_png))
    print('%-38s %10.3f' % ('framebuffer hash (numpy + crc32c)', t_hash))
    print('%-38s %10.3f' % ('frame.analyse(PNG bytes), end to end',
                            t_analyse_png))
    print('ratio full-frame / region-first: %.1fx' % ratio)
    ok_abs = t_region <= 1.0
    ok_ratio = ratio >= 10
    print('target region-first <= 1 ms: %s; target >= 10x: %s'
          % ('met' if ok_abs else 'MISSED', 'met' if ok_ratio else 'MISSED'))
    return 0 if ok_abs and ok_ratio else 1


if __name__ == '__main__':
    sys.exit(main())

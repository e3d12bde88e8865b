#!/usr/bin/env python3
"""Fuzz both oracles and check that bad input only ever yields typed errors.

Three targets:
- payload.decode on mutated, truncated, extended and random payloads
  (only DigestError subclasses may escape);
- drain.parse on serial logs with mutated record lines, firmware noise and
  binary junk (only SerialParseError may escape);
- frame.analyse on corrupted digest frames, frames with other QR codes,
  random images, odd arrays and junk "PNG" bytes (only DigestError).

Anything else (another exception type, or a case slower than --max-case-s)
is a finding: it is printed and the script exits 1.

    python3 benchmarks/fuzz_oracles.py [--payload N] [--serial N]
                                       [--image N] [--seed S]
"""

import argparse
import os
import random
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from kerbside_tempest_plugin.digest import chains  # noqa: E402
from kerbside_tempest_plugin.digest import errors  # noqa: E402
from kerbside_tempest_plugin.digest import events as ev  # noqa: E402
from kerbside_tempest_plugin.digest import fbhash  # noqa: E402
from kerbside_tempest_plugin.digest import frame  # noqa: E402
from kerbside_tempest_plugin.digest import payload as pl  # noqa: E402
from kerbside_tempest_plugin.digest import render  # noqa: E402
from kerbside_tempest_plugin.sextant import drain  # noqa: E402


def random_event(rng):
    kind = rng.randrange(8)
    t = rng.choice([0, rng.randrange(2 ** 16), rng.randrange(2 ** 64)])
    if kind == 0:
        return ev.Keypress(t, rng.randrange(0xD800), rng.randrange(2 ** 16))
    if kind == 1:
        return ev.LineRendered(t, rng.randrange(2 ** 16))
    if kind == 2:
        return ev.SceneTransition(t, rng.choice(list(ev.PHASE_CODES)),
                                  rng.choice(list(ev.PHASE_CODES)))
    if kind == 3:
        return ev.BootloaderDecision(t, rng.choice(list(ev.CHOICE_CODES)),
                                     rng.randrange(2 ** 32))
    if kind == 4:
        return ev.PasteReceived(t, rng.randrange(2 ** 16),
                                rng.random() < .5)
    if kind == 5:
        return ev.BootloaderTimeout(t)
    if kind == 6:
        return ev.ModeSwitch(t, *(rng.randrange(4096) for _ in range(4)))
    return ev.ModeCycle(t, rng.randrange(2 ** 32), rng.random() < .5)


def random_payload(rng):
    history = [random_event(rng) for _ in range(rng.randrange(12))]
    return pl.encode(rng.randrange(2 ** 32),
                     chains.ChannelChains.replay(history), history,
                     rng.randrange(2 ** 32))


def mutate_bytes(rng, data):
    data = bytearray(data)
    op = rng.randrange(8)
    if op == 0 and data:                       # flip bits
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif op == 1 and data:                     # replace bytes in raw/header
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif op == 2:                              # truncate
        del data[rng.randrange(len(data) + 1):]
    elif op == 3:                              # insert
        i = rng.randrange(len(data) + 1)
        data[i:i] = bytes(rng.randrange(256)
                          for _ in range(rng.randint(1, 5)))
    elif op == 4 and data:                     # delete a span
        i = rng.randrange(len(data))
        del data[i:i + rng.randint(1, 5)]
    elif op == 5:                              # mess with the raw region
        if len(data) > 58:
            i = rng.randrange(58, len(data))
            data[i] = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0x18, 0x19,
                                  0xFF, rng.randrange(256)])
    elif op == 6:                              # pure random
        data = bytearray(rng.randrange(256)
                         for _ in range(rng.randrange(120)))
    else:                                      # valid header, random body
        data = bytearray(pl.encode(1, {}, [], 0)[:58]) + bytearray(
            rng.randrange(256) for _ in range(rng.randrange(48)))
    return bytes(data)


def fuzz_payload(rng, n, report):
    valid = [random_payload(rng) for _ in range(200)]
    for _ in range(n):
        data = mutate_bytes(rng, rng.choice(valid))
        report.run('payload', data, lambda: pl.decode(data),
                   errors.DigestError)


CANONICAL = [
    'Hello from Uncalibrated Sextant',
    'available GOP modes: 640x480 800x600 1024x768',
    't=2000 type=keypress unicode=000d scancode=0000',
    't=2000 type=transition from=awaiting to=booting',
    't=2200 type=line row=1',
    't=6500 type=bootloader_decision choice=ignore attempt=1',
    't=7700 type=paste len=23 correct=true',
    't=7800 type=bootloader_timeout',
    't=7900 type=mode_switch requested=1024x768 applied=800x600',
    't=8000 type=mode_cycle count=30 interrupted=false',
    't=8500 type=transition from=booting to=parked',
    't=10000 type=keypress unicode=0000 scancode=0017',
    'type=refresh_stats count=66 total_ms=396 mean_us=6012 max_us=9871 '
    'p99_us=9310',
]
NOISE = ['\x1b[2J\x1b[01;01H', 'BdsDxe: loading Boot0001', '\x00\xff',
         'type=', 't=', '=', ' ', 'x', '0', 'ffff', '\r', '\t', '-1',
         '99999999999999999999999', 'awaiting', 'true', 'é', '\x1b[0m']


def mutate_line(rng, line):
    op = rng.randrange(7)
    if op == 0 and line:
        i = rng.randrange(len(line))
        return line[:i] + rng.choice(NOISE) + line[i + 1:]
    if op == 1 and line:
        i = rng.randrange(len(line))
        return line[:i] + line[i + rng.randint(1, 4):]
    if op == 2:
        i = rng.randrange(len(line) + 1)
        return line[:i] + rng.choice(NOISE) + line[i:]
    if op == 3:
        return line[:rng.randrange(len(line) + 1)]
    if op == 4:
        toks = line.split(' ')
        rng.shuffle(toks)
        return ' '.join(toks)
    if op == 5:
        toks = line.split(' ')
        toks.insert(rng.randrange(len(toks) + 1), rng.choice(toks))
        return ' '.join(toks)
    return ''.join(chr(rng.randrange(1, 0x250)) for _ in range(
        rng.randrange(40)))


def fuzz_serial(rng, n, report):
    for _ in range(n):
        lines = list(CANONICAL)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(lines))
            lines[i] = mutate_line(rng, lines[i])
        text = rng.choice(['\r\n', '\n']).join(lines)
        if rng.random() < 0.1:
            text = text.encode('utf-8', 'surrogatepass') + bytes(
                rng.randrange(256) for _ in range(20))
        report.run('serial', text, lambda: drain.parse(text),
                   drain.SerialParseError)


def fuzz_image(rng, n, report):
    nprng = np.random.default_rng(rng.randrange(2 ** 32))
    sizes = [(640, 480), (800, 600), (1024, 768), (320, 240), (200, 220)]
    for i in range(n):
        op = i % 6
        w, h = rng.choice(sizes)
        if op == 0:        # random noise
            src = nprng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        elif op == 1:      # a digest frame with damage over the QR
            img = render.render_frame(random_payload(rng), w, h)
            ox, oy = fbhash.digest_origin(w, h)
            for _ in range(rng.randint(1, 6)):
                x = ox + rng.randrange(180)
                y = oy + rng.randrange(180)
                img[y:y + rng.randint(2, 40), x:x + rng.randint(2, 40)] = \
                    rng.choice([(0, 0, 0), (51, 150, 51), (255, 255, 255)])
            src = img
        elif op == 2:      # another QR code, maybe with SXDG-like junk
            data = mutate_bytes(rng, random_payload(rng))[:106]
            if rng.random() < 0.5:
                data = b'SXDG' + data[4:]
            src = render.render_frame(data, w, h)
        elif op == 3:      # sprinkled noise on a valid frame
            img = render.render_frame(random_payload(rng), w, h)
            mask = nprng.random((h, w)) < rng.choice([0.01, 0.05, 0.2])
            img[mask] = nprng.integers(0, 256, (int(mask.sum()), 3),
                                       dtype=np.uint8)
            src = img
        elif op == 4:      # junk bytes claiming to be a PNG
            src = b'\x89PNG\r\n\x1a\n' + bytes(
                rng.randrange(256) for _ in range(rng.randrange(200)))
        else:              # odd arrays
            src = rng.choice([
                np.zeros((h, w), np.uint8), np.zeros((h, w, 2), np.uint8),
                np.zeros((h, w, 3), np.float64), np.zeros((1, 1, 3),
                                                          np.uint8),
                np.zeros((h, w, 4), np.uint8), np.zeros((0, 0, 3),
                                                        np.uint8)])
        report.run('image', None, lambda: frame.analyse(src),
                   errors.DigestError)


class Report:
    def __init__(self, max_case_s):
        self.max_case_s = max_case_s
        self.counts = {}
        self.findings = []

    def run(self, target, sample, func, allowed):
        c = self.counts.setdefault(target, {'cases': 0, 'ok': 0,
                                            'typed_errors': 0,
                                            'error_types': {}})
        c['cases'] += 1
        t0 = time.perf_counter()
        try:
            func()
            c['ok'] += 1
        except allowed as e:
            c['typed_errors'] += 1
            name = type(e).__name__
            c['error_types'][name] = c['error_types'].get(name, 0) + 1
        except Exception:
            self.findings.append((target, sample, traceback.format_exc()))
        elapsed = time.perf_counter() - t0
        if elapsed > self.max_case_s:
            self.findings.append((target, sample,
                                  'slow case: %.2f s' % elapsed))

    @property
    def total(self):
        return sum(c['cases'] for c in self.counts.values())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--payload', type=int, default=200000)
    parser.add_argument('--serial', type=int, default=100000)
    parser.add_argument('--image', type=int, default=1200)
    parser.add_argument('--seed', type=int, default=20261125)
    parser.add_argument('--max-case-s', type=float, default=5.0)
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    report = Report(args.max_case_s)
    start = time.perf_counter()
    for name, func, n in (('payload', fuzz_payload, args.payload),
                          ('serial', fuzz_serial, args.serial),
                          ('image', fuzz_image, args.image)):
        t0 = time.perf_counter()
        func(rng, n, report)
        c = report.counts.get(name, {'cases': 0})
        errors = ', '.join('%s=%d' % kv for kv in sorted(
            c.get('error_types', {}).items())) or 'no errors'
        decoded = '; %d decoded' % c['ok'] if c['cases'] else ''
        print('%-8s %7d cases in %6.1f s: %s%s' % (
            name, c['cases'], time.perf_counter() - t0, errors, decoded))
    print('total %d cases in %.1f s, seed %d; findings (untyped errors or '
          'slow cases): %d' % (report.total, time.perf_counter() - start,
                               args.seed, len(report.findings)))
    for target, sample, detail in report.findings[:10]:
        print('--- %s %r\n%s' % (target, sample, detail))
    return 1 if report.findings else 0


if __name__ == '__main__':
    sys.exit(main())

#!/usr/bin/env python3
"""The detection matrix: faults on the SPICE leg against the scenario.

For each route (kerbside, direct) one lane is brought up with the fault
relay on its hypervisor leg (Lane(relay=True): then plain SPICE). Each
fault is armed on the relay (spice.faults; its triggers count from the
arming, so from the walk's own first key), one canonical walk runs
exactly as the tempest test runs it (scenario.runner.run_scenario), and
the relay's log of the walk is kept beside the verdict. Clean and benign
runs (no fault, 150 ms on every input message, 1-byte writes on the
inputs channel, the cursor channel's messages dropped) must pass.

Printed per fault and route: the verdict, the one cause the run gave,
whether that cause is the right one (it matches the fault's expected
reason and names its channel), whether it names the beat, and the time
from the first injection to the verdict (an upper bound: it includes the
teardown after the failure). Then, per class (real faults; clean and
benign), the counts with 95 % Wilson intervals. Everything goes to
--out (faults.json, and each run's artifacts).

    python3 benchmarks/faults.py [--routes kerbside direct] [--runs 1]
        [--clean 3] [--only NAME ...] [--out DIR]

Hold the machine lock (/tmp/ktp-machine.lock) while it runs; the load
average is printed beside the figures.
"""

import argparse
import fcntl
import json
import logging
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from kerbside_tempest_plugin.common import signals  # noqa: E402
from kerbside_tempest_plugin.loadtest import report  # noqa: E402
from kerbside_tempest_plugin.loadtest import stats  # noqa: E402
from kerbside_tempest_plugin.scenario import runner  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCK = '/tmp/ktp-machine.lock'

# name -> (spec, the channel the cause must name, the cause's right reason)
KEY_LOST = r'never registered|not taken by the guest|paste_received'
FAULTS = {
    'key-dropped': ('drop,channel=inputs,type=key_down,nth=2', 'key',
                    KEY_LOST),
    'paste-char-dropped': ('drop,channel=inputs,type=key_down,nth=12',
                           'paste', r'paste_received|never registered'),
    # a whole keystroke (the down and its up) repeated: a key_down alone,
    # repeated, changes nothing (qemu takes it as the key still down).
    # After Enter, i, s, e: skip e's up, repeat x's down and up (a letter
    # without Shift, whose down and up are two messages in a row)
    'paste-char-duplicated': (
        'duplicate,channel=inputs,after_keys=4,nth=2,span=2', 'paste',
        r'paste_received'),
    'paste-chars-swapped': ('reorder,channel=inputs,type=key_down,nth=12',
                            'paste', r'paste_received'),
    'key-corrupted': ('corrupt,channel=inputs,type=key_down,nth=12',
                      'paste', r'paste_received|never registered'),
    'inputs-cut': ('cut,channel=inputs,after_keys=3', 'input',
                   r'input channel|inputs channel|inputs path|'
                   r'never registered|not taken'),
    'display-cut': ('cut,channel=display,after_keys=3', 'display',
                    r'display (frozen|channel)'),
    'display-stalled': ('stall,channel=display,after_keys=2,duration=20',
                        'display', r'display frozen'),
    'display-delayed-10s': ('delay,channel=display,after_keys=2,ms=10000',
                            'display', r'display frozen'),
    # away from the digest's QR (1024x768): the frame hash's part
    'draw-corrupted': ('corrupt,channel=display,type=draw_copy,'
                       'after_keys=3,outside=828:556:180:180', 'frame',
                       r'frame_states|frame \d+'),
    'draw-dropped': ('drop,channel=display,type=draw_copy,after_keys=3,'
                     'outside=828:556:180:180', 'frame',
                     r'frame_states|frame \d+'),
    # a tile of the digest's own QR: its error correction decodes past
    # it and the hash skips the region; qr_tiles judges it module by
    # module
    'qr-tile-corrupted': ('corrupt,channel=display,type=draw_copy,'
                          'after_keys=3,inside=828:556:180:180', 'frame',
                          r'frame_states|frame \d+'),
    'qr-tile-dropped': ('drop,channel=display,type=draw_copy,'
                        'after_keys=3,inside=828:556:180:180', 'frame',
                        r'frame_states|frame \d+'),
    'main-cut': ('cut,channel=main,after_keys=3', 'main',
                 r'main channel|connection closed|display frozen|ryll'),
}
# Faults the guest cannot see: a lost key_up leaves the key down in qemu,
# which makes no repeat (PS/2 typematic is not emulated) and the next
# key's down works; both oracles stay the same. Run and reported apart:
# neither a miss nor a false alarm.
INVISIBLE = {
    'key-up-dropped': 'drop,channel=inputs,type=key_up,nth=2',
}
BENIGN = {
    'clean': None,
    'inputs-delayed-150ms': 'delay,channel=inputs,ms=150,count=all',
    'inputs-1-byte-writes': 'fragment,channel=inputs,size=1,count=all',
    'cursor-dropped': 'drop,channel=cursor,count=all',
}


def loadavg():
    with open('/proc/loadavg') as f:
        return f.read().split()[0]


def judge(name, expected_reason, channel_word, result):
    cause = result.cause() or ''
    caught = not result.passed
    right = caught and re.search(expected_reason, cause, re.I) is not None
    return {
        'caught': caught, 'right_reason': right,
        'names_beat': caught and re.search(r'\bbeat [\w-]+', cause)
        is not None,
        'names_channel': caught and channel_word.lower() in cause.lower(),
        'cause': cause[:400],
    }


def run_one(lane, route, name, spec, out, image, log):
    lane.clear_faults()
    if spec:
        lane.arm_fault(spec)
    t0 = time.time()
    r = runner.run_scenario(lane, 'canonical', route, image,
                            os.path.join(out, route),
                            name='fault-%s-%s' % (name, route),
                            log=lambda m: None)
    t_end = time.time()
    events = lane.fault_log(since=t0)
    injected = [e for e in events if e.get('event') == 'inject']
    with open(os.path.join(r.artifact_dir, 'fault-relay.jsonl'), 'w') as f:
        for e in events:
            f.write(json.dumps(e, sort_keys=True) + '\n')
    first = injected[0]['t'] if injected else None
    row = {'fault': name, 'spec': spec, 'route': route,
           'passed': r.passed, 'injections': len(injected),
           'verdict_s': round(t_end - first, 1) if first and not r.passed
           else None, 'walk_s': round(r.phases.get('total', 0), 1),
           'load': loadavg(), 'artifacts': r.artifact_dir}
    if spec in FAULT_SPECS:
        _, word, reason = FAULTS[name]
        row.update(judge(name, reason, word, r))
    elif name in INVISIBLE:
        row.update({'invisible': True, 'cause': (r.cause() or '')[:400]})
    else:
        row.update({'false_alarm': not r.passed,
                    'cause': (r.cause() or '')[:400]})
    log(row)
    return row


FAULT_SPECS = {v[0] for v in FAULTS.values()}


def summarise(rows):
    real = [r for r in rows if r['spec'] in FAULT_SPECS]
    benign = [r for r in rows if r['spec'] not in FAULT_SPECS and
              not r.get('invisible')]
    out = {}
    if real:
        n = len(real)
        for key in ('caught', 'right_reason', 'names_beat',
                    'names_channel'):
            k = sum(1 for r in real if r.get(key))
            lo, hi = stats.wilson_interval(k, n)
            out[key] = {'k': k, 'n': n,
                        'wilson95': [round(lo, 3), round(hi, 3)]}
        times = [r['verdict_s'] for r in real if r.get('verdict_s')]
        out['verdict_s_max'] = max(times) if times else None
        out['verdict_within_15s'] = sum(1 for t in times if t <= 15)
    if benign:
        n = len(benign)
        k = sum(1 for r in benign if r['false_alarm'])
        lo, hi = stats.wilson_interval(k, n)
        out['false_alarms'] = {'k': k, 'n': n,
                               'wilson95': [round(lo, 3), round(hi, 3)]}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--routes', nargs='+', default=['kerbside', 'direct'],
                   choices=['kerbside', 'direct'])
    p.add_argument('--runs', type=int, default=1,
                   help='walks per fault and route')
    p.add_argument('--clean', type=int, default=1,
                   help='walks per clean or benign case and route')
    p.add_argument('--only', nargs='+', metavar='NAME',
                   help='only these faults or benign cases (%s)' %
                   ', '.join(list(FAULTS) + list(BENIGN) +
                             list(INVISIBLE)))
    p.add_argument('--image', default=None)
    p.add_argument('--out', default=None)
    args = p.parse_args()
    signals.install(signals.BATCH_SIGNALS)
    logging.basicConfig(level=logging.WARNING)
    from kerbside_tempest_plugin import guest_images
    from kerbside_tempest_plugin.lane import lane as lane_mod
    image = guest_images.sextant_image(args.image)
    out = report.stamped_dir(args.out, REPO, 'faults')
    cases = [(n, spec, args.runs) for n, (spec, _w, _r) in FAULTS.items()]
    cases += [(n, spec, args.clean) for n, spec in BENIGN.items()]
    cases += [(n, spec, args.runs) for n, spec in INVISIBLE.items()]
    if args.only:
        unknown = set(args.only) - set(FAULTS) - set(BENIGN) - \
            set(INVISIBLE)
        if unknown:
            p.error('unknown case(s): %s' % ', '.join(sorted(unknown)))
        cases = [c for c in cases if c[0] in args.only]
    rows = []
    lock = open(LOCK, 'w')
    fcntl.flock(lock, fcntl.LOCK_EX)
    print('faults: %d case(s) x %s, load %s; out %s' % (
        len(cases), ' '.join(args.routes), loadavg(), out), flush=True)

    def log(row):
        print('  %-8s %-24s %s  %s' % (
            row['route'], row['fault'],
            'PASS' if row['passed'] else 'FAIL',
            'verdict %ss, load %s: %s' % (row['verdict_s'], row['load'],
                                          row.get('cause', '')[:160])
            if not row['passed'] else 'walk %ss, load %s' % (
                row['walk_s'], row['load'])), flush=True)
    try:
        for route in args.routes:
            work = tempfile.mkdtemp(prefix='lane-%s-' % route, dir=out)
            lane = lane_mod.Lane(work, route=route,
                                 kerbside=route == 'kerbside', relay=True)
            try:
                lane.up()
                for name, spec, n in cases:
                    for _ in range(n):
                        rows.append(run_one(lane, route, name, spec, out,
                                            image, log))
            finally:
                signals.down_shielded(lane)
    finally:
        figures = summarise(rows)
        with open(os.path.join(out, 'faults.json'), 'w') as f:
            json.dump({'rows': rows, 'summary': figures}, f, indent=1,
                      sort_keys=True)
        print(json.dumps(figures, sort_keys=True))
        lock.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())

#!/usr/bin/env python3
"""The main job's phases, old against new, side by side in one run (issue
20; docs/plans/fast-feedback.md).

The eight scenario tests of `tox -e direct-qemu` (four walks per route,
two classes of two, one lane per class), run here exactly as tempest runs
them (scenario.runner.run_scenario on a lane.Lane per class), twice per
route: **old**, a lane per class and every guest booted cold; **new**,
one lane per worker for both classes, boot once, restore per test (the
lane's `guest_restore`: its first guest boots cold and is saved at
Awaiting, the other three are restored from it). Old and new
alternate which goes first from route to route. Printed: every phase
(lane up, boot to banner, save, ryll to surface, walk, drain, test
total, lane down) per test and summed, old | new, each figure with the
1-minute load average read when it was taken; and per walk, what the
two oracles saw on the cold and on the restored guest (verdicts, the
drain's records with `t` left out, the boot output before the drain,
the first frame counter seen, refresh_stats count).

With `--tox`, the whole job too: `tox -e direct-qemu` with
KTP_REGEX=test_sextant_scenario (the eight tests) and
KTP_GUEST_RESTORE=0 then 1, at `--workers` 1 (and 2, ...), wall time of
each with the load beside it.

Holds the machine lock (/tmp/ktp-machine.lock, fcntl.flock) while it
runs; `--no-lock` when the caller holds it.

With `--routes-at-once`, the tox runs are restore on with the routes one
after the other against both at once (KTP_ROUTES_AT_ONCE=1), `--rounds`
times, alternating which goes first; `--regex sextant` times the whole
job (the nine promise tests too).

    python3 benchmarks/main_job.py [--routes kerbside direct]
        [--tox | --tox-only] [--workers 1 2] [--routes-at-once]
        [--rounds N] [--regex sextant] [--out DIR] [--no-lock]
"""

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from kerbside_tempest_plugin.common import signals  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCK = '/tmp/ktp-machine.lock'
# The tempest classes and their tests' order (tempest sorts by test
# name: mode_key before wrong_paste).
CLASSES = (('SextantScenarioTest', ('canonical', 'retry')),
           ('SextantScenarioVariantsTest', ('mode_switch', 'wrong_paste')))
MODES = ('old', 'new')
PHASES = ('boot_to_banner', 'ryll_to_surface', 'walk', 'drain', 'total')


def load1():
    with open('/proc/loadavg') as f:
        return float(f.read().split()[0])


class Figure:
    """A measured value with the 1-minute load when it was taken."""

    def __init__(self, value, load=None):
        self.value = value
        self.load = load1() if load is None else load

    def text(self):
        if self.value is None:
            return '-'
        return '%.2f @%.1f' % (self.value, self.load)

    def to_json(self):
        return {'s': self.value, 'load1': self.load}


def image_path(args):
    if args.image:
        return os.path.abspath(args.image)
    from kerbside_tempest_plugin import guest_images
    return guest_images.sextant_image(None)


def run_lane(mode, route, name, walks, image, out, log):
    """One lane and its tests, as tempest runs them, old or new."""
    from kerbside_tempest_plugin.lane import lane as lane_mod
    from kerbside_tempest_plugin.scenario import runner
    from kerbside_tempest_plugin.tests.scenario import guest_restore
    lanes = os.path.join(out, mode, route, 'lanes')
    os.makedirs(lanes, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix='%s-%s-' % (route, name), dir=lanes)
    lane = lane_mod.Lane(
        workdir, route=route, kerbside=route == 'kerbside',
        guest_restore=guest_restore.awaiting_untouched if mode == 'new'
        else None)
    fig = {'tests': []}
    t = time.monotonic()
    try:
        lane.up()
        fig['lane_up'] = Figure(time.monotonic() - t)
        for walk in walks:
            r = runner.run_scenario(
                lane, walk, route, image, os.path.join(out, mode, route),
                name='main-%s-%s-%s' % (mode, walk.replace('_', '-'), route),
                log=lambda m: None)
            guest = lane.guest
            saved = getattr(guest, 'saved_as', None)
            restored = getattr(guest, 'restored_from', None)
            row = {'walk': walk, 'result': r, 'load': load1(),
                   'restored': restored is not None,
                   'saved': saved is not None,
                   'save_s': saved.seconds if saved else None,
                   'restore_s': getattr(guest, 'restore_seconds', None)}
            fig['tests'].append(row)
            how = ' [restored]' if restored else \
                ' [cold, saved]' if saved else ' [cold]'
            log('  %s %s %s: %s%s' % (
                mode, route, walk, r.summary_line(), how))
    finally:
        t = time.monotonic()
        signals.down_shielded(lane)
        fig['lane_down'] = Figure(time.monotonic() - t)
        shutil.rmtree(os.path.join(workdir, 'secrets'), ignore_errors=True)
    return fig


def run_mode(mode, route, image, out, log):
    """old: a lane per class, every guest cold (the job before issue
    20). new: one lane per worker for both classes, its first guest cold
    and saved, the rest restored.
    """
    if mode == 'old':
        return [run_lane(mode, route, cls, walks, image, out, log)
                for cls, walks in CLASSES]
    walks = [w for _, ws in CLASSES for w in ws]
    return [run_lane(mode, route, 'worker', walks, image, out, log)]


def drain_shape(artifact_dir):
    """What the oracles read of a walk's serial: the output before the
    drain (banner, mode list) and the drain's records without `t`.
    """
    from kerbside_tempest_plugin.sextant import drain as drain_mod
    path = os.path.join(artifact_dir, 'guest__serial.log')
    if not os.path.exists(path):
        return None
    with open(path, 'rb') as f:
        text = f.read().decode('utf-8', 'replace')
    try:
        drain = drain_mod.parse(text)
    except Exception as e:
        return {'error': str(e)}
    first = text.find(' type=')
    head = text[:text.rfind('\n', 0, first) + 1] if first >= 0 else text
    return {'boot_output': head,
            'records': [(r.type, sorted((k, str(v)) for k, v in
                                        r.fields.items()))
                        for r in drain.records],
            'refresh_count': drain.refresh_stats.fields.get('count')
            if drain.refresh_stats else None}


def first_frame(artifact_dir):
    try:
        with open(os.path.join(artifact_dir, 'digests.jsonl')) as f:
            return json.loads(f.readline())['frame_counter']
    except (OSError, ValueError, KeyError):
        return None


def compare(old, new):
    """Per walk: the cold guest's oracle view against the new one's
    (restored, but for the lane's first).
    """
    rows = []
    olds = {t['walk']: t for c in old for t in c['tests']}
    for c in new:
        for t in c['tests']:
            o = olds.get(t['walk'])
            if o is None:
                continue
            ro, rn = o['result'], t['result']
            so, sn = drain_shape(ro.artifact_dir), drain_shape(rn.artifact_dir)
            rows.append({
                'walk': t['walk'], 'new_restored': t['restored'],
                'verdicts_old': ro.verdicts(), 'verdicts_new': rn.verdicts(),
                'passed': [ro.passed, rn.passed],
                'drain_records_equal': bool(so and sn and so.get('records')
                                            == sn.get('records')),
                'drain_records': [len((so or {}).get('records') or []),
                                  len((sn or {}).get('records') or [])],
                'boot_output_equal': bool(so and sn and so.get('boot_output')
                                          == sn.get('boot_output')),
                'first_frame': [first_frame(ro.artifact_dir),
                                first_frame(rn.artifact_dir)],
                'refresh_count': [(so or {}).get('refresh_count'),
                                  (sn or {}).get('refresh_count')],
                'artifacts': [ro.artifact_dir, rn.artifact_dir]})
    return rows


def table(per_route):
    lines = []
    w = 26

    def row(label, old, new):
        lines.append('  %-42s %-*s %-*s' % (label, w, old, w, new))
    for route, modes in per_route.items():
        lines.append('route %s  (seconds @ 1-min load when taken)' % route)
        row('phase', 'old (lane/class, cold)',
            'new (lane/worker, restore)')
        sums = {m: 0.0 for m in MODES}
        tests = {m: [t for c in modes[m] for t in c['tests']] for m in MODES}
        for key in ('lane_up', 'lane_down'):
            cells = {}
            for m in MODES:
                figs = [c[key] for c in modes[m] if key in c]
                total = sum(f.value or 0 for f in figs)
                sums[m] += total
                cells[m] = '%.2f (%d lane%s) @%.1f' % (
                    total, len(figs), '' if len(figs) == 1 else 's',
                    figs[-1].load if figs else 0)
            row(key.replace('_', ' '), cells['old'], cells['new'])
        by_walk = {m: {t['walk']: t for t in tests[m]} for m in MODES}
        for _, walks in CLASSES:
            for walk in walks:
                ts = {m: by_walk[m].get(walk) for m in MODES}
                for ph in PHASES:
                    vals = {}
                    for m in MODES:
                        t = ts[m]
                        v = t['result'].phases.get(ph) if t else None
                        vals[m] = Figure(v, t['load'] if t else 0).text()
                        if ph == 'total' and v:
                            sums[m] += v
                    tag = ''
                    if ph == 'boot_to_banner' and ts['new']:
                        tag = ' (restored)' if ts['new']['restored'] else \
                            ' (cold, saved)' if ts['new']['saved'] else ''
                    row('%s %s%s' % (walk, ph, tag), vals['old'],
                        vals['new'])
                if ts['new'] and ts['new']['save_s'] is not None:
                    row('%s   save (guest held)' % walk, '-',
                        '%.2f' % ts['new']['save_s'])
                if ts['new'] and ts['new']['restore_s'] is not None:
                    row('%s   restore (qemu start to run)' % walk, '-',
                        '%.2f' % ts['new']['restore_s'])
        row('sum (lanes + tests)', '%.1f' % sums['old'],
            '%.1f' % sums['new'])
        lines.append('')
    return lines


def run_tox(restore, workers, out, log, at_once=False,
            regex='test_sextant_scenario'):
    env = dict(os.environ, KTP_REGEX=regex,
               KTP_GUEST_RESTORE='1' if restore else '0',
               KTP_LANE_PER_WORKER='1' if restore else '0',
               KTP_CONCURRENCY=str(workers),
               KTP_ROUTES_AT_ONCE='1' if at_once else '0',
               KTP_ARTIFACTS=os.path.join(out, 'tox-%s-w%d%s-%s' % (
                   'new' if restore else 'old', workers,
                   '-at-once' if at_once else '', regex)))
    logf = env['KTP_ARTIFACTS'] + '.log'
    before = load1()
    t = time.monotonic()
    with open(logf, 'w') as f:
        rc = subprocess.call([os.path.join(REPO, '.venv', 'bin', 'tox'),
                              '-e', 'direct-qemu'], cwd=REPO, env=env,
                             stdout=f, stderr=subprocess.STDOUT)
    wall = time.monotonic() - t
    log('  tox restore=%d workers=%d routes at once=%d regex=%s: rc %d, '
        '%.1f s (load %.2f at start, %.2f at end), log %s' % (
            restore, workers, at_once, regex, rc, wall, before, load1(),
            logf))
    return {'restore': restore, 'workers': workers, 'at_once': at_once,
            'regex': regex, 'rc': rc, 'wall_s': wall,
            'load1_start': before, 'load1_end': load1(), 'log': logf}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--routes', nargs='+', default=['kerbside', 'direct'],
                   choices=['kerbside', 'direct'])
    p.add_argument('--image', help='a Sextant qcow2 (default: '
                   'SEXTANT_IMAGE, else the bundled guest)')
    p.add_argument('--out', default=None)
    p.add_argument('--tox', action='store_true',
                   help='also time tox -e direct-qemu (the eight tests) '
                   'with KTP_GUEST_RESTORE=0 and 1')
    p.add_argument('--tox-only', action='store_true',
                   help='only the tox runs')
    p.add_argument('--workers', nargs='+', type=int, default=[1])
    p.add_argument('--routes-at-once', action='store_true',
                   help='the tox runs: restore on, the routes one after '
                   'the other against at once (KTP_ROUTES_AT_ONCE), '
                   'alternating which goes first, --rounds times')
    p.add_argument('--rounds', type=int, default=1)
    p.add_argument('--regex', default='test_sextant_scenario',
                   help='KTP_REGEX of the tox runs (sextant: the whole '
                   'job, promise tests too)')
    p.add_argument('--no-lock', action='store_true',
                   help='the caller already holds %s' % LOCK)
    args = p.parse_args(argv)
    out = os.path.abspath(args.out or os.path.join(
        REPO, 'artifacts', 'main-job-%s' % time.strftime(
            '%Y%m%dT%H%M%SZ', time.gmtime())))
    os.makedirs(out, exist_ok=True)
    # SIGTERM/SIGHUP/SIGINT: the lanes' finally blocks run.
    signals.install(signals.BATCH_SIGNALS)
    lock = open(LOCK, 'a')
    if not args.no_lock:
        print('waiting for the machine lock %s' % LOCK, flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        return _run(args, out)
    finally:
        lock.close()


def _run(args, out):
    def log(m):
        print(m, flush=True)
    log('main_job: out %s; /proc/loadavg %s' % (
        out, open('/proc/loadavg').read().strip()))
    report = {'out': out}
    if not args.tox_only:
        image = image_path(args)
        log('image %s' % image)
        per_route = {}
        comparisons = {}
        for i, route in enumerate(args.routes):
            order = MODES if i % 2 == 0 else MODES[::-1]
            modes = {}
            for mode in order:
                modes[mode] = run_mode(mode, route, image, out, log)
            per_route[route] = modes
            comparisons[route] = compare(modes['old'], modes['new'])
        log('')
        for line in table(per_route):
            log(line)
        log('oracles, cold (old) against restored (new) guest, per walk:')
        for route, rows in comparisons.items():
            for r in rows:
                log('  %s %-12s restored=%s passed old/new %s; drain records '
                    '(t left out) equal: %s %s; boot output equal: %s; '
                    'first frame seen %s; refresh_stats count %s' % (
                        route, r['walk'], r['new_restored'], r['passed'],
                        r['drain_records_equal'], r['drain_records'],
                        r['boot_output_equal'], r['first_frame'],
                        r['refresh_count']))
                diff = {k: (v, r['verdicts_new'].get(k))
                        for k, v in r['verdicts_old'].items()
                        if v != r['verdicts_new'].get(k)}
                if diff:
                    log('    verdicts differ (old, new): %s' % diff)
        report['routes'] = {
            route: {m: [{'lane_up': c['lane_up'].to_json()
                         if 'lane_up' in c else None,
                         'lane_down': c['lane_down'].to_json(),
                         'tests': [{'walk': t['walk'], 'load1': t['load'],
                                    'restored': t['restored'],
                                    'saved': t['saved'],
                                    'save_s': t['save_s'],
                                    'restore_s': t['restore_s'],
                                    'passed': t['result'].passed,
                                    'phases': t['result'].phases,
                                    'artifact_dir':
                                    t['result'].artifact_dir}
                                   for t in c['tests']]}
                        for c in modes[m]] for m in MODES}
            for route, modes in per_route.items()}
        report['oracles'] = comparisons
    if args.tox or args.tox_only:
        report['tox'] = []
        # (restore, routes at once): what is compared, old against new
        pairs = [(True, False), (True, True)] if args.routes_at_once \
            else [(False, False), (True, False)]
        for workers in args.workers:
            for k in range(args.rounds):
                for restore, at_once in (pairs if k % 2 == 0
                                         else pairs[::-1]):
                    report['tox'].append(run_tox(
                        restore, workers, out, log, at_once=at_once,
                        regex=args.regex))
        log('tox -e direct-qemu (KTP_REGEX=%s):' % args.regex)
        for t in report['tox']:
            log('  workers %d %-4s %-13s rc %d  %.1f s @%.1f (load at end '
                '%.1f)' % (t['workers'], 'new' if t['restore'] else 'old',
                           'routes at once' if t['at_once'] else 'in turn',
                           t['rc'], t['wall_s'], t['load1_start'],
                           t['load1_end']))
    with open(os.path.join(out, 'main_job.json'), 'w') as f:
        json.dump(report, f, indent=1, sort_keys=True, default=str)
    log('figures: %s' % os.path.join(out, 'main_job.json'))
    log(json.dumps({'loadavg_end': open('/proc/loadavg').read().strip()}))
    return 0


if __name__ == '__main__':
    sys.exit(main())

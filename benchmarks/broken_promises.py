#!/usr/bin/env python3
"""The promise tests against Kerbside with one promise broken, side by side.

For each variant of lane/kerbside_variants.py (default all; --variants
a,b) a copy of the Kerbside venv is made with that one promise broken,
and the promise tests run against it through the main job:

    KTP_ROUTE=kerbside KTP_REGEX=promises KERBSIDE_VENV=<copy> \\
        KTP_ARTIFACTS=<out>/runs/<variant> bash tools/direct-qemu-job.sh

then once more against the unmodified venv, the control. Every test's
promise.json is read ({"name", "passed", "promises", "failures":
[{"promise", "message"}]}) and one table printed: per variant the
promise it breaks, which tests failed, which promises their failures
named, whether one named the broken promise (caught for the right
reason), the job's exit status and its run time; the control must pass
every test. Exits 1 when a variant is not caught (its tests all passed,
or none reported) or the control does not pass.

    python3 benchmarks/broken_promises.py [--variants a,b] [--out DIR]
        [--base VENV] [--regex promises] [--keep-venvs]
    python3 benchmarks/broken_promises.py --rejudge DIR   (runs nothing)

Everything is kept under --out (default artifacts/bench-broken-promises-
<stamp>): runs/<label>/ (the job's artifacts), runs/<label>.log (its
output), runs/<variant>.diff (the edit), summary.txt, results.json.
The venv copies go to venvs/ there and are removed after their run
unless --keep-venvs. A failed test whose promise.json has an error and
no failed check stopped on the harness, not on a promise: the table
marks it "(error)". --rejudge judges an earlier run's kept artifacts
again. docs/plans/broken-promises.md has the plan and the measured
table.
"""

import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from kerbside_tempest_plugin.common import tools  # noqa: E402
from kerbside_tempest_plugin.lane import kerbside_variants  # noqa: E402
from kerbside_tempest_plugin.loadtest import report  # noqa: E402

kv = kerbside_variants
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTROL = 'control'

# subunit-trace's line per test: "{0} id [1.2s] ... ok" (or FAILED,
# SKIPPED: reason).
TRACE_RE = re.compile(r'^\{\d+\}\s+(\S+)\s+(?:\[[\d.]+s\]\s+)?\.\.\.\s+'
                      r'(ok|FAILED|SKIPPED)', re.M)


def short(name):
    """A test's name without its module and class path."""
    name = str(name or '?').split('[')[0]
    return name.rsplit('.', 1)[-1]


def test_key(name):
    """One spelling for a test's tempest method name and the name in its
    promise.json: test_sextant_promise_token_expiry and
    promise-token-expiry are both promise_token_expiry.
    """
    key = short(name).lower().replace('-', '_')
    return re.sub(r'^(test_)?(sextant_)?', '', key)


def shown(name):
    """A test's name as the table shows it (without `promise-`)."""
    return re.sub(r'^promise[-_]', '', short(name))


def find_promises(artifacts):
    """Every promise.json under `artifacts` (a job's KTP_ARTIFACTS), each
    with `_path`; an unreadable one is a failed test saying so.
    """
    out = []
    for path in sorted(glob.glob(os.path.join(artifacts, '**',
                                              'promise.json'),
                                 recursive=True)):
        try:
            with open(path) as f:
                data = json.load(f)
            if not isinstance(data, dict):
                raise ValueError('not an object')
        except (OSError, ValueError) as e:
            data = {'name': os.path.basename(os.path.dirname(path)),
                    'passed': False, 'promises': [],
                    'failures': [{'promise': None, 'message':
                                  'unreadable promise.json: %s' % e}]}
        data['_path'] = os.path.dirname(path)
        out.append(data)
    return out


def tempest_outcomes(text):
    """{short test name: ok|FAILED|SKIPPED} from the job's output."""
    return {short(m.group(1)): m.group(2) for m in TRACE_RE.finditer(text)}


def _venv_of(record):
    build = record.get('kerbside_build')
    return build.get('venv') if isinstance(build, dict) else None


def judge(promise, promises, rc=None, expected=(), outcomes=None,
          venv=None):
    """The verdict of one variant run that breaks `promise`, from its
    promise.json records. `expected` are the test names the control
    reported: one missing here failed without writing its promise.json
    (a crash), which catches the variant but not for a known reason.
    `outcomes` (tempest_outcomes) adds tests that failed in tempest
    with a promise.json saying they passed. With `venv`, every record
    whose kerbside_build names another Kerbside venv is listed in
    `wrong_venv`: such a run proves nothing about the variant.

    verdict: CAUGHT (a failure names the broken promise), CAUGHT-OTHER
    (tests failed, none naming it), NOT CAUGHT (every test passed), NO
    RESULTS (no promise.json at all), WRONG VENV (a test ran another
    Kerbside).
    """
    outcomes = {test_key(t): o for t, o in (outcomes or {}).items()}
    names = [short(p.get('name')) for p in promises]
    keys = {test_key(n) for n in names}
    failed = [p for p in promises if not p.get('passed') or
              outcomes.get(test_key(p.get('name'))) == 'FAILED']
    failures = [f for p in failed for f in (p.get('failures') or [])]
    named = sorted({str(f.get('promise')) for f in failures})
    reasons = [{'test': short(p.get('name')), 'message': f.get('message')}
               for p in failed for f in (p.get('failures') or [])
               if f.get('promise') == promise]
    crashed = {t for t, o in outcomes.items() if o == 'FAILED'}
    missing = sorted(({test_key(t) for t in expected} | crashed) - keys)
    checked_by = [short(p.get('name')) for p in promises
                  if promise in (p.get('promises') or [])]
    missed_by = [short(p.get('name')) for p in promises
                 if promise in (p.get('promises') or []) and
                 p not in failed]
    wrong_venv = sorted(
        '%s (%s)' % (short(p.get('name')), _venv_of(p)) for p in promises
        if venv and _venv_of(p) and os.path.realpath(_venv_of(p)) !=
        os.path.realpath(venv))
    errors = ['%s: %s' % (short(p.get('name')), p['error'])
              for p in failed if p.get('error')]
    # Failed on a harness error with no promise judged broken.
    errored = [short(p.get('name')) for p in failed
               if p.get('error') and not p.get('failures')]
    if wrong_venv:
        verdict = 'WRONG VENV'
    elif reasons:
        verdict = 'CAUGHT'
    elif failed or missing:
        verdict = 'CAUGHT-OTHER'
    elif promises:
        verdict = 'NOT CAUGHT'
    else:
        verdict = 'NO RESULTS'
    return {'promise': promise, 'verdict': verdict,
            'caught': verdict in ('CAUGHT', 'CAUGHT-OTHER'),
            'right_reason': bool(reasons), 'tests': names,
            'failed': [short(p.get('name')) for p in failed],
            'missing': missing, 'named': named, 'reasons': reasons,
            'errors': errors, 'errored': errored, 'wrong_venv': wrong_venv,
            'checked_by': checked_by, 'missed_by': missed_by, 'rc': rc}


def judge_control(promises, rc=None, outcomes=None, venv=None):
    """The control passes when it reported tests, all passed on `venv`,
    and the job exited 0.
    """
    j = judge(None, promises, rc, outcomes=outcomes, venv=venv)
    passed = bool(promises) and not j['failed'] and not j['missing'] \
        and not j['wrong_venv'] and rc in (0, None)
    j.update(verdict='PASSED' if passed else 'FAILED', caught=None,
             passed=passed)
    return j


def _cell(items, empty='none'):
    return ', '.join(items) if items else empty


def table(rows):
    """rows: [{'label', 'promise', 'judged', 'seconds'}]; the control's
    promise is None.
    """
    body = []
    for r in rows:
        j = r['judged']
        errored = set(j.get('errored') or ())
        failed = sorted(shown(n) + (' (error)' if n in errored else '')
                        for n in j['failed']) + \
            ['%s (no promise.json)' % shown(m) for m in j['missing']]
        body.append([
            r['label'], r['promise'] or '-', _cell(failed),
            _cell([n for n in j['named'] if n != 'None'], '-'),
            '-' if r['promise'] is None else
            ('yes' if j['right_reason'] else 'NO'),
            j['verdict'], '-' if j['rc'] is None else j['rc'],
            '-' if r['seconds'] is None else '%.0f' % r['seconds']])
    return report.text_table(
        ['variant', 'breaks', 'tests failed', 'failures name',
         'right reason', 'verdict', 'job exit', 'run (s)'], body)


def exit_status(rows):
    """1 when a variant is not caught or the control did not pass."""
    for r in rows:
        j = r['judged']
        if r['promise'] is None:
            if not j['passed']:
                return 1
        elif not j['caught']:
            return 1
    return 0


def evidence(rows, width=300):
    """What the tests saw, per variant: the failure messages naming the
    broken promise, or, when none did, what the tests that check it
    reported.
    """
    lines = []
    for r in rows:
        j = r['judged']
        if r['promise'] is None:
            continue
        lines.append('%s (breaks %s): %s' % (r['label'], r['promise'],
                                             j['verdict']))
        for item in j['reasons']:
            lines.append('  %s: %s' % (item['test'],
                                       str(item['message'])[:width]))
        if j['reasons'] and j['missed_by']:
            lines.append('  also say they check %s, and passed: %s' % (
                r['promise'], _cell(j['missed_by'])))
        if j['wrong_venv']:
            lines.append('  ran another Kerbside venv: %s' % _cell(
                j['wrong_venv']))
        if not j['reasons']:
            lines.append('  tests that check %s: %s; passed anyway: %s' % (
                r['promise'], _cell(j['checked_by']),
                _cell(j['missed_by'])))
            for item in j['errors']:
                lines.append('  error: %s' % item[:width])
    return '\n'.join(lines)


def _harness_down(artifacts, log):
    """The job's own safety net, for a job this benchmark had to kill."""
    for procs in glob.glob(os.path.join(artifacts, '*', 'artifacts',
                                        'lanes', '*', 'processes.json')):
        lane = os.path.dirname(procs)
        subprocess.run([sys.executable, '-m',
                        'kerbside_tempest_plugin.cmd.harness', 'down',
                        '--workdir', lane], stdout=log, stderr=log)
        shutil.rmtree(os.path.join(lane, 'secrets'), ignore_errors=True)


def run_job(venv, artifacts, log_path, regex, timeout):
    """The main job on the kerbside route with `venv`; (exit status,
    seconds, its output). A job past `timeout` is stopped (SIGTERM, then
    SIGKILL to its process group) and its lanes taken down.
    """
    env = dict(os.environ, KTP_ROUTE='kerbside', KTP_REGEX=regex,
               KERBSIDE_VENV=venv, KTP_ARTIFACTS=artifacts)
    t0 = time.monotonic()
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(
            ['bash', os.path.join(REPO, 'tools', 'direct-qemu-job.sh')],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.write('\n[broken_promises] job timed out after %d s\n'
                      % timeout)
            log.flush()
            for sig, wait in ((signal.SIGTERM, 120), (signal.SIGKILL, 30)):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=wait)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
            rc = 'timeout'
            _harness_down(artifacts, log)
    with open(log_path, errors='replace') as f:
        text = f.read()
    return rc, time.monotonic() - t0, text


def judge_row(row, expected=()):
    """(Re)judge a run from what it left: its promise.json files under
    row['artifacts'] and its job output in row['log'].
    """
    promises = find_promises(os.path.join(row['artifacts'], 'kerbside',
                                          'artifacts'))
    try:
        with open(row['log'], errors='replace') as f:
            outcomes = tempest_outcomes(f.read())
    except OSError:
        outcomes = {}
    if row['promise'] is None:
        judged = judge_control(promises, row['rc'], outcomes, row['venv'])
    else:
        judged = judge(row['promise'], promises, row['rc'], expected,
                       outcomes, row['venv'])
    row.update(judged=judged, records=promises)
    return row


def run_one(label, promise, venv, out, args, log=print):
    row = {'label': label, 'promise': promise, 'venv': venv,
           'artifacts': os.path.join(out, 'runs', label),
           'log': os.path.join(out, 'runs', label + '.log')}
    row['rc'], row['seconds'], _ = run_job(
        venv, row['artifacts'], row['log'], args.regex, args.timeout)
    judge_row(row)
    log('  %-24s %s in %.0f s (job exit %s; %d promise.json; log %s)' % (
        label, row['judged']['verdict'], row['seconds'], row['rc'],
        len(row['records']), row['log']))
    return row


def judge_all(rows):
    """Judge every run; a variant's against the tests the control
    reported (one missing in a variant run died before writing its
    promise.json).
    """
    control = [r for r in rows if r['promise'] is None]
    for r in control:
        judge_row(r)
    expected = control[0]['judged']['tests'] if control else ()
    for r in rows:
        if r['promise'] is not None and r.get('artifacts'):
            judge_row(r, expected)
    return rows


def finish(out, rows, meta):
    """Print the table and the evidence, write summary.txt and
    results.json; returns the exit status.
    """
    load = meta['loadavg']
    text = table(rows) + '\n\n' + evidence(rows)
    text += '\n\nwall %.0f s; /proc/loadavg at start: %s; at end: %s' % (
        meta['wall_s'], load['start'], load['end'])
    if not any(r['promise'] is None for r in rows):
        text += '\n(no control run: --no-control)'
    if meta.get('rejudged'):
        text += '\n(judged again from the kept artifacts: %s)' % (
            meta['rejudged'])
    status = exit_status(rows)
    print()
    print(text)
    with open(os.path.join(out, 'summary.txt'), 'w') as f:
        f.write(text + '\n')
    report.write_json(os.path.join(out, 'results.json'),
                      dict(meta, rows=rows))
    print('artifacts: %s (summary.txt, results.json, runs/)' % out)
    print(json.dumps({
        'wall_s': round(meta['wall_s'], 1), 'loadavg': load,
        'status': status,
        'rows': {r['label']: {'verdict': r['judged']['verdict'],
                              'breaks': r['promise'],
                              'failed': r['judged']['failed'],
                              'seconds': r['seconds'] and round(
                                  r['seconds'], 1)}
                 for r in rows}}, sort_keys=True))
    return status


def rejudge(out):
    """Judge a finished benchmark's kept artifacts again (its --out
    directory), e.g. after the verdict logic changed.
    """
    with open(os.path.join(out, 'results.json')) as f:
        saved = json.load(f)
    rows = []
    for r in saved['rows']:
        row = {k: r.get(k) for k in ('label', 'promise', 'venv', 'seconds',
                                     'error')}
        row['rc'] = r.get('rc', (r.get('judged') or {}).get('rc'))
        if r.get('artifacts'):
            row['artifacts'] = os.path.join(out, 'runs', r['label'])
            row['log'] = os.path.join(out, 'runs', r['label'] + '.log')
        else:
            row['judged'] = judge(row['promise'], [], None)
        rows.append(row)
    meta = {k: v for k, v in saved.items() if k != 'rows'}
    meta['rejudged'] = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
    return finish(out, judge_all(rows), meta)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--variants', default=','.join(kv.VARIANTS),
                   help='comma-separated (default all: %(default)s)')
    p.add_argument('--base', default=None,
                   help='the unmodified Kerbside venv (default '
                        '$KERBSIDE_VENV, else the cached one)')
    p.add_argument('--regex', default='promises',
                   help='KTP_REGEX for the job (default %(default)s)')
    p.add_argument('--timeout', type=int, default=3600,
                   help='seconds per job (default %(default)s)')
    p.add_argument('--out', default=None)
    p.add_argument('--keep-venvs', action='store_true')
    p.add_argument('--no-control', action='store_true',
                   help='skip the clean run (to try one variant; the '
                        'table then has no control)')
    p.add_argument('--rejudge', metavar='DIR', default=None,
                   help='run nothing: judge the kept artifacts of an '
                        'earlier run (its --out directory) again')
    args = p.parse_args(argv)
    if args.rejudge:
        return rejudge(os.path.abspath(args.rejudge))
    names = [n.strip() for n in args.variants.split(',') if n.strip()]
    try:
        variants = [kv.variant(n) for n in names]
    except kv.VariantError as e:
        p.error(str(e))
    base = os.path.abspath(args.base or tools.default_kerbside_venv())
    out = report.stamped_dir(args.out, REPO, 'broken-promises')
    os.makedirs(os.path.join(out, 'runs'), exist_ok=True)
    venvs = os.path.join(out, 'venvs')
    print('%d variant(s) (%s) then the control; base venv %s; regex %r; '
          'artifacts in %s' % (len(variants), ', '.join(names), base,
                               args.regex, out), flush=True)
    load = {'start': report.loadavg()}
    t0 = time.monotonic()
    rows = []
    for v in variants:
        dest = os.path.join(venvs, v.name)
        try:
            info = kv.make_broken_venv(base, v.name, dest)
        except kv.VariantError as e:
            print('  %-24s could not be made: %s' % (v.name, e), flush=True)
            rows.append({'label': v.name, 'promise': v.promise,
                         'venv': None, 'rc': None, 'seconds': None,
                         'error': str(e),
                         'judged': judge(v.promise, [], None)})
            continue
        with open(os.path.join(out, 'runs', v.name + '.diff'), 'w') as f:
            f.write(info['diff'])
        try:
            rows.append(run_one(v.name, v.promise, dest, out, args,
                                log=lambda m: print(m, flush=True)))
        finally:
            if not args.keep_venvs:
                shutil.rmtree(dest, ignore_errors=True)
    if not args.no_control:
        rows.append(run_one(CONTROL, None, base, out, args,
                            log=lambda m: print(m, flush=True)))
    load['end'] = report.loadavg()
    return finish(out, judge_all(rows), {
        'base': base, 'regex': args.regex,
        'wall_s': time.monotonic() - t0, 'loadavg': load})


if __name__ == '__main__':
    sys.exit(main())

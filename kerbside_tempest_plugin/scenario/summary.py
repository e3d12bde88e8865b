"""The verdicts of scenario runs, from their result.json files, and of
promise tests, from their promise.json files.

`load(dirs)` finds every `result.json` (a Sextant walk) and `promise.json`
(a Kerbside promise test, scenario.promises) under the directories;
`line(run)` is one line per run (walk or test, route, each check's
verdict, phase times, the report path). The console script is cmd.summary.
"""

import glob
import json
import os


VERDICT_FILES = ('result.json', 'promise.json')


def load(dirs):
    runs = []
    for d in dirs:
        paths = [p for name in VERDICT_FILES for p in glob.glob(
            os.path.join(d, '**', name), recursive=True)]
        for path in sorted(paths):
            try:
                with open(path) as f:
                    data = json.load(f)
            except (OSError, ValueError) as e:
                data = {'walk': '?', 'route': '?', 'passed': False,
                        'error': 'unreadable %s: %s' % (path, e),
                        'results': [], 'phases': {}, 'stats': {}}
            data['_path'] = os.path.dirname(path)
            runs.append(data)
    return runs


def line(run):
    if run.get('kind') == 'promise':
        return _promise_line(run)
    checks = ' '.join('%s=%s' % (r['name'], WALK_VERDICTS[_verdict(r)])
                      for r in run.get('results', []))
    phases = ' '.join('%s=%.1fs' % (k, v) for k, v in
                      (run.get('phases') or {}).items() if v is not None)
    stats = run.get('stats') or {}
    extra = []
    if 'fidelity' in stats:
        extra.append('fidelity=%.0f%%' % (100 * stats['fidelity']))
    if 'fb_checked' in stats:
        extra.append('fb=%d/%d' % (stats['fb_matched'], stats['fb_checked']))
    out = '%-4s %-12s %-9s %s | %s %s\n     report: %s' % (
        'PASS' if run.get('passed') else 'FAIL', run.get('walk'),
        run.get('route'), checks or '(no checks)', phases, ' '.join(extra),
        os.path.join(run['_path'], 'report.md'))
    if run.get('cause'):
        out += '\n     cause: %s' % run['cause'].splitlines()[0][:300]
    elif run.get('error'):
        out += '\n     error: %s' % run['error'].splitlines()[0][:300]
    return out


# A walk's check verdicts on its summary line (NOT RUN is not a failure).
WALK_VERDICTS = {'PASS': 'ok', 'FAIL': 'FAIL', 'NOT RUN': 'not_run'}


def _verdict(r):
    from kerbside_tempest_plugin.scenario import checks
    return checks.verdict_of(r)


def _promise_line(run):
    counts = {}
    for c in run.get('checks') or ():
        counts[c.get('verdict')] = counts.get(c.get('verdict'), 0) + 1
    total = (run.get('timings') or {}).get('total')
    out = '%-4s %-12s %-9s %s | %s%s\n     report: %s' % (
        'PASS' if run.get('passed') else 'FAIL', run.get('name'),
        run.get('route'), ','.join(run.get('promises') or ()),
        ' '.join('%s=%d' % (v.lower().replace(' ', '_'), n)
                 for v, n in sorted(counts.items())),
        ' total=%.1fs' % total if total is not None else '',
        os.path.join(run['_path'], 'report.md'))
    for f in (run.get('failures') or ())[:1]:
        out += '\n     %s promise broken: %s: %s' % (
            f.get('promise'), f.get('check'),
            (f.get('message') or '').splitlines()[0][:300])
    if run.get('error') and not run.get('failures'):
        out += '\n     error: %s' % run['error'].splitlines()[0][:300]
    return out


def builds(runs):
    """The distinct Kerbside builds the runs were judged against, each
    as one line (scenario.runner.build_line).
    """
    from kerbside_tempest_plugin.scenario import runner
    out = []
    for run in runs:
        build = run.get('kerbside_build') or \
            (run.get('stats') or {}).get('kerbside_build')
        if build:
            text = runner.build_line(build)
            if text not in out:
                out.append(text)
    return out

"""The verdicts of scenario runs, from their result.json files.

`load(dirs)` finds every `result.json` under the directories; `line(run)`
is one line per run (walk, route, each check's verdict, phase times, the
report path). The console script is cmd.summary.
"""

import glob
import json
import os


def load(dirs):
    runs = []
    for d in dirs:
        for path in sorted(glob.glob(os.path.join(d, '**', 'result.json'),
                                     recursive=True)):
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
    checks = ' '.join('%s=%s' % (r['name'], 'ok' if r['passed'] else 'FAIL')
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
    if run.get('error'):
        out += '\n     error: %s' % run['error'].splitlines()[0][:300]
    return out

"""Print the verdicts of scenario runs from their result.json files.

    python -m kerbside_tempest_plugin.scenario.summary [--expect N] DIR...

Finds every `result.json` under the directories, prints one line per run
(walk, route, each check's verdict, phase times, the report path) and a
total. Exits 1 when a run failed, when fewer than N runs are found (a
job whose tests were all skipped must not pass), or when nothing was
found at all.
"""

import argparse
import glob
import json
import os
import sys


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('dirs', nargs='+')
    p.add_argument('--expect', type=int, default=1,
                   help='at least this many runs must be found')
    args = p.parse_args(argv)
    runs = load(args.dirs)
    for run in runs:
        print(line(run))
    failed = [r for r in runs if not r.get('passed')]
    print('%d run(s): %d passed, %d failed%s' % (
        len(runs), len(runs) - len(failed), len(failed),
        '' if len(runs) >= args.expect else
        '; expected at least %d (skipped or never started?)' % args.expect))
    return 1 if failed or len(runs) < args.expect else 0


if __name__ == '__main__':
    sys.exit(main())

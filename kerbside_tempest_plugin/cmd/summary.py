"""Print the verdicts of scenario runs from their result.json files.

    python -m kerbside_tempest_plugin.cmd.summary [--expect N] DIR...

Finds every `result.json` under the directories, prints one line per run
(walk, route, each check's verdict, phase times, the report path) and a
total. Exits 1 when a run failed, when fewer than N runs are found (a
job whose tests were all skipped must not pass), or when nothing was
found at all.
"""

import argparse
import sys

from kerbside_tempest_plugin.scenario import summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('dirs', nargs='+')
    p.add_argument('--expect', type=int, default=1,
                   help='at least this many runs must be found')
    args = p.parse_args(argv)
    runs = summary.load(args.dirs)
    for build in summary.builds(runs):
        print('Kerbside under test: %s' % build)
    for run in runs:
        print(summary.line(run))
    failed = [r for r in runs if not r.get('passed')]
    print('%d run(s): %d passed, %d failed%s' % (
        len(runs), len(runs) - len(failed), len(failed),
        '' if len(runs) >= args.expect else
        '; expected at least %d (skipped or never started?)' % args.expect))
    return 1 if failed or len(runs) < args.expect else 0


if __name__ == '__main__':
    sys.exit(main())

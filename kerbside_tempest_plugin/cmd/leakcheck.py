"""`python -m kerbside_tempest_plugin.cmd.leakcheck DIR...`: fail when a
kept artifact still holds a token (a console token in a URL, a Nova
os-console-auth-tokens path, a JWT) after teardown's scrub. The job
scripts run it on their output directory; it prints file names and
counts, never a value. Exit 0 clean, 1 leaks found, 2 bad usage.
"""

import argparse
import os
import sys

from kerbside_tempest_plugin.common import secrets


def main(argv=None):
    p = argparse.ArgumentParser(
        prog='leakcheck',
        description='Fail when files under DIR still hold token-shaped '
                    'secrets.')
    p.add_argument('dirs', nargs='+', metavar='DIR')
    args = p.parse_args(argv)
    missing = [d for d in args.dirs if not os.path.isdir(d)]
    if missing:
        print('leakcheck: no such directory: %s' % ', '.join(missing),
              file=sys.stderr)
        return 2
    found = []
    for d in args.dirs:
        found += secrets.find_token_shapes(d)
    for path, n in found:
        print('leakcheck: %d token-shaped secret(s) in %s' % (n, path))
    if found:
        print('leakcheck: %d file(s) hold secrets after teardown'
              % len(found))
        return 1
    print('leakcheck: no token-shaped secret in %s' % ' '.join(args.dirs))
    return 0


if __name__ == '__main__':
    sys.exit(main())

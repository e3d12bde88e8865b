"""Fail when etc/tempest.conf.sample is stale.

Regenerates the sample into a temporary file with oslo-config-generator and
compares it with the checked-in copy. `tox -e genconfig` refreshes it.
"""

import difflib
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, 'etc', 'tempest.conf.sample')


def main():
    with tempfile.TemporaryDirectory() as tmp:
        fresh = os.path.join(tmp, 'tempest.conf.sample')
        subprocess.run(
            [sys.executable, '-m', 'oslo_config.generator',
             '--namespace', 'kerbside-tempest-plugin',
             '--wrap-width', '79', '--output-file', fresh],
            check=True)
        with open(fresh) as f:
            new = f.readlines()
    with open(SAMPLE) as f:
        old = f.readlines()
    if new != old:
        sys.stdout.writelines(difflib.unified_diff(
            old, new, 'etc/tempest.conf.sample (checked in)',
            'etc/tempest.conf.sample (generated)'))
        print('etc/tempest.conf.sample is stale: run tox -e genconfig')
        return 1
    print('etc/tempest.conf.sample is current')
    return 0


if __name__ == '__main__':
    sys.exit(main())

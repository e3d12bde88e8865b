"""`status` and `down` of a lane's work directory, shared by
kerbside-harness (the direct-qemu lane) and kerbside-openstack (the
cloud): the same JSON out and the same exit codes.
"""

import json
import os
import sys


def status(workdir, read_status):
    """Print `read_status(workdir)` as JSON; 1 when nothing is there."""
    out = read_status(os.path.abspath(workdir))
    print(json.dumps(out, indent=1, sort_keys=True))
    return 0 if out.get('state') != 'absent' else 1


def down(prog, workdir, teardown, what='lane'):
    """Tear the work directory's processes down (`teardown(workdir)`
    returns the report); 1 when a pid or a listening port is left.
    """
    workdir = os.path.abspath(workdir)
    if not os.path.exists(os.path.join(workdir, 'processes.json')):
        print('%s: no %s in %s (no processes.json)' % (prog, what, workdir),
              file=sys.stderr)
        return 0
    report = teardown(workdir)
    print(json.dumps(report, indent=1, sort_keys=True))
    if report['leftover_pids'] or report['busy_ports']:
        print('%s: teardown left pids %s and listening ports %s' % (
            prog, report['leftover_pids'], report['busy_ports']),
            file=sys.stderr)
        return 1
    return 0

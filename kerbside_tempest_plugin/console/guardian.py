"""A teardown that outlives the MCP server (and the console).

`kerbside-harness mcp` (and `console`, against a SIGKILL) starts this
module as a process of its own session (so the SDK client's
SIGTERM/SIGKILL of the server's process group does not reach it), with a
pipe on its standard input. The server writes
``own WORKDIR`` when its session owns a direct-qemu lane and ``release``
when the lane was torn down or let go. When the pipe closes (the server
exited, crashed or was killed, which the SDK does two seconds after the
client closes its end, whatever a tool is still doing), the guardian runs
lane.lane.teardown_workdir on the owned workdir and writes the report to
WORKDIR/console/teardown.log.

    python -m kerbside_tempest_plugin.console.guardian
"""

import json
import os
import subprocess
import sys


class Guardian:
    """The server's side: start the guardian, tell it what is owned."""

    def __init__(self):
        self.proc = None
        self.owned = None

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'kerbside_tempest_plugin.console.guardian'],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
            close_fds=True)
        return self

    def _say(self, line):
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            self.proc.stdin.write((line + '\n').encode())
            self.proc.stdin.flush()
            return True
        except OSError:
            return False

    def own(self, workdir):
        self.owned = workdir
        return self._say('own %s' % workdir)

    def release(self):
        self.owned = None
        return self._say('release')


def guards(session):
    """Whether a guardian can tear this session's lane down from its
    workdir alone: an owned direct-qemu lane.Lane, or an attached
    `kerbside-harness up` workdir the session was told to own.
    """
    from kerbside_tempest_plugin.lane import lane as lane_mod
    target = session.target
    lane = getattr(target, 'lane', None)
    return target.owned and (lane is None or isinstance(lane, lane_mod.Lane))


def main():
    owned = None
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(' ')
        if cmd == 'own' and arg:
            owned = arg
        elif cmd == 'release':
            owned = None
    if owned is None:
        return 0
    from kerbside_tempest_plugin.lane import lane as lane_mod
    report = lane_mod.teardown_workdir(owned)
    log = os.path.join(owned, 'console', 'teardown.log')
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, 'a') as f:
        f.write(json.dumps(report, sort_keys=True) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())

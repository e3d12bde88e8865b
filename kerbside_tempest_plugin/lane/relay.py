"""A lane's fault relays: spice.relay processes on the hypervisor leg.

With `Lane(relay=True)` or `Lane(fault=SPEC)` every console's hypervisor
leg runs through its own relay process: Kerbside's static source (and the
direct route) dial the relay's port, the relay dials qemu's plain SPICE
port. The leg must be plain for the relay to read it, so such a lane
turns the hypervisor TLS off and says so (`relay_note`).

The relay is a process of the lane's registry (it outlives a
`kerbside-harness up`, and `down` stops it like any other); its
injection log (`logs/fault-relay[-N].jsonl`) is lane-wide, and
`injections(since=)` gives the part that belongs to one test.
"""

import json
import os
import sys
import time

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import logtext
from kerbside_tempest_plugin.common import waiting
from kerbside_tempest_plugin.spice import faults as spice_faults
from kerbside_tempest_plugin.spice import relay as spice_relay

READY_TIMEOUT_S = 15.0
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def relay_port_name(index):
    return 'fault_relay' if index == 0 else 'fault_relay_%d' % (index + 1)


class FaultRelay:
    """One relay process in front of one qemu SPICE port."""

    def __init__(self, registry, log_dir, run_dir, index, listen_port,
                 target_port, fault=None):
        spice_faults.parse(fault)       # a bad spec fails before a spawn
        self.registry = registry
        self.index = index
        suffix = '' if index == 0 else '-%d' % (index + 1)
        self.name = 'fault-relay:%d' % (index + 1)     # the registry's
        base = 'fault-relay%s' % suffix
        self.log_path = os.path.join(log_dir, '%s.jsonl' % base)
        self.out_path = os.path.join(log_dir, '%s.out' % base)
        self.control_path = os.path.join(run_dir, '%s.sock' % base)
        self.listen_port = listen_port
        self.target_port = target_port
        self.fault = fault
        self.proc = None

    def argv(self):
        argv = [sys.executable, '-m', 'kerbside_tempest_plugin.spice.relay',
                '--listen', str(self.listen_port),
                '--target', '127.0.0.1:%d' % self.target_port,
                '--log', self.log_path, '--control', self.control_path]
        if self.fault:
            argv += ['--fault', self.fault]
        return argv

    def start(self, timeout=READY_TIMEOUT_S):
        env = dict(os.environ)
        env['PYTHONPATH'] = os.pathsep.join(
            p for p in (PACKAGE_ROOT, env.get('PYTHONPATH')) if p)
        self.proc = self.registry.spawn(self.name, self.argv(),
                                        self.out_path, env=env)

        def ready():
            try:
                with open(self.out_path) as f:
                    return 'ready %d' % self.listen_port in f.read()
            except FileNotFoundError:
                return False

        def dead():
            if self.proc.poll() is not None:
                return 'the fault relay exited with %s: %s' % (
                    self.proc.returncode, logtext.tail_file(self.out_path, 5))
            return None

        waiting.wait_until(
            ready, timeout, 'the fault relay to listen on port %d' %
            self.listen_port, seen=lambda: logtext.tail_file(
                self.out_path, 5) or 'no output', interval=0.05, abort=dead)
        return self

    def _control(self, op, spec=None):
        answer = spice_relay.control(self.control_path, op, spec)
        if not answer.get('ok'):
            raise errors.HarnessError('the fault relay refused %s: %s' % (
                op, answer.get('error')))
        return answer

    def arm(self, spec):
        return self._control('arm', spec)['armed']

    def clear(self):
        return self._control('clear')['cleared']

    def status(self):
        return self._control('status')

    def info(self):
        return {'name': self.name, 'port': self.listen_port,
                'target_port': self.target_port, 'fault': self.fault,
                'log': self.log_path, 'control': self.control_path,
                'pid': self.proc.pid if self.proc else None}

    def injections(self, since=None):
        """The relay log's records (events) at or after wall time
        `since`; lines that do not parse are skipped and counted in a
        record of their own (`event: unreadable`).
        """
        return read_log(self.log_path, since)


def command(workdir, op, spec=None, console=None, state_file='lane.json'):
    """Send `op` (arm with `spec`, clear, status) to the relays of the
    lane in `workdir` (as its state file records them; `console`: only
    that one, 1-based). A list of answers, each with its relay's name.
    HarnessError names a lane without a relay or a console it lacks.
    """
    path = os.path.join(workdir, state_file)
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError) as e:
        raise errors.HarnessError('no lane state in %s (%s)' % (path, e))
    relays = (state.get('relay') or []) if isinstance(state, dict) else []
    if not relays:
        raise errors.HarnessError(
            'the lane in %s has no fault relay; bring it up with '
            '`kerbside-harness up --relay` (or --fault SPEC)' % workdir)
    if console is not None:
        if not 1 <= console <= len(relays):
            raise errors.HarnessError('the lane has %d relay(s), not %d' % (
                len(relays), console))
        relays = [relays[console - 1]]
    return [dict(spice_relay.control(r['control'], op, spec),
                 relay=r['name']) for r in relays]


def read_log(path, since=None):
    out, bad = [], 0
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if not isinstance(rec, dict):
            bad += 1
            continue
        if since is None or rec.get('t', 0) >= since:
            out.append(rec)
    if bad:
        out.append({'event': 'unreadable', 'lines': bad, 't': time.time()})
    return out

"""The lane reaper: a lane's teardown that outlives the process holding it.

`Lane.up()` starts one reaper per lane, a small process of its own
session (so a SIGTERM or SIGINT to the owner's process group, as a CI job
timeout or Ctrl-C in a terminal sends, does not reach it first), given
the workdir and the owner: the pid that called up() and that pid's kernel
start time (`/proc/<pid>/stat` field 22), so a pid the kernel has handed
to another process since is not taken for the owner. Every 0.5 s it
reads the lane's state file and the owner's /proc entry, and

- once the state file says ``down`` (the owner's `Lane.down()`, or
  `kerbside-harness down --workdir`, ran the teardown), or the workdir
  is gone, it exits quietly;
- once the owner is gone (no such pid, a zombie, or the pid now belongs
  to a process that started at another time), however it died
  (SIGTERM, SIGINT, SIGKILL, a crash), on two polls in a row, it runs the
  lane's crash-safe teardown (lane.lane.teardown_workdir, which needs
  only the registry and the state file), logs what it stopped to
  `<workdir>/logs/reaper.log` and exits.

It never tears down a lane whose owner is alive, and it stops only what
the teardown stops: the processes in the workdir's registry (and what
they left in their own process groups). It is not in the registry, so
`down` never waits on it: `Lane.down()` tears the lane down first (so an
owner killed halfway through its own teardown still has it finished) and
then stops the reaper (SIGTERM, which it obeys unless it is tearing down
itself; SIGKILL after 5 s). A process that means to leave its lane
running after it exits (`kerbside-harness up`; `kerbside-openstack up`
for a cloud) calls `Lane.leave_running()` (`OpenStackCloud.
leave_running()`), which stops the reaper; `kerbside-harness down
--workdir` (`kerbside-openstack down`) is then the way down.

Every wait has a deadline: a teardown's own (teardown_workdir's per
process), the owner's wait for a reaper to stop (5 s, then SIGKILL), and
the watch itself (`--max-seconds`, default 7 days; at the end the lane is
left alone and the log says so).

    python -m kerbside_tempest_plugin.lane.reaper --workdir DIR \\
        --owner-pid PID --owner-start TICKS [--state-file lane.json] \\
        [--teardown kerbside_tempest_plugin.lane.lane:teardown_workdir]

`--teardown` and `--state-file` let another lane of this package use the
same reaper: `OpenStackCloud.up()` starts one with
lane.openstack.cloud:teardown_workdir and cloud.json. Only a function of
this package is accepted.
"""

import argparse
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import time

from kerbside_tempest_plugin.lane import procs

LOG = logging.getLogger(__name__)

PACKAGE = 'kerbside_tempest_plugin'
DEFAULT_TEARDOWN = 'kerbside_tempest_plugin.lane.lane:teardown_workdir'
DEFAULT_STATE_FILE = 'lane.json'
LOG_FILE = os.path.join('logs', 'reaper.log')
INTERVAL = 0.5
# The owner must be seen gone this many polls in a row before the lane is
# torn down (a single unreadable /proc entry is not a death).
CONFIRM = 2
MAX_SECONDS = 7 * 24 * 3600.0
STOP_TIMEOUT = 5.0


class _Stopped(Exception):
    """SIGTERM from the owner while watching."""


# -- pure logic -------------------------------------------------------------

def owner_identity(pid=None):
    """(pid, start ticks) of `pid` (default: this process); the ticks are
    None when /proc has no entry for it.
    """
    pid = os.getpid() if pid is None else pid
    return pid, procs.proc_start_ticks(pid)


def owner_status(pid, start_ticks, proc_info=procs.proc_info):
    """'alive', or why the owner counts as gone: 'gone' (no such pid),
    'zombie' (dead, not yet waited for) or 'reused' (the pid belongs to a
    process that started at another time).
    """
    info = proc_info(pid)
    if info is None:
        return 'gone'
    if info[0] in ('Z', 'X'):
        return 'zombie'
    if start_ticks is None or info[3] != start_ticks:
        return 'reused'
    return 'alive'


def read_state(workdir, state_file=DEFAULT_STATE_FILE):
    """The `state` field of the lane's state file; None when there is no
    readable one.
    """
    try:
        with open(os.path.join(workdir, state_file)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data.get('state') if isinstance(data, dict) else None


def decide(workdir_exists, state, owner, gone_polls, confirm=CONFIRM):
    """One poll's verdict: 'gone' (no workdir: nothing to do), 'down' (the
    lane was torn down), 'reap' (the owner has been gone `confirm` polls in
    a row, this one included) or 'watch'.
    """
    if not workdir_exists:
        return 'gone'
    if state == 'down':
        return 'down'
    if owner != 'alive' and gone_polls >= confirm:
        return 'reap'
    return 'watch'


def check_teardown(spec):
    """`spec` as (module, function) when it names a function of this
    package as `module:function`; ValueError otherwise.
    """
    module, _, name = spec.partition(':')
    if not name or not (module == PACKAGE or
                        module.startswith(PACKAGE + '.')):
        raise ValueError('--teardown must be a function of %s as '
                         'module:function, not %r' % (PACKAGE, spec))
    return module, name


def resolve_teardown(spec):
    """The teardown function `spec` names (check_teardown); imported only
    when needed, so a watching reaper stays small.
    """
    module, name = check_teardown(spec)
    fn = getattr(importlib.import_module(module), name, None)
    if not callable(fn):
        raise ValueError('%s is not a function' % spec)
    return fn


def summarise(report):
    """The lines the reaper logs about a teardown report."""
    lines = []
    for s in report.get('stopped') or []:
        line = '  %s (pid %s): %s' % (s.get('name'), s.get('pid'),
                                      s.get('result'))
        if s.get('group_leftovers'):
            line += '; then stopped its group: %s' % [
                g.get('pid') for g in s['group_leftovers']]
        lines.append(line)
    lines.append('leftover pids %s, busy ports %s, %s s' % (
        report.get('leftover_pids'), report.get('busy_ports'),
        report.get('seconds')))
    if report.get('error'):
        lines.append('error: %s' % report['error'])
    return lines


# -- the reaper process -----------------------------------------------------

class _Watch:
    """The reaper's loop; `tearing_down` tells its SIGTERM handler whether
    to obey (watching) or to carry on (a teardown has begun).
    """

    def __init__(self, workdir, owner_pid, owner_start, teardown,
                 state_file=DEFAULT_STATE_FILE, interval=INTERVAL,
                 max_seconds=MAX_SECONDS, log=LOG, status_of=owner_status,
                 sleep=time.sleep, clock=time.monotonic):
        self.workdir = workdir
        self.owner_pid = owner_pid
        self.owner_start = owner_start
        self.teardown = teardown
        self.state_file = state_file
        self.interval = interval
        self.max_seconds = max_seconds
        self.log = log
        self.status_of = status_of
        self.sleep = sleep
        self.clock = clock
        self.tearing_down = False
        self.report = None

    def run(self):
        """Watch until the lane is down, the workdir gone, the owner gone
        (then tear down), or `max_seconds`. Returns the outcome: 'down',
        'gone', 'reaped', 'stopped' (SIGTERM) or 'expired'.
        """
        log = self.log
        log.info('watching lane %s for owner pid %d (start ticks %s)',
                 self.workdir, self.owner_pid, self.owner_start)
        deadline = self.clock() + self.max_seconds
        gone_polls = 0
        try:
            while True:
                owner = self.status_of(self.owner_pid, self.owner_start)
                gone_polls = 0 if owner == 'alive' else gone_polls + 1
                verdict = decide(os.path.isdir(self.workdir),
                                 read_state(self.workdir, self.state_file),
                                 owner, gone_polls)
                if verdict == 'gone':
                    log.info('the workdir is gone; leaving')
                    return 'gone'
                if verdict == 'down':
                    log.info('the lane is down; leaving')
                    return 'down'
                if verdict == 'reap':
                    return self._reap(owner)
                if self.clock() >= deadline:
                    log.warning('still watching after %.0f s with owner pid '
                                '%d alive; leaving the lane as it is',
                                self.max_seconds, self.owner_pid)
                    return 'expired'
                self.sleep(self.interval)
        except _Stopped:
            log.info('stopped by the owner (SIGTERM): its lane is down, or '
                     'left running on purpose')
            return 'stopped'

    def _reap(self, owner):
        self.tearing_down = True
        why = {'gone': 'has no process any more',
               'zombie': 'has exited (a zombie)',
               'reused': 'now belongs to another process (started at '
                         'another time)'}.get(owner, owner)
        self.log.warning('owner pid %d %s and the lane is not down: '
                         'tearing it down', self.owner_pid, why)
        try:
            report = self.teardown(self.workdir)
        except Exception:
            self.log.exception('the teardown raised')
            return 'reaped'
        self.report = report
        self.log.warning('teardown done; stopped:')
        for line in summarise(report or {}):
            self.log.warning('%s', line)
        return 'reaped'

    def on_sigterm(self, signum, frame):
        if self.tearing_down:
            self.log.warning('SIGTERM during the teardown: ignored, '
                             'finishing it')
            return
        raise _Stopped()


def build_parser():
    p = argparse.ArgumentParser(
        prog='python -m kerbside_tempest_plugin.lane.reaper',
        description='Tear a lane down once the process that holds it is '
                    'gone.')
    p.add_argument('--workdir', required=True)
    p.add_argument('--owner-pid', type=int, required=True)
    p.add_argument('--owner-start', type=int, required=True,
                   help='the owner\'s start time (/proc/PID/stat field 22)')
    p.add_argument('--state-file', default=DEFAULT_STATE_FILE)
    p.add_argument('--teardown', default=DEFAULT_TEARDOWN,
                   help='module:function of this package, called with the '
                        'workdir (default %(default)s)')
    p.add_argument('--interval', type=float, default=INTERVAL)
    p.add_argument('--max-seconds', type=float, default=MAX_SECONDS)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    workdir = os.path.abspath(args.workdir)
    try:
        check_teardown(args.teardown)
    except ValueError as e:
        print('reaper: %s' % e, file=sys.stderr)
        return 2

    def teardown(workdir):
        return resolve_teardown(args.teardown)(workdir)
    log_path = os.path.join(workdir, LOG_FILE)
    try:
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        handler = logging.FileHandler(log_path)
    except OSError:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        '%(asctime)s reaper[%(process)d] %(levelname)s %(message)s'))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    watch = _Watch(workdir, args.owner_pid, args.owner_start, teardown,
                   state_file=args.state_file, interval=args.interval,
                   max_seconds=args.max_seconds)
    signal.signal(signal.SIGTERM, watch.on_sigterm)
    # Not ours: the owner's Ctrl-C or a hangup of its terminal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    outcome = watch.run()
    LOG.info('exiting (%s)', outcome)
    return 0


# -- the owner's side -------------------------------------------------------

class Reaper:
    """The owner's handle on its lane's reaper process."""

    def __init__(self, workdir, state_file=DEFAULT_STATE_FILE,
                 teardown=DEFAULT_TEARDOWN, interval=INTERVAL,
                 python=None):
        self.workdir = os.path.abspath(workdir)
        self.state_file = state_file
        self.teardown = teardown
        self.interval = interval
        self.python = python or sys.executable
        self.proc = None
        self.owner = None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def argv(self, owner_pid, owner_start):
        return [self.python, '-m', __name__, '--workdir', self.workdir,
                '--owner-pid', str(owner_pid),
                '--owner-start', str(owner_start),
                '--state-file', self.state_file,
                '--teardown', self.teardown,
                '--interval', str(self.interval)]

    def start(self, owner_pid=None, owner_start=None):
        """Start watching for the owner (default: this process). Returns
        self.
        """
        if owner_pid is None:
            owner_pid, owner_start = owner_identity()
        if owner_start is None:
            raise OSError('no start time for owner pid %d in /proc'
                          % owner_pid)
        self.owner = (owner_pid, owner_start)
        log_path = os.path.join(self.workdir, LOG_FILE)
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        env = dict(os.environ)
        # The package as this process imported it (a benchmark run from
        # the checkout by a python without it installed).
        here = os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))))
        env['PYTHONPATH'] = os.pathsep.join(
            [here] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep)
                      if p])
        with open(log_path, 'ab') as out:
            # Its own session; no descriptor of ours (a pipe our parent
            # reads to its end, stestr's or the MCP client's) stays open
            # in it.
            self.proc = subprocess.Popen(
                self.argv(owner_pid, owner_start), stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, cwd='/', env=env,
                start_new_session=True, close_fds=True)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=STOP_TIMEOUT):
        """Stop the reaper (SIGTERM; SIGKILL after `timeout`). Returns how
        it ended ('exited', 'stopped', 'killed', 'not ours', or None when
        none was started); never raises.
        """
        proc = self.proc
        if proc is None:
            return None
        if self.owner and self.owner[0] != os.getpid():
            # A forked child of the owner: the reaper is not its to stop.
            return 'not ours'
        try:
            if proc.poll() is not None:
                return 'exited'
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
                return 'stopped'
            except subprocess.TimeoutExpired:
                LOG.warning('lane reaper pid %d ignored SIGTERM for %.0f s; '
                            'SIGKILL', proc.pid, timeout)
                proc.kill()
                proc.wait(2.0)
                return 'killed'
        except Exception:
            LOG.exception('stopping the lane reaper failed')
            return 'failed'


if __name__ == '__main__':
    sys.exit(main())

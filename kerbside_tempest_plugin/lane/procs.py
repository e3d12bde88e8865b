"""The process registry of a lane.

Every process a lane starts is recorded in `<workdir>/processes.json`: name,
pid, process group, the kernel start time of the pid (so a recycled pid is
never killed) and the command line (redacted). `kerbside-harness down` reads
it after a crash of the command that started the lane and stops everything
in the lane's teardown order.

Every process runs in its own session (process group), so helpers it forks
(gunicorn workers, the daemon's kerbside-proxy) can be found and stopped
even when the parent is gone.
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import time

from kerbside_tempest_plugin.common import atomic
from kerbside_tempest_plugin.common import signals

LOG = logging.getLogger(__name__)

# Teardown order of the lane: ryll, the Kerbside daemon and its proxy, the
# API, qemu, MariaDB. Unknown names go last; ties stop newest first.
STOP_RANK = {
    'ryll': 0,
    'kerbside-daemon': 10,
    'kerbside-proxy': 11,
    'gunicorn': 20,
    'fault-relay': 25,
    'qemu': 30,
    'mariadbd': 40,
}


def rank_of(name):
    base = name.split(':', 1)[0]
    return STOP_RANK.get(base, 50)


def _stat_fields(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            data = f.read()
    except (OSError, ValueError):
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(')') + 2:].split()
    return rest  # rest[0] is field 3 (state)


def proc_info(pid):
    """(state, ppid, pgid, start_ticks) of a pid, or None if it is gone."""
    f = _stat_fields(pid)
    if not f:
        return None
    return f[0], int(f[1]), int(f[2]), int(f[19])


def proc_start_ticks(pid):
    info = proc_info(pid)
    return info[3] if info else None


def proc_cmdline(pid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            return [a.decode(errors='replace')
                    for a in f.read().split(b'\0') if a]
    except OSError:
        return []


def pid_alive(pid, start_ticks=None):
    """Whether `pid` runs (not a zombie) and is the process we started."""
    info = proc_info(pid)
    if info is None or info[0] in ('Z', 'X'):
        return False
    return start_ticks is None or info[3] == start_ticks


def all_pids():
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            yield int(entry)


def group_members(pgid, not_before=None):
    """Live processes of process group `pgid` (optionally only those that
    started no earlier than `not_before` start ticks).
    """
    out = []
    for pid in all_pids():
        info = proc_info(pid)
        if not info or info[2] != pgid or info[0] in ('Z', 'X'):
            continue
        if not_before is not None and info[3] < not_before:
            continue
        out.append(pid)
    return out


def children(pid):
    return [p for p in all_pids()
            if (proc_info(p) or (None, None))[1] == pid]


def _signal(pid, sig):
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError as e:
        LOG.warning('cannot signal pid %d: %s', pid, e)
        return False


class ProcessRegistry:
    """Processes of one lane, persisted to a JSON file."""

    def __init__(self, path, redactor=None):
        self.path = path
        self.redactor = redactor
        self._popen = {}
        self.records = self._load()

    def _load(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return []
        except ValueError as e:
            LOG.warning('process registry %s unreadable (%s); starting a '
                        'new one', self.path, e)
            return []

    def _save(self):
        atomic.write_json(self.path, self.records)

    def _redact(self, args):
        if self.redactor is None:
            return list(args)
        return [self.redactor.redact(str(a)) for a in args]

    def spawn(self, name, argv, stdout_path, stderr_path=None, env=None,
              cwd=None):
        """Start `argv` in a new session with output to log files, and
        record it. Returns the Popen.
        """
        out = open(stdout_path, 'ab')
        err = open(stderr_path, 'ab') if stderr_path else subprocess.STDOUT
        # A signal between the start and the record would leave a process
        # the teardown cannot find: it waits until both are done.
        with signals.shielded():
            try:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                    env=env, cwd=cwd, start_new_session=True,
                    close_fds=True)
            finally:
                out.close()
                if stderr_path:
                    err.close()
            self._popen[proc.pid] = proc
            self.add(name, proc.pid, argv=argv,
                     logs=[p for p in (stdout_path, stderr_path) if p])
        return proc

    def add(self, name, pid, argv=None, logs=None, scratch=None):
        """Record a process started elsewhere (ryll, the proxy child).

        `scratch` lists directories of the process's own (ryll's private
        socket directory, which may sit outside the workdir) that
        `remove_scratch()` deletes once the process is gone.
        """
        info = proc_info(pid)
        record = {
            'name': name,
            'pid': pid,
            'pgid': info[2] if info else pid,
            'start_ticks': info[3] if info else None,
            'argv': self._redact(argv or proc_cmdline(pid)),
            'started_at': time.time(),
            'logs': logs or [],
            'scratch': list(scratch or []),
        }
        self.records = [r for r in self.records
                        if not (r['pid'] == pid and
                                r['start_ticks'] == record['start_ticks'])]
        self.records.append(record)
        self._save()
        return record

    def remove_scratch(self):
        """Delete the scratch directories of every process that has
        stopped; returns the ones removed.
        """
        removed = []
        for r in self.records:
            if self.alive(r):
                continue
            for d in r.get('scratch') or []:
                if os.path.isdir(d):
                    shutil.rmtree(d, ignore_errors=True)
                    removed.append(d)
        return removed

    def find(self, name):
        return [r for r in self.records if r['name'] == name]

    def alive(self, record):
        return pid_alive(record['pid'], record.get('start_ticks'))

    def living(self):
        return [r for r in self.records if self.alive(r)]

    def leftovers(self):
        """Live processes in any recorded process group (children too)."""
        out = set()
        for r in self.records:
            if r.get('start_ticks') is None:
                continue
            out.update(group_members(r['pgid'], not_before=r['start_ticks']))
            if self.alive(r):
                out.add(r['pid'])
        return sorted(out)

    def _reap(self, pid):
        proc = self._popen.get(pid)
        if proc is not None:
            try:
                proc.poll()
            except Exception:
                pass

    def _wait_gone(self, pid, start_ticks, timeout):
        deadline = time.monotonic() + timeout
        while True:
            self._reap(pid)
            if not pid_alive(pid, start_ticks):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def stop(self, record, sig=signal.SIGTERM, timeout=10.0,
             group_timeout=5.0):
        """Stop one recorded process and anything left in its group.

        Sends `sig` to the process only (the daemon forwards SIGTERM to its
        proxy child itself), waits up to `timeout`, then SIGKILLs. Then any
        process still in its group gets SIGTERM and, after
        `group_timeout`, SIGKILL. Returns a report dict; never raises.
        """
        pid, ticks = record['pid'], record.get('start_ticks')
        report = {'name': record['name'], 'pid': pid}
        started = time.monotonic()
        if not pid_alive(pid, ticks):
            self._reap(pid)
            report['result'] = 'not running'
        else:
            _signal(pid, sig)
            if self._wait_gone(pid, ticks, timeout):
                report['result'] = 'exited on %s' % signal.Signals(sig).name
            else:
                _signal(pid, signal.SIGKILL)
                self._wait_gone(pid, ticks, 5.0)
                report['result'] = 'SIGKILLed after %.0f s' % timeout
                LOG.warning('%s (pid %d) ignored %s for %.0f s; SIGKILLed',
                            record['name'], pid, signal.Signals(sig).name,
                            timeout)
        if ticks is not None:
            left = group_members(record['pgid'], not_before=ticks)
            if left:
                report['group_leftovers'] = [
                    {'pid': p, 'argv': self._redact(proc_cmdline(p))[:3]}
                    for p in left]
                LOG.warning('%s left processes in its group: %s; stopping '
                            'them', record['name'], left)
                for p in left:
                    _signal(p, signal.SIGTERM)
                deadline = time.monotonic() + group_timeout
                while time.monotonic() < deadline and group_members(
                        record['pgid'], not_before=ticks):
                    time.sleep(0.05)
                killed = group_members(record['pgid'], not_before=ticks)
                for p in killed:
                    _signal(p, signal.SIGKILL)
                # SIGKILL is asynchronous: wait until the kernel has
                # taken them, so that the caller's port checks see them
                # gone.
                deadline = time.monotonic() + 5.0
                while killed and time.monotonic() < deadline:
                    killed = group_members(record['pgid'], not_before=ticks)
                    if killed:
                        time.sleep(0.02)
                if killed:
                    report['group_survivors'] = killed
                    LOG.warning('%s: group members %s still there 5 s after '
                                'SIGKILL', record['name'], killed)
        report['seconds'] = round(time.monotonic() - started, 3)
        return report

    def stop_all(self, timeouts=None, signals=None):
        """Stop every recorded process in teardown order; return reports."""
        timeouts = timeouts or {}
        signals = signals or {}
        order = sorted(enumerate(self.records),
                       key=lambda ir: (rank_of(ir[1]['name']), -ir[0]))
        reports = []
        for _, record in order:
            base = record['name'].split(':', 1)[0]
            reports.append(self.stop(
                record, sig=signals.get(base, signal.SIGTERM),
                timeout=timeouts.get(base, 10.0)))
        return reports

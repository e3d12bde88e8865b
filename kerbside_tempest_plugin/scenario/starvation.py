"""How long the processes on a console's path waited for a CPU.

A liveness bound measured in wall time fails a healthy proxy on a loaded
machine: the guest, qemu, ryll or the harness's own capture may simply
not have been given a CPU. Linux keeps, per thread, the time it spent
runnable but waiting for a CPU (`/proc/<pid>/task/<tid>/schedstat`, the
second field, in ns). `PathClock` samples it for the processes of one
console's path (qemu, kerbside-proxy, ryll, this harness) and turns the
wall clock into a clock of *CPU-available time*: each interval between
two samples counts `dt * (1 - f)`, where `f` is the largest share of that
interval any one thread of the path spent waiting for a CPU.

On an idle machine `f` is small and the two clocks nearly agree; when
the guest's vCPU thread waits for a CPU 90 % of the time, ten wall
seconds are one second of this clock. A bound on this clock does not
fire because the machine was busy, and still fires when the path had
the CPU and did nothing: a thread that sleeps (a stalled relay, a
deadlocked proxy, a guest that ignores a key) accrues no run delay.

A process that is gone, or a /proc this kernel does not give, counts as
not starved; `PathClock.available` says whether anything was measured.
"""

import dataclasses
import os
import time
import typing


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


_COMMS = {}


def thread_delays(pid):
    """{tid: (comm, run_ns, delay_ns)} of process `pid`'s threads; {} for
    a process that is gone (or a /proc without schedstat). A thread's
    name is read once.
    """
    out = {}
    base = '/proc/%d/task' % pid
    try:
        tids = os.listdir(base)
    except OSError:
        return out
    for tid in tids:
        text = _read('%s/%s/schedstat' % (base, tid))
        if not text:
            continue
        parts = text.split()
        if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
            continue
        comm = _COMMS.get((pid, tid))
        if comm is None:
            comm = _COMMS[(pid, tid)] = (
                _read('%s/%s/comm' % (base, tid)) or '?').strip()
            if len(_COMMS) > 20000:
                _COMMS.clear()
        out[int(tid)] = (comm, int(parts[0]), int(parts[1]))
    return out


@dataclasses.dataclass
class Interval:
    t0: float
    t1: float
    share: float                    # the most starved thread's share
    who: str = None                 # 'qemu (CPU 0/TCG)'
    roles: dict = dataclasses.field(default_factory=dict)  # role: share

    @property
    def dt(self):
        return self.t1 - self.t0

    def to_json(self):
        return [round(self.t0, 3), round(self.t1, 3),
                {r: round(v, 3) for r, v in sorted(self.roles.items())}]


@dataclasses.dataclass
class Starved:
    """What the path's CPU looked like over a window."""
    wall_s: float
    available_s: float
    worst_share: float              # the worst interval's share
    who: str = None                 # the thread that waited most
    measured: bool = True

    @property
    def share(self):
        """The share of the window the path was kept from a CPU."""
        if not self.wall_s:
            return 0.0
        return max(0.0, 1.0 - self.available_s / self.wall_s)

    def describe(self):
        if not self.measured:
            return 'no run-delay figures for the path here'
        return '%.1f s of CPU-available time in %.1f s: the path waited ' \
            'for a CPU %d %% of the time (most: %s, %d %% in the worst ' \
            'interval)' % (self.available_s, self.wall_s,
                           round(100 * self.share), self.who or '?',
                           round(100 * self.worst_share))


def loadavg():
    text = _read('/proc/loadavg')
    return float(text.split()[0]) if text else None


class PathClock:
    """The path's CPU-available clock; see the module docstring.

    `pids` is a callable returning {role: [pid, ...]} (the roles name
    threads in messages: 'qemu', 'kerbside-proxy', 'ryll', 'harness');
    it is called at each sample, so a process started later joins.
    """

    def __init__(self, pids, clock=time.monotonic, reader=thread_delays,
                 keep=2000):
        self._pids = pids
        self._clock = clock
        self._reader = reader
        self._last = None           # {(role, pid, tid): (comm, delay)}
        self._t = None
        self.intervals: typing.List[Interval] = []
        self._keep = keep
        self.available = False

    def _sample(self):
        seen = {}
        try:
            roles = self._pids() or {}
        except Exception:
            roles = {}
        for role, pids in roles.items():
            for pid in pids or ():
                if not pid:
                    continue
                for tid, (comm, _run, delay) in self._reader(pid).items():
                    seen[(role, pid, tid)] = (comm, delay)
        return seen

    def sample(self):
        """Take a sample; return the time it was taken."""
        now = self._clock()
        seen = self._sample()
        if self._last is not None and now > self._t:
            dt = now - self._t
            share, who, roles = 0.0, None, {}
            for k, (comm, delay) in seen.items():
                old = self._last.get(k)
                if old is None:
                    continue
                s = min(1.0, max(0.0, (delay - old[1]) / 1e9 / dt))
                roles[k[0]] = max(roles.get(k[0], 0.0), s)
                if s > share:
                    share, who = s, '%s (%s)' % (k[0], comm)
            if seen and self._last:
                self.available = True
            self.intervals.append(Interval(self._t, now, share, who, roles))
            if len(self.intervals) > self._keep:
                del self.intervals[:len(self.intervals) - self._keep]
        self._last, self._t = seen, now
        return now

    def _overlapping(self, t0, t1):
        """(seconds of [t0, t1] inside it, interval) for each sampled
        interval that overlaps the window.
        """
        for iv in self.intervals:
            lo, hi = max(iv.t0, t0), min(iv.t1, t1)
            if hi > lo:
                yield hi - lo, iv

    def waited(self, t0, t1, roles=None):
        """Seconds of [t0, t1] that one role's most starved thread spent
        waiting for a CPU, for the role of `roles` (None: the most
        starved thread of any role, interval by interval) that waited
        most; from the samples taken (no new one).
        """
        if roles is None:
            return sum(dt * iv.share for dt, iv in self._overlapping(t0, t1))
        return max(sum(dt * iv.roles.get(r, 0.0)
                       for dt, iv in self._overlapping(t0, t1))
                   for r in roles) if roles else 0.0

    def since(self, t0, t1=None):
        """Starved over [t0, t1] (t1 default: a new sample now), counting
        the part of each sampled interval that lies in the window; time
        not covered by samples counts as available.
        """
        t1 = self.sample() if t1 is None else t1
        wall = max(0.0, t1 - t0)
        worst, who = 0.0, None
        for _dt, iv in self._overlapping(t0, t1):
            if iv.share > worst:
                worst, who = iv.share, iv.who
        return Starved(wall, wall - self.waited(t0, t1), worst, who,
                       self.available)

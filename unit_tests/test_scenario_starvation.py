"""scenario.starvation: the path's CPU-available clock, from run-delay
figures (faked here, and read for real from this process's /proc), and
what it does to liveness's bound: a starved path is waited for and ends
as PathStarved; a path that had the CPU is judged at the bound as
before (a stalled relay or a guest ignoring a key sleeps: no run delay).
"""

import threading
import time

import pytest

from kerbside_tempest_plugin.scenario import liveness
from kerbside_tempest_plugin.scenario import starvation
from unit_tests.test_scenario_liveness import Stream


class Delays:
    """A fake /proc: thread 11 of pid 100 ('CPU 0/TCG') accrues run delay
    at `rate` seconds per second of the fake clock.
    """

    def __init__(self, st):
        self.st = st
        self.rate = 0.0
        self.delay = 0.0
        self.t = 0.0

    def advance(self):
        self.delay += (self.st.t - self.t) * self.rate
        self.t = self.st.t

    def __call__(self, pid):
        self.advance()
        return {11: ('CPU 0/TCG', 0, int(self.delay * 1e9))} \
            if pid == 100 else {}


def _clock(st, delays):
    return starvation.PathClock(lambda: {'qemu': [100], 'ryll': [None]},
                                clock=st.now, reader=delays)


def _stream():
    """test_scenario_liveness's stream, at frame 10."""
    s = Stream()
    s.frame(10, 0xAAAA)
    return s


st = pytest.fixture(name='st')(_stream)


def _starving(st, rate, until):
    """A clock sampled at st.t and at `until`, qemu waiting `rate` of
    the time between; (the fake /proc, the clock).
    """
    d = Delays(st)
    clock = _clock(st, d)
    clock.sample()
    d.rate = rate
    st.t = until
    clock.sample()
    return d, clock


def test_the_clock_counts_only_cpu_available_time(st):
    d, clock = _starving(st, 0.75, 4.0)
    d.rate = 0.0
    st.t = 6.0
    s = clock.since(0.0)
    assert s.measured and s.wall_s == 6.0
    assert s.available_s == pytest.approx(1.0 + 2.0)
    assert s.share == pytest.approx(0.5)
    assert s.worst_share == pytest.approx(0.75)
    assert s.who == 'qemu (CPU 0/TCG)'
    assert '50 %' in s.describe() and 'qemu (CPU 0/TCG), 75 %' in \
        s.describe()
    # a window inside one interval takes its share of that interval
    assert clock.since(1.0, 3.0).available_s == pytest.approx(0.5)


def test_nothing_measured_is_said(st):
    clock = starvation.PathClock(lambda: {'qemu': [100]}, clock=st.now,
                                 reader=lambda pid: {})
    clock.sample()
    st.t = 3.0
    s = clock.since(0.0)
    assert not s.measured and s.available_s == 3.0
    assert 'no run-delay figures' in s.describe()


def test_a_starved_path_is_waited_for_then_named_as_the_machines(st):
    d = Delays(st)
    live = liveness.Liveness(st, bound_s=2, path=_clock(st, d), cap_s=30)
    d.rate = 0.97                   # qemu's vCPU waits 97 % of the time
    st.t = 1.0
    live.key_sent('i')
    live.beat_started('ignore')
    for t in range(2, 30):          # the check runs as the beat waits
        st.t = float(t)
        assert live.check() is None, t
    st.t = 31.0
    e = live.check()
    assert isinstance(e, liveness.PathStarved)
    assert e.environment
    assert 'key 1 (i) at beat ignore had no effect in 30.0 s' in str(e)
    assert 'not judged as a fault of the proxy' in str(e)
    assert 'qemu (CPU 0/TCG)' in str(e)


def test_a_starved_guest_that_registers_late_passes(st):
    d = Delays(st)
    live = liveness.Liveness(st, bound_s=2, path=_clock(st, d), cap_s=30)
    d.rate = 0.9
    st.t = 1.0
    live.key_sent('enter')
    for t in range(2, 12):
        st.t = float(t)
        assert live.check() is None
    st.frame(11, 0xBBBB)
    st.t = 40.0
    assert live.check() is None
    assert live.evidence()['keys'][0]['registered_s'] == pytest.approx(10.0)


def test_a_path_with_the_cpu_is_judged_at_the_bound(st):
    """What a stalled relay or a guest ignoring keys looks like: nobody
    waits for a CPU, so the bound fires as it did in wall time.
    """
    d = Delays(st)
    live = liveness.Liveness(st, bound_s=2, path=_clock(st, d), cap_s=30)
    d.rate = 0.02
    st.t = 1.0
    live.key_sent('i')
    live.beat_started('ignore')
    st.t = 1.5
    st.frame(11, 0xAAAA)
    st.t = 2.5
    assert live.check() is None
    st.t = 3.2
    e = live.check()
    assert isinstance(e, liveness.KeyNotRegistered)
    assert 'never registered' in str(e)
    assert 'CPU-available' not in str(e)   # 2 % is not worth a note


def test_a_partly_starved_path_says_so_in_the_failure(st):
    d = Delays(st)
    live = liveness.Liveness(st, bound_s=2, path=_clock(st, d), cap_s=30)
    d.rate = 0.5
    st.t = 1.0
    live.key_sent('enter')
    for t in (2.0, 3.0, 4.0, 4.9):
        st.t = t
        assert live.check() is None, t
    st.t = 5.2
    e = live.check()
    assert isinstance(e, liveness.DisplayFrozen)
    assert 'the bound counts CPU-available time' in str(e)
    assert live.evidence()['keys'][0]['starved_share'] == pytest.approx(
        0.5, abs=0.01)


def test_run_delay_is_read_for_real_from_proc():
    """Two busy threads of this process on the machine's cores: the
    clock is measured (real schedstat), and a share is between 0 and 1.
    """
    import os
    stop = time.monotonic() + 0.6

    def spin():
        while time.monotonic() < stop:
            pass
    threads = [threading.Thread(target=spin) for _ in range(
        (os.cpu_count() or 1) + 1)]
    clock = starvation.PathClock(lambda: {'harness': [os.getpid()]})
    clock.sample()
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = clock.since(t0)
    assert s.measured
    assert 0.0 <= s.share <= 1.0 and s.wall_s > 0.5
    assert starvation.thread_delays(os.getpid())
    assert starvation.thread_delays(2 ** 22 + 12345) == {}


def test_waited_counts_seconds_per_role(st):
    """PathClock.waited: the seconds the most starved thread of the
    roles asked for waited in a window (the frame check's gate).
    """
    _d, clock = _starving(st, 0.5, 2.0)
    assert clock.waited(0.0, 2.0) == pytest.approx(1.0)
    assert clock.waited(1.0, 1.5, ('qemu',)) == pytest.approx(0.25)
    assert clock.waited(1.0, 1.5, ('qemu', 'ryll')) == pytest.approx(0.25)
    assert clock.waited(0.0, 2.0, ('ryll', 'kerbside-proxy')) == 0.0
    assert clock.waited(3.0, 4.0) == 0.0
    assert clock.intervals[-1].to_json() == [0.0, 2.0, {'qemu': 0.5}]

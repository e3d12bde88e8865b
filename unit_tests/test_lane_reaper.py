"""The lane reaper's logic (lane.reaper) and the shared signal handling
(common.signals), without a lane: the verdicts, the owner's identity,
the watch loop on a fake clock, and the handler's choices.

The reaper against real processes, and real lanes whose owner is killed,
are in unit_tests/integration/test_lane_signals.py.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from kerbside_tempest_plugin.common import signals
from kerbside_tempest_plugin.lane import procs
from kerbside_tempest_plugin.lane import reaper


# -- decide ------------------------------------------------------------------

@pytest.mark.parametrize('exists,state,owner,polls,verdict', [
    (True, 'up', 'alive', 0, 'watch'),
    (True, 'starting', 'alive', 0, 'watch'),
    (True, None, 'alive', 0, 'watch'),
    # Gone once is not enough: one unreadable /proc entry is no death.
    (True, 'up', 'gone', 1, 'watch'),
    (True, 'up', 'gone', 2, 'reap'),
    (True, 'starting', 'zombie', 2, 'reap'),
    (True, 'up', 'reused', 3, 'reap'),
    (True, None, 'gone', 2, 'reap'),
    # Down wins over a gone owner: nothing left to tear down.
    (True, 'down', 'gone', 5, 'down'),
    (True, 'down', 'alive', 0, 'down'),
    (False, 'up', 'gone', 5, 'gone'),
    (False, None, 'alive', 0, 'gone'),
])
def test_decide(exists, state, owner, polls, verdict):
    assert reaper.decide(exists, state, owner, polls) == verdict


def test_decide_never_reaps_a_live_owner():
    for state in ('up', 'starting', None, 'weird'):
        for polls in range(0, 10):
            assert reaper.decide(True, state, 'alive', polls) != 'reap'


# -- the owner ---------------------------------------------------------------

def test_owner_status_from_proc_info():
    def info(state='S', ticks=100):
        return lambda pid: (state, 1, pid, ticks)
    assert reaper.owner_status(7, 100, info()) == 'alive'
    assert reaper.owner_status(7, 100, lambda pid: None) == 'gone'
    assert reaper.owner_status(7, 100, info(state='Z')) == 'zombie'
    assert reaper.owner_status(7, 100, info(state='X')) == 'zombie'
    # The pid is back, on a process that started at another time.
    assert reaper.owner_status(7, 100, info(ticks=101)) == 'reused'
    # No start time to compare with: never taken for the owner.
    assert reaper.owner_status(7, None, info()) == 'reused'


def test_owner_status_of_real_processes():
    pid, ticks = reaper.owner_identity()
    assert pid == os.getpid() and ticks == procs.proc_start_ticks(pid)
    assert reaper.owner_status(pid, ticks) == 'alive'
    assert reaper.owner_status(pid, ticks + 1) == 'reused'
    child = subprocess.Popen(['sleep', '30'])
    try:
        cticks = procs.proc_start_ticks(child.pid)
        assert reaper.owner_status(child.pid, cticks) == 'alive'
        child.kill()
        deadline = time.monotonic() + 5
        while reaper.owner_status(child.pid, cticks) == 'alive':
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert reaper.owner_status(child.pid, cticks) == 'zombie'
    finally:
        child.kill()
        child.wait(5)
    assert reaper.owner_status(child.pid, cticks) == 'gone'


# -- state, teardown spec, summary -------------------------------------------

def test_read_state(tmp_path):
    w = str(tmp_path)
    assert reaper.read_state(w) is None
    (tmp_path / 'lane.json').write_text('{"state": "up"')
    assert reaper.read_state(w) is None           # half a file
    (tmp_path / 'lane.json').write_text('[1, 2]')
    assert reaper.read_state(w) is None
    (tmp_path / 'lane.json').write_text(json.dumps({'state': 'down'}))
    assert reaper.read_state(w) == 'down'
    (tmp_path / 'cloud.json').write_text(json.dumps({'state': 'up'}))
    assert reaper.read_state(w, 'cloud.json') == 'up'


@pytest.mark.parametrize('spec', [
    'os:system', 'subprocess:call', 'kerbside_tempest_plugin_evil:x',
    'kerbside_tempest_plugin.lane.lane', ':teardown_workdir', ''])
def test_only_a_function_of_the_package_tears_down(spec):
    with pytest.raises(ValueError):
        reaper.check_teardown(spec)


def test_the_default_teardown_resolves():
    from kerbside_tempest_plugin.lane import lane as lane_mod
    assert reaper.resolve_teardown(reaper.DEFAULT_TEARDOWN) is \
        lane_mod.teardown_workdir
    with pytest.raises(ValueError):
        reaper.resolve_teardown('kerbside_tempest_plugin.lane.lane:nope')


def test_the_cli_refuses_a_foreign_teardown(tmp_path, capsys):
    rc = reaper.main(['--workdir', str(tmp_path), '--owner-pid', '1',
                      '--owner-start', '1', '--teardown', 'os:system'])
    assert rc == 2
    assert 'must be a function of kerbside_tempest_plugin' in \
        capsys.readouterr().err


def test_summarise():
    lines = reaper.summarise({
        'stopped': [{'name': 'ryll:1', 'pid': 5, 'result': 'exited on '
                     'SIGINT'},
                    {'name': 'kerbside-daemon', 'pid': 6,
                     'result': 'exited on SIGTERM',
                     'group_leftovers': [{'pid': 7, 'argv': ['x']}]}],
        'leftover_pids': [], 'busy_ports': [], 'seconds': 1.5})
    assert lines[0] == '  ryll:1 (pid 5): exited on SIGINT'
    assert 'then stopped its group: [7]' in lines[1]
    assert lines[-1] == 'leftover pids [], busy ports [], 1.5 s'
    assert reaper.summarise({'error': 'boom'})[-1] == 'error: boom'


# -- the watch loop on a fake clock -----------------------------------------

class Clock:
    def __init__(self):
        self.t = 0.0
        self.sleeps = 0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s
        self.sleeps += 1


def _watch(tmp_path, statuses, teardown=None, state='up', **kw):
    """A _Watch over tmp_path whose owner reports `statuses` in turn (the
    last one repeats).
    """
    (tmp_path / 'lane.json').write_text(json.dumps({'state': state}))
    seq = list(statuses)
    calls = []

    def status_of(pid, ticks):
        calls.append((pid, ticks))
        return seq.pop(0) if len(seq) > 1 else seq[0]

    torn = []

    def default_teardown(workdir):
        torn.append(workdir)
        return {'stopped': [{'name': 'qemu:g', 'pid': 9,
                             'result': 'exited on SIGTERM'}],
                'leftover_pids': [], 'busy_ports': [], 'seconds': 0.1}
    clock = Clock()
    log = logging.getLogger('test-reaper')
    w = reaper._Watch(str(tmp_path), 1234, 99, teardown or default_teardown,
                      interval=0.5, log=log, status_of=status_of,
                      sleep=clock.sleep, clock=clock, **kw)
    return w, torn, calls, clock


def test_watch_tears_down_once_the_owner_is_gone(tmp_path, caplog):
    caplog.set_level(logging.INFO, 'test-reaper')
    w, torn, calls, clock = _watch(
        tmp_path, ['alive'] * 5 + ['gone'])
    assert w.run() == 'reaped'
    assert torn == [str(tmp_path)]
    assert calls[0] == (1234, 99)
    # Five live polls, then gone on two in a row.
    assert len(calls) == 7 and clock.sleeps == 6
    text = caplog.text
    assert 'owner pid 1234 has no process any more' in text
    assert 'qemu:g (pid 9): exited on SIGTERM' in text
    assert 'leftover pids [], busy ports []' in text


def test_watch_says_why_the_owner_counts_as_gone(tmp_path, caplog):
    caplog.set_level(logging.INFO, 'test-reaper')
    w, torn, _, _ = _watch(tmp_path, ['reused'])
    assert w.run() == 'reaped' and len(torn) == 1
    assert 'now belongs to another process' in caplog.text


def test_watch_does_not_reap_on_one_bad_reading(tmp_path):
    w, torn, _, _ = _watch(tmp_path, ['alive', 'gone', 'alive', 'gone',
                                      'alive'], max_seconds=30)
    assert w.run() == 'expired'
    assert torn == []


def test_watch_leaves_a_live_owner_alone_until_its_deadline(tmp_path,
                                                            caplog):
    caplog.set_level(logging.INFO, 'test-reaper')
    w, torn, calls, clock = _watch(tmp_path, ['alive'], max_seconds=60)
    assert w.run() == 'expired'
    assert torn == []
    assert len(calls) == 121 and clock.t == 60.0
    assert 'leaving the lane as it is' in caplog.text


def test_watch_leaves_when_the_lane_is_down(tmp_path):
    w, torn, _, _ = _watch(tmp_path, ['alive'], state='down')
    assert w.run() == 'down' and torn == []
    # ... even with the owner gone: a finished teardown is not redone.
    w, torn, _, _ = _watch(tmp_path, ['gone'], state='down')
    assert w.run() == 'down' and torn == []


def test_watch_leaves_when_the_state_turns_down(tmp_path):
    (tmp_path / 'lane.json').write_text(json.dumps({'state': 'up'}))
    clock = Clock()

    def sleep(s):
        clock.sleep(s)
        if clock.sleeps == 3:
            (tmp_path / 'lane.json').write_text(json.dumps(
                {'state': 'down'}))
    w = reaper._Watch(str(tmp_path), 1, 1, lambda w: pytest.fail('reaped'),
                      status_of=lambda p, t: 'alive', sleep=sleep,
                      clock=clock)
    assert w.run() == 'down' and clock.sleeps == 3


def test_watch_leaves_when_the_workdir_is_gone(tmp_path):
    w = reaper._Watch(str(tmp_path / 'nope'), 1, 1,
                      lambda w: pytest.fail('reaped'),
                      status_of=lambda p, t: 'gone', sleep=lambda s: None)
    assert w.run() == 'gone'


def test_watch_logs_a_teardown_that_raised(tmp_path, caplog):
    caplog.set_level(logging.INFO, 'test-reaper')

    def boom(workdir):
        raise RuntimeError('registry on fire')
    w, _, _, _ = _watch(tmp_path, ['gone'], teardown=boom)
    assert w.run() == 'reaped'
    assert 'the teardown raised' in caplog.text
    assert 'registry on fire' in caplog.text


def test_sigterm_stops_a_watch_but_not_a_teardown(tmp_path):
    w, _, _, clock = _watch(tmp_path, ['alive'])

    def sleep(s):
        w.on_sigterm(signal.SIGTERM, None)
    w.sleep = sleep
    assert w.run() == 'stopped'

    seen = []

    def teardown(workdir):
        w2.on_sigterm(signal.SIGTERM, None)    # ignored: carries on
        seen.append('finished')
        return {}
    w2, _, _, _ = _watch(tmp_path, ['gone'], teardown=teardown)
    assert w2.run() == 'reaped' and seen == ['finished']


# -- the owner's handle -------------------------------------------------------

def test_reaper_argv_and_a_stop_without_a_start(tmp_path):
    r = reaper.Reaper(str(tmp_path), python='/py')
    argv = r.argv(10, 20)
    assert argv[:3] == ['/py', '-m', 'kerbside_tempest_plugin.lane.reaper']
    assert argv[argv.index('--owner-pid') + 1] == '10'
    assert argv[argv.index('--owner-start') + 1] == '20'
    assert argv[argv.index('--teardown') + 1] == reaper.DEFAULT_TEARDOWN
    assert argv[argv.index('--state-file') + 1] == 'lane.json'
    assert r.stop() is None and not r.alive() and r.pid is None


def test_reaper_start_needs_the_owner_start_time(tmp_path):
    with pytest.raises(OSError):
        reaper.Reaper(str(tmp_path)).start(owner_pid=2 ** 22 + 7)


# -- common.signals ----------------------------------------------------------

def test_signal_exceptions():
    assert isinstance(signals.exception_for(signal.SIGINT),
                      KeyboardInterrupt)
    e = signals.exception_for(signal.SIGTERM)
    assert isinstance(e, SystemExit) and e.code == 143
    assert signals.exception_for(signal.SIGHUP).code == 129


@pytest.mark.parametrize('now,first,shield,what', [
    (10.0, None, 0, 'raise'),
    (10.0, 5.0, 0, 'ignore'),       # a repeat during the teardown
    (200.0, 5.0, 0, 'raise'),       # long after: the process goes on
    (10.0, None, 1, 'defer'),
    (10.0, 5.0, 2, 'defer'),
])
def test_signal_decide(now, first, shield, what):
    assert signals.decide(signal.SIGTERM, now, first, shield,
                          grace=90.0) == what


def _in_child(code):
    """Run `code` in a fresh python (signals are per process)."""
    return subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=60)


def test_sigterm_runs_finally_and_exits_143():
    out = _in_child(
        'import os, signal, time\n'
        'from kerbside_tempest_plugin.common import signals\n'
        'signals.install()\n'
        'try:\n'
        '    os.kill(os.getpid(), signal.SIGTERM)\n'
        '    time.sleep(5)\n'
        '    print("slept on")\n'
        'finally:\n'
        '    print("finally ran")\n')
    assert out.returncode == 143, out.stderr
    assert out.stdout == 'finally ran\n'
    assert 'SIGTERM received: tearing down before exit' in out.stderr


def test_a_repeated_signal_does_not_cut_the_teardown_short():
    out = _in_child(
        'import os, signal, time\n'
        'from kerbside_tempest_plugin.common import signals\n'
        'signals.install(signals.BATCH_SIGNALS)\n'
        'try:\n'
        '    os.kill(os.getpid(), signal.SIGINT)\n'
        '    time.sleep(5)\n'
        'except KeyboardInterrupt:\n'
        '    print("interrupted")\n'
        '    os.kill(os.getpid(), signal.SIGTERM)\n'
        '    time.sleep(0.2)\n'
        '    print("teardown finished")\n')
    assert out.returncode == 0, out.stderr
    assert out.stdout == 'interrupted\nteardown finished\n'
    assert 'SIGTERM received again' in out.stderr


def test_shielded_defers_a_signal_from_a_worker_thread():
    out = _in_child(
        'import os, signal, threading, time\n'
        'from kerbside_tempest_plugin.common import signals\n'
        'signals.install()\n'
        'done = []\n'
        'def work():\n'
        '    with signals.shielded():\n'
        '        os.kill(os.getpid(), signal.SIGTERM)\n'
        '        time.sleep(0.3)\n'
        '        done.append("closed")\n'
        'try:\n'
        '    t = threading.Thread(target=work)\n'
        '    t.start()\n'
        '    t.join(10)\n'
        '    time.sleep(5)\n'
        'finally:\n'
        '    print(done)\n')
    assert out.returncode == 143, out.stderr
    assert out.stdout == "['closed']\n"
    assert 'deferred' in out.stderr


def test_install_outside_the_main_thread_does_nothing():
    import threading
    got = []
    t = threading.Thread(target=lambda: got.append(signals.install()))
    t.start()
    t.join(5)
    assert got == [()]

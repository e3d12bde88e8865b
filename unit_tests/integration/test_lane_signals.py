"""The harness under its own faults: the process holding a lane dies.

1. A child python brings a real lane up (MariaDB, Kerbside's API, daemon
   and kerbside-proxy), boots a guest (diskless OVMF: qemu runs) and
   starts ryll on the kerbside route, then gets SIGKILL, or a SIGTERM it
   has no handler for (a tempest worker under `tox -e direct-qemu` when
   a CI job times out). Its own `finally: lane.down()` never runs; within
   15 s every process of the workdir's registry must be gone and every
   lane port free (the lane's reaper, lane.reaper), a process outside the
   registry untouched, and `kerbside-harness down --workdir` must still
   work (nothing left, exit 0).
2. `kerbside-harness console` (which owns its lane) gets SIGTERM: it
   tears its lane down *before* it exits (common.signals), with exit
   status 143, and the reaper has had nothing to do.
3. The reaper against real processes in a hand-made workdir: it leaves a
   lane with a live owner alone, tears it down once that owner dies, takes
   a live process whose start time differs for a dead owner (pid reuse),
   and leaves quietly once the state file says down.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from kerbside_tempest_plugin.common import atomic
from kerbside_tempest_plugin.common import ports as common_ports
from kerbside_tempest_plugin.lane import lane as lane_mod
from kerbside_tempest_plugin.lane import procs
from kerbside_tempest_plugin.lane import reaper
from unit_tests.conftest import REPO_ROOT
from unit_tests.conftest import require_kerbside_lane

pytestmark = pytest.mark.integration

DEADLINE = 15.0

# The lane's owner: what a tempest worker does with its class's lane.
OWNER = r'''
import json, sys, time
sys.path.insert(0, %(repo)r)
from kerbside_tempest_plugin.lane import lane as lane_mod
workdir, route = sys.argv[1], sys.argv[2]
lane = lane_mod.Lane(workdir, route=route, kerbside=route == 'kerbside')
try:
    lane.up()
    guest = lane.boot_guest(None, name='g1')    # diskless OVMF
    rp = lane.start_ryll(guest, timeout=60)
    reaper = getattr(lane, '_reaper', None)
    print(json.dumps({'ports': lane.ports, 'guest': guest.pid,
                      'reaper': reaper and reaper.pid, 'ryll': rp.pid}),
          flush=True)
    time.sleep(600)
finally:
    lane.down()     # a SIGKILL, or a SIGTERM nobody handles, skips it
'''


def _need_lane():
    require_kerbside_lane()


def _registry(workdir):
    return procs.ProcessRegistry(os.path.join(workdir, 'processes.json'))


def _harness(*args, timeout=120):
    return subprocess.run(
        [sys.executable, '-m', 'kerbside_tempest_plugin.cmd.harness'] +
        list(args), capture_output=True, text=True, timeout=timeout,
        cwd=str(REPO_ROOT))


def _read_line(proc, timeout, what):
    """One stdout line of `proc` within `timeout` s (its stderr if not)."""
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        proc.kill()
        raise AssertionError('no %s within %.0f s; stderr:\n%s' % (
            what, timeout, proc.stderr.read()[-3000:]))
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        raise AssertionError('%s: the process exited (%s); stderr:\n%s' % (
            what, proc.returncode, proc.stderr.read()[-3000:]))
    return line


def _gone_within(workdir, ports, timeout):
    """Seconds until every registry process (and its group) is gone and
    every port free; AssertionError with what is left at the deadline.
    """
    t0 = time.monotonic()
    while True:
        reg = _registry(workdir)
        living = [(r['name'], r['pid']) for r in reg.living()]
        left = reg.leftovers()
        busy = common_ports.busy_ports(ports)
        if not living and not left and not busy:
            return time.monotonic() - t0
        if time.monotonic() - t0 >= timeout:
            raise AssertionError(
                '%.0f s after the owner died: living %s, leftover pids %s, '
                'busy ports %s; reaper.log:\n%s' % (
                    timeout, living, left, busy, _reaper_log(workdir)))
        time.sleep(0.1)


def _reaper_log(workdir):
    try:
        with open(os.path.join(workdir, reaper.LOG_FILE)) as f:
            return f.read()
    except OSError:
        return '(no reaper.log)'


def _wait_state(workdir, want, timeout, state_file='lane.json'):
    deadline = time.monotonic() + timeout
    while True:
        state = reaper.read_state(workdir, state_file)
        if state == want or time.monotonic() >= deadline:
            return state
        time.sleep(0.1)


@pytest.mark.parametrize('sig', [signal.SIGKILL, signal.SIGTERM],
                         ids=['SIGKILL', 'SIGTERM'])
def test_a_killed_owner_leaves_nothing_behind(tmp_path, sig):
    _need_lane()
    workdir = str(tmp_path / 'w')
    owner = subprocess.Popen(
        [sys.executable, '-c', OWNER % {'repo': str(REPO_ROOT)}, workdir,
         'kerbside'], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=str(REPO_ROOT))
    bystander = subprocess.Popen(['sleep', '120'])
    try:
        info = json.loads(_read_line(owner, 120, 'the lane up'))
        ports = [p for p in info['ports'].values() if p]
        reg = _registry(workdir)
        names = sorted(r['name'].split(':')[0] for r in reg.living())
        assert names == ['gunicorn', 'kerbside-daemon', 'kerbside-proxy',
                         'mariadbd', 'qemu', 'ryll'], names
        assert common_ports.busy_ports(ports)       # listening, all of them
        # The owner is alive: the reaper has left the lane alone so far.
        assert 'tearing it down' not in _reaper_log(workdir)

        t_kill = time.monotonic()
        owner.send_signal(sig)
        owner.wait(10)
        assert owner.returncode == -sig
        took = _gone_within(workdir, ports, DEADLINE)
        print('%s: every lane process gone and every port free %.2f s '
              'after the owner died' % (signal.Signals(sig).name, took))
        assert _wait_state(workdir, 'down', DEADLINE) == 'down'
        log = _reaper_log(workdir)
        assert 'tearing it down' in log, log
        for name in ('ryll', 'kerbside-daemon', 'gunicorn', 'qemu:g1',
                     'mariadbd'):
            assert name in log, (name, log)
        assert 'leftover pids [], busy ports []' in log, log
        # The reaper has gone too, and it stopped nothing of anyone
        # else's.
        assert info['reaper']
        deadline = time.monotonic() + 5
        while procs.pid_alive(info['reaper']) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        assert not procs.pid_alive(info['reaper'])
        assert bystander.poll() is None
        print('%s: owner killed to reaper done %.2f s' % (
            signal.Signals(sig).name, time.monotonic() - t_kill))
    finally:
        bystander.kill()
        bystander.wait(5)
        if owner.poll() is None:
            owner.kill()
            owner.wait(10)
        down = _harness('down', '--workdir', workdir)
    assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
    report = json.loads(down.stdout)
    assert report['leftover_pids'] == [] and report['busy_ports'] == []
    assert all(s['result'] == 'not running' for s in report['stopped']), \
        report['stopped']


def test_console_tears_its_lane_down_before_it_exits_on_sigterm(tmp_path):
    _need_lane()
    workdir = str(tmp_path / 'c')
    # Script mode on a pipe we keep open: the console waits for a line.
    console = subprocess.Popen(
        [sys.executable, '-m', 'kerbside_tempest_plugin.cmd.harness',
         'console', '--route', 'direct', '--workdir', workdir],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=str(REPO_ROOT))
    try:
        first = json.loads(_read_line(console, 180, 'the console\'s lane'))
        assert first['verb'] == 'lane' and first['ok'], first
        state = lane_mod.load_state(workdir)
        ports = [p for p in state['ports'].values() if p]
        living = [r['name'] for r in _registry(workdir).living()]
        assert any(n.startswith('qemu') for n in living), living
        assert any(n.startswith('ryll') for n in living), living
        t = time.monotonic()
        console.send_signal(signal.SIGTERM)
        _, err = console.communicate(timeout=90)
        took = time.monotonic() - t
    finally:
        if console.poll() is None:
            console.kill()
            console.wait(10)
    try:
        # Torn down before it exited: at its exit nothing is left and the
        # state already says down (a teardown after the exit, by the
        # guardian or the reaper, could not have finished yet).
        reg = _registry(workdir)
        assert reg.living() == [] and reg.leftovers() == []
        assert lane_mod.load_state(workdir)['state'] == 'down'
        assert common_ports.busy_ports(ports) == []
    finally:
        # Whatever the verdict, leave nothing running for the next test.
        lane_mod.teardown_workdir(workdir)
    assert console.returncode == 143, (console.returncode, err[-3000:])
    assert 'SIGTERM received: tearing down before exit' in err
    assert 'lane torn down' in err, err[-3000:]
    assert 'Traceback' not in err, err[-3000:]
    # The lane's reaper had nothing to do.
    assert 'tearing it down' not in _reaper_log(workdir)
    print('console: SIGTERM to exit, lane down, in %.2f s' % took)


# -- the reaper against real processes, no lane -----------------------------

def _fake_lane(tmp_path):
    """A workdir with a lane's state file and registry, one process in
    it (a stand-in qemu); returns (workdir, that Popen).
    """
    workdir = str(tmp_path / 'fake')
    os.makedirs(os.path.join(workdir, 'logs'))
    reg = procs.ProcessRegistry(os.path.join(workdir, 'processes.json'))
    victim = reg.spawn('qemu:stand-in', ['sleep', '120'],
                       os.path.join(workdir, 'logs', 'stand-in.log'))
    atomic.write_json(os.path.join(workdir, 'lane.json'),
                      {'state': 'up', 'ports': {}})
    return workdir, victim


def _wait_exit(proc, timeout):
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError('still running after %.0f s' % timeout)
    return proc.returncode


def test_the_reaper_leaves_a_live_owner_alone_then_reaps(tmp_path):
    workdir, victim = _fake_lane(tmp_path)
    owner = subprocess.Popen(['sleep', '120'])
    r = None
    try:
        r = reaper.Reaper(workdir).start(
            owner.pid, procs.proc_start_ticks(owner.pid))
        time.sleep(4)       # eight polls with the owner alive
        assert victim.poll() is None and r.alive()
        assert reaper.read_state(workdir) == 'up'
        assert 'tearing it down' not in _reaper_log(workdir)
        owner.kill()        # a zombie until we wait: gone all the same
        t = time.monotonic()
        assert _wait_exit(victim, DEADLINE) == -signal.SIGTERM
        print('fake lane: stand-in stopped %.2f s after its owner died'
              % (time.monotonic() - t))
        assert _wait_exit(r.proc, 10) == 0
        log = _reaper_log(workdir)
        assert 'has exited (a zombie)' in log, log
        assert 'qemu:stand-in (pid %d): exited on SIGTERM' % victim.pid \
            in log, log
        assert reaper.read_state(workdir) == 'down'
    finally:
        for p in (owner, victim):
            p.kill()
            p.wait(5)
        if r is not None:
            r.stop()


def test_the_reaper_takes_a_reused_pid_for_a_dead_owner(tmp_path):
    workdir, victim = _fake_lane(tmp_path)
    # The pid is alive (this very test), but it started at another time
    # than the owner the reaper was told about: the owner is gone.
    pid, ticks = reaper.owner_identity()
    bystander = subprocess.Popen(['sleep', '120'])
    r = reaper.Reaper(workdir).start(pid, ticks - 1)
    try:
        assert _wait_exit(victim, DEADLINE) == -signal.SIGTERM
        assert _wait_exit(r.proc, 10) == 0
        log = _reaper_log(workdir)
        assert 'now belongs to another process' in log, log
        # Only the registry's process: the owner's pid and a bystander
        # live on.
        assert procs.pid_alive(pid, ticks) and bystander.poll() is None
    finally:
        for p in (victim, bystander):
            p.kill()
            p.wait(5)
        r.stop()


def test_the_reaper_leaves_once_the_lane_is_down(tmp_path):
    workdir, victim = _fake_lane(tmp_path)
    owner = subprocess.Popen(['sleep', '120'])
    r = reaper.Reaper(workdir).start(owner.pid,
                                     procs.proc_start_ticks(owner.pid))
    try:
        time.sleep(1)
        atomic.write_json(os.path.join(workdir, 'lane.json'),
                          {'state': 'down'})
        assert _wait_exit(r.proc, 5) == 0
        # Down means down: even with its owner then gone, nothing is
        # stopped (the stand-in is a process the "teardown" left).
        owner.kill()
        time.sleep(1.5)
        assert victim.poll() is None
        assert 'the lane is down; leaving' in _reaper_log(workdir)
    finally:
        for p in (owner, victim):
            p.kill()
            p.wait(5)


def test_lane_down_stops_its_reaper_at_once(tmp_path):
    """A lane without Kerbside (nothing to start): up() starts the
    reaper, down() stops it, and does not wait on it to poll.
    """
    lane = lane_mod.Lane(str(tmp_path / 'l'), route='direct',
                         kerbside=False)
    lane.up()
    r = lane._reaper
    pid = r.pid
    try:
        deadline = time.monotonic() + 10
        while 'watching lane' not in _reaper_log(lane.workdir):
            assert time.monotonic() < deadline, 'the reaper never watched'
            time.sleep(0.05)
        assert procs.pid_alive(pid)
        t = time.monotonic()
        report = lane.down()
        took = time.monotonic() - t
    finally:
        lane.down()
    # down() has stopped and waited for it (not left it to poll).
    assert r.proc.returncode is not None and not procs.pid_alive(pid)
    assert pid not in [r['pid'] for r in _registry(lane.workdir).records]
    assert report['leftover_pids'] == [] and took < 5, took
    log = _reaper_log(lane.workdir)
    assert 'tearing it down' not in log
    assert 'stopped by the owner' in log or 'the lane is down' in log, log

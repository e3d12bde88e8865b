"""The harness under its own faults (issue 18 §3), part two: signals to
the processes that hold lanes, with real processes.

0. common.signals.tear_down_on, what a tempest worker's class registers,
   in a real python: a SIGTERM, SIGINT or SIGHUP runs the teardown and
   then kills the process (as the signal does by default); forgotten,
   the signals do what they did; during the owner's own teardown
   (shielded) a signal waits for its end; a repeat is ignored; a
   teardown past its deadline ends the process anyway.
1. A tempest worker: the process stestr starts for a class (`python -m
   stestr.subunit_runner.run discover ... --load-list IDS`, the command
   `tempest run` and `KTP_RUNNER=stestr` both run), here started by the
   test itself so that its exit status is ours to read, in a workspace
   written as tools/direct-qemu-job.sh writes it, running the canonical
   walk on the kerbside route. Once its class's lane runs MariaDB,
   Kerbside, qemu and ryll it gets SIGTERM or SIGINT. By the time it has
   exited every registered process is gone, every lane port is free, the
   lane's state says down, its secrets are gone and its artifacts kept;
   it died of the signal (as it did before, without the teardown); the
   lane's reaper had nothing to do.
2. The job (tools/direct-qemu-job.sh, what `tox -e direct-qemu` runs,
   with the real `tempest run`) gets SIGTERM (to the script alone, as a
   supervisor sends it) or SIGINT (to its whole process group, as Ctrl-C
   in a terminal sends it) while the walk runs. It exits 143 or 130 with
   nothing of its process tree left, the lane torn down by its worker
   (not by the reaper) and the safety net run. And `tox -e direct-qemu`
   (an env of the test's own) gets SIGTERM, to tox alone: tox exits at
   once, and the job, its parent gone, still takes everything down.
3. The terminate benchmark (benchmarks/terminate.py) gets SIGTERM in a
   round: its lane is down when it exits, with status 143.
4. The OpenStack cloud's reaper. Light, not a real cloud (one takes
   80-130 s and 2 GiB here): a child runs the real OpenStackCloud.up()
   (its real _prepare: ports, secrets, registry, cloud.json; its real
   reaper) whose first services are stand-ins (sleep, and a listener on
   the cloud's memcached port) started through the cloud's own
   Services.spawn and registry. The child gets SIGKILL, or a SIGTERM it
   does not handle, while the cloud comes up; within 15 s the reaper has
   run the cloud's real teardown_workdir: every stand-in gone, the port
   free, cloud.json down, a bystander untouched, and `kerbside-openstack
   down --workdir` still works.

Each test judges only what it started: its own workdir's registry and
ports, its own process tree. Every wait has a deadline and says what it
waited for and what it saw.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from kerbside_tempest_plugin.common import ports as common_ports
from kerbside_tempest_plugin.common import signals
from kerbside_tempest_plugin.lane import lane as lane_mod
from kerbside_tempest_plugin.lane import procs
from kerbside_tempest_plugin.lane import reaper
from unit_tests.conftest import REPO_ROOT
from unit_tests.integration import test_lane_signals as lane_signals

pytestmark = pytest.mark.integration

DEADLINE = 15.0
# From the signal to the process's exit: a Kerbside lane's teardown takes
# 2-5 s here; a loaded machine, more.
EXIT_DEADLINE = 90.0
# From the start to a lane running the guest and ryll.
UP_DEADLINE = 300.0
LANE_NAMES = ('mariadbd', 'gunicorn', 'kerbside-daemon', 'kerbside-proxy',
              'qemu', 'ryll')
CANONICAL = 'sextant_canonical_walk'
TESTS = os.path.join(str(REPO_ROOT), 'kerbside_tempest_plugin', 'tests')


# -- helpers -----------------------------------------------------------------


def _default_signals():
    """preexec_fn: the child starts with SIGINT, SIGTERM, SIGHUP and
    SIGQUIT at their defaults, as a terminal or a CI runner gives a job.
    A suite started in the background of a non-interactive shell (nohup
    ... &) inherits SIGINT ignored, and a process (or a bash script) that
    starts with a signal ignored keeps it so: the tests below would then
    judge the shell that started pytest, not the code.
    """
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
                signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)


def _tail(path, n=3000):
    try:
        with open(path, errors='replace') as f:
            return f.read()[-n:]
    except OSError:
        return '(no %s)' % path


def _living(workdir):
    return sorted(r['name'] for r in lane_signals._registry(
        workdir).living())


def _wait_for_lane(pattern, names, proc, log_path, timeout=UP_DEADLINE):
    """The one workdir matching `pattern` whose registry has a living
    process of each of `names` (name or name:...), within `timeout`;
    AssertionError with what was seen otherwise (the workdirs and their
    living processes, whether `proc` still runs, the end of its log).
    """
    deadline = time.monotonic() + timeout
    seen = {}
    while True:
        seen = {w: _living(w) for w in glob.glob(pattern)
                if os.path.exists(os.path.join(w, 'processes.json'))}
        for workdir, living in seen.items():
            bases = set(n.split(':')[0] for n in living)
            if all(n in bases for n in names):
                return workdir
        if proc.poll() is not None or time.monotonic() >= deadline:
            raise AssertionError(
                'waited %.0f s for a lane (%s) running %s; saw %s; the '
                'process %s; its log ends:\n%s' % (
                    timeout, pattern, ', '.join(names), seen or 'no lane',
                    'runs' if proc.poll() is None else
                    'exited %s' % proc.returncode, _tail(log_path)))
        time.sleep(0.2)


def _when_lane_runs(pattern, proc, log_path):
    """(workdir, its ports, `proc`'s process tree) once the lane of
    `proc` runs MariaDB, Kerbside, the guest and ryll (_wait_for_lane).
    """
    workdir = _wait_for_lane(pattern, LANE_NAMES, proc, log_path)
    return workdir, _lane_ports(workdir), _tree(proc.pid)


def _wait_exit(proc, timeout, what, log_path):
    """Seconds until `proc` exits, within `timeout`."""
    t = time.monotonic()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError('%s still runs %.0f s after the signal; its '
                             'log ends:\n%s' % (what, timeout,
                                                _tail(log_path)))
    return time.monotonic() - t


def _lane_ports(workdir):
    state = lane_mod.load_state(workdir) or {}
    return [p for p in (state.get('ports') or {}).values() if p]


def _assert_down_at_exit(workdir, ports):
    """What must hold the moment the owner has exited: a teardown run
    after its exit (by the reaper) could not have finished yet.
    """
    reg = lane_signals._registry(workdir)
    living = [(r['name'], r['pid']) for r in reg.living()]
    assert living == [] and reg.leftovers() == [], (
        'at the exit: living %s, leftover pids %s' % (living,
                                                      reg.leftovers()))
    assert (lane_mod.load_state(workdir) or {}).get('state') == 'down'
    assert common_ports.busy_ports(ports) == [], ports
    # The owner did it, not the reaper (which left once it read 'down').
    log = lane_signals._reaper_log(workdir)
    assert 'tearing it down' not in log, log
    # Artifacts kept, secrets not.
    assert os.listdir(os.path.join(workdir, 'logs'))
    assert not os.path.exists(os.path.join(workdir, 'secrets'))


def _tree(root):
    """`root` and every process below it, with their start times."""
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        ticks = procs.proc_start_ticks(pid)
        if ticks is None:
            continue
        out[pid] = ticks
        todo.extend(procs.children(pid))
    return out


def _still_running(tree):
    return sorted(p for p, t in tree.items() if procs.pid_alive(p, t)
                  and (procs.proc_info(p) or 'Z')[0] != 'Z')


def _gone_in(pid, timeout):
    """Whether `pid` (not a child of ours) is gone within `timeout` s."""
    tree = {pid: procs.proc_start_ticks(pid)}
    deadline = time.monotonic() + timeout
    while _still_running(tree):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _assert_none_left(tree):
    """Nothing of `tree` (_tree() before the signal: the owner's lane
    processes, their reaper, tempest's workers) runs at the owner's exit.
    """
    left = _still_running(tree)
    assert left == [], 'still running at the exit: %s' % [
        (p, procs.proc_cmdline(p)[:3]) for p in left]


def _cleanup(pattern):
    """Whatever the verdict, leave no lane of this test running."""
    for workdir in glob.glob(pattern):
        if os.path.exists(os.path.join(workdir, 'processes.json')):
            lane_mod.teardown_workdir(workdir)


def _tempest_conf(ws, route):
    """tempest.conf as tools/direct-qemu-job.sh writes it."""
    for d in ('etc', 'lock', 'artifacts'):
        os.makedirs(os.path.join(ws, d), exist_ok=True)
    with open(os.path.join(ws, 'etc', 'tempest.conf'), 'w') as f:
        f.write('[DEFAULT]\nlog_file = %(ws)s/tempest.log\nuse_stderr = '
                'false\n\n[oslo_concurrency]\nlock_path = %(ws)s/lock\n\n'
                '[service_available]\nkerbside = True\n\n[kerbside]\n'
                'provider = direct_qemu\nroute = %(route)s\nartifact_dir = '
                '%(ws)s/artifacts\n' % {'ws': ws, 'route': route})


def _tempest_env(ws):
    return dict(os.environ, TEMPEST_CONFIG_DIR=os.path.join(ws, 'etc'),
                TEMPEST_CONFIG='tempest.conf')


def _test_ids(ws, regex):
    """The ids stestr would give a worker for `regex` (with tempest's
    [id-...] suffix).
    """
    stestr = os.path.join(os.path.dirname(sys.executable), 'stestr')
    subprocess.run([stestr, 'init'], capture_output=True, cwd=ws,
                   timeout=60, check=True)
    out = subprocess.run(
        [stestr, '--test-path', TESTS, '--top-dir', str(REPO_ROOT), 'list',
         regex], capture_output=True, text=True, cwd=ws, timeout=120,
        env=_tempest_env(ws))
    ids = [ln for ln in out.stdout.splitlines() if regex in ln]
    assert out.returncode == 0 and len(ids) == 1, (out.returncode, ids,
                                                   out.stderr[-2000:])
    return ids


# -- 0. common.signals.tear_down_on in a real python ------------------------

HOLDER = r'''
import os, signal, sys, time
sys.path.insert(0, %(repo)r)
from kerbside_tempest_plugin.common import signals


def teardown():
    print('teardown ran', flush=True)
    %(during)s


signals.tear_down_on('lane', teardown, 'the test lane', deadline=%(deadline)s)
%(then)s
try:
    print('ready', flush=True)
    time.sleep(30)
except KeyboardInterrupt:
    print('KeyboardInterrupt', flush=True)
'''


def _holder(sig, during='pass', then='', deadline=30):
    """A python that registered a teardown with tear_down_on(), then ran
    `then`, sent `sig` once ready (None: it signals itself in `then`);
    returns its (status, stdout, stderr, seconds from the signal to its
    exit).
    """
    proc = subprocess.Popen(
        [sys.executable, '-c', HOLDER % {
            'repo': str(REPO_ROOT), 'during': during, 'then': then,
            'deadline': deadline}],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_default_signals)
    try:
        t = time.monotonic()
        out = ''
        if sig is not None:
            out = lane_signals._read_line(proc, 30, 'the holder ready')
            assert out == 'ready\n', out
            t = time.monotonic()
            proc.send_signal(sig)
        rest, err = proc.communicate(timeout=30)
        return proc.returncode, out + rest, err, time.monotonic() - t
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT,
                                 signal.SIGHUP],
                         ids=['SIGTERM', 'SIGINT', 'SIGHUP'])
def test_a_signal_runs_the_teardown_then_kills(sig):
    rc, out, err, _ = _holder(sig)
    assert rc == -sig, (rc, err)
    assert out == 'ready\nteardown ran\n', out
    name = signal.Signals(sig).name
    assert '%s received: tearing down the test lane before exit' % name \
        in err, err
    assert 'torn down; exiting on %s' % name in err, err


def test_once_forgotten_the_signals_do_what_they_did():
    rc, out, err, _ = _holder(signal.SIGINT, then="signals.forget('lane')")
    assert (rc, out) == (0, 'ready\nKeyboardInterrupt\n'), (rc, out, err)
    rc, out, err, _ = _holder(signal.SIGTERM,
                              then="signals.forget('lane')")
    assert (rc, out, err) == (-signal.SIGTERM, 'ready\n', '')


def test_a_signal_during_the_owners_own_teardown_waits_for_its_end():
    """The class's cleanup tears the lane down under shielded(): the
    signal is deferred, then (the teardown forgotten) kills as it would
    have; the teardown does not run twice.
    """
    rc, out, err, _ = _holder(None, then='\n'.join([
        'with signals.shielded():',
        '    os.kill(os.getpid(), signal.SIGTERM)',
        '    time.sleep(0.3)',
        "    print('own teardown done', flush=True)",
        "    signals.forget('lane')",
        "print('not reached', flush=True)"]))
    assert rc == -signal.SIGTERM, (rc, err)
    assert out == 'own teardown done\n', out
    assert 'deferred until the current teardown ends' in err, err


def test_a_repeat_does_not_cut_the_teardown_short():
    rc, out, err, _ = _holder(signal.SIGTERM, during='; '.join([
        'os.kill(os.getpid(), signal.SIGINT)', 'time.sleep(0.3)',
        "print('teardown finished', flush=True)"]))
    assert rc == -signal.SIGTERM, (rc, err)
    assert out == 'ready\nteardown ran\nteardown finished\n', out
    assert 'SIGINT received again' in err, err


def test_a_teardown_past_its_deadline_ends_the_process_anyway():
    rc, out, err, took = _holder(signal.SIGTERM, during='time.sleep(60)',
                                 deadline=1)
    assert rc == 143, (rc, err)
    assert 'did not end within 1 s' in err, err
    assert took < 10, took


def test_tear_down_on_outside_the_main_thread_registers_nothing():
    got = []
    t = threading.Thread(target=lambda: got.append(
        signals.tear_down_on('x', lambda: None, 'x')))
    t.start()
    t.join(5)
    assert got == [False] and signals.owners() == []


# -- 1. a tempest worker -----------------------------------------------------

@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT],
                         ids=['SIGTERM', 'SIGINT'])
def test_a_tempest_worker_tears_its_lane_down_before_it_dies(tmp_path, sig):
    lane_signals._need_lane()
    ws = str(tmp_path / 'ws')
    _tempest_conf(ws, 'kerbside')
    ids = os.path.join(ws, 'ids')
    with open(ids, 'w') as f:
        f.write('\n'.join(_test_ids(ws, CANONICAL)) + '\n')
    err = os.path.join(ws, 'worker.err')
    lanes = os.path.join(ws, 'artifacts', 'lanes', '*')
    with open(os.path.join(ws, 'worker.subunit'), 'wb') as out, \
            open(err, 'wb') as errf:
        worker = subprocess.Popen(
            [sys.executable, '-m', 'stestr.subunit_runner.run', 'discover',
             '-t', str(REPO_ROOT), TESTS, '--load-list', ids],
            stdout=out, stderr=errf, stdin=subprocess.DEVNULL, cwd=ws,
            env=_tempest_env(ws), preexec_fn=_default_signals)
    try:
        workdir, ports, tree = _when_lane_runs(lanes, worker, err)
        assert common_ports.busy_ports(ports), ports
        worker.send_signal(sig)
        took = _wait_exit(worker, EXIT_DEADLINE, 'the worker', err)
        # Judged at its exit, before anything else could tear down.
        _assert_down_at_exit(workdir, ports)
        _assert_none_left(tree)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        _cleanup(lanes)
    name = signal.Signals(sig).name
    assert worker.returncode == -sig, (worker.returncode, _tail(err))
    text = _tail(err, 20000)
    assert '%s received: tearing down the kerbside lane of ' \
        'SextantScenarioTest' % name in text, text
    assert 'torn down; exiting on %s' % name in text, text
    # The walk's own artifact directory is kept too (empty or not: the
    # signal may come before the first capture).
    assert glob.glob(os.path.join(ws, 'artifacts', '*-sextant-canonical-*'))
    print('tempest worker, %s: lane down and the worker gone %.2f s after '
          'the signal' % (name, took))


# -- 2. the job --------------------------------------------------------------

def _job(tmp_path, how, **extra_env):
    """Start the job as `how` says: 'script' (bash tools/direct-qemu-job.sh,
    as tox runs it) or 'tox' (`tox -e direct-qemu`, its env under the
    test's directory). In a session of its own: its process group is the
    job's alone. Returns (Popen, log path, the glob of its lanes).
    """
    lane_signals._need_lane()
    out = str(tmp_path / 'job')
    log = str(tmp_path / 'job.log')
    env = dict(os.environ, KTP_ROUTE='kerbside', KTP_REGEX=CANONICAL,
               KTP_ARTIFACTS=out)
    env.update(extra_env)
    for name in ('TOX_ENV_NAME', 'PYTHON', 'VIRTUAL_ENV'):
        env.pop(name, None)
    if how == 'tox':
        argv = [os.path.join(os.path.dirname(sys.executable), 'tox'),
                '--workdir', str(tmp_path / 'tox'), '-e', 'direct-qemu']
    else:
        env['PYTHON'] = sys.executable
        argv = ['bash', os.path.join(str(REPO_ROOT), 'tools',
                                     'direct-qemu-job.sh')]
    with open(log, 'wb') as logf:
        job = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, cwd=str(REPO_ROOT),
                               env=env, start_new_session=True,
                               preexec_fn=_default_signals)
    return job, log, os.path.join(out, 'kerbside', 'artifacts', 'lanes', '*')


@pytest.mark.parametrize('sig,group', [(signal.SIGTERM, False),
                                       (signal.SIGINT, True)],
                         ids=['SIGTERM-to-the-script',
                              'SIGINT-to-its-group'])
def test_the_job_tears_its_lanes_down_before_it_exits(tmp_path, sig, group):
    job, log, lanes = _job(tmp_path, 'script')
    try:
        workdir, ports, tree = _when_lane_runs(lanes, job, log)
        if group:
            os.killpg(job.pid, sig)
        else:
            job.send_signal(sig)
        took = _wait_exit(job, EXIT_DEADLINE, 'the job', log)
        _assert_none_left(tree)
        _assert_down_at_exit(workdir, ports)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(10)
        _cleanup(lanes)
    text = _tail(log, 50000)
    assert job.returncode == 128 + sig, (job.returncode, text[-3000:])
    name = signal.Signals(sig).name
    assert '%s: passing SIGTERM on to the running step' % name in text, text
    # The worker tore its lane down (SIGINT straight from the "terminal"
    # when the whole group got it, else the job's SIGTERM).
    assert 'received: tearing down the kerbside lane of SextantScenarioTest' \
        in text, text
    assert 'stopped by signal %d' % sig in text, text
    assert os.path.exists(os.path.join(workdir, 'job-down.log'))
    print('direct-qemu job, %s%s: lane down and the job gone %.2f s after '
          'the signal' % (name, ' to its group' if group else '', took))


def test_the_job_with_its_routes_at_once_tears_every_lane_down(tmp_path):
    # KTP_ROUTES_AT_ONCE=1: both routes' tempest at the same time; SIGTERM
    # to the job reaches both, each lane goes down before the job exits.
    job, log, lanes = _job(tmp_path, 'script', KTP_ROUTE='kerbside direct',
                           KTP_ROUTES_AT_ONCE='1')
    arts = os.path.join(lanes.split(os.sep + os.path.join(
        'kerbside', 'artifacts', 'lanes'))[0], 'direct', 'artifacts')
    direct = os.path.join(arts, 'lanes', '*')
    try:
        workdir, ports, _ = _when_lane_runs(lanes, job, log)
        # the direct route's test has begun (its artifact directory: the
        # guest boots next), while the kerbside one runs
        deadline = time.monotonic() + 60
        while not glob.glob(os.path.join(arts, '*-sextant-*')):
            assert time.monotonic() < deadline and job.poll() is None, (
                'the direct route\'s test did not begin within 60 s of the '
                'kerbside lane: %s' % _tail(log, 3000))
            time.sleep(0.1)
        time.sleep(1)
        tree = _tree(job.pid)
        job.send_signal(signal.SIGTERM)
        took = _wait_exit(job, EXIT_DEADLINE, 'the job', log)
        _assert_none_left(tree)
        _assert_down_at_exit(workdir, ports)
        for other in glob.glob(direct):
            assert (lane_mod.load_state(other) or {}).get('state') == \
                'down', other
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(10)
        _cleanup(lanes)
        _cleanup(direct)
    text = _tail(log, 50000)
    assert job.returncode == 128 + signal.SIGTERM, (job.returncode,
                                                    text[-3000:])
    assert 'routes kerbside direct at once' in text, text
    assert 'received: tearing down the kerbside lane of SextantScenarioTest' \
        in text, text
    print('direct-qemu job, routes at once, SIGTERM: both lanes down and '
          'the job gone %.2f s after the signal' % took)


def test_tox_sigterm_to_tox_alone_still_takes_the_lane_down(tmp_path):
    """tox has no SIGTERM handler: it exits at once and passes nothing on
    (so "down before tox exits" cannot hold). The job notices its parent
    gone (TOX_ENV_NAME set: tools/job-signals.sh) and stops as on SIGTERM:
    within the deadline nothing of tox's process tree runs, the lane is
    down (torn down by its worker, not its reaper) and its ports free.
    """
    job, log, lanes = _job(tmp_path, 'tox')
    try:
        workdir, ports, tree = _when_lane_runs(lanes, job, log)
        t = time.monotonic()
        job.send_signal(signal.SIGTERM)
        _wait_exit(job, 10, 'tox', log)
        assert job.returncode == -signal.SIGTERM
        deadline = t + EXIT_DEADLINE
        while True:
            left = _still_running(tree)
            living = _living(workdir)
            busy = common_ports.busy_ports(ports)
            if not (left or living or busy):
                break
            assert time.monotonic() < deadline, (
                '%.0f s after SIGTERM to tox: still running %s, lane '
                'processes %s, busy ports %s' % (
                    EXIT_DEADLINE, [(p, procs.proc_cmdline(p)[:3])
                                    for p in left], living, busy))
            time.sleep(0.1)
        took = time.monotonic() - t
        assert (lane_mod.load_state(workdir) or {}).get('state') == 'down'
        log_text = lane_signals._reaper_log(workdir)
        assert 'tearing it down' not in log_text, log_text
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(10)
        _cleanup(lanes)
    print('tox -e direct-qemu, SIGTERM to tox: its whole tree gone and the '
          'lane down %.2f s after the signal' % took)


# -- 3. a benchmark ----------------------------------------------------------

# The benchmark's main() as its script runs it, but with the machine lock
# in the test's directory: the lock keeps benchmarks from timing each
# other; this times nothing, and must not wait for another benchmark.
BENCHMARK = r'''
import sys
sys.path.insert(0, %(benchmarks)r)
import terminate
terminate.LOCK = sys.argv[1]
sys.exit(terminate.main(sys.argv[2:]))
'''


def test_the_terminate_benchmark_tears_its_lane_down_on_sigterm(tmp_path):
    lane_signals._need_lane()
    out = str(tmp_path / 'bench')
    log = str(tmp_path / 'bench.log')
    lanes = os.path.join(out, 'lane')
    with open(log, 'wb') as logf:
        bench = subprocess.Popen(
            [sys.executable, '-c', BENCHMARK % {
                'benchmarks': os.path.join(str(REPO_ROOT), 'benchmarks')},
             str(tmp_path / 'machine.lock'), '--rounds', '1000', '--out',
             out], stdout=logf, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=str(REPO_ROOT),
            preexec_fn=_default_signals)
    try:
        workdir, ports, tree = _when_lane_runs(lanes, bench, log)
        bench.send_signal(signal.SIGTERM)
        took = _wait_exit(bench, EXIT_DEADLINE, 'the benchmark', log)
        _assert_none_left(tree)
        reg = lane_signals._registry(workdir)
        living = [(r['name'], r['pid']) for r in reg.living()]
        assert living == [] and reg.leftovers() == [], living
        assert lane_mod.load_state(workdir)['state'] == 'down'
        assert common_ports.busy_ports(ports) == []
        assert 'tearing it down' not in lane_signals._reaper_log(workdir)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait(10)
        _cleanup(lanes)
    text = _tail(log, 20000)
    assert bench.returncode == 143, (bench.returncode, text[-3000:])
    assert 'SIGTERM received: tearing down before exit' in text, text
    assert 'Traceback' not in text, text[-3000:]
    print('terminate benchmark, SIGTERM: lane down and the benchmark gone '
          '%.2f s after the signal' % took)


# -- 4. the OpenStack cloud's reaper -----------------------------------------

# A process holding an OpenStackCloud that is coming up: the real up()
# and reaper; the first services are stand-ins started through the
# cloud's own Services (and so its registry). No OpenStack venv needed:
# nothing of it runs.
CLOUD_OWNER = r'''
import json, sys, time
sys.path.insert(0, %(repo)r)
from kerbside_tempest_plugin.common import ports as common_ports
from kerbside_tempest_plugin.lane.openstack import cloud as os_cloud

LISTEN = ('import socket, sys, time\n'
          's = socket.socket()\n'
          's.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n'
          's.bind(("127.0.0.1", int(sys.argv[1])))\n'
          's.listen()\n'
          'time.sleep(600)\n')


def first_services(self):
    port = self.layout.ports['memcached']
    self.services.spawn('mariadbd', ['sleep', '600'])
    self.services.spawn('memcached', [sys.executable, '-c', LISTEN,
                                      str(port)])
    self.services.spawn('nova-compute', ['sleep', '600'])
    deadline = time.monotonic() + 20
    while not common_ports.busy_ports([port]):
        if time.monotonic() > deadline:
            raise RuntimeError('the stand-in never listened on %%d' %% port)
        time.sleep(0.05)
    print(json.dumps({'ports': self.layout.ports,
                      'reaper': self._reaper.pid}), flush=True)
    time.sleep(600)


os_cloud.OpenStackCloud._write_configs = first_services
cloud = os_cloud.OpenStackCloud(sys.argv[1], kerbside=False)
cloud.venv.check = lambda: []
try:
    cloud.up()
finally:
    cloud.down()    # a SIGKILL, or a SIGTERM nobody handles, skips it
'''


@pytest.mark.parametrize('sig', [signal.SIGKILL, signal.SIGTERM],
                         ids=['SIGKILL', 'SIGTERM'])
def test_a_killed_cloud_owner_leaves_nothing_behind(tmp_path, sig):
    workdir = str(tmp_path / 'cloud')
    owner = subprocess.Popen(
        [sys.executable, '-c', CLOUD_OWNER % {'repo': str(REPO_ROOT)},
         workdir], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=str(REPO_ROOT), preexec_fn=_default_signals)
    bystander = subprocess.Popen(['sleep', '120'])
    try:
        info = json.loads(lane_signals._read_line(
            owner, 60, 'the stand-in cloud coming up'))
        port = info['ports']['memcached']
        assert _living(workdir) == ['mariadbd', 'memcached', 'nova-compute']
        assert reaper.read_state(workdir, 'cloud.json') == 'starting'
        owner.send_signal(sig)
        owner.wait(10)
        assert owner.returncode == -sig
        took = lane_signals._gone_within(workdir, [port], DEADLINE)
        assert lane_signals._wait_state(
            workdir, 'down', DEADLINE, state_file='cloud.json') == 'down'
        log = lane_signals._reaper_log(workdir)
        assert 'tearing it down' in log, log
        for name in ('mariadbd', 'memcached', 'nova-compute'):
            assert name in log, (name, log)
        assert 'leftover pids [], busy ports []' in log, log
        assert _gone_in(info['reaper'], 5), \
            'the reaper still runs 5 s after its teardown'
        assert bystander.poll() is None
        print('stand-in cloud, %s: every process gone and the port free '
              '%.2f s after the owner died' % (signal.Signals(sig).name,
                                               took))
    finally:
        for proc in (bystander, owner):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        down = subprocess.run(
            [sys.executable, '-m', 'kerbside_tempest_plugin.cmd.openstack',
             'down', '--workdir', workdir], capture_output=True, text=True,
            timeout=120, cwd=str(REPO_ROOT))
    assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
    report = json.loads(down.stdout)
    assert report['leftover_pids'] == [] and report['busy_ports'] == []
    assert all(s['result'] == 'not running' for s in report['stopped']), \
        report['stopped']

"""Shared pytest fixtures for the unit and integration suite."""

import glob
import os
import pathlib
import sys
import tempfile
import textwrap

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def raised_in_threads(target, n):
    """Call target(i) for i in range(n), each in a thread of its own, all
    at once; returns what they raised (a test of writers at once asserts
    it is empty).
    """
    import threading
    raised = []

    def run(i):
        try:
            target(i)
        except Exception as e:      # noqa: BLE001 (returned)
            raised.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return raised


def _run_dirs(pattern):
    return set(glob.glob(os.path.join(tempfile.gettempdir(), pattern)))


@pytest.fixture(scope='session', autouse=True)
def no_run_directory_left():
    """Lanes and clouds put their unix sockets in /tmp/ktp-run-* when the
    workdir's path is too long (pytest's are); teardown must remove every
    one. Checked over the whole session: one left behind fails it.

    The session tags its own (KTP_RUN_TAG, inherited by the lanes and
    commands it starts: common.rundir) and judges only those: another
    lane on the same machine never fails it.
    """
    from kerbside_tempest_plugin.common import rundir
    os.environ['KTP_RUN_TAG'] = 'pytest%d' % os.getpid()
    pattern = rundir.prefix() + '*'
    before = _run_dirs(pattern)
    yield
    left = sorted(d for d in _run_dirs(pattern) - before
                  if os.path.isdir(d))
    assert left == [], 'ktp-run-* directories left behind: %s' % left


@pytest.fixture
def repo_root():
    return REPO_ROOT


def require_kerbside_lane():
    """Fail (as require_tools) when a direct-qemu lane with Kerbside
    cannot come up here: its tools, and a usable Kerbside venv.
    """
    require_tools('qemu-system-x86_64', 'qemu-img', 'openssl', 'ryll',
                  'mariadb-install-db')
    from kerbside_tempest_plugin.lane import kerbside as lane_kerbside
    problems = lane_kerbside.KerbsideVenv().check()
    if problems:
        pytest.fail('Kerbside venv unusable (%s); run kerbside-harness '
                    'setup' % '; '.join(problems))


def require_tools(*names):
    """Fail (not skip) when a tool an integration test needs is missing.

    Tools are found as the harness finds them (common.tools).

    Set KTP_ALLOW_SKIP=1 to turn the failure into a skip on a developer box
    without the system packages. CI never sets it, so a missing tool there
    is a red build rather than a silently green one.
    """
    from kerbside_tempest_plugin.common import tools
    missing = tools.missing(names)
    if missing:
        msg = 'missing tools (run tools/setup.sh): %s' % '; '.join(
            str(e) for e in missing)
        if os.environ.get('KTP_ALLOW_SKIP') == '1':
            pytest.skip(msg)
        pytest.fail(msg)


# A stand-in 'ryll' executable built on ryll/fake.py: records
# its argv, then serves a fake control socket (FAKE_RYLL_MODE changes that).
FAKE_BINARY = textwrap.dedent('''\
    #!%(python)s
    """Stand-in for ryll: records its argv, then acts per FAKE_RYLL_MODE."""
    import json, os, signal, stat, sys, time
    sys.path.insert(0, %(repo)r)
    from kerbside_tempest_plugin.ryll.fake import FakeRyll

    argv = sys.argv[1:]
    mode = os.environ.get('FAKE_RYLL_MODE', 'serve')
    record = {'argv': argv}
    if '--file' in argv:
        vv = argv[argv.index('--file') + 1]
        record['vv_mode'] = stat.S_IMODE(os.stat(vv).st_mode)
        record['vv_text'] = open(vv).read()
    sock = argv[argv.index('--control-socket') + 1]
    record['dir_mode'] = stat.S_IMODE(os.stat(os.path.dirname(sock)).st_mode)
    with open(os.environ['FAKE_RYLL_RECORD'], 'w') as f:
        json.dump(record, f)
    print('\\x1b[32mINFO\\x1b[0m fake ryll starting', flush=True)
    if mode == 'exit1':
        print('Error: Connection refused', file=sys.stderr, flush=True)
        sys.exit(1)
    if mode == 'nosocket':
        time.sleep(60)
        sys.exit(0)
    done = []
    if mode == 'ignore_int':
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGINT, lambda *a: done.append(1))
    srv = FakeRyll(sock).start()   # socket only once signals are set up
    inputs_after = os.environ.get('FAKE_RYLL_INPUTS_AFTER')
    if inputs_after:
        time.sleep(float(inputs_after))
        print('INFO inputs: connected successfully', flush=True)
    while not done:
        time.sleep(0.01)
    srv.stop()
    sys.exit(0)
''')


@pytest.fixture
def fake_binary(tmp_path, monkeypatch):
    path = tmp_path / 'fake-ryll'
    path.write_text(FAKE_BINARY % {'python': sys.executable,
                                   'repo': str(REPO_ROOT)})
    path.chmod(0o755)
    record = tmp_path / 'record.json'
    monkeypatch.setenv('FAKE_RYLL_RECORD', str(record))
    return str(path), record

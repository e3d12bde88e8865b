"""Kerbside's settings and build reach a real lane.

A copy of the Kerbside venv's kerbside-proxy (under another name, in a
directory of its own) is the lane's `proxy_bin`, with `firewall_mode='warn'`
and `console_token_duration=2`. The lane comes up for real (MariaDB,
gunicorn, `kerbside daemon run` and its proxy child; no guest is needed)
and the test checks what actually runs, from /proc, not what the lane
says it asked for:

- the proxy child's /proc/<pid>/exe is the copy, and kerbside_build() (and
  lane.json) names the copy and its sha256;
- the daemon's environment carries the settings (read from its proxy
  child, which inherits it: the daemon's own /proc/<pid>/environ is
  overwritten by setproctitle);
- a console token the API mints lives 2 minutes (its row in MariaDB), so
  the API read the setting, not only received it;
- lane.down() leaves no process (the copy included) and no port.

The environments hold secrets (the auth seed, the database URL): only the
four settings' variables are ever read out of them or printed.
"""

import hashlib
import json
import os
import shutil
import subprocess
import time

import pytest

from kerbside_tempest_plugin.common import ports as common_ports
from kerbside_tempest_plugin.lane import kerbside as lane_kerbside
from kerbside_tempest_plugin.lane import lane as lane_mod
from kerbside_tempest_plugin.lane import procs
from unit_tests.conftest import require_tools

pytestmark = pytest.mark.integration

SETTINGS = {'KERBSIDE_FIREWALL_MODE': 'warn',
            'KERBSIDE_CONSOLE_TOKEN_DURATION': '2'}


def _settings_in_environ(pid):
    """The KERBSIDE_PROXY_BIN, FIREWALL_* and CONSOLE_TOKEN_DURATION
    variables of process `pid` (nothing else: the rest holds secrets).
    """
    wanted = ('KERBSIDE_PROXY_BIN', 'KERBSIDE_FIREWALL_MODE',
              'KERBSIDE_FIREWALL_PERMITTED_CHANNELS',
              'KERBSIDE_CONSOLE_TOKEN_DURATION')
    with open('/proc/%d/environ' % pid, 'rb') as f:
        entries = f.read().split(b'\0')
    out = {}
    for entry in entries:
        key, _, value = entry.decode(errors='replace').partition('=')
        if key in wanted:
            out[key] = value
    return out


def _exe(pid):
    try:
        return os.readlink('/proc/%d/exe' % pid)
    except OSError:
        return None


def _token_lifetimes(lane):
    """expires - created (seconds) of every console token in the lane's
    MariaDB (as root over its socket; no secret is printed).
    """
    argv = lane.mariadb._client('mariadb') + [
        '-uroot', '-N', '-B', '-e',
        'SELECT expires - created FROM kerbside.consoletokens']
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr[-500:]
    return [int(float(v)) for v in proc.stdout.split()]


def test_a_copied_proxy_and_settings_reach_the_running_kerbside(
        tmp_path_factory, monkeypatch):
    require_tools('openssl', 'mariadbd', 'mariadb-install-db')
    for name in list(os.environ):
        if name.startswith('KERBSIDE_') and name != 'KERBSIDE_VENV':
            monkeypatch.delenv(name)
    venv = lane_kerbside.KerbsideVenv()
    problems = venv.check()
    if problems:
        pytest.fail('Kerbside venv unusable (%s); run kerbside-harness '
                    'setup' % '; '.join(problems))
    assert venv.source == lane_kerbside.PYPI_SOURCE % '0.8.0', venv.source
    bindir = tmp_path_factory.mktemp('proxy-copy')
    copy = str(bindir / 'kerbside-proxy-under-test')
    shutil.copy2(venv.bin('kerbside-proxy'), copy)
    with open(copy, 'rb') as f:
        copy_sha = hashlib.sha256(f.read()).hexdigest()

    workdir = str(tmp_path_factory.mktemp('kbuild'))
    t0 = time.monotonic()
    lane = lane_mod.Lane(workdir, route='kerbside', proxy_bin=copy,
                         firewall_mode='warn', console_token_duration=2)
    try:
        lane.up(timeout=90)
        kb = lane.kerbside
        # What runs: the daemon's proxy child is the copy.
        children = kb.proxy_children()
        assert len(children) == 1, children
        assert _exe(children[0]) == copy
        assert kb.proxy_pids() == children

        build = lane.kerbside_build()
        assert build == kb.kerbside_build(running=True)
        assert build['proxy_bin'] == copy
        assert build['proxy_sha256'] == copy_sha
        assert build['proxy_contract_hash'] == \
            lane_kerbside.proxy_contract_hash(venv.bin('kerbside-proxy'))
        assert (build['kerbside_version'],
                build['kerbside_proxy_version']) == ('0.8.0', '0.8.0')
        assert build['venv'] == venv.path
        assert build['source'] == 'PyPI kerbside==0.8.0'
        with open(lane.state_path) as f:
            state = json.load(f)
        assert state['kerbside_build'] == build
        assert state['kerbside_settings'] == {
            'firewall_mode': 'warn', 'firewall_permitted_channels': None,
            'console_token_duration': 2, 'proxy_bin': copy}

        # The daemon's environment, as its os.environ holds it: what its
        # proxy child inherited. (The daemon's and gunicorn's own
        # /proc/<pid>/environ read empty: setproctitle, which both load,
        # reuses that memory for the process title.)
        assert _settings_in_environ(children[0]) == dict(
            SETTINGS, KERBSIDE_PROXY_BIN=copy)

        # Kerbside read it: a fresh console token lives 2 minutes.
        kb.fetch_vv()
        assert _token_lifetimes(lane) == [120]
        up_for = time.monotonic() - t0
    finally:
        ports = [p for p in lane.ports.values() if p]
        report = lane.down()
    assert report['leftover_pids'] == [], report
    assert report['busy_ports'] == [], report
    assert common_ports.busy_ports(ports) == []
    assert [p for p in procs.all_pids() if _exe(p) == copy] == []
    print('lane up, checked: %.1f s' % up_for)

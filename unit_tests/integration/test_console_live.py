"""`kerbside-harness console` on a real lane, from standard input.

1. The console starts its own lane (kerbside route), a script walks the
   guest to Parked verb by verb, saves the screen it decoded there, powers
   the guest off and judges the drain. The digest it printed must agree
   with the scenario's own decoder (`sextant-digest decode` of the saved
   PNG) and be a prefix of the chains replayed from the drain; a key after
   the power-off fails readably (no traceback) with exit status 1; the
   lane is torn down.
2. A lane from `kerbside-harness up` (direct route): the interactive
   console, attached and driven through tmux, runs `walk canonical` beat
   by beat, refuses a key after the power-off readably, leaves the lane up
   on `quit`; `down` stops it.
"""

import json
import os
import subprocess
import sys
import time

import pytest

from kerbside_tempest_plugin.lane import procs
from kerbside_tempest_plugin.scenario import checks
from kerbside_tempest_plugin.sextant import drain as drain_mod
from unit_tests.conftest import REPO_ROOT
from unit_tests.conftest import require_tools
from unit_tests.integration import console_walk

pytestmark = pytest.mark.integration


def harness(*args, stdin=None, timeout=600):
    return subprocess.run(
        [sys.executable, '-m', 'kerbside_tempest_plugin.cmd.harness'] +
        list(args), input=stdin, capture_output=True, text=True,
        timeout=timeout, cwd=str(REPO_ROOT))


def lines(proc):
    return [json.loads(line) for line in proc.stdout.splitlines()]


def _need():
    require_tools('qemu-system-x86_64', 'qemu-img', 'openssl', 'ryll',
                  'mariadb-install-db')


def test_console_script_walks_to_parked(tmp_path):
    _need()
    workdir = str(tmp_path / 'lane')
    saved = str(tmp_path / 'parked.png')
    script = '\n'.join(
        ['# the canonical walk, verb by verb'] +
        console_walk.walk_script(60, save=saved) + [
            'key enter',          # the guest is off: a readable error
            'status',             # never reached
        ]) + '\n'
    run = harness('console', '--route', 'kerbside', '--workdir', workdir,
                  stdin=script)
    out = lines(run)
    assert run.returncode == 1, run.stderr[-3000:]
    assert 'Traceback' not in run.stderr, run.stderr[-3000:]
    by_line = {o['line']: o for o in out}
    assert out[0]['verb'] == 'lane' and out[0]['ok']
    assert all(o['ok'] for o in out[:-1]), out[-1]
    first = by_line[2]['result']
    assert first['scene'] == 'awaiting' and first['frame_counter'] > 0
    parked = by_line[11]['result']
    assert parked['scene'] == 'parked'
    assert any(e['kind'] == 'scene_transition' and e['to'] == 'parked'
               for e in parked['events'])
    drained = by_line[13]['result']
    assert drained['passed'], drained['checks']
    assert drained['powered_off'] is True
    assert by_line[14]['result']['guest']['running'] is False

    # The last line: the key after the power-off, readably refused.
    last = out[-1]
    assert last['line'] == 15 and not last['ok'] and last['verb'] == 'key'
    assert 'powered off' in last['error'] and 'ryll' in last['error']
    assert 16 not in by_line

    # The digest agrees with the scenario's own decoder on the same frame.
    dec = subprocess.run(
        [sys.executable, '-m', 'kerbside_tempest_plugin.cmd.digest',
         'decode', saved], capture_output=True, text=True, timeout=120,
        cwd=str(REPO_ROOT))
    assert dec.returncode == 0, dec.stderr
    theirs = json.loads(dec.stdout.splitlines()[0])
    assert theirs['frame_counter'] == parked['frame_counter']
    assert theirs['events'] == parked['events']
    assert {k: '0x%08x' % v for k, v in theirs['hashes'].items()} == \
        parked['hashes']
    assert theirs['framebuffer_hash_ok'] == parked['framebuffer_hash_ok']

    # ... and with the guest's own account: its hashes are the chains of
    # a prefix of the drain.
    serial = os.path.join(workdir, 'guests', 'guest1', 'serial.log')
    with open(serial, 'rb') as f:
        drain = drain_mod.parse(f.read().decode('utf-8', 'replace'))
    prefixes = [{k: '0x%08x' % v for k, v in p.items()}
                for p in checks.prefix_hashes(drain.to_events())]
    assert parked['hashes'] in prefixes

    # The console started the lane, so it is gone.
    reg = procs.ProcessRegistry(os.path.join(workdir, 'processes.json'))
    assert reg.living() == []
    assert 'lane torn down' in run.stderr


def test_console_attaches_to_up_and_walks_in_tmux(tmp_path):
    """The interactive shell, driven through a terminal (tmux)."""
    _need()
    require_tools('tmux')
    workdir = str(tmp_path / 'up')
    tmux_name = 'ktp-console-%d' % os.getpid()
    up = harness('up', '--route', 'direct', '--no-kerbside', '--workdir',
                 workdir)

    def tmux(*args):
        return subprocess.run(['tmux'] + list(args), capture_output=True,
                              text=True, timeout=30)

    def pane():
        return tmux('capture-pane', '-p', '-J', '-S', '-', '-t',
                    tmux_name).stdout

    def wait_pane(text, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in pane():
                return
            time.sleep(0.5)
        raise AssertionError('no %r in the console within %d s; pane:\n%s'
                             % (text, timeout, pane()[-4000:]))
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        cmd = '%s -m kerbside_tempest_plugin.cmd.harness console --attach ' \
              '%s 2>%s' % (sys.executable, workdir, tmp_path / 'err.log')
        r = tmux('new-session', '-d', '-s', tmux_name, '-x', '200', '-y',
                 '50', '-c', str(REPO_ROOT), cmd)
        assert r.returncode == 0, r.stderr
        wait_pane('kerbside> ', 60)
        tmux('send-keys', '-t', tmux_name, 'walk canonical', 'Enter')
        wait_pane('"walk_s"', 240)
        tmux('send-keys', '-t', tmux_name, 'key enter', 'Enter')
        wait_pane('the guest is powered off', 60)
        text = pane()
        tmux('send-keys', '-t', tmux_name, 'quit', 'Enter')
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and \
                tmux('has-session', '-t', tmux_name).returncode == 0:
            time.sleep(0.5)
        assert tmux('has-session', '-t', tmux_name).returncode != 0
        for beat in ('awaiting', 'booting', 'bootloader-prompt', 'ignore',
                     'paste-accepted', 'parked', 'power-off'):
            assert '"beat": "%s"' % beat in text, beat
        assert '"drain_sequence"' in text and '"passed": false' not in text
        after = text.split('kerbside> key enter')[1]
        assert after.lstrip().startswith('error: ') and 'ryll is gone' in \
            after
        assert 'Traceback' not in text
        # Attached without --down-on-exit: the console left the lane to
        # `down` (only the guest and ryll stopped: the walk powered off).
        with open(os.path.join(workdir, 'lane.json')) as f:
            assert json.load(f)['state'] == 'up'
    finally:
        tmux('kill-session', '-t', tmux_name)
        down = harness('down', '--workdir', workdir)
    assert down.returncode == 0, down.stderr[-2000:]
    report = json.loads(down.stdout)
    assert report['leftover_pids'] == [] and report['busy_ports'] == []

"""`kerbside-harness up`, `status` and `down` as a user runs them.

`up` exits after printing its JSON while the lane keeps running, which is
exactly the situation after a crash of the command: `down` must find every
process from the workdir's registry alone.
"""

import json
import os
import subprocess
import sys

import pytest

from kerbside_tempest_plugin.common import ports as common_ports
from kerbside_tempest_plugin.lane import procs
from unit_tests.conftest import REPO_ROOT
from unit_tests.conftest import require_tools

pytestmark = pytest.mark.integration


def harness(*args, timeout=300):
    return subprocess.run(
        [sys.executable, '-m', 'kerbside_tempest_plugin.cmd.harness'] +
        list(args), capture_output=True, text=True, timeout=timeout,
        cwd=str(REPO_ROOT))


@pytest.mark.parametrize('route', ['direct', 'kerbside'])
def test_up_status_down(tmp_path, route):
    require_tools('qemu-system-x86_64', 'qemu-img', 'openssl', 'ryll',
                  'mariadb-install-db')
    # No --image: kerbside-harness resolves SEXTANT_IMAGE, else the
    # bundled guest (guest_images), as a user's run does.
    image_args = []
    workdir = str(tmp_path / 'w')
    up = harness('up', '--route', route, '--workdir', workdir, *image_args)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        info = json.loads(up.stdout)
        for key in ('workdir', 'control_socket', 'serial_log', 'spice_port',
                    'api_port', 'route'):
            assert key in info, key
        assert info['route'] == route and info['workdir'] == workdir
        assert os.path.exists(info['control_socket'])
        assert os.path.getsize(info['serial_log']) > 0
        assert common_ports.is_listening(info['spice_port'])
        assert common_ports.is_listening(info['api_port'])

        from kerbside_tempest_plugin.ryll.client import ControlClient
        with ControlClient(info['control_socket']) as client:
            client.connect(timeout=20)
            assert 'screenshot' in client.supported_methods

        st = harness('status', '--workdir', workdir)
        assert st.returncode == 0
        status = json.loads(st.stdout)
        assert status['state'] == 'up'
        assert status['api']['result'] == 'ok'
        assert all(p['alive'] for p in status['processes']), status
        assert status['control_socket_exists']
    finally:
        down = harness('down', '--workdir', workdir)
    assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
    report = json.loads(down.stdout)
    assert report['leftover_pids'] == [] and report['busy_ports'] == []
    names = [s['name'] for s in report['stopped']]
    assert names[0].startswith('ryll') and names[-1] == 'mariadbd'
    assert names.index('kerbside-daemon') < names.index('gunicorn') < \
        names.index([n for n in names if n.startswith('qemu')][0])
    with open(os.path.join(workdir, 'processes.json')) as f:
        for r in json.load(f):
            assert not procs.pid_alive(r['pid'], r['start_ticks']), r
    wanted = (info['ports'].values() if 'ports' in info else
              [info['spice_port'], info['api_port']])
    assert common_ports.busy_ports(wanted) == []
    # down twice is harmless
    assert harness('down', '--workdir', workdir).returncode == 0

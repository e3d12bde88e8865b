"""`kerbside-harness console --provider nova` on the real single-box cloud.

The cloud (lane.openstack.OpenStackCloud) is the session's
(conftest.openstack_cloud), with the Sextant image uploaded; each test
starts the console non-interactively on the nova provider (credentials
from the cloud's workdir: `--os-cloud-workdir`), and a stdin script
walks the guest from Awaiting to Parked verb by verb, presses Enter and
judges the drain, read through Nova's console output API. The console
boots its own server and deletes it on exit; the session's teardown
leaves no process, port or libvirt domain. Needs what
test_openstack_lane.py needs (the OpenStack venv, bindep's `openstack`
profile) and ryll. Takes several minutes (TCG guests on a shared CPU).
"""

import json
import os
import subprocess
import sys
import time

import pytest

from kerbside_tempest_plugin import guest_images
from unit_tests.conftest import REPO_ROOT
from unit_tests.integration import console_walk

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.openstack]

WALK = console_walk.walk_script(90, drain_timeout=120)


@pytest.fixture(scope='module')
def cloud(openstack_cloud):
    """The session's cloud (conftest.openstack_cloud), with the Sextant
    image in Glance for the console to find.
    """
    image = guest_images.sextant_image(None)
    if image not in openstack_cloud.images:
        openstack_cloud.upload_image(image)
    return openstack_cloud


def console(cloud, route, lane_dir, timeout=900):
    script = '\n'.join(WALK) + '\n'
    t = time.monotonic()
    run = subprocess.run(
        [sys.executable, '-m', 'kerbside_tempest_plugin.cmd.harness',
         'console', '--provider', 'nova', '--route', route,
         '--os-cloud-workdir', cloud.workdir, '--workdir', lane_dir,
         '--boot-timeout', '600'],
        input=script, capture_output=True, text=True, timeout=timeout,
        cwd=str(REPO_ROOT))
    run.seconds = time.monotonic() - t
    return run


def check_walk(cloud, run, lane_dir):
    assert 'Traceback' not in run.stderr, run.stderr[-3000:]
    out = [json.loads(line) for line in run.stdout.splitlines()]
    assert out, run.stderr[-3000:]
    assert run.returncode == 0, (out[-1], run.stderr[-3000:])
    assert all(o['ok'] for o in out), out[-1]
    by_line = {o['line']: o for o in out}
    assert out[0]['verb'] == 'lane'
    first = by_line[1]['result']
    assert first['scene'] == 'awaiting' and first['frame_counter'] > 0
    parked = by_line[10]['result']
    assert parked['scene'] == 'parked'
    drained = by_line[12]['result']
    # The guest's own account, through Nova's console output API.
    assert drained['passed'], drained['checks']
    assert drained['complete'] is True
    assert drained['records'] > 0
    # No secret left through a result, the log or an artifact.
    password = open(cloud.secrets.file('admin-password')).read().strip()
    for text in (run.stdout, run.stderr):
        assert password not in text
        assert 'gAAAAA' not in text          # a Keystone fernet token
    for root, _, files in os.walk(lane_dir):
        for name in files:
            with open(os.path.join(root, name), 'rb') as f:
                data = f.read()
            assert password.encode() not in data, name
            assert b'gAAAAA' not in data, name
    # The console booted its own server and deleted it on exit.
    servers = cloud.admin.call('GET', 'compute', '/servers/detail')
    assert [s['id'] for s in servers['servers']] == [], servers
    assert 'lane torn down' in run.stderr
    # The figures for docs/plans/console-and-mcp.md (pytest -s shows them).
    print('console on nova: boot %.1f s, script %.1f s, drain via %s' % (
        out[0]['result']['boot_s'], run.seconds,
        'the local console.log' if 'the file its API reads' in run.stderr
        else "Nova's console output API"))
    return out


def test_console_walks_to_parked_on_nova_direct(cloud, tmp_path):
    lane_dir = str(tmp_path / 'lane')
    run = console(cloud, 'direct', lane_dir)
    out = check_walk(cloud, run, lane_dir)
    assert out[0]['result']['route'] == 'direct'


def test_console_walks_to_parked_on_nova_kerbside(cloud, tmp_path):
    if getattr(cloud, 'kerbside', None) is None:
        pytest.skip('the OpenStack lane runs no Kerbside in front yet')
    lane_dir = str(tmp_path / 'lane')
    run = console(cloud, 'kerbside', lane_dir)
    out = check_walk(cloud, run, lane_dir)
    assert out[0]['result']['route'] == 'kerbside'


def test_console_reports_a_bad_cloud_readably(cloud, tmp_path):
    # A wrong flavor: Nova's refusal, readable, and nothing left behind.
    run = subprocess.run(
        [sys.executable, '-m', 'kerbside_tempest_plugin.cmd.harness',
         'console', '--provider', 'nova', '--route', 'direct',
         '--os-cloud-workdir', cloud.workdir, '--flavor', 'no-such-flavor',
         '--workdir', str(tmp_path / 'lane')],
        input='status\n', capture_output=True, text=True, timeout=300,
        cwd=str(REPO_ROOT))
    assert run.returncode != 0
    assert 'Traceback' not in run.stderr, run.stderr[-3000:]
    text = run.stdout + run.stderr
    assert 'no-such-flavor' in text, text[-2000:]
    servers = cloud.admin.call('GET', 'compute', '/servers/detail')
    assert servers['servers'] == [], servers

"""The single-box OpenStack lane, for real: up, boot Sextant through Nova,
read its banner through Nova's console output, mint a spice-direct
console, resolve its token, connect ryll to the host and port Nova gave
and decode the guest's visual digest; delete the server; tear down and
check that no process, port, libvirt domain or temporary directory is
left.

Needs the OpenStack venv (`kerbside-openstack setup`) and the packages of
bindep.txt's `openstack` profile. Takes a few minutes (TCG guest, shared
CPU).
"""

import json
import os
import subprocess
import sys
import time

import pytest

from kerbside_tempest_plugin.common import ports as common_ports
from kerbside_tempest_plugin.common import vv as common_vv
from kerbside_tempest_plugin.common import waiting
from kerbside_tempest_plugin.digest import frame
from kerbside_tempest_plugin.lane.openstack import cloud as os_cloud
from kerbside_tempest_plugin.lane.openstack import compute
from kerbside_tempest_plugin.ryll import process as ryll_process
from kerbside_tempest_plugin.sextant import contract
from unit_tests.conftest import require_tools

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.openstack]


@pytest.fixture
def cloud(openstack_cloud):
    return openstack_cloud


def _settled_digest(client, ryll_dir, within=5, deadline_s=90):
    """Screenshots until one decodes with a matching framebuffer hash, as
    the scenario's quiet windows judge a still screen: a screenshot taken
    while the guest is still drawing (its first frames come fast after the
    banner) can pair one frame's digest with part of the next, so a match
    is due within `within` decoded screenshots. Returns (the matching
    analysis or None, the frame counters of the torn ones).
    """
    deadline = time.monotonic() + deadline_s
    torn = []
    n = 0
    while True:
        n += 1
        shot = client.screenshot('png')
        path = os.path.join(ryll_dir, 'screen-%d.png' % n)
        with open(path, 'wb') as f:
            f.write(shot.data)
        try:
            analysis = frame.analyse(path)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
            continue
        if analysis.framebuffer_hash_ok:
            return analysis, torn
        torn.append(analysis.digest.frame_counter)
        if len(torn) >= within or time.monotonic() > deadline:
            return None, torn
        time.sleep(0.3)


def test_sextant_boots_on_nova_with_a_spice_direct_console(cloud,
                                                           sextant_image):
    server = cloud.boot(str(sextant_image), timeout=600,
                        banner=contract.BANNER)
    try:
        _walk_the_console(cloud, server)
    finally:
        # Delete through Nova, also when the test failed (a leftover
        # domain would fail the next test on this shared cloud): the
        # domain is destroyed and undefined by Nova.
        cloud.delete(server['id'], timeout=180)
    assert os_cloud._list_domains(os_cloud.load_state(cloud.workdir)) == []


def _walk_the_console(cloud, server):
    assert server['status'] == 'ACTIVE'
    # The banner came through Nova's console output API (os-getConsoleOutput
    # reads the file virtlogd writes for the serial port).
    output = compute.console_output(cloud.admin, server['id'])
    assert contract.BANNER in output

    console = cloud.console(server['id'])
    assert console['remote_console']['type'] == 'spice-direct'
    assert console['remote_console']['protocol'] == 'spice'
    assert '?token=' in console['url']
    assert console['host'] == '127.0.0.1'
    lo, hi = cloud.layout.spice_range
    assert lo <= console['port'] <= hi
    assert lo <= console['tls_port'] <= hi
    assert console['connect_info']['instance_uuid'] == server['id']
    assert common_ports.is_listening(console['port'])
    assert common_ports.is_listening(console['tls_port'])

    # Nova sets no SPICE password for libvirt: ryll connects without a
    # ticket to what the token resolved to (its tls_port, verified with
    # the lane CA: require_secure makes qemu refuse plain channels), and
    # sees the guest's digest.
    ryll_dir = os.path.join(cloud.workdir, 'ryll')
    with open(cloud.tls.ca_cert) as f:
        ca = f.read()
    rp = ryll_process.RyllProcess(
        workdir=ryll_dir, vv_text=common_vv.direct_vv(
            console['host'], console['port'], '',
            tls_port=console['tls_port'], ca=ca))
    rp.start()
    try:
        rp.wait_for_socket(30)
        client = rp.connect()
        rp.wait_ready(client, timeout=90)
        analysis, torn = _settled_digest(client, ryll_dir)
        assert analysis is not None, (
            'no framebuffer hash matched in %d decoded screenshots (frames '
            '%s)' % (len(torn), torn))
        if torn:
            print('torn screenshots before the match: frames %s' % torn)
        assert analysis.digest.frame_counter > 0
    finally:
        rp.stop()

    mem = cloud.memory()
    assert mem['total_mib'] > 0
    print('cloud memory with one guest: %s MiB (%s)' % (
        mem['total_mib'], mem['by_process']))
    print('timings: %s' % cloud.info()['timings'])


def _registered(workdir):
    try:
        with open(os.path.join(workdir, 'processes.json')) as f:
            return [r['name'] for r in json.load(f)]
    except (OSError, ValueError):
        return []


def test_down_cleans_up_after_up_was_killed(tmp_path):
    """SIGKILL `kerbside-openstack up` once Keystone is starting (MariaDB,
    RabbitMQ, memcached and libvirt run); `down` must still stop all.
    """
    require_tools('mariadbd', 'libvirtd', 'epmd', 'memcached', 'unshare')
    workdir = str(tmp_path / 'cloud')
    log = open(tmp_path / 'up.log', 'wb')
    up = subprocess.Popen(
        [sys.executable, '-m', 'kerbside_tempest_plugin.cmd.openstack',
         'up', '--no-boot', '--workdir', workdir],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        waiting.wait_until(
            lambda: 'keystone' in _registered(workdir), 240,
            'the lane to start Keystone',
            seen=lambda: 'registered: %s; up %s' % (
                _registered(workdir),
                'running' if up.poll() is None else 'exited %s' % up.poll()),
            interval=0.5,
            abort=lambda: up.poll() is not None and 'up exited %s' %
            up.returncode)
    finally:
        up.kill()
        up.wait(30)
        log.close()
    assert os_cloud.cloud_pids(workdir), 'nothing ran after the crash'
    down = subprocess.run(
        [sys.executable, '-m', 'kerbside_tempest_plugin.cmd.openstack',
         'down', '--workdir', workdir], capture_output=True, text=True,
        timeout=300)
    assert down.returncode == 0, down.stderr[-2000:]
    report = json.loads(down.stdout)
    assert report['leftover_pids'] == []
    assert report['busy_ports'] == []
    assert os_cloud.cloud_pids(workdir) == []
    state = os_cloud.load_state(workdir)
    assert common_ports.busy_ports(state['ports'].values()) == []

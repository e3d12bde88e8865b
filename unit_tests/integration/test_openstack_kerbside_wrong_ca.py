"""Kerbside's route to a Nova hypervisor with the wrong CA: the `openstack`
source trusts a CA that did not sign libvirt's SPICE certificate.

Kerbside reads its source only at start, so the test starts a second
Kerbside 0.8.0 in front of the session's cloud (conftest.openstack_cloud):
its own database on the cloud's MariaDB, its own ports, work directory
and process registry, and `ca_cert` from a CA of its own. A Nova console
token for a Sextant server is redeemed there for a proxy .vv (Nova knows
nothing of the CA); then ryll connects through that proxy. The proxy must
refuse libvirt's certificate (UnknownIssuer in its log), ryll must exit
with the main channel dropped, and the harness must say so with ryll's
reason rather than wait out a deadline. Everything the second Kerbside
started is stopped and its ports are free afterwards; the cloud's own
Kerbside is untouched.
"""

import dataclasses
import os
import shutil
import time
import urllib.request

import pytest

from kerbside_tempest_plugin.common import ports as common_ports
from kerbside_tempest_plugin.common import rundir
from kerbside_tempest_plugin.common import secrets as common_secrets
from kerbside_tempest_plugin.common import tls as common_tls
from kerbside_tempest_plugin.common import vv as common_vv
from kerbside_tempest_plugin import guest_images
from kerbside_tempest_plugin.lane.openstack import compute
from kerbside_tempest_plugin.lane.openstack import kerbside as os_kerbside
from kerbside_tempest_plugin.lane import procs
from kerbside_tempest_plugin.ryll import errors as ryll_errors
from kerbside_tempest_plugin.ryll import process as ryll_process
from kerbside_tempest_plugin.sextant import contract
from unit_tests.integration import tls_leg

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.openstack]

KERBSIDE_PORTS = ('kerbside_api', 'kerbside_secure', 'kerbside_insecure',
                  'kerbside_metrics')
DATABASE = 'kerbside_wrong_ca'


def _second_kerbside(cloud, workdir, run_dir, ca_file):
    """A CloudKerbside for `cloud` in `workdir` whose source trusts
    `ca_file`; returns (kerbside, registry).
    """
    layout = dataclasses.replace(
        cloud.layout, workdir=workdir, run_dir=run_dir,
        ports=dict(cloud.layout.ports, **dict(zip(
            KERBSIDE_PORTS, common_ports.free_ports(len(KERBSIDE_PORTS))))))
    cloud.db.create_databases([DATABASE])
    secrets = common_secrets.SecretStore(os.path.join(workdir, 'secrets'),
                                         cloud.redactor)
    registry = procs.ProcessRegistry(os.path.join(workdir, 'processes.json'),
                                     cloud.redactor)
    os.makedirs(layout.log_dir, exist_ok=True)
    sql_url = '%s/%s' % (cloud.db.sql_url.rsplit('/', 1)[0], DATABASE)
    kb = os_kerbside.CloudKerbside(cloud.kerbside_venv, layout, secrets,
                                   registry, cloud.tls, sql_url,
                                   hypervisor_ca=ca_file)
    return kb, registry


def _vv(url):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=30) as r:
        return r.read().decode()


def test_kerbside_with_the_wrong_hypervisor_ca_fails_readably(
        openstack_cloud, tmp_path):
    c = openstack_cloud
    other = common_tls.make_self_contained_x509(str(tmp_path / 'other-ca'))
    other_ca = os.path.join(other, 'ca-cert.pem')
    workdir = str(tmp_path / 'kerbside-2')
    run_dir = rundir.make()
    kb, registry = _second_kerbside(c, workdir, run_dir, other_ca)
    with open(other_ca) as f:
        other_pem = f.read().strip()
    server = rp = None
    try:
        kb.start(timeout=120)
        with open(kb.sources_path) as f:
            sources = f.read()
        assert other_pem.splitlines()[1] in sources
        with open(c.tls.ca_cert) as f:
            assert f.read().strip().splitlines()[1] not in sources
        server = c.boot(guest_images.sextant_image(None),
                        banner=contract.BANNER)['id']
        remote = compute.spice_direct(c.admin, server)
        token = compute.token_of(remote['url'])
        c.redactor.add(token)
        text = _vv('%s/nova-console.vv?token=%s' % (kb.api_url, token))
        fields = common_vv.parse_vv(text)
        c.redactor.add(fields['password'])
        assert int(fields['tls-port']) == kb.secure_port
        rp = ryll_process.RyllProcess(vv_text=text,
                                      workdir=str(tmp_path / 'ryll'))
        t0 = time.monotonic()
        # ryll may be gone before its control socket is seen (start says
        # so) or just after (connect says so).
        with pytest.raises(ryll_errors.RyllError) as raised:
            rp.start()
            with rp.connect(timeout=20) as client:
                rp.wait_ready(client, timeout=30)
        elapsed = time.monotonic() - t0
        message = str(raised.value)
        print('ryll through Kerbside with the wrong hypervisor CA, after '
              '%.2f s: %s' % (elapsed, c.redactor.redact(message)[:600]))
        assert 'exited with status 1' in message, message
        assert 'main channel dropped before SessionInitialized' in message
        assert elapsed < 15, elapsed
        with open(os.path.join(kb.log_dir, 'kerbside-daemon.out'),
                  errors='replace') as f:
            log = f.read()
    finally:
        if rp is not None:
            rp.stop()
        stopped = registry.stop_all(
            timeouts={'kerbside-daemon': 25, 'gunicorn': 15})
        shutil.rmtree(run_dir, ignore_errors=True)
        if server is not None:
            c.delete(server, timeout=180)
    assert registry.leftovers() == [], stopped
    deadline = time.monotonic() + 10
    while common_ports.busy_ports(kb.ports) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert common_ports.busy_ports(kb.ports) == []
    # The proxy tried libvirt's plain port, was told TLS, and refused the
    # certificate on the TLS port; no session was handed to the relay.
    assert tls_leg.RETRY_LINE in log, log[-2000:]
    assert tls_leg.SUCCESS_LINE not in log, log[-2000:]
    failed = [ln for ln in log.splitlines() if tls_leg.FAILED_LINE in ln]
    assert failed, log[-2000:]
    assert 'invalid peer certificate: UnknownIssuer' in failed[0]
    # The cloud's own Kerbside still serves consoles.
    assert c.kerbside.api_ok()

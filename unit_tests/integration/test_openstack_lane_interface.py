"""lane.openstack.lane.OpenStackLane: the Lane interface over the
single-box cloud (the session's, conftest.openstack_cloud).

- The direct route: a canonical walk, judged by both oracles, with ryll
  on the tls_port Nova's spice-direct token resolves to, verified with
  the lane CA (the plain port refuses: `[spice] require_secure`).
- The same route with a CA that did not sign libvirt's certificate: ryll
  refuses the hypervisor, and the harness says so at once.
- The lane leaves a shared cloud running and its own guests deleted.

The kerbside route through OpenStackLane is walked by
test_openstack_hypervisor_tls.py.
"""

import os
import time

import pytest

from kerbside_tempest_plugin.common import tls as common_tls
from kerbside_tempest_plugin.lane.openstack import cloud as os_cloud
from kerbside_tempest_plugin.lane.openstack import lane as os_lane
from kerbside_tempest_plugin.ryll import errors as ryll_errors
from kerbside_tempest_plugin.sextant import contract

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.openstack]


def test_direct_route_canonical_walk(openstack_cloud, tmp_path):
    from kerbside_tempest_plugin.scenario import runner
    c = openstack_cloud
    lane = os_lane.OpenStackLane(str(tmp_path / 'lane'), route='direct',
                                 cloud=c)
    try:
        lane.up()
        assert lane.provider.hypervisor_ca_file == c.tls.ca_cert
        result = runner.run_scenario(
            lane, 'canonical', 'direct', None, str(tmp_path / 'art'),
            boot_timeout=600, log=lambda m: None)
        assert result.passed, result.failure_message()
        assert result.verdicts()['framebuffer_hash'] is True
        server = lane.guests[-1].server_id
    finally:
        report = lane.down()
    assert report['problems'] == [], report
    assert 'cloud' not in report
    # The lane deleted its server; the shared cloud still answers.
    servers = c.admin.call('GET', 'compute', '/servers')['servers']
    assert server not in [s['id'] for s in servers]
    assert os_cloud._list_domains(os_cloud.load_state(c.workdir)) == []
    print('phases: %s' % result.phases)


def test_direct_route_with_the_wrong_ca_fails_readably(
        openstack_cloud, tmp_path):
    other = common_tls.make_self_contained_x509(str(tmp_path / 'other-ca'))
    lane = os_lane.OpenStackLane(
        str(tmp_path / 'lane'), route='direct', cloud=openstack_cloud,
        hypervisor_ca_file=os.path.join(other, 'ca-cert.pem'))
    try:
        lane.up()
        lane.boot_guest(None, banner=contract.BANNER)
        t0 = time.monotonic()
        # ryll may be gone before its control socket is even seen
        # (start_ryll says so) or just after (connect says so).
        with pytest.raises(ryll_errors.RyllError) as raised:
            rp = lane.start_ryll()
            with rp.connect(timeout=20) as client:
                rp.wait_ready(client, timeout=30)
        elapsed = time.monotonic() - t0
        message = str(raised.value)
        print('ryll with the wrong CA, after %.2f s: %s' % (
            elapsed, message[:600]))
        # ryll refuses libvirt's certificate and exits; the harness says
        # so at once (not at the 20 s deadline), with ryll's own reason.
        assert 'exited with status 1' in message
        assert 'invalid peer certificate: UnknownIssuer' in message
        assert elapsed < 10, elapsed
    finally:
        report = lane.down()
    assert report['problems'] == [], report

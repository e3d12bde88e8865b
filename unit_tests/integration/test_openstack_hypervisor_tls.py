"""The OpenStack lane's hypervisor leg over TLS (docs/contracts/kerbside.md
§15): libvirt's SPICE TLS with the lane CA and Nova's `[spice]
require_secure` (qemu gets a `tls-channel=` per channel and refuses them
in plain), the `openstack` source's `ca_cert` for the proxy to verify
libvirt's certificate.

A canonical walk through Kerbside's Nova flow must pass its oracles,
while a loopback capture of every SPICE port libvirt may hand out shows
the console's plain port carrying only the refused link handshakes and
its tls_port the TLS handshakes and the console; the proxy's log says
the same. Needs what test_openstack_lane.py needs, plus tshark and
dumpcap. Uses the session's cloud (conftest.openstack_cloud) through
lane.openstack.lane.OpenStackLane; the walk takes about a minute.
"""

import os
import re

import pytest

from kerbside_tempest_plugin.lane.openstack import lane as os_lane
from unit_tests.conftest import require_tools
from unit_tests.integration import tls_leg

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.openstack]

CONNECT = re.compile(r'Connecting to 127\.0\.0\.1:(\d+) \(TLS: (true|false)\)')


def _backend_ports(log):
    """{'false': {plain ports}, 'true': {TLS ports}} the proxy dialled."""
    seen = {'false': set(), 'true': set()}
    for port, tls in CONNECT.findall(log):
        seen[tls].add(int(port))
    return seen


def test_kerbside_reaches_libvirt_over_tls(openstack_cloud, tmp_path):
    require_tools('tshark', 'dumpcap')
    from kerbside_tempest_plugin.scenario import runner
    c = openstack_cloud
    with open(os.path.join(c.layout.conf_dir('nova'), 'nova.conf')) as f:
        assert 'require_secure = true' in f.read()
    with open(c.kerbside.sources_path) as f:
        assert '  ca_cert: |\n    -----BEGIN CERTIFICATE-----' in f.read()
    daemon_log = os.path.join(c.kerbside.log_dir, 'kerbside-daemon.out')
    # The cloud is shared by the session: read only what this walk logs.
    offset = os.path.getsize(daemon_log)
    lane = os_lane.OpenStackLane(str(tmp_path / 'lane'), route='kerbside',
                                 cloud=c)
    try:
        lane.up()
        lo, hi = c.layout.spice_range
        ports = list(range(lo, hi + 1))
        cap = tls_leg.Capture(str(tmp_path / 'libvirt-ports.pcap'), ports)
        with cap:
            result = runner.run_scenario(
                lane, 'canonical', 'kerbside', None,
                str(tmp_path / 'art'), boot_timeout=600,
                log=lambda m: None)
        assert result.passed, result.failure_message()
        assert result.verdicts()['framebuffer_hash'] is True
        with open(daemon_log, errors='replace') as f:
            f.seek(offset)
            log = f.read()
    finally:
        report = lane.down()
    assert report['problems'] == [], report
    assert 'cloud' not in report, 'a shared cloud was torn down'

    dialled = _backend_ports(log)
    assert len(dialled['false']) == len(dialled['true']) == 1, dialled
    plain, tls = dialled['false'].pop(), dialled['true'].pop()
    assert plain != tls and {plain, tls} <= set(ports), (plain, tls)
    tls_leg.assert_tls_leg(log, cap, plain, tls)
    # Nothing else in libvirt's SPICE range carried a byte.
    seen = cap.per_port(tls)
    assert all(seen[p]['conns'] == 0 for p in ports
               if p not in (plain, tls)), seen
    t, p = seen[tls], seen[plain]
    print('hypervisor leg: plain port %d: %d conns, %d bytes; tls port %d: '
          '%d conns, %d handshakes, %d bytes, %d app records' % (
              plain, p['conns'], p['bytes'], tls, t['conns'],
              t['server_hellos'], t['bytes'], t['app_records']))
    print('phases: %s' % result.phases)

"""The Kerbside route's hypervisor leg over TLS (docs/contracts/kerbside.md
§15).

The lane's qemu refuses plain channels and offers a TLS port with a
certificate from the lane CA; the static source lists it as `secure_port`
with that CA and qemu's subject. A whole canonical walk through the proxy
must pass its oracles, while a loopback capture of qemu's two ports (the
proof that does not rely on Kerbside's own words) shows the plain port
carrying only the refused link handshakes and the TLS port carrying
the handshakes and the console; the proxy's log and /metrics say the same.
With a CA that did not sign qemu's certificate the console fails, and
each side says why.
"""

import os

import pytest

from kerbside_tempest_plugin.common import tls as common_tls
from kerbside_tempest_plugin.lane import lane as lane_mod
from kerbside_tempest_plugin.ryll import errors as ryll_errors
from unit_tests.conftest import require_tools
from unit_tests.integration import tls_leg

pytestmark = pytest.mark.integration


def test_kerbside_route_hypervisor_leg_is_tls(tmp_path):
    require_tools('qemu-system-x86_64', 'qemu-img', 'openssl', 'ryll',
                  'mariadbd', 'tshark', 'dumpcap')
    from kerbside_tempest_plugin import guest_images
    from kerbside_tempest_plugin.scenario import runner
    image = guest_images.sextant_image()
    lane = lane_mod.Lane(str(tmp_path / 'w'), route='kerbside')
    try:
        lane.up()
        plain, tls = lane.ports['guest_spice'], lane.ports['guest_spice_tls']
        with open(lane.kerbside.sources_path) as f:
            sources = f.read()
        assert 'secure_port: %d' % tls in sources
        assert 'host_subject: "CN=qemu-hv"' in sources
        assert '  ca_cert: |\n    -----BEGIN CERTIFICATE-----' in sources
        cap = tls_leg.Capture(str(tmp_path / 'qemu-ports.pcap'),
                              [plain, tls])
        with cap:
            result = runner.run_scenario(
                lane, 'canonical', 'kerbside', image,
                str(tmp_path / 'art'), log=lambda m: None)
        assert result.passed, result.failure_message()
        # Pixels crossed the TLS leg bit-exactly: the quiescent screens
        # matched early (a capture may straddle a redraw, checks.py).
        assert result.verdicts()['framebuffer_hash'] is True
        assert result.stats['fb_matched'] > 0
        argv = ' '.join(lane.guest.argv)
        assert 'tls-port=%d' % tls in argv and 'tls-channel=default' in argv

        metrics = lane.kerbside.metrics()
        assert metrics['kerbside_proxy_authorized_total'] >= len(
            tls_leg.CHANNELS)
        log = tls_leg.proxy_log(lane)
    finally:
        report = lane.down()
    assert report['leftover_pids'] == [] and report['busy_ports'] == []

    tls_leg.assert_tls_leg(log, cap, plain, tls)


def test_wrong_hypervisor_ca_fails_readably(tmp_path):
    """Kerbside trusts a CA that did not sign qemu's certificate: the
    proxy refuses qemu (UnknownIssuer), ryll sees its main channel closed
    right after authenticating and exits 1, and the harness says so at
    once with ryll's log.
    """
    require_tools('qemu-system-x86_64', 'qemu-img', 'openssl', 'ryll',
                  'mariadbd')
    from kerbside_tempest_plugin import guest_images
    image = guest_images.sextant_image()
    other = common_tls.make_self_contained_x509(str(tmp_path / 'other-ca'))
    lane = lane_mod.Lane(str(tmp_path / 'w'), route='kerbside',
                         hypervisor_ca=os.path.join(other, 'ca-cert.pem'))
    try:
        lane.up()
        lane.boot_guest(image, banner=lane_mod.SEXTANT_BANNER
                        if image else 'Shell> ')
        rp = lane.start_ryll()
        with pytest.raises(ryll_errors.RyllConnectionClosed) as raised:
            with rp.connect(timeout=20) as client:
                rp.wait_ready(client, timeout=30)
        message = str(raised.value)
        assert 'exited with status 1' in message
        assert 'main channel dropped before SessionInitialized' in message
        log = tls_leg.proxy_log(lane)
    finally:
        report = lane.down()
    assert report['leftover_pids'] == [] and report['busy_ports'] == []
    assert tls_leg.RETRY_LINE in log and tls_leg.SUCCESS_LINE not in log
    failed = [ln for ln in log.splitlines() if tls_leg.FAILED_LINE in ln]
    assert failed, log[-2000:]
    assert 'invalid peer certificate: UnknownIssuer' in failed[0]

"""The direct route over qemu's own SPICE TLS port (generated x509 material),
on a lane without Kerbside."""


import pytest

from kerbside_tempest_plugin.common import ports as common_ports
from kerbside_tempest_plugin.common import vv as common_vv
from kerbside_tempest_plugin.lane import lane as lane_mod
from unit_tests.conftest import require_tools

pytestmark = pytest.mark.integration


def test_direct_route_over_qemu_tls(tmp_path):
    require_tools('qemu-system-x86_64', 'qemu-img', 'openssl', 'ryll')
    from kerbside_tempest_plugin import guest_images
    image = guest_images.sextant_image()
    lane = lane_mod.Lane(str(tmp_path / 'w'), route='direct',
                         kerbside=False, guest_tls=True)
    try:
        lane.up()
        guest = lane.boot_guest(
            image, banner=lane_mod.SEXTANT_BANNER if image else 'Shell> ')
        assert guest.tls_port and common_ports.is_listening(guest.tls_port)
        fields = common_vv.parse_vv(guest.console_vv())
        assert fields['tls-port'] == str(guest.tls_port)
        assert fields['host-subject'] == 'CN=qemu-hv'
        assert fields['ca'].startswith('-----BEGIN CERTIFICATE-----')
        route = guest.console_route()
        assert route.kind == 'direct' and route.tls_port == guest.tls_port
        rp = lane.start_ryll()
        with rp.connect(timeout=20) as client:
            status = rp.wait_ready(client, timeout=60)
            assert status['surfaces']
        with open(rp.stdout_path) as f:
            log = f.read()
        assert '127.0.0.1:%d (TLS: true)' % guest.tls_port in log
        shot = guest.screendump(str(tmp_path / 'qemu-screen.png'))
        with open(shot, 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    finally:
        report = lane.down()
    assert report['leftover_pids'] == [] and report['busy_ports'] == []

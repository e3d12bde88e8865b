"""ProviderLane: ryll on a cloud guest's console, with a fake provider and
the stand-in ryll binary (no cloud, no qemu)."""

import os

import pytest

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.lane import provider_lane
from kerbside_tempest_plugin.providers import base

SECRET = 'console-token-0123456789abcdef'


class FakeGuest(base.Guest):

    def __init__(self, name, artifact_dir, serial_text):
        self.name = name
        self.artifact_dir = artifact_dir
        os.makedirs(artifact_dir, exist_ok=True)
        path = os.path.join(artifact_dir, 'serial.log')
        with open(path, 'w') as f:
            f.write(serial_text)
        self.serial = base.FileSerialSource(path, running=self.is_running)
        self.running = True
        self.torn_down = 0
        self.vv_routes = []

    def console_route(self, route=None):
        return base.ConsoleRoute(kind=route or 'kerbside', host='127.0.0.1',
                                 port=1)

    def console_vv(self, route=None):
        self.vv_routes.append(route)
        return ('[virt-viewer]\ntype=spice\nhost=127.0.0.1\nport=1\n'
                'password=%s\n' % SECRET)

    def is_running(self):
        return self.running

    def teardown(self):
        self.running = False
        self.torn_down += 1


class FakeProvider(base.GuestProvider):
    name = 'fake'

    def __init__(self, serial_text='Hello from Uncalibrated Sextant\r\n'):
        self.serial_text = serial_text
        self.booted = []
        self.cleaned = 0

    def boot(self, image, name, artifact_dir):
        guest = FakeGuest(name, artifact_dir, self.serial_text)
        self.booted.append((image, guest))
        return guest

    def cleanup(self):
        self.cleaned += 1


def test_boot_waits_for_the_banner_and_replaces_the_previous_guest(
        tmp_path):
    provider = FakeProvider()
    lane = provider_lane.ProviderLane(provider, str(tmp_path / 'lane'))
    first = lane.boot_guest('img', banner='Hello from Uncalibrated')
    assert first.boot_seconds >= 0
    second = lane.boot_guest('img', banner='Hello from Uncalibrated')
    assert first.torn_down == 1 and second.torn_down == 0
    report = lane.down()
    assert report == {'guests': 2, 'problems': []}
    assert second.torn_down == 1 and provider.cleaned == 1


def test_a_missing_banner_is_a_timeout_that_shows_the_serial_tail(tmp_path):
    lane = provider_lane.ProviderLane(
        FakeProvider(serial_text='BdsDxe: loading Boot0001\r\n'),
        str(tmp_path / 'lane'))
    with pytest.raises(errors.HarnessTimeout) as e:
        lane.boot_guest('img', banner='Hello from Uncalibrated', timeout=0.5)
    assert 'BdsDxe: loading Boot0001' in str(e.value)
    lane.down()


def test_start_ryll_uses_a_fresh_vv_and_keeps_no_secret(
        tmp_path, fake_binary):
    binary, record = fake_binary
    lane = provider_lane.ProviderLane(
        FakeProvider(), str(tmp_path / 'lane'), route='kerbside',
        ryll_binary=binary)
    guest = lane.boot_guest('img')
    rp = lane.start_ryll(timeout=10)
    try:
        assert os.path.exists(rp.socket_path)
        client = rp.connect(timeout=10)
        assert client.status()['spice_connected'] is True
        client.close()
    finally:
        lane.down()
    assert guest.vv_routes == ['kerbside']
    assert rp.returncode is not None       # stopped by down()
    assert lane.redactor.redact('x %s y' % SECRET) == 'x <redacted> y'
    for root, _, files in os.walk(str(tmp_path / 'lane')):
        for name in files:
            with open(os.path.join(root, name), 'rb') as f:
                assert SECRET.encode() not in f.read(), name

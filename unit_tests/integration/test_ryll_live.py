"""The ryll client and runner against the real PyPI ryll and a real qemu.

The guest is OVMF with no disk: it drops to the UEFI shell, which echoes
typed keys on the screen and on the serial port. TCG only (OVMF dies under
the nested KVM here), 128 MiB, loopback SPICE on a free port. Two qemu boots
in all: an unticketed one shared by most tests (ryll --direct), and a
ticketed one reached through a hand-written 0600 .vv, which the last test
kills to watch the client see EOF and ryll exit 0.
"""

import os
import secrets
import signal
import struct
import time

import pytest

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.providers import direct_qemu
from kerbside_tempest_plugin.ryll import client as rc
from kerbside_tempest_plugin.ryll import process as rp
from kerbside_tempest_plugin.sextant import keys
from unit_tests.conftest import require_tools
from unit_tests.integration.conftest import QemuGuest

pytestmark = pytest.mark.integration


def boot_qemu(workdir, ticket=None):
    """A disk-less OVMF guest with SPICE on loopback (128 MiB, TCG),
    booted by the direct-qemu provider (the one launcher): unticketed, or
    ticketed with `ticket` (the provider puts it in a 0600 file, not
    argv).
    """
    return QemuGuest(None, workdir, name='ryll-live', memory_mb=128,
                     spice=True, ticketing=bool(ticket), ticket=ticket)


@pytest.fixture(scope='module')
def host_tools():
    require_tools('qemu-system-x86_64')
    rp.find_ryll('ryll')
    try:
        direct_qemu.find_ovmf()
    except errors.ProviderError as e:
        pytest.fail('%s (apt-get install ovmf)' % e)


@pytest.fixture(scope='module')
def guest(host_tools, tmp_path_factory):
    q = boot_qemu(str(tmp_path_factory.mktemp('qemu')))
    yield q
    q.kill()
    assert q.proc.poll() is not None


@pytest.fixture(scope='module')
def session(guest, tmp_path_factory):
    proc = rp.RyllProcess(workdir=str(tmp_path_factory.mktemp('ryll')),
                          direct='127.0.0.1:%d' % guest.spice_port)
    proc.start()
    client = None
    try:
        client = proc.connect(timeout=10, resolve_key=keys.resolve)
        proc.wait_ready(client, timeout=60)
        yield proc, client
    finally:
        if client is not None:
            client.close()
        proc.stop()
        assert proc.returncode is not None
        assert not os.path.exists(proc.socket_path)


def png_size(data):
    assert data[:8] == rc.PNG_MAGIC
    assert data[12:16] == b'IHDR'
    return struct.unpack('>II', data[16:24])


def test_hello_and_capabilities(session):
    _, client = session
    assert client.protocol_version.split('.')[0] == '1'
    assert client.server_name == 'ryll'
    for method in ('status', 'send_key', 'paste', 'screenshot',
                   'subscribe'):
        assert method in client.supported_methods
    for event in ('surface_drawn', 'paste_completed', 'paste_failed',
                  'dropped'):
        assert event in client.supported_events
    result = client.subscribe(['surface_drawn', 'dropped',
                               'digest_updated'])
    assert 'surface_drawn' in result
    assert result.dropped == ['digest_updated']   # not in the PyPI build


def test_status_and_screenshot(session):
    _, client = session
    status = client.status()
    assert status['spice_connected']
    surface = status['surfaces'][0]
    shot = client.screenshot()
    assert png_size(shot.png) == (shot.width, shot.height)
    assert (shot.width, shot.height) == (surface['width'],
                                         surface['height'])
    assert client.stats()['display']['messages_received'] > 0


def test_keys_and_paste_reach_the_guest(session, guest):
    _, client = session
    guest.wait_serial('Shell>', 120)
    client.subscribe(['surface_drawn'])
    client.drain_events()
    sent = client.send_key('v')
    drawn = client.wait_for_event('surface_drawn', 10, what='echo of v')
    print('send_key -> surface_drawn: %.1f ms'
          % ((drawn.received - sent) * 1000))
    assert client.paste('er\n', char_delay_ms=20) == 3
    # `ver` ran: the shell printed its banner a second time.
    guest.wait_serial('UEFI Interactive Shell', count=2, timeout=30)


def test_paste_failed_is_typed(session):
    _, client = session
    with pytest.raises(rc.RyllPasteFailed, match='unrepresentable'):
        client.paste('caf\u00e9', timeout=10)


def test_second_client_gets_busy(session):
    proc, client = session
    other = rc.ControlClient(proc.socket_path)
    with pytest.raises(rc.RyllTimeout, match='busy'):
        other.connect(timeout=0.5)
    other.connect(timeout=2, hello=False)
    with pytest.raises(rc.RyllBusy):
        other.status()
    other.close()
    assert client.status()['spice_connected']


def test_close_frees_the_slot(session):
    proc, client = session
    client.close()
    start = time.monotonic()
    again = rc.ControlClient(proc.socket_path)
    again.connect(timeout=5)
    print('reconnect after close: %.1f ms'
          % ((time.monotonic() - start) * 1000))
    assert again.status()['spice_connected']
    again.close()


def test_round_trip_and_screenshot_timing(session):
    proc, _ = session
    with rc.ControlClient(proc.socket_path) as client:
        client.connect(timeout=5)
        rtts = []
        for _ in range(50):
            start = time.perf_counter()
            client.status()
            rtts.append(time.perf_counter() - start)
        shots = sorted(client.screenshot().elapsed for _ in range(10))
    rtts.sort()
    print('status round trip: median %.3f ms, max %.3f ms; png screenshot '
          'median %.1f ms' % (rtts[25] * 1000, rtts[-1] * 1000,
                              shots[5] * 1000))
    assert rtts[25] < 0.05


def test_ticketed_vv_then_qemu_killed(host_tools, tmp_path):
    ticket = secrets.token_urlsafe(12)
    guest = boot_qemu(str(tmp_path / 'qemu'), ticket=ticket)
    vv = ('[virt-viewer]\ntype=spice\nhost=127.0.0.1\nport=%d\n'
          'password=%s\ndelete-this-file=1\n' % (guest.spice_port, ticket))
    proc = rp.RyllProcess(workdir=str(tmp_path / 'ryll'), vv_text=vv)
    try:
        proc.start()
        with proc.connect(timeout=10) as client:
            proc.wait_ready(client, timeout=60, settle=0)
            assert png_size(client.screenshot().png)
            # ryll exits 0 when the server goes away from an established
            # session; if the inputs channel is still in its link
            # handshake (it connects 50-100 ms after the surface) ryll
            # reports 'Connection reset by peer' and exits 1. Kill qemu
            # only once every channel is up.
            assert proc.wait_for_log(rp.INPUTS_READY_LOG, 10), \
                proc.log_tail()
            guest.proc.send_signal(signal.SIGTERM)
            killed = time.monotonic()
            with pytest.raises(rc.RyllConnectionClosed):
                client.wait_for_event('latency', 10, what='EOF')
            eof_ms = (time.monotonic() - killed) * 1000
        guest.proc.wait(10)
        proc._proc.wait(5)
        print('qemu SIGTERM -> control EOF %.1f ms' % eof_ms)
        assert eof_ms < 2000
        assert proc.returncode == 0
    finally:
        proc.stop()
        guest.kill()
    assert not os.path.exists(proc.socket_path)
    assert not os.path.exists(proc.private_dir)
    assert guest.proc.poll() is not None
    for root, _, files in os.walk(proc.workdir):
        for name in files:
            with open(os.path.join(root, name), 'rb') as f:
                assert ticket.encode() not in f.read(), name

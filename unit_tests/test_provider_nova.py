"""NovaProvider end to end against the fake compute API and fake Kerbside,
through tempest's real ServersClient.
"""

import logging
import os
import threading
import time

import pytest

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import vv as common_vv
from kerbside_tempest_plugin.providers import cloud
from kerbside_tempest_plugin.providers import nova
from unit_tests import fake_clouds

BANNER = 'Hello from Uncalibrated Sextant'
FAST = dict(poll_interval=0.01, serial_interval=0.01,
            console_retry_interval=0.01, boot_timeout=10,
            delete_timeout=10, console_timeout=10)


@pytest.fixture
def clouds():
    fake_nova = fake_clouds.FakeNova().start()
    kerbside = fake_clouds.FakeKerbside(nova=fake_nova).start()
    fake_nova.kerbside_url = kerbside.url
    yield fake_nova, kerbside
    kerbside.stop()
    fake_nova.stop()


def make_provider(fake_nova, admin=False, **kw):
    values = dict(FAST, image_ref='img-sextant', flavor_ref='flv-small')
    values.update(kw)
    return nova.NovaProvider(
        fake_clouds.servers_client(fake_nova),
        fake_clouds.servers_client(fake_nova, fake_clouds.NOVA_ADMIN_TOKEN)
        if admin else None, **values)


def microversion():
    from tempest.lib.services.compute import base_compute_client as bcc
    return bcc.COMPUTE_MICROVERSION


def test_boot_console_serial_teardown(clouds, tmp_path):
    fake_nova, kerbside = clouds
    provider = make_provider(fake_nova, network='net-1')
    guest = provider.boot(None, 'sextant-1', str(tmp_path / 'a'))
    assert guest.status() == 'ACTIVE'
    server = fake_nova.servers[guest.server_id]
    assert server['spec']['imageRef'] == 'img-sextant'
    assert server['spec']['flavorRef'] == 'flv-small'
    assert server['spec']['networks'] == [{'uuid': 'net-1'}]

    text = guest.console_vv()
    fields = common_vv.parse_vv(text)
    assert text.startswith('[virt-viewer]')
    assert fields['password'] == kerbside.served[-1][1]
    assert kerbside.served[-1][0] == guest.server_id
    consoles = fake_nova.requests_to('POST', r'/remote-consoles$')
    assert len(consoles) == 1
    assert consoles[0]['headers']['x-openstack-nova-api-version'] == '2.99'
    assert microversion() is None          # restored after the call
    # Other calls go at the test's microversion, not 2.99.
    shows = fake_nova.requests_to('GET', r'/servers/[^/]+$')
    assert all('x-openstack-nova-api-version' not in r['headers']
               for r in shows)
    route = guest.console_route()
    assert (route.kind, route.host, route.port, route.tls_port) == (
        'kerbside', '127.0.0.1', 5901, 5900)
    assert route.uuid == guest.server_id

    def write_serial():
        time.sleep(0.1)
        fake_nova.set_console(guest.server_id, 'OVMF\r\n\x1b[0m%s\r\n'
                              % BANNER)

    t = threading.Thread(target=write_serial)
    t.start()
    match = guest.serial.wait_for(BANNER, 5)
    t.join()
    assert match.group(0) == BANNER
    # Nova drops control characters: ESC and CR do not arrive.
    assert '\x1b' not in guest.serial.read()

    guest.teardown()
    # Deleted, not waited for: the provider's cleanup() waits.
    assert not fake_nova.servers[guest.server_id]['gone']
    assert len(fake_nova.requests_to('DELETE', r'/servers/')) == 1
    guest.teardown()                       # idempotent
    assert len(fake_nova.requests_to('DELETE', r'/servers/')) == 1
    provider.cleanup()
    assert fake_nova.servers[guest.server_id]['gone'] and guest.gone
    assert len(fake_nova.requests_to('DELETE', r'/servers/')) == 1
    with open(os.path.join(guest.artifact_dir, 'serial.log')) as f:
        assert BANNER in f.read()
    assert os.path.exists(os.path.join(guest.artifact_dir, 'server.json'))


def test_server_error_names_the_fault_and_deletes(clouds, tmp_path):
    fake_nova, _ = clouds
    fake_nova.fault = {'code': 500, 'created': '2026-11-25T21:00:02Z',
                       'message': 'No valid host was found. There are not '
                                  'enough hosts available.'}
    provider = make_provider(fake_nova)
    with pytest.raises(errors.ProviderError) as e:
        provider.boot('img-other', 'sextant-err', str(tmp_path))
    msg = str(e.value)
    assert 'went to ERROR while waiting to become ACTIVE' in msg
    assert 'No valid host was found' in msg and 'code 500' in msg
    (server,) = fake_nova.servers.values()
    assert server['image'] == 'img-other'
    # A failed boot deletes its server; cleanup() sees it gone.
    assert fake_nova.requests_to('DELETE', r'/servers/')
    provider.cleanup()
    assert server['gone']


def test_boot_deadline_says_what_was_seen(clouds, tmp_path):
    fake_nova, _ = clouds
    fake_nova.build_polls = 10 ** 6
    provider = make_provider(fake_nova, boot_timeout=0.3)
    with pytest.raises(errors.HarnessTimeout) as e:
        provider.boot(None, 'sextant-slow', str(tmp_path))
    msg = str(e.value)
    assert 'timed out after 0.3 s waiting for Nova server sextant-slow' \
        in msg
    assert 'to become ACTIVE' in msg and 'seen: status BUILD' in msg


def test_spice_direct_needs_microversion_2_99(clouds, tmp_path):
    fake_nova, kerbside = clouds
    provider = make_provider(fake_nova, microversion='2.98')
    guest = provider.boot(None, 'sextant-old', str(tmp_path))
    with pytest.raises(errors.ProviderError) as e:
        guest.console_vv()
    msg = str(e.value)
    assert 'refused a spice-direct console' in msg
    assert 'microversion 2.98' in msg and 'Epoxy' in msg
    assert "'spice-direct' is not one of" in msg
    assert not kerbside.requests
    assert microversion() is None
    guest.teardown()


def test_kerbside_404_is_retried_with_fresh_tokens(clouds, tmp_path):
    fake_nova, kerbside = clouds
    kerbside.unscraped = 2
    guest = make_provider(fake_nova).boot(None, 'sextant-404',
                                          str(tmp_path))
    text = guest.console_vv()
    assert 'password=' in text
    assert len(kerbside.requests) == 3
    tokens = [r['query']['token'][0] for r in kerbside.requests]
    assert len(set(tokens)) == 3           # never a replayed token
    assert len(fake_nova.requests_to('POST', r'/remote-consoles$')) == 3
    guest.teardown()


def test_console_deadline_message(clouds, tmp_path):
    fake_nova, kerbside = clouds
    kerbside.unscraped = 10 ** 6
    guest = make_provider(fake_nova, console_timeout=0.2).boot(
        None, 'sextant-never', str(tmp_path))
    with pytest.raises(errors.HarnessTimeout) as e:
        guest.console_vv()
    msg = str(e.value)
    assert 'waiting for Kerbside to serve the console .vv for Nova ' \
        'server sextant-never' in msg
    assert 'last HTTP 404' in msg and 'console not found' in msg
    assert '/nova-console.vv' in msg
    for token in fake_nova.tokens:
        assert token not in msg
    guest.teardown()


def test_rejected_token_is_a_typed_error(clouds, tmp_path):
    fake_nova, kerbside = clouds
    guest = make_provider(fake_nova).boot(None, 'sextant-rej', str(tmp_path))
    fake_nova.tokens.clear()
    real_mint = guest._mint

    def mint_then_forget():
        url = real_mint()
        fake_nova.tokens.clear()           # Nova no longer knows it
        return url

    guest._mint = mint_then_forget
    with pytest.raises(cloud.ConsoleTokenRejected) as e:
        guest.console_vv()
    assert e.value.status == 403
    assert 'invalid console token' in str(e.value)
    assert len(kerbside.requests) == 1     # not retried
    guest.teardown()


def test_direct_route_is_refused_clearly(clouds, tmp_path):
    fake_nova, _ = clouds
    with pytest.raises(errors.ProviderError) as e:
        make_provider(fake_nova, route='direct')
    assert "route 'direct' is not available on Nova" in str(e.value)
    guest = make_provider(fake_nova).boot(None, 'sextant-d', str(tmp_path))
    with pytest.raises(errors.ProviderError, match='not available on Nova'):
        guest.console_vv('direct')
    with pytest.raises(errors.ProviderError, match='only after console_vv'):
        guest.console_route()
    guest.teardown()


def test_console_details_through_the_admin_client(clouds, tmp_path):
    fake_nova, _ = clouds
    guest = make_provider(fake_nova, admin=True).boot(None, 'sextant-adm',
                                                      str(tmp_path))
    details = guest.console_details()
    assert details == {'instance_uuid': guest.server_id,
                       'host': '192.0.2.10', 'port': 5900,
                       'tls_port': 5901, 'internal_access_path': None}
    (lookup,) = fake_nova.requests_to('GET', r'/os-console-auth-tokens/')
    assert lookup['headers']['x-auth-token'] == fake_clouds.NOVA_ADMIN_TOKEN
    assert lookup['headers']['x-openstack-nova-api-version'] == '2.99'
    guest.teardown()

    member = make_provider(fake_nova).boot(None, 'sextant-mem',
                                           str(tmp_path / 'm'))
    member.provider.admin_servers_client = member.provider.servers_client
    with pytest.raises(errors.ProviderError, match='Forbidden'):
        member.console_details()
    member.teardown()


def test_networks_none_is_sent_at_the_spice_direct_microversion(
        clouds, tmp_path):
    # 'none' and 'auto' need 2.37; real Nova refuses them at 2.1.
    fake_nova, _ = clouds
    for network, want in (('none', '2.99'), ('net-1', None)):
        guest = make_provider(fake_nova, network=network).boot(
            None, 'sextant-n', str(tmp_path / network))
        create = fake_nova.requests_to('POST', r'/servers$')[-1]
        assert create['headers'].get(
            'x-openstack-nova-api-version') == want, network
        guest.teardown()
    assert microversion() is None


def test_direct_route_with_the_admin_client(clouds, tmp_path):
    fake_nova, kerbside = clouds
    provider = make_provider(fake_nova, admin=True, route='direct')
    guest = provider.boot(None, 'sextant-dir', str(tmp_path))
    vv = common_vv.parse_vv(guest.console_vv())
    assert (vv['host'], vv['port'], vv['password']) == (
        '192.0.2.10', '5900', '')
    route = guest.console_route()
    assert (route.kind, route.host, route.port, route.tls_port) == (
        'direct', '192.0.2.10', 5900, 5901)
    assert not kerbside.requests        # the proxy is not asked
    guest.teardown()


def test_direct_route_over_tls_with_the_hypervisor_ca(clouds, tmp_path):
    fake_nova, _ = clouds
    ca = tmp_path / 'ca-cert.pem'
    ca.write_text('-----BEGIN CERTIFICATE-----\nQUJD\n'
                  '-----END CERTIFICATE-----\n')
    provider = make_provider(fake_nova, admin=True, route='direct',
                             hypervisor_ca_file=str(ca))
    guest = provider.boot(None, 'sextant-dir-tls', str(tmp_path))
    vv = common_vv.parse_vv(guest.console_vv())
    assert (vv['port'], vv['tls-port']) == ('5900', '5901')
    assert vv['ca'] == ca.read_text().replace('\n', '\\n')
    guest.teardown()


def test_no_secret_reaches_the_logs(clouds, tmp_path, caplog):
    fake_nova, kerbside = clouds
    caplog.set_level(logging.DEBUG)
    guest = make_provider(fake_nova, admin=True).boot(None, 'sextant-log',
                                                      str(tmp_path))
    guest.console_vv()
    guest.console_details()
    guest.teardown()
    logged = caplog.text
    assert 'remote-consoles' in logged     # tempest did log the calls
    for token in fake_nova.tokens:
        assert token not in logged
    for _, password in kerbside.served:
        assert password not in logged
    assert 'fake-admin-pass' not in logged


def test_wait_for_raises_guest_stopped_when_the_server_stops(clouds,
                                                             tmp_path):
    fake_nova, _ = clouds
    guest = make_provider(fake_nova).boot(None, 'sextant-off', str(tmp_path))
    fake_nova.set_console(guest.server_id, 'booting...\n')
    fake_nova.set_status(guest.server_id, 'SHUTOFF')
    with pytest.raises(errors.GuestStopped) as e:
        guest.serial.wait_for(BANNER, 5)
    assert 'the guest stopped' in str(e.value)
    assert 'booting...' in str(e.value)
    guest.wait_stopped(1)
    guest.teardown()


def test_teardown_never_raises(clouds, tmp_path, caplog):
    fake_nova, _ = clouds
    guest = make_provider(fake_nova).boot(None, 'sextant-td', str(tmp_path))
    fake_nova.delete_status = 500
    guest.teardown()                       # logs, does not raise
    assert 'teardown of Nova server sextant-td' in caplog.text
    fake_nova.delete_status = 204


def test_image_and_flavor_are_required(clouds, tmp_path):
    fake_nova, _ = clouds
    provider = make_provider(fake_nova, image_ref=None)
    with pytest.raises(errors.ProviderError, match='image_ref'):
        provider.boot(None, 'x', str(tmp_path))
    local = tmp_path / 'sextant.qcow2'
    local.write_bytes(b'qcow')
    with pytest.raises(errors.ProviderError, match='upload it to Glance'):
        provider.boot(str(local), 'x', str(tmp_path))
    with pytest.raises(errors.ProviderError, match='flavor_ref'):
        make_provider(fake_nova, flavor_ref=None).boot(None, 'x',
                                                       str(tmp_path))
    assert not fake_nova.servers


@pytest.fixture
def glance():
    fake = fake_clouds.FakeGlance().start()
    yield fake
    fake.stop()


def test_image_properties_are_checked(clouds, glance, tmp_path, caplog):
    fake_nova, _ = clouds
    good = glance.add(hw_video_model='qxl', hw_firmware_type='uefi')
    bad = glance.add(hw_video_model='virtio', hw_firmware_type='uefi')
    provider = make_provider(fake_nova, image_ref=bad,
                             images_client=fake_clouds.images_client(glance))
    with pytest.raises(errors.ProviderError) as e:
        provider.boot(None, 'sextant-bad', str(tmp_path))
    assert "hw_video_model=qxl (has 'virtio')" in str(e.value)
    assert 'no SPICE display surface' in str(e.value)
    assert not fake_nova.servers
    guest = provider.boot(good, 'sextant-good', str(tmp_path))
    assert 'hw_machine_type' in caplog.text      # q35 only recommended
    assert fake_nova.servers[guest.server_id]['image'] == good
    guest.teardown()


def test_local_image_is_uploaded_once_and_cleaned_up(clouds, glance,
                                                     tmp_path):
    fake_nova, _ = clouds
    local = tmp_path / 'sextant.qcow2'
    local.write_bytes(b'QFI\xfb' + b'\0' * 70000)
    provider = make_provider(fake_nova,
                             images_client=fake_clouds.images_client(glance))
    g1 = provider.boot(str(local), 'sextant-up1', str(tmp_path / '1'))
    g2 = provider.boot(str(local), 'sextant-up2', str(tmp_path / '2'))
    (image_id,) = glance.images
    image = glance.images[image_id]
    assert (image['disk_format'], image['hw_video_model'],
            image['hw_firmware_type'], image['hw_machine_type']) == (
        'qcow2', 'qxl', 'uefi', 'q35')
    assert glance.data[image_id] == local.read_bytes()
    for g in (g1, g2):
        assert fake_nova.servers[g.server_id]['image'] == image_id
        g.teardown()
    provider.cleanup()
    assert not glance.images and not provider.uploaded
    provider.cleanup()                            # idempotent


def test_transient_api_errors_do_not_end_a_wait(clouds, tmp_path):
    fake_nova, _ = clouds
    fake_nova.show_failures = 2
    guest = make_provider(fake_nova).boot(None, 'sextant-5xx',
                                          str(tmp_path))
    assert guest.status() == 'ACTIVE'
    fake_nova.show_failures = 1
    assert guest.is_running()              # unknown counts as running
    guest.teardown()

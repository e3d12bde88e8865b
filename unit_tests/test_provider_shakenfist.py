"""ShakenFistProvider end to end against the fake Shaken Fist API and fake
Kerbside, through the real shakenfist_client Client; plus the factory and
the shared cloud helpers.
"""

import logging
import os
import threading
import time

from oslo_config import cfg
import pytest

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import vv as common_vv
from kerbside_tempest_plugin import config
from kerbside_tempest_plugin.providers import cloud
from kerbside_tempest_plugin.providers import factory
from kerbside_tempest_plugin.providers import nova
from kerbside_tempest_plugin.providers import shakenfist
from unit_tests import fake_clouds

BANNER = 'Hello from Uncalibrated Sextant'
FAST = dict(poll_interval=0.01, serial_interval=0.01,
            console_retry_interval=0.01, boot_timeout=10,
            delete_timeout=10, console_timeout=10)


@pytest.fixture
def clouds():
    # shakenfist-client is optional: only the tests that drive it skip.
    pytest.importorskip('shakenfist_client')
    kerbside = fake_clouds.FakeKerbside().start()
    sf = fake_clouds.FakeShakenFist(kerbside=kerbside).start()
    yield sf, kerbside
    sf.stop()
    kerbside.stop()


def make_provider(sf, **kw):
    values = dict(FAST, image='sf://upload/system/sextant', memory_mb=512)
    values.update(kw)
    return shakenfist.ShakenFistProvider(fake_clouds.sf_client(sf),
                                         namespace=sf.namespace, **values)


def test_boot_console_serial_teardown(clouds, tmp_path):
    sf, kerbside = clouds
    guest = make_provider(sf, disk_bus='sata').boot(None, 'sextant-1',
                                                    str(tmp_path / 'a'))
    inst = sf.instances[guest.uuid]
    assert inst['state'] == 'created'
    spec = inst['spec']
    assert spec['video'] == {'model': 'qxl', 'memory': 16384, 'vdi': 'spice'}
    assert spec['uefi'] is True and spec['secure_boot'] is False
    assert spec['memory'] == 512 and spec['cpus'] == 1
    assert spec['disk'] == [{'size': 1, 'base': 'sf://upload/system/sextant',
                             'type': 'disk', 'bus': 'sata'}]
    assert spec['namespace'] == sf.namespace
    assert guest.is_running()

    text = guest.console_vv()
    fields = common_vv.parse_vv(text)
    assert fields['password'] == kerbside.served[-1][1]
    assert kerbside.served[-1][0] == guest.uuid
    (fetch,) = kerbside.requests
    assert 'authorization' not in fetch['headers']   # no SF bearer token
    route = guest.console_route()
    assert (route.kind, route.port, route.tls_port) == ('kerbside', 5901,
                                                        5900)

    def write_serial():
        for chunk in (b'BdsDxe: loading Boot0001\r\n', b'\x1b[2J',
                      BANNER.encode() + b'\r\n'):
            time.sleep(0.05)
            sf.append_console(guest.uuid, chunk)

    t = threading.Thread(target=write_serial)
    t.start()
    assert guest.serial.wait_for(BANNER, 5).group(0) == BANNER
    t.join()
    assert guest.serial.read().startswith('BdsDxe')

    guest.teardown()
    assert sf.instances[guest.uuid]['state'] == 'deleted'
    guest.teardown()
    assert len(sf.requests_to('DELETE', r'/instances/')) == 1
    with open(os.path.join(guest.artifact_dir, 'serial.log')) as f:
        assert BANNER in f.read()
    assert os.path.exists(os.path.join(guest.artifact_dir, 'instance.json'))


def test_console_404_until_scraped_then_success(clouds, tmp_path):
    sf, kerbside = clouds
    kerbside.unscraped = 3
    guest = make_provider(sf).boot(None, 'sextant-scrape', str(tmp_path))
    text = guest.console_vv()
    assert 'password=' in text
    assert [r['query']['token'][0] for r in kerbside.requests].count(
        kerbside.requests[-1]['query']['token'][0]) == 1
    assert len(kerbside.requests) == 4
    assert len(sf.requests_to('GET', r'/vdiconsoleproxy$')) == 4
    guest.teardown()


def test_replayed_token_is_rejected_with_a_typed_error(clouds, tmp_path):
    sf, kerbside = clouds
    sf.reuse_token = True                  # a broken mint hands it out twice
    guest = make_provider(sf).boot(None, 'sextant-replay', str(tmp_path))
    guest.console_vv()
    with pytest.raises(cloud.ConsoleTokenRejected) as e:
        guest.console_vv()
    assert e.value.status == 401
    msg = str(e.value)
    assert 'token already used' in msg and 'HTTP 401' in msg
    assert sf._last_token not in msg
    assert len(kerbside.requests) == 2     # not retried
    guest.teardown()


def test_console_deadline_message(clouds, tmp_path):
    sf, kerbside = clouds
    kerbside.unscraped = 10 ** 6
    guest = make_provider(sf, console_timeout=0.2).boot(
        None, 'sextant-unknown', str(tmp_path))
    with pytest.raises(errors.HarnessTimeout) as e:
        guest.console_vv()
    msg = str(e.value)
    assert 'Kerbside to serve the console .vv for Shaken Fist instance ' \
        'sextant-unknown' in msg
    assert 'HTTP 404' in msg and 'scrapes its sources every 60 s' in msg
    assert 'eyJ' not in msg
    guest.teardown()


def test_no_kerbside_url_and_non_spice_are_clear(clouds, tmp_path):
    sf, _ = clouds
    guest = make_provider(sf).boot(None, 'sextant-nk', str(tmp_path))
    kerbside, sf.kerbside = sf.kerbside, None
    with pytest.raises(errors.ProviderError, match='no KERBSIDE_URL'):
        guest.console_vv()
    sf.kerbside = kerbside
    sf.instances[guest.uuid]['video'] = {'model': 'qxl', 'memory': 16384,
                                         'vdi': 'vnc'}
    with pytest.raises(errors.ProviderError, match='not a SPICE instance'):
        guest.console_vv()
    guest.teardown()


def test_error_state_names_the_error(clouds, tmp_path):
    sf, _ = clouds
    sf.fail_state = 'error'
    sf.fail_message = 'failed to create disk: base image missing'
    with pytest.raises(errors.ProviderError) as e:
        make_provider(sf).boot(None, 'sextant-err', str(tmp_path))
    msg = str(e.value)
    assert "went to error while waiting to reach state 'created'" in msg
    assert 'failed to create disk: base image missing' in msg
    (inst,) = sf.instances.values()
    assert inst['state'] == 'deleted'      # boot failure cleans up


def test_boot_deadline_says_what_was_seen(clouds, tmp_path):
    sf, _ = clouds
    sf.create_polls = 10 ** 6
    with pytest.raises(errors.HarnessTimeout) as e:
        make_provider(sf, boot_timeout=0.3).boot(None, 'sextant-slow',
                                                 str(tmp_path))
    msg = str(e.value)
    assert "to reach state 'created'" in msg
    assert 'seen: state creating' in msg


def test_direct_route_is_shaken_fists_helper(clouds, tmp_path):
    sf, kerbside = clouds
    guest = make_provider(sf, route='direct').boot(None, 'sextant-d',
                                                   str(tmp_path))
    text = guest.console_vv()
    assert 'host=sf-node-1' in text and 'password' not in text
    route = guest.console_route()
    assert (route.kind, route.host, route.port, route.tls_port) == (
        'direct', 'sf-node-1', 30002, 30003)
    assert not kerbside.requests
    guest.teardown()


def test_serial_stops_when_the_instance_powers_off(clouds, tmp_path):
    sf, _ = clouds
    guest = make_provider(sf).boot(None, 'sextant-off', str(tmp_path))
    sf.append_console(guest.uuid, b'drain: begin\n')
    sf.set_power_state(guest.uuid, 'off')
    with pytest.raises(errors.GuestStopped) as e:
        guest.serial.wait_for('drain: end', 5)
    assert 'drain: begin' in str(e.value)
    guest.wait_stopped(1)
    guest.teardown()


def test_key_and_tokens_never_logged(clouds, tmp_path, caplog):
    sf, kerbside = clouds
    caplog.set_level(logging.DEBUG)
    guest = make_provider(sf).boot(None, 'sextant-log', str(tmp_path))
    guest.console_vv()
    guest.teardown()
    logged = caplog.text
    assert 'vdiconsoleproxy' in logged     # the client did log the call
    assert sf.key not in logged
    for token in kerbside.sf_tokens:
        assert token not in logged
    for _, password in kerbside.served:
        assert password not in logged


def test_wrong_key_is_a_provider_error(clouds, tmp_path):
    sf, _ = clouds
    client = fake_clouds.sf_client(sf, key='wrong')
    provider = shakenfist.ShakenFistProvider(client, image='img', **FAST)
    with pytest.raises(errors.ProviderError) as e:
        provider.boot(None, 'x', str(tmp_path))
    assert 'HTTP 401' in str(e.value)
    assert 'wrong' not in str(e.value).replace('wrong key', '')


# -- the factory -----------------------------------------------------------

def _clear_overrides(conf):
    # The OptGroup objects are module globals shared by every ConfigOpts,
    # and overrides live on them: clear what an earlier test set.
    for group, opts in config.get_opt_lists():
        for opt in opts:
            conf.clear_override(opt.name, group=group)


@pytest.fixture(autouse=True)
def _no_leaked_overrides():
    yield
    _clear_overrides(make_conf())


def make_conf(**groups):
    conf = cfg.ConfigOpts()
    config.register_opts(conf)
    conf([], project='ktp-test')
    _clear_overrides(conf)
    for group, values in groups.items():
        for k, v in values.items():
            conf.set_override(k, v, group=group)
    return conf


def test_factory_builds_shakenfist_from_config(clouds, tmp_path):
    sf, _ = clouds
    conf = make_conf(kerbside={'provider': 'shakenfist'},
                     shakenfist_provider={
                         'api_url': sf.api_url, 'namespace': sf.namespace,
                         'key': sf.key, 'image': 'label:sextant',
                         'video_model': 'cirrus', 'console_timeout': 7})
    provider = factory.provider_from_config(conf, poll_interval=0.01)
    assert isinstance(provider, shakenfist.ShakenFistProvider)
    assert provider.console_timeout == 7 and provider.poll_interval == 0.01
    assert provider.route == 'kerbside'
    guest = provider.boot(None, 'sextant-f', str(tmp_path))
    assert sf.instances[guest.uuid]['spec']['video']['model'] == 'cirrus'
    assert sf.instances[guest.uuid]['spec']['disk'][0]['base'] == \
        'label:sextant'
    guest.teardown()


def test_factory_nova_needs_the_tests_clients():
    conf = make_conf(kerbside={'provider': 'nova'},
                     nova_provider={'image_ref': 'i', 'flavor_ref': 'f'})
    with pytest.raises(errors.ProviderError, match='servers_client'):
        factory.provider_from_config(conf)
    fake_nova = fake_clouds.FakeNova().start()
    try:
        client = fake_clouds.servers_client(fake_nova)
        provider = factory.provider_from_config(conf, servers_client=client)
        assert isinstance(provider, nova.NovaProvider)
        assert (provider.image_ref, provider.flavor_ref,
                provider.microversion) == ('i', 'f', '2.99')
        conf.set_override('route', 'direct', group='kerbside')
        with pytest.raises(errors.ProviderError, match='not available'):
            factory.provider_from_config(conf, servers_client=client)
    finally:
        fake_nova.stop()


def test_factory_direct_qemu_and_unknown(tmp_path):
    code = tmp_path / 'code.fd'
    vars_ = tmp_path / 'vars.fd'
    code.write_bytes(b'c')
    vars_.write_bytes(b'v')
    conf = make_conf(direct_qemu={'ovmf_code': str(code),
                                  'ovmf_vars': str(vars_),
                                  'memory_mb': 128})
    from kerbside_tempest_plugin.providers import direct_qemu
    provider = factory.provider_from_config(conf, route='direct')
    assert isinstance(provider, direct_qemu.DirectQemuProvider)
    assert provider.memory_mb == 128 and provider.route == 'direct'
    with pytest.raises(errors.ProviderError, match='unknown provider'):
        factory.provider_from_config(conf, provider='vmware')


# -- cloud helpers -----------------------------------------------------------

def test_merge_tail_follows_a_sliding_window():
    stream = ''.join('line %03d ....\n' % i for i in range(200))
    cache = ''
    gaps = 0
    for end in range(10, len(stream) + 1, 37):
        snapshot = stream[max(0, end - 100):end]
        cache, gap = cloud.merge_tail(cache, snapshot)
        gaps += gap
    cache, gap = cloud.merge_tail(cache, stream[-100:])
    assert cache == stream and gaps == 0


def test_merge_tail_with_repetitive_output_and_gaps():
    dots = '.' * 50
    cache, gap = cloud.merge_tail('', 'boot' + dots)
    cache, gap = cloud.merge_tail(cache, dots + 'X')  # window slid by 4
    assert cache == 'boot' + dots + 'X' and not gap
    cache, gap = cloud.merge_tail(cache, 'totally new')
    assert gap and cache.endswith('Xtotally new')
    assert cloud.merge_tail('abc', 'bc') == ('abc', False)


def test_redact_masks_tokens_jwts_and_passwords():
    text = ('GET http://k/sf-console.vv?token=eyJhbGc.eyJzdWIi.c2ln&x=1 '
            '/os-console-auth-tokens/abc-123 {"key": "s3cret"}\n'
            'password=hunter2\n')
    out = cloud.redact(text)
    for secret in ('eyJhbGc', 'abc-123', 's3cret', 'hunter2'):
        assert secret not in out
    assert 'x=1' in out and '/os-console-auth-tokens/<redacted>' in out

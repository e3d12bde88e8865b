"""Issue 20 on the OpenStack lane: what a test no longer waits for.

- nova.conf: nova-compute syncs power states every second, so a guest
  that powers itself off is SHUTOFF in Nova without the 15 s the
  libvirt driver holds its STOPPED lifecycle event back;
- tempest.conf: the Nova provider polls every 0.5 s;
- the Nova provider deletes a test's server without waiting for it, and
  its cleanup() proves every server it booted gone, under one deadline,
  naming any that is not.
"""

import pytest

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.lane.openstack import config
from kerbside_tempest_plugin.lane.openstack import tempest_conf
from unit_tests.test_openstack_lane_units import _layout
from unit_tests.test_openstack_lane_units import _parse_ini as _ini
from unit_tests.test_provider_nova import clouds  # noqa: F401 (fixture)
from unit_tests.test_provider_nova import make_provider


def test_nova_conf_syncs_power_states_every_second(tmp_path):
    lay = _layout(tmp_path)
    conf = _ini(config.render_ini(config.nova_conf(lay)))
    assert conf['DEFAULT']['sync_power_state_interval'] == '1'
    assert conf['DEFAULT']['periodic_fuzzy_delay'] == '0'
    # Nova's default (the comparison's "before"): neither is written.
    nova = _ini(config.render_ini(config.nova_conf(
        lay, power_state_sync=None)))
    assert 'sync_power_state_interval' not in nova['DEFAULT']
    assert 'periodic_fuzzy_delay' not in nova['DEFAULT']
    # Lifecycle events stay on (a reboot's STARTED still cancels a STOP).
    assert 'handle_virt_lifecycle_events' not in conf['workarounds']


def test_tempest_conf_polls_every_half_second(tmp_path):
    state = {'flavor': 'f1', 'auth_url': 'http://127.0.0.1:1/v3'}
    text = tempest_conf.render(state, 'pw', 'kerbside', str(tmp_path),
                               'img')
    np = _ini(text)['nova_provider']
    assert np['poll_interval'] == np['serial_poll_interval'] == '0.5'
    slow = _ini(tempest_conf.render(state, 'pw', 'kerbside',
                                    str(tmp_path), 'img', poll_interval=2))
    assert slow['nova_provider']['poll_interval'] == '2'


def test_teardown_deletes_without_waiting_and_cleanup_waits(clouds,  # noqa
                                                            tmp_path):
    fake_nova, _ = clouds
    fake_nova.delete_polls = 3
    provider = make_provider(fake_nova)
    guests = [provider.boot(None, 'sextant-%d' % i, str(tmp_path / str(i)))
              for i in range(2)]
    for g in guests:
        g.teardown()
    # One DELETE each and no GET of a deleting server yet.
    assert len(fake_nova.requests_to('DELETE', r'/servers/')) == 2
    assert not any(fake_nova.servers[g.server_id]['gone'] for g in guests)
    provider.cleanup()
    assert all(fake_nova.servers[g.server_id]['gone'] for g in guests)
    assert all(g.gone for g in guests)
    assert len(fake_nova.requests_to('DELETE', r'/servers/')) == 2
    provider.cleanup()                      # idempotent: nothing new
    assert len(fake_nova.requests_to('DELETE', r'/servers/')) == 2


def test_cleanup_names_a_server_still_there(clouds, tmp_path):  # noqa
    fake_nova, _ = clouds
    fake_nova.delete_polls = 10 ** 6        # never goes
    provider = make_provider(fake_nova, delete_timeout=0.3)
    stuck = provider.boot(None, 'sextant-stuck', str(tmp_path / 's'))
    stuck.teardown()
    with pytest.raises(errors.ProviderError) as e:
        provider.cleanup()
    msg = str(e.value)
    assert '1 of 1 guest(s) not gone' in msg
    assert stuck.server_id in msg and 'to be deleted' in msg
    assert 'task_state deleting' in msg     # what was last seen


def test_cleanup_deletes_what_teardown_could_not(clouds, tmp_path):  # noqa
    fake_nova, _ = clouds
    provider = make_provider(fake_nova)
    never = provider.boot(None, 'sextant-never', str(tmp_path / 'n'))
    failed = provider.boot(None, 'sextant-refused', str(tmp_path / 'r'))
    fake_nova.delete_status = 500
    failed.teardown()                       # logs, does not raise
    assert failed.delete_requested is None
    # A delete Nova keeps refusing is named.
    with pytest.raises(errors.ProviderError) as e:
        provider.cleanup()
    assert 'sextant-refused' in str(e.value)
    assert 'delete refused' in str(e.value)
    # Once Nova takes deletes again, cleanup() deletes both (one was never
    # torn down) and sees them gone.
    fake_nova.delete_status = 204
    provider.cleanup()
    assert fake_nova.servers[never.server_id]['gone']
    assert fake_nova.servers[failed.server_id]['gone']


def test_waiting_teardown_is_still_there(clouds, tmp_path):  # noqa
    fake_nova, _ = clouds
    provider = make_provider(fake_nova, wait_for_delete=True)
    g = provider.boot(None, 'sextant-w', str(tmp_path))
    g.teardown()
    assert fake_nova.servers[g.server_id]['gone'] and g.gone

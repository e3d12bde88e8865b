"""Issue 20 on the OpenStack lane: what a test no longer waits for.

- nova.conf: nova-compute syncs power states every second, so a guest
  that powers itself off is SHUTOFF in Nova without the 15 s the
  libvirt driver holds its STOPPED lifecycle event back;
- tempest.conf: the Nova provider polls every 0.5 s;
- the Nova provider deletes a test's server without waiting for it, and
  its cleanup() proves every server it booted gone, under one deadline,
  naming any that is not;
- the parallel bring-up sets Keystone and Nova's cells up in one
  process each.
"""

import ast
import json
import os
import re
import time

import pytest

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.lane.openstack import cloud as os_cloud
from kerbside_tempest_plugin.lane.openstack import compute
from kerbside_tempest_plugin.lane.openstack import config
from kerbside_tempest_plugin.lane.openstack import keystone
from kerbside_tempest_plugin.lane.openstack import services as svc
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


class _RecordingServices:
    """services.Services' run() and timings, recording what ran;
    run_script() is the real one.
    """

    run_script = svc.Services.run_script

    def __init__(self, layout, write=None):
        self.layout = layout
        self.timings = {}
        self.runs = []
        self.envs = []
        self.write = write

    def bin(self, name):
        return os.path.join(self.layout.venv, 'bin', name)

    def run(self, name, argv, env=None, **kw):
        self.runs.append((name, argv))
        self.envs.append(env)
        if self.write is not None:
            # The script writes its step timings to its first argument.
            with open(argv[2], 'w') as f:
                f.write(self.write)
            if 'exit' in self.write:
                raise errors.HarnessError('%s failed (exit 255)' % name)


def test_nova_cells_in_one_process(tmp_path):
    lay = _layout(tmp_path)
    ast.parse(compute.CELLS_SHIM)
    # The four nova-manage commands, in cells_before_compute's order.
    names = re.findall(r"\('(nova-manage-[a-z0-9-]+)'", compute.CELLS_SHIM)
    assert names == ['nova-manage-api-db-sync', 'nova-manage-map-cell0',
                     'nova-manage-create-cell', 'nova-manage-db-sync']
    s = _RecordingServices(lay, write=json.dumps(
        {'nova-manage-import': 2.0, 'nova-manage-api-db-sync': 1.5}))
    compute.cells_in_one_process(s, lay)
    ((name, argv),) = s.runs
    assert name == 'nova-manage-cells'
    assert argv[0] == os.path.join(lay.venv, 'bin', 'python')
    with open(argv[1]) as f:
        assert f.read() == compute.CELLS_SHIM
    assert argv[3].endswith('nova/nova.conf')
    assert s.timings == {'nova-manage-import': 2.0,
                         'nova-manage-api-db-sync': 1.5}
    # A failing step: the error is raised, the steps done still timed.
    s = _RecordingServices(lay, write=json.dumps(
        {'nova-manage-import': 2.0, 'exit': 1}))
    with pytest.raises(errors.HarnessError, match='nova-manage-cells'):
        compute.cells_in_one_process(s, lay)
    assert s.timings['nova-manage-import'] == 2.0


def test_bringup_modes_keep_the_split_cells_for_comparison():
    assert os_cloud.bringup_mode('parallel-split') == 'parallel-split'
    assert os_cloud.bringup_mode() in ('parallel', 'parallel-split',
                                       'serial')


def test_keystone_setup_in_one_process(tmp_path):
    lay = _layout(tmp_path)
    ast.parse(keystone.SETUP_SHIM)
    s = _RecordingServices(lay, write=json.dumps({'keystone-db-sync': 3.0}))
    keystone.prepare_in_one_process(s, lay)
    ((name, argv),) = s.runs
    assert name == 'keystone-setup'
    assert argv[3].endswith('keystone/keystone.conf')
    steps = [json.loads(a) for a in argv[4:]]
    assert [n for n, _ in steps] == [
        'keystone-db-sync', 'keystone-fernet-setup',
        'keystone-credential-setup', 'keystone-bootstrap']
    # The same arguments keystone-manage gets in prepare().
    split = _RecordingServices(lay)
    keystone.prepare(split, lay)
    assert [(n, a[3:]) for n, a in split.runs] == [
        (n, a) for n, a in steps]
    # The admin password only through the environment.
    password = lay.passwords['admin']
    assert s.envs == [{'OS_BOOTSTRAP_PASSWORD': password}]
    assert not any(password in a for a in argv)
    assert s.timings == {'keystone-db-sync': 3.0}


def _services(tmp_path):
    from kerbside_tempest_plugin.common import secrets
    from kerbside_tempest_plugin.lane import procs
    lay = _layout(tmp_path)
    os.makedirs(lay.log_dir, exist_ok=True)
    return svc.Services(lay, procs.ProcessRegistry(
        str(tmp_path / 'processes.json')), secrets.Redactor(), {})


def test_run_records_each_commands_cpu(tmp_path):
    s = _services(tmp_path)
    s.run('burn', ['python3', '-c',
                   'import time\nt = time.process_time()\n'
                   'while time.process_time() - t < 0.3: pass'])
    s.run('sleep', ['sleep', '0.3'])
    assert 0.25 < s.cpu['burn'] < 5
    assert s.cpu['sleep'] < 0.1 and s.timings['sleep'] >= 0.3
    # Input still reaches the command; a failure still names it.
    s.run('cat', ['sh', '-c', 'cat > in.txt'], input_text='hello')
    assert (tmp_path / 'in.txt').read_text() == 'hello'
    with pytest.raises(errors.HarnessError, match='false failed .exit 1'):
        s.run('false', ['false'])


def test_run_deadline_kills_and_says_what(tmp_path):
    s = _services(tmp_path)
    t = time.monotonic()
    with pytest.raises(errors.HarnessTimeout) as e:
        s.run('stuck', ['sh', '-c', 'echo started; sleep 30'], timeout=0.5)
    assert time.monotonic() - t < 5
    assert 'waiting for stuck to finish' in str(e.value)
    assert 'started' in str(e.value)

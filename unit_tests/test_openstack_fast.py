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


def test_tempest_uses_one_preprovisioned_member_and_the_admin(tmp_path):
    import yaml
    state = {'flavor': 'f1', 'auth_url': 'http://127.0.0.1:1/v3'}
    accounts = yaml.safe_load(tempest_conf.accounts_yaml(
        "adm'pw", 'mem-pw', ('ktp-tempest', 'ktp-tempest-member')))
    assert accounts == [
        {'username': 'ktp-tempest-member', 'project_name': 'ktp-tempest',
         'domain_name': 'Default', 'password': 'mem-pw',
         'roles': ['member']},
        {'username': 'admin', 'project_name': 'admin',
         'domain_name': 'Default', 'password': "adm'pw",
         'roles': ['admin']}]
    conf = _ini(tempest_conf.render(state, 'pw', 'kerbside', '/ws', 'img',
                                    accounts_file='/ws/etc/accounts.yaml'))
    assert conf['auth']['use_dynamic_credentials'] == 'false'
    assert conf['auth']['test_accounts_file'] == '/ws/etc/accounts.yaml'
    dyn = _ini(tempest_conf.render(state, 'pw', 'kerbside', '/ws', 'img'))
    assert dyn['auth']['use_dynamic_credentials'] == 'true'
    assert 'test_accounts_file' not in dyn['auth']


class _Keystone:
    """find()/call() of lane.openstack.api.Client over dicts."""

    def __init__(self, users=()):
        self.items = {'projects': [], 'users': list(users),
                      'roles': [{'id': 'r-member', 'name': 'member'}]}
        self.calls = []

    def find(self, service, collection, key, name):
        return next((i for i in self.items[collection]
                     if i['name'] == name), None)

    def call(self, method, service, path, body=None, expect=(200,)):
        self.calls.append((method, path, body))
        if method == 'POST':
            kind = path.strip('/')
            item = dict(body[kind[:-1]], id='id-%d' % len(self.calls))
            self.items[kind].append(item)
            return {kind[:-1]: item}
        return None


def test_tempest_member_account_is_made_once_and_kept_in_step():
    ks = _Keystone()
    assert keystone.tempest_account(ks, 'pw1') == (
        keystone.TEMPEST_PROJECT, keystone.TEMPEST_USER)
    (project,) = ks.items['projects']
    (user,) = ks.items['users']
    assert user['password'] == 'pw1'
    assert user['default_project_id'] == project['id']
    assert ('PUT', '/projects/%s/users/%s/roles/r-member' % (
        project['id'], user['id']), None) in ks.calls
    # Again (the second route): nothing new, the password set again.
    n = len(ks.calls)
    keystone.tempest_account(ks, 'pw1')
    assert len(ks.items['projects']) == len(ks.items['users']) == 1
    assert [c[0] for c in ks.calls[n:]] == ['PATCH', 'PUT']


def test_tempest_conf_command_writes_private_accounts(
        tmp_path, monkeypatch):
    from kerbside_tempest_plugin.cmd import openstack as cmd
    workdir = tmp_path / 'cloud'
    (workdir / 'secrets').mkdir(parents=True)
    (workdir / 'secrets' / 'admin-password').write_text('adm-secret\n')
    monkeypatch.setattr(os_cloud, 'load_state', lambda w: {
        'state': 'up', 'flavor': 'f1', 'auth_url': 'http://127.0.0.1:1/v3',
        'admin_password_file': str(workdir / 'secrets' / 'admin-password')})
    made = []
    monkeypatch.setattr(keystone, 'tempest_account',
                        lambda client, pw: made.append(pw) or (
                            'ktp-tempest', 'ktp-tempest-member'))
    ws = tmp_path / 'ws'
    (ws / 'etc').mkdir(parents=True)
    assert cmd.main(['tempest-conf', '--workdir', str(workdir),
                     '--workspace', str(ws), '--image', 'img']) == 0
    (member_pw,) = made
    # Kept in the cloud's secrets, so its teardown masks it in logs.
    stored = workdir / 'secrets' / 'tempest-member-password'
    assert stored.read_text().strip() == member_pw
    accounts = (ws / 'etc' / 'accounts.yaml')
    assert oct(accounts.stat().st_mode & 0o777) == '0o600'
    assert member_pw in accounts.read_text()
    assert 'adm-secret' in accounts.read_text()
    red = (ws / 'etc' / 'accounts.redacted.yaml').read_text()
    assert member_pw not in red and 'adm-secret' not in red
    conf = _ini((ws / 'etc' / 'tempest.conf').read_text())
    assert conf['auth']['test_accounts_file'] == str(accounts)
    red_conf = (ws / 'etc' / 'tempest.redacted.conf').read_text()
    assert 'adm-secret' not in red_conf and member_pw not in red_conf
    # --dynamic-credentials: no account, as before.
    made.clear()
    assert cmd.main(['tempest-conf', '--workdir', str(workdir),
                     '--workspace', str(ws), '--image', 'img',
                     '--dynamic-credentials']) == 0
    assert not made
    conf = _ini((ws / 'etc' / 'tempest.conf').read_text())
    assert conf['auth']['use_dynamic_credentials'] == 'true'


def test_tempest_finds_its_primary_and_admin_in_the_accounts(tmp_path):
    # tempest's own matching (a project-scoped `member` for primary, the
    # admin role for admin); the first job run without `roles:
    # [member]` failed every class with "No credentials matching role:
    # member, scope: project".
    from oslo_concurrency import lockutils
    from tempest.lib.common import preprov_creds
    lockutils.set_defaults(str(tmp_path / 'lock'))
    path = tmp_path / 'accounts.yaml'
    path.write_text(tempest_conf.accounts_yaml(
        'adm-pw', 'mem-pw', ('ktp-tempest', 'ktp-tempest-member')))
    p = preprov_creds.PreProvisionedCredentialProvider(
        identity_version='v3', test_accounts_file=str(path),
        accounts_lock_dir=str(tmp_path / 'accounts-lock'), name='t',
        admin_role='admin', identity_uri='http://127.0.0.1:1/v3',
        credentials_domain='Default')
    # What tempest wraps with network resources (none here): the account.
    # (The account locks live under tmp_path; nothing to release.)
    p._wrap_creds_with_network = lambda h: p.hash_dict['creds'][h]
    assert p.admin_available()
    assert p.get_primary_creds()['username'] == 'ktp-tempest-member'
    assert p.get_admin_creds()['username'] == 'admin'


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


@pytest.mark.parametrize('name,kill_after', [('kerbside-daemon', 3),
                                             ('libvirtd', 5)])
def test_teardown_kills_a_service_that_ignores_sigterm(tmp_path, name,
                                                       kill_after):
    from kerbside_tempest_plugin.lane import procs
    registry = procs.ProcessRegistry(str(tmp_path / 'processes.json'))
    (tmp_path / 'logs').mkdir()
    # Ready (the trap set) before the teardown signals it.
    out = tmp_path / 'logs' / (name + '.out')
    registry.spawn(name, [
        'sh', '-c', 'trap "" TERM; echo ready; sleep 60'], str(out))
    deadline = time.monotonic() + 10
    while 'ready' not in (out.read_text() if out.exists() else ''):
        assert time.monotonic() < deadline, 'the stand-in never started'
        time.sleep(0.05)
    t = time.monotonic()
    report = os_cloud.teardown_workdir(str(tmp_path))
    took = time.monotonic() - t
    (stopped,) = report['stopped']
    assert stopped['result'] == 'SIGKILLed after %d s' % kill_after, stopped
    # Under the earlier 15 s / 20 s alone (the rest of an empty teardown:
    # about 5 s).
    assert took < kill_after + 9, took
    assert report['leftover_pids'] == []

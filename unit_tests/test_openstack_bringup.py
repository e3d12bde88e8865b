"""Unit tests for the OpenStack lane's bring-up order (issue 20): the
parallel bring-up's dependencies with fake services, its nova.conf, the
serialised process registry, and the side-by-side one-shot steps.
"""

import os
import threading
import time

import pytest

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import secrets
from kerbside_tempest_plugin.lane.openstack import cloud as os_cloud
from kerbside_tempest_plugin.lane.openstack import compute
from kerbside_tempest_plugin.lane.openstack import config
from kerbside_tempest_plugin.lane.openstack import keystone
from kerbside_tempest_plugin.lane.openstack import services as svc
from kerbside_tempest_plugin.lane import procs
from unit_tests import conftest
from unit_tests.test_openstack_lane_units import _layout
from unit_tests.test_openstack_lane_units import _parse_ini as _ini


# -- nova.conf -------------------------------------------------------------

def test_nova_conf_lets_the_scheduler_discover_only_when_asked(tmp_path):
    lay = _layout(tmp_path)
    old = _ini(config.render_ini(config.nova_conf(
        lay, power_state_sync=None)))
    assert old['scheduler']['discover_hosts_in_cells_interval'] == '-1'
    assert 'periodic_fuzzy_delay' not in old['DEFAULT']
    new = _ini(config.render_ini(config.nova_conf(
        lay, scheduler_discovery=True, power_state_sync=None)))
    assert new['scheduler']['discover_hosts_in_cells_interval'] == str(
        config.DISCOVER_HOSTS_INTERVAL)
    assert new['DEFAULT']['periodic_fuzzy_delay'] == '0'
    # Nothing else differs.
    del new['DEFAULT']['periodic_fuzzy_delay']
    new['scheduler']['discover_hosts_in_cells_interval'] = '-1'
    assert new == old


def test_bringup_mode_default_env_and_refusal(monkeypatch):
    monkeypatch.delenv('KTP_OPENSTACK_BRINGUP', raising=False)
    assert os_cloud.bringup_mode() == 'parallel'
    assert os_cloud.bringup_mode('serial') == 'serial'
    monkeypatch.setenv('KTP_OPENSTACK_BRINGUP', 'serial')
    assert os_cloud.bringup_mode() == 'serial'
    assert os_cloud.bringup_mode('parallel') == 'parallel'
    with pytest.raises(errors.HarnessError) as e:
        os_cloud.bringup_mode('fast')
    assert 'parallel, serial' in str(e.value)


# -- the registry, spawned into from several threads ----------------------

def test_serialised_registry_keeps_every_record_from_many_threads(
        tmp_path):
    registry = svc.serialise_registry(
        procs.ProcessRegistry(str(tmp_path / 'processes.json')))
    assert svc.serialise_registry(registry) is registry
    barrier = threading.Barrier(8)

    def add(i):
        barrier.wait()
        for j in range(25):
            # Our own pid: a real, live process for proc_info().
            registry.add('t%d-%d' % (i, j), 10 ** 6 + i * 100 + j,
                         argv=['x'])

    # what they raise: the file collision this prevents
    assert conftest.raised_in_threads(add, 8) == []
    assert len(registry.records) == 200
    again = procs.ProcessRegistry(str(tmp_path / 'processes.json'))
    assert len(again.records) == 200


# -- the one-shot steps side by side ---------------------------------------

class _Runs:
    """Services.run stand-in: records start and end of each command."""

    def __init__(self, slow=()):
        self.events = []
        self.slow = slow
        self.lock = threading.Lock()

    def bin(self, name):
        return '/venv/bin/' + name

    def run(self, name, argv, timeout=600, env=None, input_text=None):
        with self.lock:
            self.events.append(('start', name))
        time.sleep(0.05 if name in self.slow else 0.01)
        with self.lock:
            self.events.append(('end', name))

    def index(self, kind, name):
        return self.events.index((kind, name))


def test_keystone_prepare_makes_keys_beside_db_sync(tmp_path):
    import concurrent.futures
    runs = _Runs(slow=('keystone-db-sync',))
    steps = []
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        keystone.prepare(runs, _layout(tmp_path), pool=pool,
                         step=lambda: steps.append(1))
    i = runs.index
    # The key repositories start before db_sync ends ...
    assert i('start', 'keystone-fernet-setup') < i('end', 'keystone-db-sync')
    assert i('start', 'keystone-credential-setup') < i(
        'end', 'keystone-db-sync')
    # ... and bootstrap waits for all three.
    for name in ('keystone-db-sync', 'keystone-fernet-setup',
                 'keystone-credential-setup'):
        assert i('end', name) < i('start', 'keystone-bootstrap')
    assert steps


def test_keystone_prepare_without_a_pool_is_the_serial_order(tmp_path):
    runs = _Runs()
    keystone.prepare(runs, _layout(tmp_path))
    assert [n for k, n in runs.events if k == 'start'] == [
        'keystone-db-sync', 'keystone-fernet-setup',
        'keystone-credential-setup', 'keystone-bootstrap']


def test_nova_cells_create_cell_beside_cell0_and_db_sync(tmp_path):
    import concurrent.futures
    runs = _Runs(slow=('nova-manage-map-cell0',))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        compute.cells_before_compute(runs, _layout(tmp_path), pool=pool)
    i = runs.index
    assert i('end', 'nova-manage-api-db-sync') < i(
        'start', 'nova-manage-create-cell')
    assert i('start', 'nova-manage-create-cell') < i(
        'end', 'nova-manage-map-cell0')
    assert i('end', 'nova-manage-map-cell0') < i(
        'start', 'nova-manage-db-sync')
    serial = _Runs()
    compute.cells_before_compute(serial, _layout(tmp_path))
    assert [n for k, n in serial.events if k == 'start'] == [
        'nova-manage-api-db-sync', 'nova-manage-map-cell0',
        'nova-manage-create-cell', 'nova-manage-db-sync']


# -- discovery -----------------------------------------------------------

class _Client:
    def __init__(self, up_after=0):
        self.calls = []
        self.up_after = up_after

    def call(self, method, service, path, microversion=None, **kw):
        self.calls.append(path)
        n = len(self.calls)
        if path.startswith('/os-services'):
            return {'services': [{'host': 'h', 'state': 'up' if n >
                                  self.up_after else 'down'}]}
        return {'hypervisors': [{'hypervisor_hostname': 'vm', 'state': 'up',
                                 'status': 'enabled'}]}


class _DB:
    def __init__(self, mapped_after):
        self.queries = []
        self.mapped_after = mapped_after

    def query(self, statement):
        self.queries.append(statement)
        if 'host_mappings' in statement:
            return [['h']] if len(self.queries) > self.mapped_after else []
        return [['h']]


class _Svc:
    def __init__(self):
        self.timings = {}
        self.ran = []

    def _dead(self, name):
        return None

    def _seen(self, name):
        return lambda: name + ' running'

    def run(self, name, argv, **kw):
        self.ran.append(name)

    def bin(self, name):
        return name


def test_discovery_by_the_scheduler_waits_for_the_mapping(tmp_path):
    s, db = _Svc(), _DB(mapped_after=2)
    compute.discover_hosts(s, _layout(tmp_path), _Client(up_after=1), 'h',
                           timeout=5, db=db, interval=0.01)
    assert s.ran == []  # no nova-manage
    assert len(db.queries) == 3
    assert all('nova_api.host_mappings' in q for q in db.queries)
    for key in ('nova_compute_up', 'nova_host_mapped', 'nova_discover'):
        assert key in s.timings


def test_discovery_by_nova_manage_without_a_db(tmp_path):
    s = _Svc()
    compute.discover_hosts(s, _layout(tmp_path), _Client(), 'h', timeout=5,
                           interval=0.01)
    assert s.ran == ['nova-manage-discover-hosts']


def test_discovery_says_what_it_saw_when_the_host_stays_unmapped(tmp_path):
    s, db = _Svc(), _DB(mapped_after=10 ** 6)
    with pytest.raises(errors.HarnessTimeout) as e:
        compute.discover_hosts(s, _layout(tmp_path), _Client(), 'h',
                               timeout=0.3, db=db, interval=0.05)
    msg = str(e.value)
    assert 'nova-scheduler to map compute host h' in msg
    assert 'mapped hosts []' in msg


def test_service_record_wait_reads_the_cell_database():
    s = svc.Services.__new__(svc.Services)
    s.procs, s.redactor = {}, None
    s.layout = None

    class DB:
        def __init__(self):
            self.n = 0
            self.statements = []

        def query(self, statement):
            self.statements.append(statement)
            self.n += 1
            return [['ktp-compute']] if self.n >= 3 else []

    db = DB()
    s._seen = lambda name, extra=None: (lambda: '')
    assert s.wait_service_record(db, 'nova-conductor', 5) == ['ktp-compute']
    assert db.statements[0] == ("SELECT host FROM nova.services WHERE "
                                "`binary` = 'nova-conductor' AND deleted = 0")


# -- the parallel bring-up with fake services ------------------------------

class _FakeServices:
    """Every step of the bring-up, recorded in order; nothing started."""

    def __init__(self, fail=None):
        self.events = []
        self.lock = threading.Lock()
        self.timings = {}
        self.fail = fail

    def _note(self, what):
        with self.lock:
            self.events.append(what)
        if what == self.fail:
            raise errors.HarnessError('%s failed' % what)
        time.sleep(0.01)

    def bin(self, name):
        return name

    def start_mariadb(self, secrets, timeout, synced=True):
        self._note('mariadb')
        self.synced = synced
        return 'db'

    def spawn_rabbitmq(self):
        self._note('spawn rabbitmq')

    def wait_rabbitmq(self, timeout):
        time.sleep(0.1)
        self._note('rabbitmq listens')

    def start_memcached(self):
        self._note('memcached')

    def start_libvirt(self, timeout):
        self._note('libvirt')

    def warm_libvirt_capabilities(self, timeout):
        self._note('libvirt capabilities')

    def run(self, name, argv, nice=None, **kw):
        self.nice = getattr(self, 'nice', {})
        self.nice[name] = nice
        self._note('run ' + name)

    def start_wsgi(self, name, timeout=None, path='/', wait=True):
        self._note('spawn ' + name)
        if wait:
            self._note('%s answers' % name)

    def wait_wsgi(self, name, timeout):
        self._note('%s answers' % name)

    def start_nova_daemon(self, name):
        self._note('spawn ' + name)

    def wait_service_record(self, db, binary, timeout):
        time.sleep(0.05)
        self._note('%s recorded' % binary)


def _parallel_cloud(tmp_path, monkeypatch, fail=None):
    cloud = os_cloud.OpenStackCloud(str(tmp_path), kerbside=False,
                                    bringup='parallel')
    cloud.layout = _layout(tmp_path)
    cloud.services = fake = _FakeServices(fail)
    cloud.secrets = None
    cloud._save = lambda state: None

    def prepare(s, lay, pool=None, step=None):
        s._note('run keystone prepare')

    def register(lay, redactor, timings):
        time.sleep(0.1)
        fake._note('keystone register')
        return 'admin client'

    def cells(s, lay, pool=None, step=None):
        s._note('run nova cells')

    def discover(s, lay, client, host, timeout=None, db=None,
                 interval=None):
        assert client == 'admin client' and db == 'db'
        s._note('discovered by the scheduler')

    monkeypatch.setattr(keystone, 'prepare', prepare)
    monkeypatch.setattr(keystone, 'prepare_in_one_process',
                        lambda s, lay: prepare(s, lay))
    monkeypatch.setattr(keystone, 'register', register)
    monkeypatch.setattr(compute, 'cells_before_compute', cells)
    monkeypatch.setattr(compute, 'cells_in_one_process',
                        lambda s, lay: cells(s, lay))
    monkeypatch.setattr(compute, 'discover_hosts', discover)
    monkeypatch.setattr(compute, 'ensure_flavor',
                        lambda client: {'id': 'f'})
    return cloud, fake


def test_parallel_bringup_starts_each_service_after_what_it_needs(
        tmp_path, monkeypatch):
    cloud, fake = _parallel_cloud(tmp_path, monkeypatch)
    cloud._up_parallel(timeout=10)
    ev = fake.events
    i = ev.index
    assert ev[0] == 'mariadb'
    # Every one-shot setup after MariaDB; each API after its own setup.
    for setup, api in (('run keystone prepare', 'spawn keystone'),
                       ('run placement-db-sync', 'spawn placement'),
                       ('run glance-db-sync', 'spawn glance'),
                       ('run neutron-db-manage', 'spawn neutron'),
                       ('run nova cells', 'spawn nova_api')):
        assert i('mariadb') < i(setup) < i(api)
    # The setups overlap the slow RabbitMQ start; what needs the broker
    # waits for it.
    assert i('run nova cells') < i('rabbitmq listens')
    for needs_rabbit in ('spawn neutron', 'spawn nova-conductor',
                         'spawn nova-scheduler', 'spawn nova_api'):
        assert i('rabbitmq listens') < i(needs_rabbit)
    # nova-compute: after the conductor's record, the service users and
    # Placement's API; then discovery, then the flavor.
    c = i('spawn nova-compute')
    assert i('nova-conductor recorded') < c
    assert i('keystone register') < c
    assert i('placement answers') < c
    assert c < i('nova_api answers') < i('discovered by the scheduler')
    assert cloud.flavor == {'id': 'f'} and cloud.admin == 'admin client'
    for name in ('keystone', 'placement', 'glance', 'neutron', 'nova'):
        assert name + '_total' in cloud.timings
    assert 'nova_compute_to_hypervisor' in cloud.timings
    assert fake.synced is False
    # What nothing waits for yields the CPU; what compute waits for not.
    assert fake.nice == {'placement-db-sync': None,
                         'glance-db-sync': os_cloud.BACKGROUND_NICE,
                         'neutron-db-manage': os_cloud.BACKGROUND_NICE}


def test_parallel_bringup_stops_at_the_first_failure(tmp_path,
                                                     monkeypatch):
    cloud, fake = _parallel_cloud(tmp_path, monkeypatch,
                                  fail='keystone answers')
    with pytest.raises(errors.HarnessError) as e:
        cloud._up_parallel(timeout=10)
    assert 'keystone answers failed' in str(e.value)
    # Nothing waits past the failure for Keystone's users: no compute.
    assert 'spawn nova-compute' not in fake.events
    assert 'keystone register' not in fake.events


def test_run_at_a_niceness(tmp_path):
    lay = _layout(tmp_path)
    os.makedirs(lay.log_dir)
    s = svc.Services(lay, procs.ProcessRegistry(
        str(tmp_path / 'processes.json')), secrets.Redactor(), {})
    s.run('niced', ['sh', '-c', 'nice'], nice=7)
    with open(s.log('niced')) as f:
        lines = f.read().splitlines()
    assert lines[0].startswith('$ nice -n 7 sh -c nice')
    assert lines[-1].strip() == str(7 + os.nice(0))


def test_unsynced_mariadb_only_when_asked(tmp_path):
    from kerbside_tempest_plugin.common import secrets as common_secrets
    lay = _layout(tmp_path)
    store = common_secrets.SecretStore(str(tmp_path / 'secrets'),
                                       secrets.Redactor())
    db = svc.CloudDB(store.file('mariadb'), lay.run_dir, lay.log_dir, 1,
                     None, store)
    assert not set(svc.CloudDB.UNSYNCED) & set(db.server_argv())
    db.TUNING = list(svc.CloudDB.TUNING) + svc.CloudDB.UNSYNCED
    argv = db.server_argv()
    for option in svc.CloudDB.UNSYNCED + svc.CloudDB.TUNING:
        assert option in argv
        assert option in db.install_argv()

"""A lane with N consoles (Lane(consoles=N)): the static source lists all
of them, ports, uuids and tickets are allocated once per console, and the
console slots share no current guest or ryll. No service is started: the
lane is only prepared (ports, secrets, registry), which is pure logic.
"""

import os
import shutil
import threading

import pytest
import yaml

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import rundir
from kerbside_tempest_plugin.common import secrets as common_secrets
from kerbside_tempest_plugin.lane import base as lane_base
from kerbside_tempest_plugin.lane import kerbside as lane_kerbside
from kerbside_tempest_plugin.lane import lane as lane_mod
from kerbside_tempest_plugin.lane import procs

PEM = ('-----BEGIN CERTIFICATE-----\nMIIBfake\nline2==\n'
       '-----END CERTIFICATE-----\n')
UUID1 = '6f4e2c1a-0000-0000-0000-000000000001'


def _kerbside(tmp_path, **kw):
    store = common_secrets.SecretStore(str(tmp_path / 'secrets'))
    return lane_kerbside.Kerbside(
        venv=None, workdir=str(tmp_path / 'w'), run_dir=str(tmp_path),
        secrets=store, registry=None, tls=None, sql_url='mysql://x',
        api_port=1, secure_port=2, insecure_port=3, metrics_port=4,
        console_uuid=UUID1, guest_port=5910, ticket='012345', **kw)


def _extra(n, tls=True):
    return [dict(uuid='6f4e2c1a-0000-0000-0000-00000000000%d' % (i + 1),
                 port=5910 + 2 * i, tls_port=5911 + 2 * i if tls else None,
                 ticket='tick%06d' % i) for i in range(1, n)]


# -- sources.yaml -----------------------------------------------------------

def test_one_console_sources_yaml_is_the_one_console_text(tmp_path):
    # Byte for byte what the one-console lane has always written.
    ca = tmp_path / 'ca.pem'
    ca.write_text(PEM)
    kb = _kerbside(tmp_path, guest_tls_port=5911, guest_ca_cert=str(ca),
                   guest_host_subject='CN=qemu-hv')
    assert kb.sources_yaml() == (
        '- source: harness-lab\n  type: static\n'
        '  ca_cert: |\n'
        '    -----BEGIN CERTIFICATE-----\n    MIIBfake\n    line2==\n'
        '    -----END CERTIFICATE-----\n'
        '  consoles:\n'
        '    - uuid: %s\n'
        '      name: sextant-harness\n'
        '      hypervisor: localhost\n'
        '      hypervisor_ip: 127.0.0.1\n'
        '      insecure_port: 5910\n'
        '      ticket: "012345"\n'
        '      secure_port: 5911\n'
        '      host_subject: "CN=qemu-hv"\n' % UUID1)
    assert _kerbside(tmp_path).sources_yaml().endswith(
        '      insecure_port: 5910\n      ticket: "012345"\n')


@pytest.mark.parametrize('tls', [True, False])
def test_sources_yaml_lists_n_consoles(tmp_path, tls):
    ca = tmp_path / 'ca.pem'
    ca.write_text(PEM)
    kw = dict(guest_tls_port=5911, guest_ca_cert=str(ca),
              guest_host_subject='CN=qemu-hv') if tls else {}
    kb = _kerbside(tmp_path, extra_consoles=_extra(4, tls), **kw)
    [source] = yaml.safe_load(kb.sources_yaml())
    consoles = source['consoles']
    assert [c['name'] for c in consoles] == [
        'sextant-harness', 'sextant-harness-2', 'sextant-harness-3',
        'sextant-harness-4']
    assert len(set(c['uuid'] for c in consoles)) == 4
    assert [c['insecure_port'] for c in consoles] == [
        5910, 5912, 5914, 5916]
    assert [c['ticket'] for c in consoles] == [
        '012345', 'tick000001', 'tick000002', 'tick000003']
    if tls:
        assert [c['secure_port'] for c in consoles] == [
            5911, 5913, 5915, 5917]
        assert all(c['host_subject'] == 'CN=qemu-hv' for c in consoles)
        assert source['ca_cert'] == PEM
    else:
        assert all('secure_port' not in c for c in consoles)
    redacted = yaml.safe_load(kb.sources_yaml(ticket='<redacted>'))
    assert all(c['ticket'] == '<redacted>'
               for c in redacted[0]['consoles'])


# -- the lane's allocation ------------------------------------------------

@pytest.fixture
def prepared():
    """Lane(consoles=n)._prepare() in a directory; afterwards the private
    run directory it may make under /tmp (pytest's paths are too long for
    unix sockets) is removed, as a lane's teardown would.
    """
    lanes = []

    def make(path, n, **kw):
        lane = lane_mod.Lane(str(path / 'lane'), consoles=n, **kw)
        lanes.append(lane)
        lane._prepare()
        return lane
    yield make
    for lane in lanes:
        if lane.run_dir and rundir.is_run_dir(lane.run_dir):
            shutil.rmtree(lane.run_dir, ignore_errors=True)


def test_one_console_lane_allocates_what_it_always_did(tmp_path, prepared):
    lane = prepared(tmp_path, 1)
    assert list(lane.ports) == list(lane_mod.PORT_NAMES)
    assert lane.console_uuids == [lane.console_uuid]
    assert lane.tickets == [lane.ticket]
    assert sorted(os.listdir(lane.secrets.path)) == ['spice-ticket']
    assert 'consoles' not in lane.info()


def test_n_console_lane_allocates_ports_uuids_and_tickets(tmp_path, prepared):
    lane = prepared(tmp_path, 3)
    assert len(lane.ports) == len(lane_mod.PORT_NAMES) + 4
    assert len(set(lane.ports.values())) == len(lane.ports)
    for i in range(3):
        spice, tls = lane_mod.console_port_names(i)
        assert lane.ports[spice] and lane.ports[tls]
    assert lane_mod.console_port_names(0) == ('guest_spice',
                                              'guest_spice_tls')
    assert lane_mod.console_port_names(2) == ('guest_spice_3',
                                              'guest_spice_tls_3')
    assert len(set(lane.console_uuids)) == 3
    assert len(set(lane.tickets)) == 3
    for t in lane.tickets:
        assert t in lane.redactor.values
    assert lane.secrets.get('spice-ticket-console-3') == lane.tickets[2]
    consoles = lane.info()['consoles']
    assert [c['spice_port'] for c in consoles] == [
        lane.ports[lane_mod.console_port_names(i)[0]] for i in range(3)]
    assert all(t not in str(lane.info()) for t in lane.tickets)


def test_consoles_must_be_positive():
    for bad in (0, -1, 2.5, None):
        with pytest.raises(ValueError):
            lane_mod.Lane('/tmp/never', consoles=bad)


class _Guest:
    def __init__(self, name, spice_port):
        self.name = name
        self.spice_port = spice_port
        self.pid = None
        self.torn_down = False

    def teardown(self):
        self.torn_down = True


def test_console_index_and_kerbside_route_per_console(tmp_path, prepared):
    lane = prepared(tmp_path, 3)
    lane.kerbside = _kerbside(tmp_path)
    for i in range(3):
        port = lane.ports[lane_mod.console_port_names(i)[0]]
        guest = _Guest('g%d' % i, port)
        assert lane.console_index(guest) == i
        route = lane.console_route(guest, 'kerbside')
        assert route.uuid == lane.console_uuids[i]
    with pytest.raises(errors.ProviderError):
        lane.console_index(_Guest('stray', 1))


def test_extra_consoles_follow_hypervisor_tls(tmp_path, prepared):
    lane = prepared(tmp_path, 2)
    [extra] = lane._extra_consoles()
    assert extra['port'] == lane.ports['guest_spice_2']
    assert extra['tls_port'] == lane.ports['guest_spice_tls_2']
    assert extra['uuid'] == lane.console_uuids[1]
    plain = prepared(tmp_path / 'plain', 2, hypervisor_tls=False)
    assert plain._extra_consoles()[0]['tls_port'] is None


class _Provider:
    """Stands in for qemu only in the name-guard test below."""

    def __init__(self, port):
        self.port = port
        self.guests = []

    def boot(self, image, name, artifact_dir):
        g = _Guest(name, self.port)
        self.guests.append(g)
        return g


def test_boot_console_guards_index_and_unique_names(tmp_path, prepared):
    lane = prepared(tmp_path, 2)
    lane._up = True
    lane.providers = [_Provider(lane.ports['guest_spice']),
                      _Provider(lane.ports['guest_spice_2'])]
    a, b = lane.console_slots()
    assert a.boot_guest(None, name='same').spice_port == \
        lane.ports['guest_spice']
    with pytest.raises(errors.HarnessError, match='unique'):
        b.boot_guest(None, name='same')
    with pytest.raises(errors.HarnessError, match='2 console'):
        lane._boot_console(2, None, 'x', str(tmp_path))
    assert b.boot_guest(None, name='other').spice_port == \
        lane.ports['guest_spice_2']


# -- slots share no state ---------------------------------------------------

class _Lane(lane_base.Lane):
    """The Lane interface with guests that are plain objects, to show the
    slots' bookkeeping (no service behind it).
    """

    def __init__(self, workdir, consoles):
        super().__init__(workdir, route='direct')
        self.consoles = consoles
        self.booted = []
        self._lock = threading.Lock()

    def up(self):
        return self

    def down(self):
        self._stop_slots()
        return {}

    def _boot(self, image, name, artifact_dir):
        raise AssertionError('the slots must boot through _boot_console')

    def _boot_console(self, index, image, name, artifact_dir):
        with self._lock:
            self.booted.append((index, name, artifact_dir))
        return _Guest(name, 5900 + index)

    def console_vv(self, guest, route=None):
        raise AssertionError('not used')


def test_slots_share_no_current_guest(tmp_path):
    lane = _Lane(str(tmp_path), 4)
    slots = lane.console_slots()
    assert lane.console_slots() == slots  # made once
    assert len(set(s.workdir for s in slots)) == 4
    barrier = threading.Barrier(4)

    def boot(slot):
        barrier.wait(10)
        for k in range(3):
            slot.boot_guest(None, name='s%d-g%d' % (slot.index, k))

    threads = [threading.Thread(target=boot, args=(s,)) for s in slots]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert lane.guest is None and lane.guests == []
    for s in slots:
        assert [g.name for g in s.guests] == [
            's%d-g%d' % (s.index, k) for k in range(3)]
        assert s.guest is s.guests[-1] and not s.guest.torn_down
        # each slot tore down only its own previous guests
        assert all(g.torn_down for g in s.guests[:-1])
        assert s.guest.spice_port == 5900 + s.index
        assert s.timings is not slots[0].timings or s is slots[0]
        assert s.ryll is None and s.ryll_procs == []
    dirs = [d for _, _, d in lane.booted]
    assert len(set(dirs)) == 12
    assert all(d.startswith(os.path.join(str(tmp_path), 'consoles'))
               for d in dirs)
    lane.down()
    assert all(s.guest.torn_down for s in slots)


def test_one_console_lane_has_one_slot(tmp_path):
    lane = _Lane(str(tmp_path), 1)
    lane.consoles = lane_base.Lane.consoles
    [slot] = lane.console_slots()
    assert slot.route == 'direct' and slot.redactor is lane.redactor
    assert slot.log_dir == lane.log_dir


# -- the registry under threads -----------------------------------------

def test_lane_registry_records_every_spawn_from_threads(tmp_path):
    registry = lane_mod._Registry(str(tmp_path / 'processes.json'))
    barrier = threading.Barrier(12)

    def spawn(i):
        barrier.wait(10)
        registry.spawn('sleep:%d' % i, ['sleep', '30'],
                       str(tmp_path / ('s%d.log' % i)))

    threads = [threading.Thread(target=spawn, args=(i,)) for i in range(12)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        on_disk = procs.ProcessRegistry(str(tmp_path / 'processes.json'))
        assert sorted(r['name'] for r in on_disk.records) == sorted(
            'sleep:%d' % i for i in range(12))
    finally:
        registry.stop_all()
    assert registry.leftovers() == []

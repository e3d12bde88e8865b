"""The direct-qemu lane: private MariaDB, Kerbside (API, daemon, proxy) with
a static source, TLS material, qemu guests and ryll, all on loopback.

Start order: ports and secrets, MariaDB, TLS, sources.yaml, Kerbside (db
upgrade, API, daemon + proxy), then guests and ryll on demand. Teardown:
ryll, the daemon (its kerbside-proxy child must exit too), the API, qemu,
MariaDB; then every lane port is checked free and the logs are scrubbed of
known secrets (a safety net; the harness itself writes none outside
`secrets/`).

Several fresh guests per lane: the lane allocates the guest SPICE port and
ticket once and every guest reuses them (the previous qemu has exited), so
the static source in sources.yaml never changes and Kerbside (which re-reads
it only every 60 s) never has to notice a new guest.

N consoles at once (`consoles=N`, benchmarks/load.py): N guest port pairs
(`guest_spice_<i>`, `guest_spice_tls_<i>` for i >= 2), N tickets and N
console uuids, all in the one static source, one DirectQemuProvider each;
`console_slots()` hands out one lane.base.ConsoleSlot per console, so N
guests and N ryll run at once behind the one MariaDB and Kerbside. With
the default (1) the lane is exactly the one-console lane.

Workdir layout (everything but `secrets/` is an artifact)::

    lane.json          state: ports, paths, route, timings (no secrets)
    processes.json     the process registry (pid, start time, argv)
    logs/              mariadbd, gunicorn, kerbside, daemon+proxy, ryll
    kerbside/          redacted sources.yaml and .vv copies
    tls/               CA and proxy certificates (public)
    guests/<name>/     serial.log, qemu.log, qemu-argv.txt, screendumps
    consoles/<i>/      guests/ and ryll/ of console slot i (console_slots)
    secrets/  (0700)   ticket, DB password, auth seed, JWT, .vv files,
                       private keys, sources.yaml, the MariaDB datadir
"""

import dataclasses
import json
import logging
import os
import shutil
import signal
import threading
import time
import uuid

from kerbside_tempest_plugin.common import atomic
from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import logtext
from kerbside_tempest_plugin.common import ports as common_ports
from kerbside_tempest_plugin.common import rundir
from kerbside_tempest_plugin.common import secrets as common_secrets
from kerbside_tempest_plugin.common import tls as common_tls
from kerbside_tempest_plugin.common import vv as common_vv
from kerbside_tempest_plugin.lane import base as lane_base
from kerbside_tempest_plugin.lane import kerbside as lane_kerbside
from kerbside_tempest_plugin.lane import mariadb as lane_mariadb
from kerbside_tempest_plugin.lane import procs
from kerbside_tempest_plugin.lane import reaper as lane_reaper
from kerbside_tempest_plugin.lane import relay as lane_relay
from kerbside_tempest_plugin.providers import base
from kerbside_tempest_plugin.providers import direct_qemu
from kerbside_tempest_plugin.spice import faults as spice_faults

LOG = logging.getLogger(__name__)

ROUTES = ('kerbside', 'direct')
SEXTANT_BANNER = 'Hello from Uncalibrated Sextant'
STATE_FILE = 'lane.json'
# Saved guests (guest_restore): large, not artifacts, gone with the lane.
GUEST_STATE_DIR = 'guest-state'
PORT_NAMES = ('mariadb', 'api', 'proxy_secure', 'proxy_insecure',
              'metrics', 'guest_spice', 'guest_spice_tls')


def console_port_names(index):
    """The lane port names of console `index` (0-based): the first uses
    the one-console names, console i + 1 gets a `_<i + 1>` suffix.
    """
    if index == 0:
        return 'guest_spice', 'guest_spice_tls'
    return 'guest_spice_%d' % (index + 1), 'guest_spice_tls_%d' % (index + 1)


class _Registry(procs.ProcessRegistry):
    """The process registry, safe for the N consoles' threads: records
    are added (and the file written) one at a time.
    """

    def __init__(self, *args, **kwargs):
        self._lock = threading.RLock()
        super().__init__(*args, **kwargs)

    def add(self, *args, **kwargs):
        with self._lock:
            return super().add(*args, **kwargs)

    def spawn(self, *args, **kwargs):
        with self._lock:
            return super().spawn(*args, **kwargs)


# Settings every entry point (tempest, kerbside-harness, the tox jobs, the
# benchmarks) reaches through the environment when it does not set them.
QEMU_BINARY_ENV = 'KTP_QEMU_BINARY'
HYPERVISOR_TLS_ENV = 'KTP_HYPERVISOR_TLS'
FAULT_ENV = 'KTP_FAULT'
RELAY_ENV = 'KTP_RELAY'


def env_flag(name, default, environ=None):
    """A yes/no environment setting (1/0, true/false, yes/no, on/off);
    unset or empty gives `default`; anything else is a ValueError naming it.
    """
    text = (environ if environ is not None else os.environ).get(name, '')
    text = text.strip().lower()
    if not text:
        return default
    if text in ('1', 'true', 'yes', 'on'):
        return True
    if text in ('0', 'false', 'no', 'off'):
        return False
    raise ValueError('%s=%s: say 1 or 0 (true/false, yes/no, on/off)' % (
        name, text))


def default_workdir():
    return os.environ.get('KERBSIDE_HARNESS_WORKDIR') or \
        '/tmp/kerbside-harness'


class Lane(lane_base.Lane):
    """One lane in one workdir (the lane.base.Lane interface). Use as a
    context manager, or call up() and (always) down().

    `route` is the default console route of guests (`kerbside` or
    `direct`); each call can override it. `kerbside=False` skips MariaDB
    and Kerbside (direct route only).

    `hypervisor_tls` (with Kerbside; the default): qemu gets a TLS port
    with a certificate from the lane CA and refuses plain channels, and
    the static source lists it as `secure_port` with that CA and qemu's
    subject, so the proxy's leg to qemu is TLS (and so is the direct
    route). `hypervisor_ca` replaces the CA file Kerbside verifies qemu
    with (a wrong one makes the console fail; a negative test).

    Unset (None) `qemu_binary`, `hypervisor_tls`, `fault` and `relay` come
    from $KTP_QEMU_BINARY, $KTP_HYPERVISOR_TLS, $KTP_FAULT and $KTP_RELAY
    (else qemu-system-x86_64, TLS on, no fault, no relay).

    `relay` (or a `fault` spec of spice.faults, which implies it): every
    console's hypervisor leg runs through a fault relay (lane.relay):
    Kerbside's static source and the direct route dial the relay, the
    relay dials qemu. The leg is then plain (hypervisor TLS off).
    `arm_fault(spec)` arms one while the lane runs; `fault_log(since)`
    reads what the relays injected.

    `consoles` (default 1): how many consoles the lane holds at once
    (see the module docstring and console_slots()).

    `guest_restore` (a predicate on a booted guest; None: off): boot
    once, restore per guest. The first guest of each image on each
    console boots cold and is saved once the predicate says so (qemu's
    migration stream, its OVMF vars, disk overlay and serial so far, in
    `<workdir>/guest-state/`); every later guest there is a new qemu
    restored from that save, with the lane's ticket and its own serial
    file (providers.direct_qemu; docs/plans/fast-feedback.md). The saves
    go with the lane (down(), or teardown_workdir after a crash).

    Kerbside's settings (lane.kerbside.KerbsideSettings; None leaves
    Kerbside's default): `firewall_mode` ('enforce' or 'warn'),
    `firewall_permitted_channels` (channel names), `console_token_duration`
    (minutes) and `proxy_bin` (a kerbside-proxy binary; None:
    $KERBSIDE_PROXY_BIN when set, else the venv's). `kerbside_source` (None:
    $KERBSIDE_SOURCE when set) is a Kerbside checkout the venv must hold:
    up() installs it (KerbsideVenv.ensure) unless the venv already holds it
    unchanged. Without Kerbside (`kerbside=False`) all of these are
    ignored. `kerbside_build()` says which Kerbside ran.
    """

    def __init__(self, workdir=None, route='kerbside', kerbside=True,
                 kerbside_venv=None, ryll_binary='ryll', qemu_binary=None,
                 accel='auto', ovmf_code=None, ovmf_vars=None, memory_mb=256,
                 guest_tls=False, kerbside_verbose=True,
                 hypervisor_tls=None, hypervisor_ca=None, consoles=1,
                 kerbside_source=None, firewall_mode=None,
                 firewall_permitted_channels=None,
                 console_token_duration=None, proxy_bin=None, relay=False,
                 fault=None, guest_restore=None):
        if route not in ROUTES:
            raise ValueError('route must be one of %s' % (ROUTES,))
        if route == 'kerbside' and not kerbside:
            raise ValueError('the kerbside route needs kerbside=True')
        if not isinstance(consoles, int) or consoles < 1:
            raise ValueError('consoles must be a positive integer, not %r'
                             % (consoles,))
        workdir = os.path.abspath(workdir or default_workdir())
        super().__init__(workdir, route=route, ryll_binary=ryll_binary,
                         log_dir=os.path.join(workdir, 'logs'))
        self.with_kerbside = kerbside
        self.venv = lane_kerbside.KerbsideVenv(kerbside_venv)
        self.kerbside_settings = None
        self.kerbside_source = None
        if kerbside:
            self.kerbside_settings = \
                lane_kerbside.KerbsideSettings.from_options(
                    firewall_mode=firewall_mode,
                    firewall_permitted_channels=firewall_permitted_channels,
                    console_token_duration=console_token_duration,
                    proxy_bin=proxy_bin)
            self.kerbside_source = checkout_path(kerbside_source)
        self._kerbside_build = None
        self.qemu_options = dict(
            qemu_binary=qemu_binary or os.environ.get(QEMU_BINARY_ENV) or
            'qemu-system-x86_64', accel=accel,
            ovmf_code=ovmf_code, ovmf_vars=ovmf_vars, memory_mb=memory_mb,
            tls=guest_tls)
        self.kerbside_verbose = kerbside_verbose
        self.guest_restore = guest_restore
        environ = os.environ
        if hypervisor_tls is None:
            hypervisor_tls = env_flag(HYPERVISOR_TLS_ENV, True, environ)
        if fault is None:
            fault = environ.get(FAULT_ENV) or None
        relay = relay or env_flag(RELAY_ENV, False, environ)
        # A fault relay reads the hypervisor leg, so that leg is plain.
        self.relay = bool(relay or fault)
        self.fault = fault or None
        if self.fault:
            spice_faults.parse(self.fault)     # a typo fails before up()
        self.relay_note = None
        if self.relay and hypervisor_tls and kerbside:
            self.relay_note = ('the fault relay reads the hypervisor leg, '
                               'so it is plain SPICE (hypervisor TLS off)')
        self.hypervisor_tls = bool(hypervisor_tls and kerbside and
                                   not self.relay)
        self.relays = []
        self.hypervisor_ca = hypervisor_ca
        self.consoles = consoles
        self.console_uuids = []
        self.tickets = []
        self.providers = []
        self._state_lock = threading.RLock()
        self._slot_names = set()
        self.secrets = None
        self.registry = None
        self.run_dir = None
        self.ports = {}
        self.console_uuid = None
        self.mariadb = None
        self.kerbside = None
        self.tls = None
        self.provider = None
        self._up = False
        self._down_report = None
        self._reaper = None

    # -- construction helpers ------------------------------------------
    @classmethod
    def from_config(cls, conf, workdir=None, **kwargs):
        """From oslo.config ([kerbside] and [direct_qemu]); `kwargs`
        win. An empty `firewall_permitted_channels` is unset.
        """
        kb, dq = conf.kerbside, conf.direct_qemu
        kwargs.setdefault('route', kb.route)
        kwargs.setdefault('kerbside_source', kb.kerbside_source)
        kwargs.setdefault('proxy_bin', kb.proxy_binary)
        kwargs.setdefault('firewall_mode', kb.firewall_mode)
        kwargs.setdefault('firewall_permitted_channels',
                          kb.firewall_permitted_channels or None)
        kwargs.setdefault('console_token_duration',
                          kb.console_token_duration)
        kwargs.setdefault('hypervisor_tls', kb.hypervisor_tls)
        kwargs.setdefault('fault', kb.fault)
        kwargs.setdefault('relay', kb.fault_relay)
        return cls(workdir=workdir, kerbside_venv=kb.kerbside_venv,
                   ryll_binary=kb.ryll_binary, qemu_binary=dq.qemu_binary,
                   accel=dq.accel, ovmf_code=dq.ovmf_code,
                   ovmf_vars=dq.ovmf_vars, memory_mb=dq.memory_mb, **kwargs)

    # -- state file ------------------------------------------------------
    @property
    def state_path(self):
        return os.path.join(self.workdir, STATE_FILE)

    def info(self):
        """What a user or test needs to reach the lane (no secrets)."""
        g = self.guest
        info = {
            'workdir': self.workdir,
            'run_dir': self.run_dir,
            'route': self.route,
            'kerbside': self.with_kerbside,
            'hypervisor_tls': self.hypervisor_tls,
            'relay': [r.info() for r in self.relays] or None,
            'relay_note': self.relay_note,
            'ports': dict(self.ports),
            'spice_port': self.ports.get('guest_spice'),
            'api_port': self.ports.get('api'),
            'api_url': self.kerbside.api_url if self.kerbside else None,
            'console': {'source': lane_kerbside.SOURCE_NAME,
                        'uuid': self.console_uuid} if self.kerbside
            else None,
            'guest': None if g is None else {
                'name': g.name, 'pid': g.pid, 'artifact_dir':
                g.artifact_dir, 'accel': g.accel,
                'accel_reason': g.accel_reason},
            'serial_log': g.serial_path if g else None,
            'control_socket': self.ryll.socket_path if self.ryll else None,
            'ryll_pid': self.ryll.pid if self.ryll else None,
            'kerbside_venv': self.venv.path if self.with_kerbside else None,
            'kerbside_source': self.kerbside_source,
            # What the lane set (None: Kerbside's default) and, once up,
            # which Kerbside ran.
            'kerbside_settings': self.kerbside_settings.info()
            if self.kerbside_settings else None,
            'kerbside_build': self._kerbside_build,
            'guest_restore': self.guest_restore is not None,
            'timings': {k: round(v, 3) for k, v in self.timings.items()},
        }
        if self.consoles > 1:
            info['consoles'] = self._consoles_info()
        return info

    def _consoles_info(self):
        out = []
        for i, slot in enumerate(self._slots or [None] * self.consoles):
            spice, tls = console_port_names(i)
            g = slot.guest if slot else None
            rp = slot.ryll if slot else None
            out.append({
                'index': i + 1,
                'uuid': self.console_uuids[i] if self.kerbside else None,
                'spice_port': self.ports.get(spice),
                'spice_tls_port': self.ports.get(tls),
                'guest': g.name if g else None,
                'guest_pid': g.pid if g else None,
                'ryll_pid': rp.pid if rp else None})
        return out

    def save_state(self, **extra):
        """Write lane.json: info() plus `extra` (no secrets)."""
        with self._state_lock:
            state = self.info()
            state.update(extra)
            atomic.write_json(self.state_path, state, sort_keys=True)

    # -- up ----------------------------------------------------------------
    def _prepare(self):
        for d in ('logs', 'kerbside', 'tls', 'guests'):
            os.makedirs(os.path.join(self.workdir, d), exist_ok=True)
        self.secrets = common_secrets.SecretStore(
            os.path.join(self.workdir, 'secrets'), self.redactor)
        self.registry = _Registry(
            os.path.join(self.workdir, 'processes.json'), self.redactor)
        if self.registry.living():
            raise errors.HarnessError(
                'workdir %s already has a running lane (%s); run '
                '`kerbside-harness down --workdir %s` first' % (
                    self.workdir, ', '.join(
                        r['name'] for r in self.registry.living()),
                    self.workdir))
        run = os.path.join(self.workdir, 'run')
        if len(run) > 60:  # unix socket paths are limited to ~108 bytes
            run = rundir.make()
        os.makedirs(run, mode=0o700, exist_ok=True)
        self.run_dir = run
        names = list(PORT_NAMES)
        for i in range(1, self.consoles):
            names += console_port_names(i)
        if self.relay:
            names += [lane_relay.relay_port_name(i)
                      for i in range(self.consoles)]
        allocated = common_ports.free_ports(len(names))
        self.ports = dict(zip(names, allocated))
        self.console_uuid = str(uuid.uuid4())  # noqa: T113
        self.ticket = common_secrets.random_token(12)
        self.secrets.put('spice-ticket', self.ticket)
        self.console_uuids = [self.console_uuid]
        self.tickets = [self.ticket]
        for i in range(1, self.consoles):
            self.console_uuids.append(str(uuid.uuid4()))  # noqa: T113
            self.tickets.append(common_secrets.random_token(12))
            self.secrets.put('spice-ticket-console-%d' % (i + 1),
                             self.tickets[i])

    def up(self, timeout=90):
        """Bring up MariaDB and Kerbside (no guest yet). Returns self.

        Before anything starts, a reaper (lane.reaper) starts watching
        this process: should it end without down() (SIGKILL, a signal
        nobody handles, a crash), the reaper tears the lane down.
        """
        t0 = time.monotonic()
        self._prepare()
        self.save_state(state='starting')
        self._reaper = lane_reaper.Reaper(self.workdir).start()
        if self.relay_note:
            LOG.info('%s', self.relay_note)
        if self.relay:
            t = time.monotonic()
            for i in range(self.consoles):
                self.relays.append(lane_relay.FaultRelay(
                    self.registry, self.log_dir, self.run_dir, i,
                    self.ports[lane_relay.relay_port_name(i)],
                    self.ports[console_port_names(i)[0]],
                    fault=self.fault).start())
            self.timings['fault_relay'] = time.monotonic() - t
        if self.with_kerbside:
            if self.kerbside_source:
                t = time.monotonic()
                LOG.info('%s', self.venv.ensure(
                    source=self.kerbside_source, log=LOG.info,
                    log_path=os.path.join(self.log_dir, 'kerbside-pip.log')))
                self.timings['kerbside_source'] = time.monotonic() - t
            problems = self.venv.check()
            if problems:
                raise errors.HarnessError(
                    'the Kerbside venv is not usable (%s); run '
                    '`kerbside-harness setup`' % '; '.join(problems))
            t = time.monotonic()
            self.mariadb = lane_mariadb.PrivateMariaDB(
                self.secrets.file('mariadb'), self.run_dir, self.log_dir,
                self.ports['mariadb'], self.registry, self.secrets)
            self.mariadb.start(timeout=timeout)
            self.timings['mariadb'] = time.monotonic() - t
            t = time.monotonic()
            self.tls = common_tls.make_tls(
                os.path.join(self.workdir, 'tls'),
                self.secrets.file('tls'), qemu=self.hypervisor_tls)
            self.timings['tls'] = time.monotonic() - t
            t = time.monotonic()
            self.kerbside = lane_kerbside.Kerbside(
                self.venv, self.workdir, self.run_dir, self.secrets,
                self.registry, self.tls, self.mariadb.sql_url,
                self.ports['api'], self.ports['proxy_secure'],
                self.ports['proxy_insecure'], self.ports['metrics'],
                self.console_uuid, self.hypervisor_port(0), self.ticket,
                verbose=self.kerbside_verbose,
                extra_consoles=self._extra_consoles(),
                **self._hypervisor_leg(), **self._kerbside_options())
            self.kerbside.start(timeout=timeout)
            self.kerbside.token()
            self._kerbside_build = self.kerbside.kerbside_build(running=True)
            self.timings['kerbside'] = time.monotonic() - t
            for k, v in self.kerbside.timings.items():
                self.timings['kerbside_' + k] = v
        self.providers = [self._provider(i) for i in range(self.consoles)]
        self.provider = self.providers[0]
        self.timings['lane_up'] = time.monotonic() - t0
        self._up = True
        self.save_state(state='up')
        return self

    def _kerbside_options(self):
        """Kerbside's settings as lane.kerbside.Kerbside's keywords."""
        s = self.kerbside_settings
        return dict(firewall_mode=s.firewall_mode,
                    firewall_permitted_channels=s.firewall_permitted_channels,
                    console_token_duration=s.console_token_duration,
                    proxy_bin=s.proxy_bin)

    def kerbside_build(self):
        """Which Kerbside the lane runs (lane.kerbside.build_of's dict:
        kerbside_version, kerbside_proxy_version, proxy_bin, proxy_sha256,
        proxy_contract_hash, venv, source), as recorded once it was up; None
        without Kerbside or before up().
        """
        if self._kerbside_build is None and self.kerbside is not None:
            self._kerbside_build = self.kerbside.kerbside_build()
        return self._kerbside_build

    def _provider(self, index):
        """The DirectQemuProvider of console `index`: its ports, its
        ticket.
        """
        spice, tls = console_port_names(index)
        qemu_options = dict(self.qemu_options)
        if self.hypervisor_tls:
            qemu_options.update(
                tls=True, tls_port=self.ports[tls],
                x509_dir=self.tls.qemu_x509_dir, tls_only=True)
        return direct_qemu.DirectQemuProvider(
            spice_port=self.ports[spice], ticket=self.tickets[index],
            registry=self.registry, secrets=self.secrets,
            run_dir=self.run_dir, restore_when=self.guest_restore,
            state_dir=os.path.join(self.workdir, GUEST_STATE_DIR,
                                   str(index + 1)), **qemu_options)

    def hypervisor_port(self, index):
        """The plain SPICE port a console's hypervisor leg dials: its
        fault relay's when the lane has relays, else qemu's.
        """
        if self.relay:
            return self.ports[lane_relay.relay_port_name(index)]
        return self.ports[console_port_names(index)[0]]

    def arm_fault(self, spec, console=None):
        """Arm the fault `spec` (spice.faults) on every console's relay,
        or on console `console` (1-based). Returns the specs armed.
        """
        if not self.relays:
            raise errors.HarnessError(
                'this lane has no fault relay; bring it up with relay=True '
                '(kerbside-harness up --relay, or --fault SPEC)')
        relays = self.relays if console is None else \
            [self.relays[console - 1]]
        armed = []
        for r in relays:
            armed += r.arm(spec)
        return armed

    def clear_faults(self):
        return sum(r.clear() for r in self.relays)

    def fault_log(self, since=None):
        """Every relay's log records at or after wall time `since`."""
        out = []
        for r in self.relays:
            for rec in r.injections(since):
                rec.setdefault('relay', r.index + 1)
                out.append(rec)
        return sorted(out, key=lambda rec: rec.get('t', 0))

    def _extra_consoles(self):
        """Consoles 2..N for the static source (none with one)."""
        out = []
        for i in range(1, self.consoles):
            spice, tls = console_port_names(i)
            out.append(dict(
                uuid=self.console_uuids[i], port=self.hypervisor_port(i),
                tls_port=self.ports[tls] if self.hypervisor_tls else None,
                ticket=self.tickets[i]))
        return out

    def console_index(self, guest):
        """Which console (0-based) `guest` is on, by its SPICE port."""
        if self.consoles == 1:
            return 0
        for i in range(self.consoles):
            if self.ports.get(console_port_names(i)[0]) == \
                    getattr(guest, 'spice_port', None):
                return i
        raise errors.ProviderError('guest %s is on none of the lane\'s '
                                   'consoles' % getattr(guest, 'name', guest))

    def _hypervisor_leg(self):
        """Kerbside's view of qemu's TLS port (none without it)."""
        if not self.hypervisor_tls:
            return {}
        return dict(guest_tls_port=self.ports['guest_spice_tls'],
                    guest_ca_cert=self.hypervisor_ca or self.tls.ca_cert,
                    guest_host_subject=direct_qemu.QEMU_HOST_SUBJECT)

    # -- guests (lane.base.Lane hooks) ------------------------------------
    def _check_up(self):
        if not self._up:
            raise errors.HarnessError('lane is not up')

    def _boot(self, image, name, artifact_dir):
        return self.provider.boot(image, name, artifact_dir)

    def _boot_console(self, index, image, name, artifact_dir):
        if not 0 <= index < self.consoles:
            raise errors.HarnessError('the lane has %d console(s), not %d'
                                      % (self.consoles, index + 1))
        with self._state_lock:
            taken = set(g.name for p in self.providers for g in p.guests)
            if name in taken or name in self._slot_names:
                raise errors.HarnessError(
                    'a guest named %s was already booted on this lane; '
                    'guest names must be unique across its consoles' % name)
            self._slot_names.add(name)
        return self.providers[index].boot(image, name, artifact_dir)

    def _changed(self):
        self.save_state(state='up')

    # -- routes: the lane holds the route; the guest knows only direct ----
    def console_route(self, guest, route=None):
        """The ConsoleRoute of `guest` over `route` (default: the
        lane's); no secret.
        """
        route = route or self.route
        if route == 'direct':
            r = guest.console_route('direct')
            if self.relay:      # the direct route dials the relay too
                r = dataclasses.replace(r, port=self.hypervisor_port(
                    self.console_index(guest)))
            return r
        if route != 'kerbside':
            raise errors.ProviderError('unknown route %r' % route)
        self._need_kerbside()
        return base.ConsoleRoute(
            kind='kerbside', host='127.0.0.1',
            port=self.ports['proxy_insecure'],
            tls_port=self.ports['proxy_secure'],
            source=lane_kerbside.SOURCE_NAME,
            uuid=self.console_uuids[self.console_index(guest)],
            api_url=self.kerbside.api_url)

    def console_vv(self, guest, route=None):
        """A fresh .vv: qemu's own (direct) or Kerbside's (kerbside)."""
        route = route or self.route
        if route == 'direct':
            text = guest.console_vv('direct')
            if self.relay:
                text = common_vv.with_port(text, self.hypervisor_port(
                    self.console_index(guest)))
            return text
        if route != 'kerbside':
            raise errors.ProviderError('unknown route %r' % route)
        self._need_kerbside()
        dead = self.dead_services()
        if dead:
            # kerbside 0.8.0's daemon exits when its proxy dies; say so
            # instead of handing ryll a .vv nobody will serve.
            raise errors.ProviderError(
                'the kerbside route is down: %s; daemon output tail:\n%s' % (
                    ', '.join(dead),
                    self.redactor.redact(logtext.tail_file(os.path.join(
                        self.log_dir, 'kerbside-daemon.out'), 5))))
        return self.kerbside.fetch_vv(
            self.console_uuids[self.console_index(guest)])

    def dead_services(self):
        """Lane services (not guests or ryll) that should run but do not."""
        out = []
        for name, proc in (('mariadbd', self.mariadb and self.mariadb.proc),
                           ('gunicorn', self.kerbside and self.kerbside.api),
                           ('kerbside-daemon',
                            self.kerbside and self.kerbside.daemon)):
            if proc is not None and proc.poll() is not None:
                out.append('%s exited with %s' % (name, proc.returncode))
        if self.kerbside is not None and self.kerbside.daemon is not None \
                and not out:
            if not self.kerbside.proxy_children():
                out.append('no kerbside-proxy process')
        return out

    def _need_kerbside(self):
        if self.kerbside is None:
            raise errors.ProviderError('this lane runs without Kerbside; '
                                       'only the direct route exists')

    # -- ryll (lane.base.Lane hook) ----------------------------------------
    def _ryll_started(self, n, rp):
        if rp.pid:
            # The argv ryll was started with: /proc's cmdline can still be
            # empty this soon after the fork (it was, in some records).
            self.registry.add('ryll:%s' % n, rp.pid, argv=rp.argv,
                              logs=[rp.stdout_path, rp.stderr_path],
                              scratch=[rp.private_dir])

    # -- status --------------------------------------------------------
    def status(self):
        return lane_status(self.workdir)

    # -- down ----------------------------------------------------------
    def down(self, check=False):
        """Stop everything (idempotent), verify ports are free, scrub the
        artifacts. Returns a report; raises only when `check` and something
        was left behind.
        """
        if self._down_report is not None:
            return self._down_report
        self.stop_ryll()
        self._stop_slots()
        report = teardown_workdir(self.workdir, redactor=self.redactor,
                                  extra_ports=self.ports.values(),
                                  run_dir=self.run_dir)
        for guest in self.guests:
            guest.teardown()  # qemu is already stopped; frees scratch files
        for provider in self.providers:
            provider.drop_saved()
        # Only now: had this process died during the teardown, the reaper
        # would have finished it.
        self.leave_running()
        self._up = False
        self._down_report = report
        if check and (report['leftover_pids'] or report['busy_ports']):
            raise errors.HarnessError('teardown left processes %s and ports '
                                      '%s' % (report['leftover_pids'],
                                              report['busy_ports']))
        return report

    def leave_running(self):
        """Stop the lane's reaper: this process is about to exit and
        leave the lane up on purpose (`kerbside-harness up`), so only
        `kerbside-harness down --workdir` takes it down. down() calls it
        once the lane is down. Idempotent; never raises.
        """
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            reaper.stop()


def checkout_path(source, environ=None):
    """A Kerbside checkout given to a lane, absolute: `source`, else
    $KERBSIDE_SOURCE (of `environ`); None when neither is set. ValueError
    when it is not a directory.
    """
    environ = os.environ if environ is None else environ
    origin = 'kerbside_source'
    if source is None and environ.get('KERBSIDE_SOURCE'):
        source, origin = environ['KERBSIDE_SOURCE'], '$KERBSIDE_SOURCE'
    if source is None:
        return None
    if not isinstance(source, str) or not os.path.isdir(source):
        raise ValueError('%s %r is not a directory (a Kerbside checkout)' % (
            origin, source))
    return os.path.abspath(source)


def load_state(workdir, state_file=STATE_FILE):
    """The saved state of the lane in `workdir`; None when there is none
    or it is unreadable (a teardown after a crash must still run).
    """
    try:
        with open(os.path.join(workdir, state_file)) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def teardown_workdir(workdir, redactor=None, extra_ports=(), run_dir=None,
                     port_timeout=10.0):
    """Stop every process recorded in `workdir` in lane order and check the
    ports are free. Works after a crash of whatever started the lane (it
    needs only the registry and the state file). Never raises.
    """
    started = time.monotonic()
    state, report, secrets_dir, redactor, registry = begin_teardown(
        workdir, redactor)
    try:
        report['stopped'] = registry.stop_all(
            timeouts={'ryll': 5, 'kerbside-daemon': 25, 'gunicorn': 15,
                      'qemu': 10, 'mariadbd': 30},
            signals={'ryll': signal.SIGINT})
    except Exception as e:
        LOG.exception('stopping lane processes failed')
        report['error'] = repr(e)
    report['leftover_pids'] = registry.leftovers()
    try:
        report['removed_scratch'] = registry.remove_scratch()
    except Exception:
        LOG.exception('removing process scratch directories failed')
    ports = set(p for p in (state.get('ports') or {}).values() if p)
    ports.update(p for p in extra_ports if p)
    # qemu is down: the saved guests (guest_restore) have no more use.
    shutil.rmtree(os.path.join(workdir, GUEST_STATE_DIR), ignore_errors=True)
    return finish_teardown(workdir, state, report, ports, redactor,
                           secrets_dir, started, port_timeout,
                           run_dir=run_dir, state_file=STATE_FILE)


def begin_teardown(workdir, redactor=None, state_file=STATE_FILE,
                   **report_keys):
    """The start every lane's teardown shares: the saved state, an empty
    report (plus `report_keys`), the secrets directory, a redactor that
    knows every secret stored there (best effort: teardown never fails on
    it) and the process registry. Returns those five.
    """
    state = load_state(workdir, state_file) or {}
    report = {'workdir': workdir, 'stopped': [], 'leftover_pids': [],
              'busy_ports': [], 'scrubbed_files': []}
    report.update(report_keys)
    secrets_dir = os.path.join(workdir, 'secrets')
    redactor = redactor or common_secrets.Redactor()
    try:
        if os.path.isdir(secrets_dir):
            common_secrets.SecretStore(secrets_dir, redactor).load_all()
    except Exception:
        LOG.exception('could not read secrets for redaction')
    registry = procs.ProcessRegistry(os.path.join(workdir, 'processes.json'),
                                     redactor)
    return state, report, secrets_dir, redactor, registry


def finish_teardown(workdir, state, report, ports, redactor, secrets_dir,
                    started, port_timeout, run_dir=None,
                    state_file=STATE_FILE):
    """The end every lane's teardown shares: wait (up to `port_timeout`)
    for `ports` to be free, scrub known secrets from the kept files, remove
    the private run directory, and record `report` in the workdir's state
    file. Returns `report`; never raises.
    """
    deadline = time.monotonic() + port_timeout
    while True:
        busy = common_ports.busy_ports(ports)
        if not busy or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    report['busy_ports'] = busy
    if busy or report['leftover_pids']:
        LOG.error('teardown of %s left pids %s and listening ports %s',
                  workdir, report['leftover_pids'], busy)
    try:
        report['scrubbed_files'] = [
            os.path.relpath(p, workdir) for p in common_secrets.scrub_tree(
                workdir, redactor, skip=[secrets_dir])]
        if report['scrubbed_files']:
            LOG.warning('redacted secrets that other programs wrote into: '
                        '%s', ', '.join(report['scrubbed_files']))
    except Exception:
        LOG.exception('scrubbing artifacts failed')
    run_dir = run_dir or state.get('run_dir')
    # Only a ktp-run-* directory outside the workdir is ours to remove.
    if run_dir and not run_dir.startswith(workdir + os.sep) and \
            rundir.is_run_dir(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)
    report['seconds'] = round(time.monotonic() - started, 3)
    try:
        state['state'] = 'down'
        state['teardown'] = report
        atomic.write_json(os.path.join(workdir, state_file), state,
                          sort_keys=True)
    except OSError:
        pass
    return report


def lane_status(workdir):
    """Processes alive, ports listening and API health of a workdir."""
    state = load_state(workdir)
    if state is None:
        return {'workdir': workdir, 'state': 'absent'}
    registry = procs.ProcessRegistry(os.path.join(workdir, 'processes.json'))
    processes = [{'name': r['name'], 'pid': r['pid'],
                  'alive': registry.alive(r)} for r in registry.records]
    ports = state.get('ports') or {}
    listening = common_ports.listening_ports()
    out = {
        'workdir': workdir,
        'state': state.get('state'),
        'route': state.get('route'),
        'processes': processes,
        'ports': {k: {'port': v, 'listening': v in listening}
                  for k, v in ports.items()},
        'control_socket': state.get('control_socket'),
        'control_socket_exists': bool(state.get('control_socket')) and
        os.path.exists(state['control_socket']),
        'serial_log': state.get('serial_log'),
    }
    if state.get('api_url'):
        import urllib.request
        req = urllib.request.Request(state['api_url'] + '/', headers={
            'Accept': 'application/json'})
        try:
            opener = urllib.request.build_opener(
                urllib.request.ProxyHandler({}))
            with opener.open(req, timeout=3) as r:
                out['api'] = json.loads(r.read())
        except Exception as e:
            out['api'] = {'error': str(e)}
    return out

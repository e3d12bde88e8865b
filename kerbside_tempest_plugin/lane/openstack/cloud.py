"""`OpenStackCloud`: the single-box cloud, up and down.

Start order (each timed): ports, secrets and TLS; MariaDB (one database
per service); epmd + RabbitMQ; memcached; virtlogd + libvirtd; Keystone
(db sync, fernet, bootstrap, gunicorn, service users and catalog);
Placement; Glance; Neutron (ML2, no agents); Nova (cells, API, conductor,
scheduler, compute, discover_hosts); the flavor.

Teardown (`teardown_workdir`, which needs only the workdir, so it also
works after a crash): the OpenStack services newest first, then every
libvirt domain destroyed and undefined through libvirt, libvirtd and
virtlogd, any process still naming the workdir on its command line (a
qemu whose libvirtd died), memcached, RabbitMQ, epmd and MariaDB; then
every port is checked free and the logs are scrubbed of known secrets.

A reaper (lane.reaper, with this module's teardown_workdir and
cloud.json) starts in up() before any service does: should the process
holding the cloud end without down() (SIGKILL, a signal nobody handles,
a crash), it tears the cloud down. down() stops it after the teardown;
`kerbside-openstack up`, which leaves its cloud running on purpose,
stops it with leave_running().

Workdir layout (everything but `secrets/` is an artifact)::

    cloud.json      state: ports, SPICE range, paths, timings (no secrets)
    processes.json  the process registry
    logs/           every service's log and one-shot command output
    etc/            redacted copies of every config file
    libvirt/        libvirt's /etc, /var/lib, /var/cache, /var/log
    rabbitmq/ glance/ nova/ locks/ tls/
    secrets/ (0700) passwords, config files, MariaDB datadir, fernet and
                    credential keys, RabbitMQ's cookie, SPICE x509 keys
"""

import concurrent.futures
import logging
import os
import random
import shutil
import signal
import subprocess
import threading
import time

from kerbside_tempest_plugin.common import atomic
from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import ports as common_ports
from kerbside_tempest_plugin.common import rundir
from kerbside_tempest_plugin.common import secrets as common_secrets
from kerbside_tempest_plugin.common import tls as common_tls
from kerbside_tempest_plugin.common import waiting
from kerbside_tempest_plugin.lane import kerbside as lane_kerbside
from kerbside_tempest_plugin.lane import lane as lane_mod
from kerbside_tempest_plugin.lane.openstack import compute
from kerbside_tempest_plugin.lane.openstack import config
from kerbside_tempest_plugin.lane.openstack import kerbside as os_kerbside
from kerbside_tempest_plugin.lane.openstack import keystone
from kerbside_tempest_plugin.lane.openstack import services as svc
from kerbside_tempest_plugin.lane.openstack import venv as os_venv
from kerbside_tempest_plugin.lane import procs
from kerbside_tempest_plugin.lane import reaper as lane_reaper

LOG = logging.getLogger(__name__)

STATE_FILE = 'cloud.json'
# What the cloud's reaper runs once the cloud's owner is gone.
TEARDOWN = __name__ + ':teardown_workdir'
COMPUTE_HOST = 'ktp-compute'
# Stopped first, newest first; then libvirt; then the infrastructure.
# Kerbside (lane.kerbside's registry names) goes first: it calls Nova.
KERBSIDE = ('kerbside-proxy', 'kerbside-daemon', 'gunicorn')
OPENSTACK = ('nova-compute', 'nova-scheduler', 'nova-conductor', 'nova_api',
             'neutron', 'glance', 'placement', 'keystone')
LIBVIRT = ('libvirtd', 'virtlogd')
INFRA = ('memcached', 'rabbitmq', 'epmd', 'mariadbd')
# kerbside-daemon: exits 0.3-0.4 s after its SIGTERM, but once (tox3 of
# issue 20) ignored it for the whole default 15 s of a teardown; libvirtd
# exits in 0.05 s, but once (tox4) ignored it for the whole 20 s it had,
# every domain already destroyed and undefined through its API. Nothing
# of either outlives the cloud (a stray qemu naming the workdir is
# killed next), so SIGKILL sooner; the teardown still warns.
STOP_TIMEOUTS = {'nova-compute': 30, 'libvirtd': 5, 'rabbitmq': 30,
                 'mariadbd': 30, 'kerbside-daemon': 3}


# How up() orders the services (KTP_OPENSTACK_BRINGUP): `parallel` runs
# every service's one-shot setup side by side once MariaDB is up, starts
# each API as soon as its own setup is done, nova-compute as soon as
# nova-conductor has its service record, and lets nova-scheduler map the
# compute host; `serial` is the earlier order, one step after another,
# kept for the comparison (benchmarks/openstack_bringup.py).
# parallel-split: the parallel bring-up with Keystone's and Nova's
# one-shot setups as one process per keystone-manage / nova-manage
# command (as before keystone.prepare_in_one_process and
# compute.cells_in_one_process), kept for the comparison in
# benchmarks/openstack_bringup.py.
BRINGUP_MODES = ('parallel', 'serial', 'parallel-split')


# Niceness of the one-shot setups no other service waits for (Glance's
# and Neutron's database setup: only the first server needs them) in the
# parallel bring-up: on two cores, Keystone's and Nova's chains, which
# nova-compute waits for, get the CPU first. Their APIs run at the usual
# niceness.
BACKGROUND_NICE = 10


def bringup_mode(value=None):
    mode = value or os.environ.get('KTP_OPENSTACK_BRINGUP') or 'parallel'
    if mode not in BRINGUP_MODES:
        raise errors.HarnessError(
            'unknown OpenStack bring-up %r (KTP_OPENSTACK_BRINGUP): one of '
            '%s' % (mode, ', '.join(BRINGUP_MODES)))
    return mode


def default_workdir():
    return os.environ.get('KTP_OPENSTACK_WORKDIR') or '/tmp/ktp-openstack'


def spice_port_range(count=config.SPICE_PORT_COUNT, low=None, high=None,
                     rng=random):
    """(min, max) of `count` consecutive loopback ports free right now.

    libvirt hands SPICE ports out of one range (remote_display_port_*),
    so the lane allocates a whole free window instead of assuming 5900
    (reserved like every other lane port: see common.ports).
    """
    return common_ports.free_window(count, low=low, high=high, rng=rng)


class OpenStackCloud:
    """One cloud in one workdir. Call up() and (always) down().

    Kerbside in front takes the direct-qemu lane's options (lane.lane.Lane):
    `kerbside_source` (None: $KERBSIDE_SOURCE when set; installed into the
    Kerbside venv in up() unless it holds it unchanged), `firewall_mode`,
    `firewall_permitted_channels`, `console_token_duration` and `proxy_bin`
    (None: $KERBSIDE_PROXY_BIN when set). `kerbside_build()` says which
    Kerbside ran. `power_state_sync`: nova-compute's
    sync_power_state_interval (config.POWER_STATE_SYNC_INTERVAL; None:
    Nova's default, for comparisons).
    """

    def __init__(self, workdir=None, venv=None, spice_tls=True,
                 kerbside=True, kerbside_venv=None, kerbside_source=None,
                 firewall_mode=None, firewall_permitted_channels=None,
                 console_token_duration=None, proxy_bin=None,
                 bringup=None,
                 power_state_sync=config.POWER_STATE_SYNC_INTERVAL):
        self.workdir = os.path.abspath(workdir or default_workdir())
        self.power_state_sync = power_state_sync
        self.bringup = bringup_mode(bringup)
        self.venv = os_venv.OpenStackVenv(venv)
        self.spice_tls = spice_tls
        # Kerbside in front (the openstack source); None until up().
        self.with_kerbside = kerbside
        self.kerbside_venv = lane_kerbside.KerbsideVenv(kerbside_venv)
        self.kerbside_settings = None
        self.kerbside_source = None
        if kerbside:
            self.kerbside_settings = \
                lane_kerbside.KerbsideSettings.from_options(
                    firewall_mode=firewall_mode,
                    firewall_permitted_channels=firewall_permitted_channels,
                    console_token_duration=console_token_duration,
                    proxy_bin=proxy_bin)
            self.kerbside_source = lane_mod.checkout_path(kerbside_source)
        self._kerbside_build = None
        self.kerbside = None
        self.db = None
        self.redactor = common_secrets.Redactor()
        self.timings = {}
        self.layout = None
        self.registry = None
        self.secrets = None
        self.services = None
        self.admin = None
        self.flavor = None
        self.images = {}
        self.servers = []
        self._down_report = None
        self._reaper = None

    # -- state -----------------------------------------------------------
    def info(self):
        lay = self.layout
        return {
            'workdir': self.workdir,
            'run_dir': lay.run_dir if lay else None,
            'venv': self.venv.path,
            'ports': dict(lay.ports) if lay else {},
            'spice_range': list(lay.spice_range) if lay else None,
            'serial_range': list(lay.serial_range)
            if lay and lay.serial_range else None,
            'spice_tls': self.spice_tls,
            # The CA that signed libvirt's SPICE certificate (the direct
            # route's .vv needs it for the tls_port).
            'spice_ca_file': self.tls.ca_cert
            if self.spice_tls and getattr(self, 'tls', None) else None,
            'auth_url': lay.auth_url if lay else None,
            'compute_url': lay.url('nova_api', '/v2.1') if lay else None,
            'kerbside_url': lay.url('kerbside_api')
            if lay and self.with_kerbside else None,
            # What a Kerbside API client needs beside the URL (the
            # password is the admin's, in admin_password_file).
            'kerbside_metrics_url': lay.url('kerbside_metrics', '/metrics')
            if lay and self.with_kerbside else None,
            'kerbside_source_name': os_kerbside.SOURCE_NAME
            if self.with_kerbside else None,
            'kerbside_api_user': config.KERBSIDE_OPERATOR
            if self.with_kerbside else None,
            'kerbside_venv': self.kerbside_venv.path
            if self.with_kerbside else None,
            'kerbside_source': self.kerbside_source,
            'kerbside_settings': self.kerbside_settings.info()
            if self.kerbside_settings else None,
            'kerbside_build': self._kerbside_build,
            'libvirt_uri': lay.libvirt_uri if lay else None,
            'instances_path': lay.instances_path if lay else None,
            'admin_password_file': self.secrets.file('admin-password')
            if self.secrets else None,
            'flavor': self.flavor and self.flavor['id'],
            'images': self.images,
            'servers': self.servers,
            'bringup': self.bringup,
            'power_state_sync': self.power_state_sync,
            # User + system CPU seconds of each one-shot command.
            'oneshot_cpu': {k: round(v, 2) for k, v in dict(
                self.services.cpu if self.services else {}).items()
                if v is not None},
            'timings': {k: round(v, 3) for k, v in
                        dict(self.timings).items()},
        }

    def _save(self, state):
        data = self.info()
        data['state'] = state
        atomic.write_json(os.path.join(self.workdir, STATE_FILE), data,
                          sort_keys=True)

    # -- up ----------------------------------------------------------------
    def _prepare(self):
        for d in ('logs', 'etc', 'locks', 'tls', 'rabbitmq', 'glance',
                  'nova', 'libvirt'):
            os.makedirs(os.path.join(self.workdir, d), exist_ok=True)
        self.secrets = common_secrets.SecretStore(
            os.path.join(self.workdir, 'secrets'), self.redactor)
        self.registry = procs.ProcessRegistry(
            os.path.join(self.workdir, 'processes.json'), self.redactor)
        if self.registry.living():
            raise errors.HarnessError(
                'workdir %s already has a running cloud (%s); run `down` '
                'first' % (self.workdir, ', '.join(
                    r['name'] for r in self.registry.living())))
        problems = self.venv.check()
        if problems:
            raise errors.HarnessError(
                'the OpenStack venv is not usable (%s); run `kerbside-'
                'openstack setup`' % '; '.join(problems))
        # Made only once nothing else can refuse: a ktp-run-* directory is
        # removed by teardown through the saved layout.
        run = os.path.join(self.workdir, 'run')
        if len(run) > 50:  # unix socket paths are limited to 108 bytes
            run = rundir.make()
        os.makedirs(run, mode=0o700, exist_ok=True)
        passwords = {
            'admin': self.secrets.get_or_create('admin-password'),
            'db': self.secrets.get_or_create('db-password'),
            'rabbit': self.secrets.get_or_create('rabbit-password')}
        for user in config.SERVICE_USERS:
            passwords[user] = self.secrets.get_or_create(user + '-password')
        ports = dict(zip(config.PORT_NAMES,
                         common_ports.free_ports(len(config.PORT_NAMES))))
        spice = spice_port_range()
        serial = spice
        while serial[0] <= spice[1] and spice[0] <= serial[1]:
            serial = spice_port_range(config.SERIAL_PORT_COUNT)
        self.layout = config.Layout(
            workdir=self.workdir, ports=ports,
            spice_range=spice, serial_range=serial, passwords=passwords,
            venv=self.venv.path, run_dir=run, spice_tls=self.spice_tls)
        self.services = svc.Services(self.layout, self.registry,
                                     self.redactor, self.timings)

    def _write(self, service, name, text, mode=0o600):
        d = self.layout.conf_dir(service)
        os.makedirs(d, mode=0o700, exist_ok=True)
        common_secrets.write_private(os.path.join(d, name), text, mode)
        # The artifact copy: every known secret value masked.
        red = os.path.join(self.workdir, 'etc', service)
        os.makedirs(red, exist_ok=True)
        with open(os.path.join(red, name), 'w') as f:
            f.write(common_secrets.redact_patterns(
                self.redactor.redact(text)))

    def _write_configs(self):
        lay = self.layout
        ini = config.render_ini
        self._write('keystone', 'keystone.conf',
                    ini(config.keystone_conf(lay)))
        self._write('placement', 'placement.conf',
                    ini(config.placement_conf(lay)))
        self._write('glance', 'glance-api.conf',
                    ini(config.glance_conf(lay)))
        self._write('neutron', 'neutron.conf',
                    ini(config.neutron_conf(lay)))
        self._write('nova', 'nova.conf',
                    ini(config.nova_conf(
                        lay, host=COMPUTE_HOST,
                        scheduler_discovery=self.bringup != 'serial',
                        power_state_sync=self.power_state_sync)))
        paste = os.path.join(self.venv.path, 'etc')
        for service, name in (('glance', 'glance-api-paste.ini'),
                              ('nova', 'api-paste.ini'),
                              ('neutron', 'api-paste.ini')):
            shutil.copyfile(os.path.join(paste, service, name),
                            os.path.join(lay.conf_dir(service), name))
        self._write('rabbitmq', 'rabbitmq.conf', config.rabbitmq_conf(lay))
        libvirt_etc = lay.path('libvirt', 'etc')
        os.makedirs(libvirt_etc, exist_ok=True)
        for name, text in (('libvirtd.conf', config.libvirtd_conf(lay)),
                           ('virtlogd.conf', config.virtlogd_conf(lay)),
                           ('qemu.conf', config.qemu_conf(lay))):
            with open(os.path.join(libvirt_etc, name), 'w') as f:
                f.write(text)
        for d in (lay.instances_path, lay.path('nova', 'state'),
                  lay.path('glance', 'images'), lay.path('glance', 'staging'),
                  lay.path('glance', 'tasks')):
            os.makedirs(d, exist_ok=True)

    def _tls(self):
        t = time.monotonic()
        self.tls = common_tls.make_tls(os.path.join(self.workdir, 'tls'),
                                       self.secrets.file('tls'))
        if self.spice_tls:
            common_tls.make_qemu_x509(self.layout.spice_x509_dir,
                                      self.tls.ca_cert, self.tls.ca_key)
        self.timings['tls'] = time.monotonic() - t

    def _timed(self, name, fn, *args, **kwargs):
        t = time.monotonic()
        result = fn(*args, **kwargs)
        self.timings[name] = time.monotonic() - t
        return result

    def up(self, timeout=240):
        """Bring every service up. Returns self; on failure the caller
        must still call down() (the CLI and the test do).

        Before any service starts, a reaper (lane.reaper) starts watching
        this process: should it end without down(), the reaper tears the
        cloud down.
        """
        t0 = time.monotonic()
        self._prepare()
        self._save('starting')
        self._reaper = lane_reaper.Reaper(
            self.workdir, state_file=STATE_FILE, teardown=TEARDOWN).start()
        self._write_configs()
        self._tls()
        if self.bringup == 'serial':
            self._up_serial(timeout)
        else:
            self._up_parallel(timeout)
        self.timings['cloud_up'] = time.monotonic() - t0
        self._save('up')
        return self

    def _up_serial(self, timeout):
        """The earlier bring-up: one step after another."""
        s = self.services
        lay = self.layout
        self.db = s.start_mariadb(self.secrets, timeout=timeout)
        s.start_rabbitmq(timeout=timeout)
        s.start_memcached()
        s.start_libvirt(timeout=timeout)
        self._save('starting')

        t = time.monotonic()
        keystone.prepare(s, lay)
        s.start_wsgi('keystone', timeout=timeout, path='/v3')
        self.admin = keystone.register(lay, self.redactor, self.timings)
        self.timings['keystone_total'] = time.monotonic() - t

        t = time.monotonic()
        s.run('placement-db-sync', [
            s.bin('placement-manage'), '--config-file', os.path.join(
                lay.conf_dir('placement'), 'placement.conf'), 'db', 'sync'])
        s.start_wsgi('placement', timeout=timeout)
        self.timings['placement_total'] = time.monotonic() - t

        t = time.monotonic()
        s.run('glance-db-sync', [
            s.bin('glance-manage'), '--config-file', os.path.join(
                lay.conf_dir('glance'), 'glance-api.conf'), 'db_sync'])
        s.start_wsgi('glance', timeout=timeout)
        self.timings['glance_total'] = time.monotonic() - t

        t = time.monotonic()
        s.run('neutron-db-manage', [
            s.bin('neutron-db-manage'), '--config-file', os.path.join(
                lay.conf_dir('neutron'), 'neutron.conf'), 'upgrade',
            'heads'])
        s.start_wsgi('neutron', timeout=timeout)
        self.timings['neutron_total'] = time.monotonic() - t

        t = time.monotonic()
        compute.cells_before_compute(s, lay)
        s.start_wsgi('nova_api', timeout=timeout)
        for name in ('nova-conductor', 'nova-scheduler', 'nova-compute'):
            s.start_nova_daemon(name)
        self._save('starting')
        compute.discover_hosts(s, lay, self.admin, COMPUTE_HOST,
                               timeout=timeout)
        self.flavor = compute.ensure_flavor(self.admin)
        self.timings['nova_total'] = time.monotonic() - t
        if self.with_kerbside:
            self._start_kerbside(timeout)

    def _up_parallel(self, timeout):
        """Every service as soon as what it needs is up.

        MariaDB first (every one-shot setup needs it), then side by side:
        RabbitMQ's start; libvirtd probing its QEMU binaries (else nova-
        compute's start waits ~8 s for it); Keystone's, Placement's,
        Glance's, Neutron's and Nova's database setup, each service's API
        started the moment its own setup is done. nova-compute starts
        once nova-conductor has written its service record (Nova's
        services ping the conductor once with a 10 s timeout and the
        ping is lost when nobody consumes yet) and the service users are
        in Keystone (it creates its resource provider in Placement as it
        starts); nova-scheduler maps the compute host into cell1 itself
        (config.DISCOVER_HOSTS_INTERVAL). Kerbside starts beside Nova.
        Glance's and Neutron's database setup run niced
        (BACKGROUND_NICE): nothing waits for them until the first server.

        Timings: `<service>_total` is from the start of the side-by-side
        part to that service being usable; the one-shot commands keep
        their own names as in the serial bring-up.
        """
        s = self.services
        lay = self.layout
        abort = threading.Event()
        pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=16, thread_name_prefix='ktp-cloud-up')
        try:
            self.db = s.start_mariadb(self.secrets, timeout=timeout,
                                      synced=False)
            t = time.monotonic()
            s.spawn_rabbitmq()
            rabbit = pool.submit(s.wait_rabbitmq, timeout)
            s.start_memcached()
            s.start_libvirt(timeout=timeout)
            caps = pool.submit(s.warm_libvirt_capabilities, timeout)
            self._save('starting')
            chains = {}

            def chain(name, fn):
                def run():
                    fn()
                    self.timings[name + '_total'] = time.monotonic() - t
                chains[name] = pool.submit(run)

            def step():
                if abort.is_set():
                    raise errors.HarnessError(
                        'cloud bring-up abandoned: another step failed')

            def done(name):
                # Another chain's result, or its error; `abort` also stops
                # a chain waiting for a sibling that will never finish.
                waiting.wait_until(
                    lambda: (name in chains and chains[name].done()) or
                    abort.is_set(), timeout,
                    'the %s part of the cloud' % name, interval=0.05)
                step()
                chains[name].result()

            def keystone_chain():
                if self.bringup == 'parallel-split':
                    keystone.prepare(s, lay, pool=pool, step=step)
                else:
                    keystone.prepare_in_one_process(s, lay)
                step()
                s.start_wsgi('keystone', timeout=timeout, path='/v3')
                step()
                self.admin = keystone.register(lay, self.redactor,
                                               self.timings)

            def db_then_api(name, run_name, argv, needs_rabbit=False,
                            nice=None):
                def run():
                    s.run(run_name, argv, nice=nice)
                    if needs_rabbit:
                        rabbit.result()
                    step()
                    s.start_wsgi(name, timeout=timeout)
                return run

            def nova_chain():
                if self.bringup == 'parallel-split':
                    compute.cells_before_compute(s, lay, pool=pool,
                                                 step=step)
                else:
                    compute.cells_in_one_process(s, lay)
                rabbit.result()
                step()
                for name in ('nova-conductor', 'nova-scheduler'):
                    s.start_nova_daemon(name)
                s.start_wsgi('nova_api', timeout=timeout, wait=False)
                s.wait_service_record(self.db, 'nova-conductor', timeout)
                done('keystone')
                done('placement')
                step()
                t_compute = time.monotonic()
                s.start_nova_daemon('nova-compute')
                s.wait_wsgi('nova_api', timeout)
                compute.discover_hosts(s, lay, self.admin, COMPUTE_HOST,
                                       timeout=timeout, db=self.db,
                                       interval=0.25)
                self.timings['nova_compute_to_hypervisor'] = \
                    time.monotonic() - t_compute
                self.flavor = compute.ensure_flavor(self.admin)

            conf = lay.conf_dir
            chain('keystone', keystone_chain)
            chain('nova', nova_chain)
            chain('placement', db_then_api('placement', 'placement-db-sync', [
                s.bin('placement-manage'), '--config-file', os.path.join(
                    conf('placement'), 'placement.conf'), 'db', 'sync']))
            chain('glance', db_then_api('glance', 'glance-db-sync', [
                s.bin('glance-manage'), '--config-file', os.path.join(
                    conf('glance'), 'glance-api.conf'), 'db_sync'],
                nice=BACKGROUND_NICE))
            chain('neutron', db_then_api('neutron', 'neutron-db-manage', [
                s.bin('neutron-db-manage'), '--config-file', os.path.join(
                    conf('neutron'), 'neutron.conf'), 'upgrade', 'heads'],
                needs_rabbit=True, nice=BACKGROUND_NICE))
            done('keystone')
            if self.with_kerbside:
                self._start_kerbside(timeout)
            for name in ('placement', 'glance', 'neutron', 'nova'):
                done(name)
            try:
                caps.result(timeout=timeout)
            except Exception as e:
                # nova-compute probed for itself; only the head start is
                # lost.
                LOG.warning('libvirt capabilities warm-up failed: %s', e)
        except BaseException:
            abort.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _start_kerbside(self, timeout):
        t = time.monotonic()
        if self.kerbside_source:
            log_path = os.path.join(self.layout.log_dir, 'kerbside-pip.log')
            LOG.info('%s', self.kerbside_venv.ensure(
                source=self.kerbside_source, log=LOG.info,
                log_path=log_path))
            LOG.info('%s', os_kerbside.ensure_clients(self.kerbside_venv,
                                                      log_path=log_path))
            self.timings['kerbside_source'] = time.monotonic() - t
        sql_url = '%s/kerbside' % self.db.sql_url.rsplit('/', 1)[0]
        s = self.kerbside_settings
        self.kerbside = os_kerbside.CloudKerbside(
            self.kerbside_venv, self.layout, self.secrets, self.registry,
            self.tls, sql_url, firewall_mode=s.firewall_mode,
            firewall_permitted_channels=s.firewall_permitted_channels,
            console_token_duration=s.console_token_duration,
            proxy_bin=s.proxy_bin)
        self.kerbside.start(timeout=min(timeout, 120))
        self._kerbside_build = self.kerbside.kerbside_build(running=True)
        self.timings['kerbside'] = time.monotonic() - t

    def kerbside_build(self):
        """Which Kerbside runs in front (lane.kerbside.build_of's dict),
        as recorded once it was up; None without Kerbside or before up().
        """
        if self._kerbside_build is None and self.kerbside is not None:
            self._kerbside_build = self.kerbside.kerbside_build()
        return self._kerbside_build

    # -- the guest -------------------------------------------------------
    def upload_image(self, path):
        t = time.monotonic()
        image = compute.upload_image(self.admin, path)
        self.images[path] = image['id']
        self.timings['image_upload'] = time.monotonic() - t
        self._save('up')
        return image

    def boot(self, image_path, name='sextant', timeout=300, banner=None):
        """Boot `image_path` (uploaded once) with networks none; wait for
        ACTIVE and, with `banner`, for it in the console output.
        """
        image_id = self.images.get(image_path) or \
            self.upload_image(image_path)['id']
        t = time.monotonic()
        server = compute.boot(self.admin, name, image_id, self.flavor['id'])
        self.servers.append(server['id'])
        self._save('up')
        server = compute.wait_active(self.admin, server['id'], timeout)
        self.timings['boot_to_active'] = time.monotonic() - t
        if banner:
            compute.wait_console(self.admin, server['id'], banner, timeout)
            self.timings['boot_to_banner'] = time.monotonic() - t
        self._save('up')
        return server

    def console(self, server_id):
        """spice-direct for `server_id` and what Nova's token resolves to:
        {'url', 'token', 'host', 'port', 'tls_port', 'remote_console',
        'connect_info'}. The token is known to the redactor.
        """
        remote = compute.spice_direct(self.admin, server_id)
        token = compute.token_of(remote.get('url', ''))
        self.redactor.add(token)
        info = compute.console_auth_token(self.admin, token)
        return {'url': remote['url'], 'token': token,
                'host': info.get('host'), 'port': info.get('port'),
                'tls_port': info.get('tls_port'), 'remote_console': remote,
                'connect_info': info}

    def delete(self, server_id, timeout=120):
        compute.delete(self.admin, server_id, timeout)
        self._save('up')

    # -- down ----------------------------------------------------------
    def memory(self):
        return cloud_memory(self.workdir)

    def down(self):
        if self._down_report is None:
            self._down_report = teardown_workdir(
                self.workdir, redactor=self.redactor,
                extra_ports=list(self.layout.ports.values())
                if self.layout else ())
        # Only now: had this process died during the teardown, the reaper
        # would have finished it.
        self.leave_running()
        return self._down_report

    def leave_running(self):
        """Stop the cloud's reaper: this process is about to exit and
        leave the cloud up on purpose (`kerbside-openstack up`), so only
        `kerbside-openstack down --workdir` takes it down. down() calls
        it once the cloud is down. Idempotent; never raises.
        """
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            reaper.stop()


# -- status, memory, teardown: from the workdir alone ---------------------

def load_state(workdir):
    return lane_mod.load_state(workdir, STATE_FILE)


def _rss_kib(pid):
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def workdir_pids(workdir):
    """Live qemu processes naming `workdir` on their command line: libvirtd
    starts qemu in a session of its own, outside the registry's process
    groups, and a qemu outlives a libvirtd that crashed.
    """
    out = []
    for pid in procs.all_pids():
        argv = procs.proc_cmdline(pid)
        if argv and os.path.basename(argv[0]).startswith('qemu-system') \
                and any(workdir in a for a in argv) and procs.pid_alive(pid):
            out.append(pid)
    return out


def cloud_pids(workdir):
    registry = procs.ProcessRegistry(os.path.join(workdir, 'processes.json'))
    pids = set(registry.leftovers())
    pids.update(workdir_pids(workdir))
    return sorted(pids)


def cloud_memory(workdir):
    """{'total_mib', 'by_process': {name: MiB}} summed over every live
    process of the cloud: each registered service with the processes of
    its group (gunicorn workers, privsep helpers), and the qemu guests.
    """
    registry = procs.ProcessRegistry(os.path.join(workdir, 'processes.json'))
    by, seen = {}, set()
    for r in reversed(registry.records):
        pids = set()
        if r.get('start_ticks') is not None:
            pids.update(procs.group_members(r['pgid'],
                                            not_before=r['start_ticks']))
        if registry.alive(r):
            pids.add(r['pid'])
        pids -= seen
        seen |= pids
        if pids:
            by[r['name']] = by.get(r['name'], 0) + sum(
                _rss_kib(p) for p in pids)
    for pid in set(workdir_pids(workdir)) - seen:
        by['qemu'] = by.get('qemu', 0) + _rss_kib(pid)
    return {'total_mib': round(sum(by.values()) / 1024.0, 1),
            'by_process': {k: round(v / 1024.0, 1)
                           for k, v in sorted(by.items())}}


DOMAIN_CLEANUP = r'''
import sys, libvirt
try:
    conn = libvirt.open(sys.argv[1])
except libvirt.libvirtError as e:
    print('no libvirt: %s' % e)
    sys.exit(0)
flags = (libvirt.VIR_DOMAIN_UNDEFINE_NVRAM |
         libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE |
         libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
for dom in conn.listAllDomains():
    name = dom.name()
    if dom.isActive():
        dom.destroy()
    dom.undefineFlags(flags)
    print('destroyed and undefined %s' % name)
print('left: %s' % [d.name() for d in conn.listAllDomains()])
'''


def destroy_domains(workdir, state, log):
    """Destroy and undefine every domain of the lane's libvirtd (through
    libvirt, with the venv's libvirt-python). Returns its output.
    """
    uri, venv = state.get('libvirt_uri'), state.get('venv')
    if not uri or not venv:
        return 'no libvirt in state'
    python = os.path.join(venv, 'bin', 'python')
    sock = uri.split('socket=', 1)[-1]
    if not os.path.exists(sock):
        return 'no libvirt socket'
    try:
        proc = subprocess.run([python, '-c', DOMAIN_CLEANUP, uri],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return 'domain cleanup failed: %s' % e
    out = (proc.stdout + proc.stderr).strip()
    log.info('libvirt domain cleanup: %s', out)
    return out


def _list_domains(state):
    uri, venv = state.get('libvirt_uri'), state.get('venv')
    if not uri or not venv or not os.path.exists(
            uri.split('socket=', 1)[-1]):
        return None
    proc = subprocess.run([os.path.join(venv, 'bin', 'python'), '-c',
                           'import sys, libvirt; print(" ".join(d.name() '
                           'for d in libvirt.open(sys.argv[1])'
                           '.listAllDomains()))', uri],
                          capture_output=True, text=True, timeout=60)
    return proc.stdout.split() if proc.returncode == 0 else None


def teardown_workdir(workdir, redactor=None, extra_ports=(),
                     port_timeout=10.0):
    """Stop everything of the cloud in `workdir`; never raises."""
    started = time.monotonic()
    workdir = os.path.abspath(workdir)
    state, report, secrets_dir, redactor, registry = \
        lane_mod.begin_teardown(workdir, redactor, state_file=STATE_FILE,
                                domains=None)

    def stop(names, together=False):
        order = [r for r in reversed(registry.records)
                 if r['name'] in names]
        if together:
            # Each OpenStack service takes its graceful shutdown (5 s):
            # signal them all first, then wait for each in turn.
            for record in order:
                if registry.alive(record):
                    procs._signal(record['pid'], signal.SIGTERM)
        for record in order:
            try:
                report['stopped'].append(registry.stop(
                    record, timeout=STOP_TIMEOUTS.get(record['name'], 15)))
            except Exception as e:
                LOG.exception('stopping %s failed', record['name'])
                report.setdefault('errors', []).append(repr(e))

    stop(KERBSIDE, together=True)
    stop(OPENSTACK, together=True)
    try:
        report['domains'] = destroy_domains(workdir, state, LOG)
    except Exception as e:
        report['domains'] = 'failed: %r' % e
    stop(LIBVIRT)
    strays = workdir_pids(workdir)
    for pid in strays:
        procs._signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while strays and time.monotonic() < deadline:
        strays = [p for p in strays if procs.pid_alive(p)]
        time.sleep(0.1)
    for pid in strays:
        procs._signal(pid, signal.SIGKILL)
    stop(INFRA)
    known = set(KERBSIDE + OPENSTACK + LIBVIRT + INFRA)
    stop({r['name'] for r in registry.records} - known)
    time.sleep(0.2)
    report['leftover_pids'] = cloud_pids(workdir)
    ports = set(p for p in (state.get('ports') or {}).values() if p)
    ports.update(p for p in extra_ports if p)
    for window in ('spice_range', 'serial_range'):
        if state.get(window):
            lo, hi = state[window]
            ports.update(range(lo, hi + 1))
    return lane_mod.finish_teardown(workdir, state, report, ports, redactor,
                                    secrets_dir, started, port_timeout,
                                    state_file=STATE_FILE)


def cloud_status(workdir):
    state = load_state(workdir)
    if state is None:
        return {'workdir': workdir, 'state': 'absent'}
    registry = procs.ProcessRegistry(os.path.join(workdir, 'processes.json'))
    listening = common_ports.listening_ports()
    out = {
        'workdir': workdir, 'state': state.get('state'),
        'processes': [{'name': r['name'], 'pid': r['pid'],
                       'alive': registry.alive(r)}
                      for r in registry.records],
        'ports': {k: {'port': v, 'listening': v in listening}
                  for k, v in (state.get('ports') or {}).items()},
        'auth_url': state.get('auth_url'),
        'servers': state.get('servers'),
        'timings': state.get('timings'),
    }
    if state.get('state') == 'up':
        out['domains'] = _list_domains(state)
        out['memory'] = cloud_memory(workdir)
    return out

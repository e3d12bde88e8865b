"""The cloud's processes: each started here, waited on, and registered.

Every process goes into the lane's `ProcessRegistry` (pid, start time,
process group, redacted argv), so `down` finds it after a crash. Each
start has a deadline and, on failure, says what it waited for and shows
the tail of the process's log.

libvirtd and virtlogd run as root in a private mount namespace
(`unshare --mount`) where lane directories are bound over /etc/libvirt,
/var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt and /run: a root
libvirtd keeps its driver state in those fixed paths, and the namespace
keeps all of it under the workdir. Its socket appears on the host side at
`Layout.libvirt_sock`.
"""

import getpass
import json
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
import urllib.request

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import logtext
from kerbside_tempest_plugin.common import ports as common_ports
from kerbside_tempest_plugin.common import waiting
from kerbside_tempest_plugin.lane import mariadb as lane_mariadb
from kerbside_tempest_plugin.lane.openstack import config

RABBITMQ_SERVER = '/usr/lib/rabbitmq/bin/rabbitmq-server'

# WSGI apps: registry name -> (module:callable, config env var, files).
WSGI_APPS = {
    'keystone': ('keystone.wsgi.api:application', 'OS_KEYSTONE_CONFIG',
                 ['keystone.conf']),
    'placement': ('placement.wsgi.api:application', 'OS_PLACEMENT_CONFIG',
                  ['placement.conf']),
    'glance': ('glance.wsgi.api:application', 'OS_GLANCE_CONFIG',
               ['glance-api.conf']),
    'neutron': ('neutron.wsgi.api:application', 'OS_NEUTRON_CONFIG',
                ['neutron.conf']),
    # Nova loads its paste pipeline from the first file.
    'nova_api': ('nova.wsgi.osapi_compute:application', 'OS_NOVA_CONFIG',
                 ['api-paste.ini', 'nova.conf']),
}
WSGI_CONF_DIR = {'nova_api': 'nova'}
# The apps parse sys.argv with oslo.config: hide gunicorn's from them.
WSGI_SHIM = """import sys
sys.argv = sys.argv[:1]
from %(module)s import %(attr)s as application  # noqa
%(extra)s"""
# The oldest libvirt the lane runs on. Nova 34 writes a UEFI guest as
# firmware autoselection (<os firmware='efi'>) plus <loader secure='no'/>;
# libvirt 9.0 (Debian 12) refuses that pair ("loader attribute 'secure'
# cannot be specified when firmware autoselection is enabled"), so no UEFI
# guest boots. 10.0 is what Nova's own gate runs (Ubuntu 24.04); the lane
# is measured on 11.3.0 from bookworm-backports (tools/setup.sh).
MIN_LIBVIRT = (10, 0, 0)
LIBVIRTD = '/usr/sbin/libvirtd'


def libvirt_version(libvirtd=LIBVIRTD):
    """(major, minor, micro) of `libvirtd --version`; HarnessError if it
    cannot be run or read.
    """
    try:
        out = subprocess.run([libvirtd, '--version'], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise errors.HarnessError('cannot run %s --version: %s' % (
            libvirtd, e)) from e
    m = re.search(r'(\d+)\.(\d+)\.(\d+)\s*$', out.strip())
    if not m:
        raise errors.HarnessError('%s --version printed %r, not a version' % (
            libvirtd, out.strip()[:200]))
    return tuple(int(x) for x in m.groups())


def check_libvirt(version):
    """HarnessError naming the fix when `version` is too old for Nova 34."""
    if tuple(version) < MIN_LIBVIRT:
        raise errors.HarnessError(
            'libvirt %s cannot boot a UEFI guest for Nova 34 (it refuses '
            "Nova's <loader secure='no'/> with firmware autoselection); "
            'the lane needs libvirt >= %s: on Debian 12, '
            '`apt-get install -t bookworm-backports libvirt-daemon-system '
            'libvirt-dev` (tools/setup.sh --openstack does it)' % (
                '.'.join(map(str, version)),
                '.'.join(map(str, MIN_LIBVIRT))))


# What warm_libvirt_capabilities runs with the venv's python.
LIBVIRT_CAPABILITIES = '''
import sys, time, libvirt
t = time.monotonic()
conn = libvirt.open(sys.argv[1])
caps = conn.getCapabilities()
print('libvirt host capabilities: %d bytes, %d guest arches, in %.1f s' % (
    len(caps), caps.count('<guest>'), time.monotonic() - t))
conn.close()
'''

WSGI_SHIM_EXTRA = {
    # neutron-api joins Port.port_forwardings (a backref the L3 plugin's
    # models declare) before its first query; SQLAlchemy creates backrefs
    # only when the mappers are configured, which nothing in the API's
    # own start does when no plugin queries at start (no agents, no VLAN
    # ranges): configure them once the app is loaded.
    'neutron': 'from sqlalchemy import orm\norm.configure_mappers()\n',
}


class CloudDB(lane_mariadb.PrivateMariaDB):
    """The lane's private MariaDB with one database per service."""

    DB = config.DATABASES[0]
    USER = config.DB_USER
    # For a cloud that lives as long as one job (the parallel bring-up):
    # no fsync per commit or per file, no doublewrite buffer. The
    # services' schema migrations are hundreds of DDL statements, each
    # synced to disk by default, and they run side by side; the data of
    # a lane's cloud is worth nothing after a crash of the box.
    UNSYNCED = ['--innodb-flush-log-at-trx-commit=0',
                '--innodb-flush-method=nosync', '--skip-innodb-doublewrite',
                '--skip-sync-frm']

    def create_databases(self, names=config.DATABASES):
        """The other databases, granted to the user start() made."""
        stmts = []
        for name in names:
            stmts.append('CREATE DATABASE IF NOT EXISTS %s CHARACTER SET '
                         'utf8mb4;' % name)
            for host in ('localhost', '127.0.0.1'):
                stmts.append("GRANT ALL PRIVILEGES ON %s.* TO '%s'@'%s';" % (
                    name, self.USER, host))
        stmts.append('FLUSH PRIVILEGES;')
        self._sql('\n'.join(stmts) + '\n')


def _wait_with_cpu(proc, timeout, interval=0.05):
    """(exit code, user + system CPU seconds) of a Popen child, reaped
    with wait4; (None, None) after `timeout` s (the child killed).
    """
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            return None, None
        time.sleep(interval)


def serialise_registry(registry):
    """Make `registry`'s spawn() and add() one at a time, for every user
    of this registry object (the cloud's services and its Kerbside): they
    rewrite the whole records list and processes.json (through one tmp
    file), so two at once could lose a record or collide on the file.
    Idempotent. Returns `registry`.
    """
    if getattr(registry, '_ktp_serialised', False):
        return registry
    lock = threading.RLock()  # spawn() calls add()
    for name in ('spawn', 'add'):
        method = getattr(registry, name)

        def locked(*args, _method=method, **kwargs):
            with lock:
                return _method(*args, **kwargs)
        setattr(registry, name, locked)
    registry._ktp_serialised = True
    return registry


class Services:
    """Starts the cloud's processes into one registry."""

    def __init__(self, layout, registry, redactor, timings):
        self.layout = layout
        self.registry = serialise_registry(registry)
        self.redactor = redactor
        self.timings = timings
        # CPU seconds of each one-shot command run() ran.
        self.cpu = {}
        self.procs = {}
        # One spawn at a time (procs stays consistent with the registry)
        # when the bring-up runs steps side by side.
        self._spawn_lock = threading.RLock()
        self._rabbit_started = None
        self._wsgi_started = {}

    # -- generic ---------------------------------------------------------
    def log(self, name):
        return os.path.join(self.layout.log_dir, name + '.out')

    def spawn(self, name, argv, env=None, cwd=None):
        full_env = dict(os.environ)
        full_env.pop('PYTHONPATH', None)
        full_env['PATH'] = os.path.join(self.layout.venv, 'bin') + ':' + \
            full_env.get('PATH', '/usr/bin:/bin')
        full_env.update(env or {})
        with self._spawn_lock:
            proc = self.registry.spawn(name, argv, self.log(name),
                                       env=full_env,
                                       cwd=cwd or self.layout.workdir)
            self.procs[name] = proc
        return proc

    def _dead(self, name):
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is not None:
            return '%s exited with %s' % (name, proc.returncode)
        return None

    def _seen(self, name, extra_log=None):
        def seen():
            parts = ['%s %s' % (name, self._dead(name) or 'running')]
            for path in (self.log(name), extra_log):
                if path and os.path.exists(path):
                    parts.append('%s tail:\n%s' % (
                        os.path.basename(path), self.redactor.redact(
                            logtext.tail_file(path, 12))))
            return '; '.join(parts)
        return seen

    def wait_port(self, name, port, timeout, extra_log=None):
        waiting.wait_until(
            lambda: common_ports.is_listening(port), timeout,
            '%s to listen on 127.0.0.1:%d' % (name, port),
            seen=self._seen(name, extra_log), interval=0.2,
            abort=lambda: self._dead(name))

    def wait_http(self, name, url, timeout, extra_log=None):
        """Until `url` answers with any HTTP status below 500."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        state = {}

        def answers():
            try:
                with opener.open(url, timeout=5) as r:
                    state['status'] = r.status
                    return True
            except urllib.error.HTTPError as e:
                state['status'] = e.code
                return e.code < 500
            except (urllib.error.URLError, OSError) as e:
                state['status'] = str(getattr(e, 'reason', e))
                return False

        waiting.wait_until(
            answers, timeout, '%s to answer %s' % (name, url),
            seen=lambda: 'last answer %s; %s' % (
                state.get('status'), self._seen(name, extra_log)()),
            interval=0.3, abort=lambda: self._dead(name))

    def run(self, name, argv, timeout=600, env=None, input_text=None,
            nice=None):
        """Run a one-shot command (db syncs, nova-manage) to completion,
        output appended to logs/<name>.out; HarnessError on failure.
        `nice`: run it at that niceness (`nice -n`), for a setup nothing
        waits on soon while others compete for the CPU.
        """
        if nice:
            argv = ['nice', '-n', str(int(nice))] + list(argv)
        full_env = dict(os.environ)
        full_env.pop('PYTHONPATH', None)
        full_env['PATH'] = os.path.join(self.layout.venv, 'bin') + ':' + \
            full_env.get('PATH', '/usr/bin:/bin')
        full_env.update(env or {})
        log_path = self.log(name)
        t = time.monotonic()
        with open(log_path, 'ab') as log:
            log.write(('$ %s\n' % ' '.join(
                shlex.quote(self.redactor.redact(a)) for a in argv)).encode())
            log.flush()
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                cwd=self.layout.workdir,
                stdin=subprocess.PIPE if input_text else subprocess.DEVNULL)
            if input_text:
                proc.stdin.write(input_text.encode())
                proc.stdin.close()
            returncode, cpu = _wait_with_cpu(proc, timeout)
            if returncode is None:
                raise errors.HarnessTimeout(
                    'timed out after %.0f s waiting for %s to finish; log '
                    'tail:\n%s' % (timeout, name, self.redactor.redact(
                        logtext.tail_file(log_path)))) from None
        self.timings[name] = time.monotonic() - t
        # Its user + system CPU seconds (issue 20: what the bring-up's
        # one-shot commands cost the two cores).
        self.cpu[name] = cpu
        if returncode != 0:
            raise errors.HarnessError('%s failed (exit %d); log tail:\n%s' % (
                name, returncode,
                self.redactor.redact(logtext.tail_file(log_path, 20))))

    def bin(self, name):
        return os.path.join(self.layout.venv, 'bin', name)

    def run_script(self, name, script, args, env=None):
        """run() a Python `script` (its source) with the venv's python:
        written to <workdir>/wsgi/ktp_<name>.py and run with the path of
        a JSON file as its first argument, then `args`. The script
        writes {step: seconds} there as it goes; every step read back
        goes to timings (also after a failure).
        """
        shim_dir = self.layout.path('wsgi')
        os.makedirs(shim_dir, exist_ok=True)
        path = os.path.join(shim_dir, 'ktp_%s.py' % name.replace('-', '_'))
        with open(path, 'w') as f:
            f.write(script)
        timings_file = os.path.join(shim_dir, '%s-timings.json' % name)
        try:
            self.run(name, [self.bin('python'), path, timings_file] +
                     list(args), env=env)
        finally:
            try:
                with open(timings_file) as f:
                    self.timings.update(json.load(f))
            except (OSError, ValueError):
                pass

    # -- infrastructure ------------------------------------------------
    def start_mariadb(self, secrets, timeout=90, synced=True):
        """The cloud's MariaDB and its databases; `synced` false: with
        CloudDB.UNSYNCED (no fsync per commit).
        """
        t = time.monotonic()
        db = CloudDB(secrets.file('mariadb'), self.layout.run_dir,
                     self.layout.log_dir, self.layout.ports['mariadb'],
                     self.registry, secrets)
        if not synced:
            db.TUNING = list(CloudDB.TUNING) + CloudDB.UNSYNCED
        db.start(timeout=timeout)
        db.create_databases()
        self.procs['mariadbd'] = db.proc
        self.timings['mariadb'] = time.monotonic() - t
        return db

    def start_epmd(self, timeout=30):
        port = self.layout.ports['epmd']
        self.spawn('epmd', [shutil.which('epmd') or '/usr/bin/epmd',
                            '-address', '127.0.0.1', '-port', str(port)],
                   env={'ERL_EPMD_ADDRESS': '127.0.0.1'})
        self.wait_port('epmd', port, timeout)

    def start_rabbitmq(self, timeout=120):
        t = time.monotonic()
        self.spawn_rabbitmq()
        self.wait_rabbitmq(timeout, started=t)

    def spawn_rabbitmq(self):
        """epmd (waited for: it takes a fraction of a second) and
        rabbitmq-server (not waited for: wait_rabbitmq).
        """
        self._rabbit_started = time.monotonic()
        self.start_epmd()
        env = config.rabbitmq_env(self.layout)
        for key in ('RABBITMQ_MNESIA_BASE', 'RABBITMQ_LOG_BASE', 'HOME'):
            os.makedirs(env[key], mode=0o700, exist_ok=True)
        with open(env['RABBITMQ_ENABLED_PLUGINS_FILE'], 'w') as f:
            f.write('[].\n')
        for key in ('RABBITMQ_CONF_ENV_FILE',):
            open(env[key], 'a').close()
        if not os.path.exists(env['RABBITMQ_ADVANCED_CONFIG_FILE']):
            with open(env['RABBITMQ_ADVANCED_CONFIG_FILE'], 'w') as f:
                f.write('[].\n')
        self.spawn('rabbitmq', [RABBITMQ_SERVER], env=env)

    def wait_rabbitmq(self, timeout=120, started=None):
        """Until RabbitMQ's AMQP port listens; timings['rabbitmq'] is from
        spawn_rabbitmq() (or `started`) to then.
        """
        env = config.rabbitmq_env(self.layout)
        self.wait_port('rabbitmq', self.layout.ports['rabbit'], timeout,
                       extra_log=os.path.join(
                           env['RABBITMQ_LOG_BASE'],
                           env['RABBITMQ_NODENAME'] + '.log'))
        self.timings['rabbitmq'] = time.monotonic() - (
            started or self._rabbit_started)

    def start_memcached(self, timeout=30):
        t = time.monotonic()
        port = self.layout.ports['memcached']
        self.spawn('memcached', [
            shutil.which('memcached') or '/usr/bin/memcached', '-l',
            '127.0.0.1', '-p', str(port), '-U', '0', '-m', '32', '-u',
            getpass.getuser()])
        self.wait_port('memcached', port, timeout)
        self.timings['memcached'] = time.monotonic() - t

    def start_libvirt(self, timeout=90):
        """virtlogd and libvirtd in their own mount namespace."""
        t = time.monotonic()
        check_libvirt(libvirt_version())
        script = ['set -e']
        for src, dst in self.layout.ns_binds:
            os.makedirs(src, exist_ok=True)
            script.append('mount --bind %s %s' % (shlex.quote(src),
                                                  shlex.quote(dst)))
        script += [
            'mkdir -p /run/libvirt /var/lib/libvirt/qemu/nvram '
            '/var/cache/libvirt/qemu',
            '/usr/sbin/virtlogd -f /etc/libvirt/virtlogd.conf '
            '-p /run/virtlogd.pid &',
            'exec %s -f /etc/libvirt/libvirtd.conf -p /run/libvirtd.pid'
            % LIBVIRTD]
        argv = ['unshare', '--mount', '--propagation', 'private', '--',
                '/bin/sh', '-c', '\n'.join(script)]
        self.spawn('libvirtd', argv)
        sock = self.layout.libvirt_sock
        waiting.wait_until(
            lambda: os.path.exists(sock), timeout,
            'libvirtd to make its socket %s' % sock,
            seen=self._seen('libvirtd', os.path.join(
                self.layout.path('libvirt', 'log'), 'libvirtd.log')),
            interval=0.2, abort=lambda: self._dead('libvirtd'))
        pid_file = os.path.join(self.layout.libvirt_run, 'virtlogd.pid')
        waiting.wait_until(
            lambda: os.path.exists(pid_file), 30,
            'virtlogd to write %s' % pid_file,
            seen=self._seen('libvirtd'), interval=0.2)
        with open(pid_file) as f:
            self.registry.add('virtlogd', int(f.read().strip()),
                              logs=[self.log('libvirtd')])
        self.timings['libvirt'] = time.monotonic() - t

    def warm_libvirt_capabilities(self, timeout=180):
        """Ask the lane's libvirtd for its host capabilities once, through
        the venv's libvirt-python, so that it probes its QEMU binaries
        now: libvirtd probes each emulator (qemu-system-i386 and -x86_64
        here, about 4 s each under TCG on this box) only when a client
        first asks, and until then nova-compute's start waits on it.
        The probe is libvirtd's own and its result libvirtd's cache
        (<workdir>/libvirt/cache/qemu/capabilities). Output to
        logs/libvirt-capabilities.out; HarnessError on failure.
        """
        t = time.monotonic()
        self.run('libvirt-capabilities', [
            self.bin('python'), '-c', LIBVIRT_CAPABILITIES,
            self.layout.libvirt_uri], timeout=timeout)
        self.timings['libvirt_capabilities'] = time.monotonic() - t

    def service_hosts(self, db, binary, database='nova'):
        """Hosts with a (not deleted) `binary` service record in the
        cell database `database`, read from the lane's MariaDB.
        """
        rows = db.query("SELECT host FROM %s.services WHERE `binary` = '%s' "
                        'AND deleted = 0' % (database, binary))
        return sorted(r[0] for r in rows if r)

    def wait_service_record(self, db, binary, timeout, database='nova'):
        """Until `binary` has a service record in `database`: a Nova
        service writes it in Service.start() right before it starts its
        RPC server (nova/service.py), so a service that pings it (nova-
        compute pings nova-conductor once, with a 10 s timeout, before
        anything else) is answered at once instead of after 10 s.
        """
        state = {}

        def recorded():
            state['hosts'] = self.service_hosts(db, binary, database)
            return state['hosts']

        return waiting.wait_until(
            recorded, timeout, '%s to write its service record in %s' % (
                binary, database),
            seen=lambda: 'hosts %s; %s' % (state.get('hosts'),
                                           self._seen(binary)()),
            interval=0.2, abort=lambda: self._dead(binary))

    # -- OpenStack services -------------------------------------------
    def start_wsgi(self, name, timeout=180, path='/', wait=True):
        """One API under gunicorn on its allocated port. With `wait`
        false, only spawned: wait_wsgi() waits for it.
        """
        t = time.monotonic()
        self._wsgi_started[name] = (t, path)
        app, env_prefix, files = WSGI_APPS[name]
        conf_dir = self.layout.conf_dir(WSGI_CONF_DIR.get(name, name))
        port = self.layout.ports[name]
        env = {env_prefix + '_DIR': conf_dir,
               env_prefix + '_FILES': ';'.join(files)}
        shim_dir = self.layout.path('wsgi')
        os.makedirs(shim_dir, exist_ok=True)
        module, attr = app.split(':')
        with open(os.path.join(shim_dir, 'ktp_%s.py' % name), 'w') as f:
            f.write(WSGI_SHIM % {'module': module, 'attr': attr,
                                 'extra': WSGI_SHIM_EXTRA.get(name, '')})
        # --graceful-timeout: how long a SIGTERM waits for the worker
        # before killing it. The APIs are stopped only at teardown, with
        # nothing in flight; with 5 s, placement's worker used all 5 in
        # every teardown (kept-alive connections), now 1.
        argv = [self.bin('gunicorn'), '--bind', '127.0.0.1:%d' % port,
                '--workers', '1', '--worker-class', 'gthread',
                '--threads', '4', '--timeout', '300',
                '--graceful-timeout', '1', '--name', 'ktp-' + name,
                '--no-control-socket', '--pythonpath', shim_dir,
                '--error-logfile', '-', 'ktp_%s:application' % name]
        self.spawn(name, argv, env=env)
        if wait:
            self.wait_wsgi(name, timeout)

    def wait_wsgi(self, name, timeout=180):
        """Until the API start_wsgi() spawned answers; timings[name] is
        from its spawn to then.
        """
        t, path = self._wsgi_started[name]
        self.wait_http(name, self.layout.url(name, path), timeout,
                       extra_log=os.path.join(self.layout.log_dir,
                                              WSGI_CONF_DIR.get(name, name)
                                              + '.log'))
        self.timings[name] = time.monotonic() - t

    def start_nova_daemon(self, name):
        conf = os.path.join(self.layout.conf_dir('nova'), 'nova.conf')
        log_file = os.path.join(self.layout.log_dir, name + '.log')
        self.spawn(name, [self.bin(name), '--config-file', conf,
                          '--log-file', log_file])

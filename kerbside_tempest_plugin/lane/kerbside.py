"""Kerbside 0.8.0 for a lane: its venv, configuration, API, daemon and proxy.

Configuration is only `KERBSIDE_*` environment variables (there is no INI
file; /etc/kerbside is not used). The REST API runs under gunicorn; `kerbside
daemon run` reads the static source file, writes MariaDB and supervises
kerbside-proxy, which it finds on PATH (so the venv's bin goes first on
PATH). The static source is re-read only every 60 s, so the console is
written before the daemon starts and never changes afterwards.
"""

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import logtext
from kerbside_tempest_plugin.common import ports as common_ports
from kerbside_tempest_plugin.common import tools
from kerbside_tempest_plugin.common import vv as common_vv
from kerbside_tempest_plugin.common import waiting
from kerbside_tempest_plugin.lane import procs

KERBSIDE_VERSION = '0.8.0'
SOURCE_NAME = 'harness-lab'
# gunicorn's access log without the query string or the referer: Kerbside
# takes a Nova console token as `?token=` (/nova-console.vv), and the
# default format's request line would write it into the log while the
# lane runs (teardown's scrub would only mask it afterwards).
ACCESS_LOG_FORMAT = ('%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss '
                     '"%(a)s"')
CONSOLE_NAME = 'sextant-harness'


def default_venv():
    """$KERBSIDE_VENV, else ~/.cache/kerbside-tempest-plugin/kerbside-venv."""
    return tools.default_kerbside_venv()


def _no_proxy_opener():
    # Loopback HTTP must never go through an HTTP proxy.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


class KerbsideVenv:
    """The virtualenv holding kerbside, kerbside-proxy and gunicorn."""

    BINARIES = ('python', 'kerbside', 'kerbside-proxy', 'gunicorn')

    def __init__(self, path=None):
        self.path = os.path.abspath(path or default_venv())

    def bin(self, name):
        return os.path.join(self.path, 'bin', name)

    def tool(self, name):
        """kerbside, kerbside-proxy or gunicorn of this venv, found by
        common.tools (ToolNotFound says to run `kerbside-harness setup`).
        """
        return tools.find(name, venv=self.path)

    def check(self):
        """A list of problems; empty when the venv is usable."""
        problems = ['missing %s' % self.bin(b) for b in self.BINARIES
                    if not os.access(self.bin(b), os.X_OK)]
        if problems:
            return problems
        proc = subprocess.run(
            [self.bin('python'), '-c',
             'import kerbside.main, MySQLdb, gunicorn\n'
             'from importlib.metadata import version as v\n'
             'print("KTP-VERSIONS", v("kerbside"), v("kerbside-proxy"))'],
            capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            return ['kerbside does not import in %s: %s' % (
                self.path, logtext.tail_text(proc.stderr, 3))]
        # kerbside prints logging diagnostics to stdout on import.
        lines = [ln.split()[1:] for ln in proc.stdout.splitlines()
                 if ln.startswith('KTP-VERSIONS ')]
        if not lines:
            return ['cannot read the kerbside version in %s' % self.path]
        self.versions = lines[-1]
        return []

    def installed_version(self):
        if self.check():
            return None
        return self.versions[0]

    def ensure(self, source=None, version=KERBSIDE_VERSION, log=None,
               log_path=None):
        """Create or repair the venv. With `source` (a Kerbside checkout),
        pip-install that instead of kerbside==`version`. Returns a one-line
        description of what was done.
        """
        log = log or (lambda msg: print(msg, file=sys.stderr))
        problems = self.check()
        if not problems and source is None:
            if self.versions[0] == version:
                return 'kerbside %s already in %s' % (version, self.path)
            problems = ['kerbside %s installed, %s wanted' % (
                self.versions[0], version)]
        for p in problems:
            log('kerbside venv: %s' % p)
        python_ok = os.access(self.bin('python'), os.X_OK) and \
            subprocess.run([self.bin('python'), '-c', 'pass'],
                           capture_output=True).returncode == 0
        out = open(log_path, 'ab') if log_path else None
        try:
            if not python_ok:
                log('creating venv %s' % self.path)
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                subprocess.run([sys.executable, '-m', 'venv', '--clear',
                                self.path], check=True, stdout=out,
                               stderr=out)
            target = os.path.abspath(source) if source else \
                'kerbside==%s' % version
            log('pip install %s into %s' % (target, self.path))
            proc = subprocess.run([self.bin('pip'), 'install', target],
                                  stdout=out, stderr=out)
            if proc.returncode != 0:
                raise errors.HarnessError(
                    'pip install %s failed (exit %d)%s. mysqlclient builds '
                    'from source: it needs default-libmysqlclient-dev, '
                    'pkg-config and a compiler (see bindep.txt)' % (
                        target, proc.returncode,
                        '; see %s' % log_path if log_path else ''))
        finally:
            if out:
                out.close()
        problems = self.check()
        if problems:
            raise errors.HarnessError('kerbside venv still broken after '
                                      'install: %s' % '; '.join(problems))
        return 'installed %s into %s (kerbside %s)' % (
            target, self.path, self.versions[0])


class Kerbside:
    """Kerbside API + daemon + proxy for one lane, fronting one console
    (`console_uuid`, `guest_port`, `ticket`, `guest_tls_port`) and, with
    `extra_consoles` (dicts: uuid, port, tls_port, ticket), more: all in
    the one static source, named CONSOLE_NAME, CONSOLE_NAME-2, ...
    """

    def __init__(self, venv, workdir, run_dir, secrets, registry, tls,
                 sql_url, api_port, secure_port, insecure_port,
                 metrics_port, console_uuid, guest_port, ticket,
                 verbose=True, guest_tls_port=None, guest_ca_cert=None,
                 guest_host_subject=None, extra_consoles=()):
        self.venv = venv
        self.workdir = workdir
        self.log_dir = os.path.join(workdir, 'logs')
        self.kdir = os.path.join(workdir, 'kerbside')
        self.run_dir = run_dir
        self.secrets = secrets
        self.registry = registry
        self.tls = tls
        self.sql_url = sql_url
        self.api_port = api_port
        self.secure_port = secure_port
        self.insecure_port = insecure_port
        self.metrics_port = metrics_port
        self.console_uuid = console_uuid
        self.guest_port = guest_port
        self.ticket = ticket
        self.verbose = verbose
        # The hypervisor leg over TLS (docs/contracts/kerbside.md §15):
        # qemu's TLS port, the CA file the proxy verifies qemu with and
        # the subject it pins.
        self.guest_tls_port = guest_tls_port
        self.guest_ca_cert = guest_ca_cert
        self.guest_host_subject = guest_host_subject
        self.extra_consoles = [dict(c) for c in extra_consoles]
        self._vv_lock = threading.Lock()
        self.api_sock = os.path.join(run_dir, 'kb', 'api.sock')
        self.sources_path = secrets.file('sources.yaml')
        self.daemon = None
        self.api = None
        self.timings = {}
        self._vv_count = 0
        os.makedirs(self.kdir, exist_ok=True)

    @property
    def api_url(self):
        return 'http://127.0.0.1:%d' % self.api_port

    @property
    def ports(self):
        return [self.api_port, self.secure_port, self.insecure_port,
                self.metrics_port]

    def env(self):
        env = dict(os.environ)
        for key in list(env):
            if key.startswith('KERBSIDE_'):
                del env[key]
        env['PATH'] = os.path.join(self.venv.path, 'bin') + os.pathsep + \
            env.get('PATH', '')
        env['no_proxy'] = env['NO_PROXY'] = '127.0.0.1,localhost'
        seed = self.secrets.get_or_create('auth-secret-seed',
                                          lambda: os.urandom(32).hex())
        env.update({
            'KERBSIDE_SOURCES_PATH': self.sources_path,
            'KERBSIDE_SQL_URL': self.sql_url,
            'KERBSIDE_CACERT_PATH': self.tls.ca_cert,
            'KERBSIDE_PROXY_HOST_CERT_PATH': self.tls.cert,
            'KERBSIDE_PROXY_HOST_CERT_KEY_PATH': self.tls.key,
            'KERBSIDE_PROXY_HOST_SUBJECT': self.tls.host_subject,
            'KERBSIDE_AUTH_SECRET_SEED': seed,
            'KERBSIDE_LOG_OUTPUT_PATH': os.path.join(self.log_dir,
                                                     'kerbside.log'),
            'KERBSIDE_LOG_VERBOSE': 'true' if self.verbose else 'false',
            'KERBSIDE_PUBLIC_FQDN': '127.0.0.1',
            'KERBSIDE_VDI_ADDRESS': '127.0.0.1',
            'KERBSIDE_VDI_SECURE_PORT': str(self.secure_port),
            'KERBSIDE_VDI_INSECURE_PORT': str(self.insecure_port),
            'KERBSIDE_PUBLIC_SECURE_PORT': str(self.secure_port),
            'KERBSIDE_PUBLIC_INSECURE_PORT': str(self.insecure_port),
            'KERBSIDE_API_SOCKET_PATH': self.api_sock,
            'KERBSIDE_PROMETHEUS_METRICS_PORT': str(self.metrics_port),
            'KERBSIDE_PROMETHEUS_METRICS_ADDRESS': '127.0.0.1',
            'KERBSIDE_NODE_NAME': 'harness',
        })
        return env

    def sources_yaml(self, ticket=None):
        """The static source file text (YAML written by hand: the ticket
        is always quoted so it stays a string). With a guest TLS port the
        console gets `secure_port` and `host_subject`, and the source
        `ca_cert` (the PEM the proxy verifies the hypervisor with; the
        proxy's own --cacert is not used for that, §15).
        """
        text = '- source: %s\n  type: static\n' % SOURCE_NAME
        if self.guest_tls_port and self.guest_ca_cert:
            with open(self.guest_ca_cert) as f:
                pem = f.read().strip()
            text += '  ca_cert: |\n' + ''.join(
                '    %s\n' % line for line in pem.splitlines())
        text += '  consoles:\n'
        for i, c in enumerate(self.consoles()):
            text += (
                '    - uuid: %s\n'
                '      name: %s\n'
                '      hypervisor: localhost\n'
                '      hypervisor_ip: 127.0.0.1\n'
                '      insecure_port: %d\n'
                '      ticket: "%s"\n' % (
                    c['uuid'], CONSOLE_NAME if i == 0 else '%s-%d' % (
                        CONSOLE_NAME, i + 1), c['port'],
                    c['ticket'] if ticket is None else ticket))
            if c.get('tls_port'):
                text += '      secure_port: %d\n' % c['tls_port']
            if c.get('tls_port') and self.guest_host_subject:
                text += '      host_subject: "%s"\n' % \
                    self.guest_host_subject
        return text

    def consoles(self):
        """Every console of the static source, the lane's first."""
        return [dict(uuid=self.console_uuid, port=self.guest_port,
                     tls_port=self.guest_tls_port,
                     ticket=self.ticket)] + self.extra_consoles

    def write_sources(self):
        self.secrets.put('sources.yaml', self.sources_yaml())
        # A redacted copy for the artifacts.
        with open(os.path.join(self.kdir, 'sources.redacted.yaml'),
                  'w') as f:
            f.write(self.sources_yaml(ticket='<redacted>'))

    def _run(self, args, what, timeout=120):
        log = os.path.join(self.log_dir, 'kerbside-cli.log')
        with open(log, 'ab') as out:
            out.write(('$ kerbside %s\n' % ' '.join(args)).encode())
            out.flush()
            proc = subprocess.run([self.venv.tool('kerbside')] + args,
                                  env=self.env(), stdout=out,
                                  stderr=subprocess.STDOUT, timeout=timeout)
        if proc.returncode != 0:
            raise errors.HarnessError('%s failed (exit %d); log tail:\n%s' % (
                what, proc.returncode,
                self.secrets.redactor.redact(logtext.tail_file(log))))

    def db_upgrade(self):
        t = time.monotonic()
        self._run(['db', 'upgrade'], 'kerbside db upgrade')
        self.timings['db_upgrade'] = time.monotonic() - t

    def api_ok(self):
        req = urllib.request.Request(self.api_url + '/',
                                     headers={'Accept': 'application/json'})
        try:
            with _no_proxy_opener().open(req, timeout=2) as r:
                return json.loads(r.read()).get('result') == 'ok'
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def _log_tail(self, name):
        return self.secrets.redactor.redact(
            logtext.tail_file(os.path.join(self.log_dir, name), 10))

    def start(self, timeout=60):
        """Sources file, db upgrade, API, daemon; wait until all answer."""
        os.makedirs(os.path.dirname(self.api_sock), mode=0o700,
                    exist_ok=True)
        if len(self.api_sock) > 100:
            raise errors.HarnessError('API socket path too long: %s'
                                      % self.api_sock)
        self.write_sources()
        self.db_upgrade()
        env = self.env()
        t = time.monotonic()
        self.api = self.registry.spawn(
            'gunicorn',
            [self.venv.tool('gunicorn'), '--bind',
             '127.0.0.1:%d' % self.api_port, '--workers', '2',
             '--access-logfile',
             os.path.join(self.log_dir, 'gunicorn-access.log'),
             '--access-logformat', ACCESS_LOG_FORMAT,
             '--error-logfile',
             os.path.join(self.log_dir, 'gunicorn-error.log'),
             'kerbside.api:app'],
            os.path.join(self.log_dir, 'gunicorn.out'), env=env,
            cwd=self.kdir)
        self.daemon = self.registry.spawn(
            'kerbside-daemon', [self.venv.tool('kerbside'), 'daemon', 'run'],
            os.path.join(self.log_dir, 'kerbside-daemon.out'), env=env,
            cwd=self.kdir)

        def api_dead():
            if self.api.poll() is not None:
                return 'gunicorn exited with %s' % self.api.returncode
            return None

        def daemon_dead():
            if self.daemon.poll() is not None:
                return 'kerbside daemon exited with %s' % \
                    self.daemon.returncode
            return None

        waiting.wait_until(
            self.api_ok, timeout,
            'Kerbside API GET %s/ to answer {"result": "ok"}' % self.api_url,
            seen=lambda: 'gunicorn %s; error log:\n%s' % (
                'alive' if self.api.poll() is None else 'dead',
                self._log_tail('gunicorn-error.log')),
            abort=api_dead)
        self.timings['api_ready'] = time.monotonic() - t
        proxy_ports = [self.secure_port, self.insecure_port,
                       self.metrics_port]
        waiting.wait_until(
            lambda: common_ports.busy_ports(proxy_ports) == sorted(
                proxy_ports),
            timeout,
            'kerbside-proxy to listen on %d (TLS), %d and %d (metrics)' % (
                self.secure_port, self.insecure_port, self.metrics_port),
            seen=lambda: 'listening: %s; daemon %s; daemon output:\n%s' % (
                common_ports.busy_ports(self.ports),
                'alive' if self.daemon.poll() is None else 'dead',
                self._log_tail('kerbside-daemon.out')),
            abort=daemon_dead, interval=0.05)
        self.timings['api_and_proxy_ready'] = time.monotonic() - t
        self._record_proxy_child()
        return self

    def _record_proxy_child(self):
        for pid in procs.group_members(self.daemon.pid):
            argv = procs.proc_cmdline(pid)
            if argv and os.path.basename(argv[0]) == 'kerbside-proxy':
                self.registry.add('kerbside-proxy', pid, argv=argv)

    def proxy_pids(self):
        """Live kerbside-proxy processes of this lane."""
        return [r['pid'] for r in self.registry.find('kerbside-proxy')
                if self.registry.alive(r)]

    def token(self):
        """The API JWT (minted once per lane by `kerbside demo token`)."""
        path = self.secrets.file('api-token')
        token = self.secrets.get('api-token')
        if token:
            return token.strip()
        self._run(['demo', 'token', '--subject', 'harness', '--output',
                   path], 'kerbside demo token')
        return self.secrets.get('api-token').strip()

    def fetch_vv(self, console_uuid=None):
        """A fresh proxy .vv of `console_uuid` (default: the first
        console); mints a console token that lives 60 s. Safe to call
        from several threads.
        """
        url = '%s/console/proxy/%s/%s/console.vv' % (
            self.api_url, SOURCE_NAME, console_uuid or self.console_uuid)
        req = urllib.request.Request(url, headers={
            'Authorization': 'Bearer %s' % self.token()})
        try:
            with _no_proxy_opener().open(req, timeout=15) as r:
                text = r.read().decode()
        except urllib.error.HTTPError as e:
            body = self.secrets.redactor.redact(
                e.read().decode(errors='replace'))[:500]
            raise errors.HarnessError(
                'GET %s returned %d: %s' % (url, e.code, body)) from None
        except OSError as e:
            raise errors.HarnessError('GET %s failed: %s (API %s)' % (
                url, e, 'answers' if self.api_ok() else 'down')) from None
        fields = common_vv.parse_vv(text)
        self.secrets.redactor.add(fields.get('password'))
        with self._vv_lock:
            self._vv_count += 1
            n = self._vv_count
        # Kept (0600) so that a `down` after a crash can still redact it.
        self.secrets.put('fetched-%d.vv' % n, text)
        with open(os.path.join(self.kdir, 'console-%d.redacted.vv'
                               % n), 'w') as f:
            f.write(common_vv.redact_vv(text))
        return text

    def metrics(self):
        """The proxy's Prometheus metrics as {name{labels}: value}."""
        url = 'http://127.0.0.1:%d/metrics' % self.metrics_port
        with _no_proxy_opener().open(url, timeout=5) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith('#'):
                key, _, value = line.rpartition(' ')
                try:
                    out[key] = float(value)
                except ValueError:
                    pass
        return out

"""Kerbside 0.8.0 for a lane: its venv, configuration, API, daemon and proxy.

Configuration is only `KERBSIDE_*` environment variables (there is no INI
file; /etc/kerbside is not used). The REST API runs under gunicorn; `kerbside
daemon run` reads the static source file, writes MariaDB and supervises
kerbside-proxy, which it finds on PATH (so the venv's bin goes first on
PATH). The static source is re-read only every 60 s, so the console is
written before the daemon starts and never changes afterwards.

Kerbside's own settings a test may want changed (the firewall, the console
token's lifetime, which kerbside-proxy binary runs) are `KerbsideSettings`,
set the way a deployer sets them: `KERBSIDE_<NAME>` variables in the
environment of the API and the daemon (docs/contracts/kerbside.md §3).
`kerbside_build()` says which Kerbside ran: the venv's versions, where the
venv's kerbside came from (PyPI or a checkout), and the proxy binary the
daemon really runs (its /proc/<pid>/exe), hashed.
"""

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from kerbside_tempest_plugin.common import atomic
from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import logtext
from kerbside_tempest_plugin.common import ports as common_ports
from kerbside_tempest_plugin.common import tools
from kerbside_tempest_plugin.common import vv as common_vv
from kerbside_tempest_plugin.common import waiting
from kerbside_tempest_plugin.lane import procs

LOG = logging.getLogger(__name__)

KERBSIDE_VERSION = '0.8.0'
# What `KerbsideVenv.source` says for a kerbside installed from an index.
PYPI_SOURCE = 'PyPI kerbside==%s'
# kerbside.proxy_supervisor.PROXY_BIN_ENV: the daemon runs this binary
# instead of kerbside-proxy on PATH.
PROXY_BIN_ENV = 'KERBSIDE_PROXY_BIN'
PROXY_NAME = 'kerbside-proxy'
# kerbside/rpc/servicer.py build_firewall_policy: 'enforce' (the default;
# an empty value too) or 'warn' (blocking verdicts forwarded and logged);
# Kerbside reads any other value as enforce, with a warning.
FIREWALL_MODES = ('enforce', 'warn')
# kerbside/rpc/servicer.py CHANNEL_NAME_TO_DISCRIMINANT: the SPICE channel
# names FIREWALL_PERMITTED_CHANNELS may list (with an unknown one the
# daemon exits 1 at start, "Invalid firewall configuration").
CHANNEL_NAMES = ('main', 'display', 'inputs', 'cursor', 'playback',
                 'record', 'tunnel', 'smartcard', 'usbredir', 'port',
                 'webdav')
# `kerbside-proxy --contract-hash` is answered at once; kerbside's own
# probe waits 10 s.
CONTRACT_HASH_TIMEOUT = 10
# Written into the venv after an install from a checkout: which checkout,
# and how its files looked (source_fingerprint), so an unchanged checkout
# is not reinstalled on every lane.
SOURCE_STAMP = 'ktp-kerbside-source.json'
# Not part of what a checkout install builds from.
_FINGERPRINT_SKIP_DIRS = {'.git', '.hg', '.tox', '.venv', 'venv', 'target',
                          'build', 'dist', '__pycache__', 'node_modules',
                          '.mypy_cache', '.pytest_cache', '.eggs'}
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


def _check_firewall_mode(value):
    if value is None:
        return None
    if not isinstance(value, str) or \
            value.strip().lower() not in FIREWALL_MODES:
        raise ValueError(
            'firewall_mode must be one of %s (or None for Kerbside\'s '
            'default, enforce), not %r' % (', '.join(FIREWALL_MODES), value))
    return value.strip().lower()


def _check_channels(value):
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(
            value, (list, tuple)):
        raise ValueError(
            'firewall_permitted_channels must be a list or tuple of SPICE '
            'channel names (e.g. [\'main\', \'display\']), or None to '
            'permit every channel, not %r' % (value,))
    if not value:
        # Kerbside reads an empty list as "permit all": a caller who
        # passes one most likely meant the opposite.
        raise ValueError(
            'firewall_permitted_channels is empty: Kerbside reads an empty '
            'list as "permit every channel", so pass None for that (a '
            'list that permits nothing cannot be said)')
    names = []
    for name in value:
        norm = name.strip().lower() if isinstance(name, str) else None
        if norm not in CHANNEL_NAMES:
            raise ValueError(
                'firewall_permitted_channels: %r is not a SPICE channel '
                'name Kerbside knows; valid names: %s' % (
                    name, ', '.join(CHANNEL_NAMES)))
        if norm not in names:
            names.append(norm)
    return tuple(names)


def _check_token_duration(value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            'console_token_duration must be a whole number of minutes >= 0 '
            '(or None for Kerbside\'s default, 1), not %r' % (value,))
    return value


def _check_proxy_bin(value, origin='proxy_bin'):
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError('%s must be the path of a kerbside-proxy binary, '
                         'not %r' % (origin, value))
    path = os.path.abspath(os.path.expanduser(value))
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise ValueError('%s %s is not an executable file' % (origin, path))
    return path


@dataclasses.dataclass(frozen=True)
class KerbsideSettings:
    """Kerbside settings a lane sets when asked; None leaves Kerbside's
    own default (0.8.0: firewall enforce, every channel permitted, console
    tokens live 1 minute, the venv's kerbside-proxy on PATH).

    - `firewall_mode`: 'enforce' or 'warn' -> KERBSIDE_FIREWALL_MODE;
    - `firewall_permitted_channels`: channel names (CHANNEL_NAMES) ->
      KERBSIDE_FIREWALL_PERMITTED_CHANNELS, comma-joined;
    - `console_token_duration`: minutes >= 0 ->
      KERBSIDE_CONSOLE_TOKEN_DURATION;
    - `proxy_bin`: an executable -> KERBSIDE_PROXY_BIN (absolute).

    Bad values raise ValueError naming the option. Build it with
    `from_options`, which takes `proxy_bin` from $KERBSIDE_PROXY_BIN when
    none is given.
    """

    firewall_mode: str = None
    firewall_permitted_channels: tuple = None
    console_token_duration: int = None
    proxy_bin: str = None

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, 'firewall_mode', _check_firewall_mode(self.firewall_mode))
        set_(self, 'firewall_permitted_channels',
             _check_channels(self.firewall_permitted_channels))
        set_(self, 'console_token_duration',
             _check_token_duration(self.console_token_duration))
        set_(self, 'proxy_bin', _check_proxy_bin(self.proxy_bin))

    @classmethod
    def from_options(cls, firewall_mode=None, firewall_permitted_channels=None,
                     console_token_duration=None, proxy_bin=None,
                     environ=None):
        """The settings; `proxy_bin` None means $KERBSIDE_PROXY_BIN (of
        `environ`, default os.environ) when it is set.
        """
        environ = os.environ if environ is None else environ
        if proxy_bin is None and environ.get(PROXY_BIN_ENV):
            proxy_bin = _check_proxy_bin(environ[PROXY_BIN_ENV],
                                         '$' + PROXY_BIN_ENV)
        return cls(firewall_mode=firewall_mode,
                   firewall_permitted_channels=firewall_permitted_channels,
                   console_token_duration=console_token_duration,
                   proxy_bin=proxy_bin)

    def env(self):
        """The KERBSIDE_* variables these settings set (none for None)."""
        out = {}
        if self.firewall_mode is not None:
            out['KERBSIDE_FIREWALL_MODE'] = self.firewall_mode
        if self.firewall_permitted_channels is not None:
            out['KERBSIDE_FIREWALL_PERMITTED_CHANNELS'] = ','.join(
                self.firewall_permitted_channels)
        if self.console_token_duration is not None:
            out['KERBSIDE_CONSOLE_TOKEN_DURATION'] = str(
                self.console_token_duration)
        if self.proxy_bin is not None:
            out[PROXY_BIN_ENV] = self.proxy_bin
        return out

    def info(self):
        """For lane.json (no secrets): each setting, None = Kerbside's
        default.
        """
        out = dataclasses.asdict(self)
        if self.firewall_permitted_channels is not None:
            out['firewall_permitted_channels'] = list(
                self.firewall_permitted_channels)
        return out


def describe_source(direct_url, version):
    """Where an installed kerbside came from, from its PEP 610
    direct_url.json (None: installed from an index): 'PyPI
    kerbside==<version>', the checkout's path, or the URL (with
    @<commit> for a VCS install).
    """
    if not direct_url:
        return PYPI_SOURCE % version
    url = direct_url.get('url') or ''
    parsed = urllib.parse.urlparse(url)
    where = urllib.request.url2pathname(parsed.path) \
        if parsed.scheme == 'file' else url
    commit = (direct_url.get('vcs_info') or {}).get('commit_id')
    return '%s@%s' % (where, commit) if commit else where


def source_fingerprint(path):
    """A sha256 over the names, sizes and mtimes of a checkout's files
    (VCS, build and cache directories left out): changes when the
    checkout does.
    """
    h = hashlib.sha256()
    root = os.path.abspath(path)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames
                             if d not in _FINGERPRINT_SKIP_DIRS
                             and not d.endswith('.egg-info'))
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            rel = os.path.relpath(full, root)
            line = '%s\0%d\0%d\n' % (rel, st.st_size, st.st_mtime_ns)
            h.update(line.encode('utf-8', 'surrogateescape'))
    return h.hexdigest()


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def proxy_contract_hash(binary):
    """`binary --contract-hash` (the sha256 of the kerbside.proto it was
    built against), or None when it does not answer with one.
    """
    try:
        proc = subprocess.run([binary, '--contract-hash'],
                              capture_output=True, text=True,
                              errors='replace',
                              timeout=CONTRACT_HASH_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        LOG.warning('%s --contract-hash failed: %s', binary, e)
        return None
    out = proc.stdout.strip()
    if proc.returncode != 0 or len(out) != 64 or \
            any(c not in '0123456789abcdef' for c in out):
        LOG.warning('%s --contract-hash: exit %d, %r', binary,
                    proc.returncode, out[:80])
        return None
    return out


def resolve_proxy_bin(venv, proxy_bin=None, path=None):
    """The kerbside-proxy the daemon runs, found as
    kerbside.proxy_supervisor.find_proxy_bin finds it: `proxy_bin`
    (KERBSIDE_PROXY_BIN), else kerbside-proxy on the daemon's PATH (the
    venv's bin first, then `path`, default $PATH). None when there is none.
    """
    if proxy_bin:
        return os.path.abspath(proxy_bin)
    search = os.path.join(venv.path, 'bin') + os.pathsep + (
        os.environ.get('PATH', '') if path is None else path)
    found = shutil.which(PROXY_NAME, path=search)
    return os.path.abspath(found) if found else None


def build_of(venv, proxy_bin=None, running_pid=None):
    """Which Kerbside this is (no secrets): a dict of kerbside_version,
    kerbside_proxy_version (the venv's packages), proxy_bin (absolute, as
    the daemon resolves it: `proxy_bin`, else the venv's), proxy_sha256,
    proxy_contract_hash, venv and source (KerbsideVenv.source).

    With `running_pid` (a live kerbside-proxy) the binary is the one that
    process runs (/proc/<pid>/exe, hashed as loaded), and it must be the
    one expected: a different one raises HarnessError.
    """
    if getattr(venv, 'versions', None) is None:
        problems = venv.check()
        if problems:
            raise errors.HarnessError('the Kerbside venv is not usable '
                                      '(%s)' % '; '.join(problems))
    expected = resolve_proxy_bin(venv, proxy_bin)
    binary, content = expected and os.path.realpath(expected), expected
    if running_pid is not None:
        exe_link = '/proc/%d/exe' % running_pid
        try:
            exe = os.readlink(exe_link)
        except OSError as e:
            raise errors.HarnessError('cannot read the exe of kerbside-proxy '
                                      'pid %d: %s' % (running_pid, e))
        if exe.endswith(' (deleted)'):
            exe = exe[:-len(' (deleted)')]
        if binary != exe:
            raise errors.HarnessError(
                'the daemon runs kerbside-proxy %s (pid %d), not %s (%s)' % (
                    exe, running_pid, binary or '<none found>',
                    'proxy_bin' if proxy_bin else 'the venv\'s'))
        binary, content = exe, exe_link
    if binary is None:
        raise errors.HarnessError('no kerbside-proxy in %s or on PATH; run '
                                  '`kerbside-harness setup`' % venv.path)
    try:
        sha = file_sha256(content)
    except OSError as e:
        raise errors.HarnessError('cannot read kerbside-proxy %s: %s' % (
            binary, e))
    return {
        'kerbside_version': venv.versions[0],
        'kerbside_proxy_version': venv.versions[1],
        'proxy_bin': binary,
        'proxy_sha256': sha,
        'proxy_contract_hash': proxy_contract_hash(content),
        'venv': venv.path,
        'source': venv.source,
    }


# A kept API JWT with less than this left is minted again.
TOKEN_MARGIN_S = 300


def jwt_seconds_left(token, now=None):
    """Seconds until the JWT `token` expires (its `exp` claim, read
    without verifying the signature: Kerbside checks that); 0 when it
    has no readable `exp`.
    """
    import base64
    try:
        payload = token.split('.')[1]
        claims = json.loads(base64.urlsafe_b64decode(
            payload + '=' * (-len(payload) % 4)))
        exp = float(claims['exp'])
    except (IndexError, ValueError, KeyError, TypeError):
        return 0
    return exp - (time.time() if now is None else now)


class KerbsideVenv:
    """The virtualenv holding kerbside, kerbside-proxy and gunicorn.

    After a successful `check()`: `versions` ([kerbside, kerbside-proxy])
    and `source` (where kerbside was installed from: describe_source).
    """

    BINARIES = ('python', 'kerbside', 'kerbside-proxy', 'gunicorn')
    # Run by check() in the venv: the imports the lane needs, then the
    # versions and kerbside's direct_url.json (PEP 610) on marked lines
    # (kerbside prints logging diagnostics to stdout on import).
    PROBE = (
        'import json, kerbside.main, MySQLdb, gunicorn\n'
        'from importlib.metadata import distribution, version as v\n'
        'print("KTP-VERSIONS", v("kerbside"), v("kerbside-proxy"))\n'
        'u = distribution("kerbside").read_text("direct_url.json")\n'
        'print("KTP-DIRECT-URL", json.dumps(json.loads(u) if u else None))\n')

    def __init__(self, path=None):
        self.path = os.path.abspath(path or default_venv())
        self.versions = None
        self.source = None

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
        proc = subprocess.run([self.bin('python'), '-c', self.PROBE],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            return ['kerbside does not import in %s: %s' % (
                self.path, logtext.tail_text(proc.stderr, 3))]
        marked = {}
        for line in proc.stdout.splitlines():
            if line.startswith('KTP-'):
                key, _, rest = line.partition(' ')
                marked[key] = rest
        if 'KTP-VERSIONS' not in marked:
            return ['cannot read the kerbside version in %s' % self.path]
        self.versions = marked['KTP-VERSIONS'].split()
        try:
            direct_url = json.loads(marked.get('KTP-DIRECT-URL', 'null'))
        except ValueError:
            return ['cannot read where kerbside came from in %s' % self.path]
        self.source = describe_source(direct_url, self.versions[0])
        return []

    def installed_version(self):
        if self.check():
            return None
        return self.versions[0]

    # -- the checkout stamp ----------------------------------------------
    @property
    def stamp_path(self):
        return os.path.join(self.path, SOURCE_STAMP)

    def stamp(self):
        """{'source', 'fingerprint'} of the last checkout install, or
        None.
        """
        try:
            with open(self.stamp_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    @contextlib.contextmanager
    def install_lock(self, timeout=1800):
        """Hold `<venv>.lock`: one install into this venv at a time (two
        lanes of one tempest run may each ask for it).
        """
        lock = self.path.rstrip(os.sep) + '.lock'
        os.makedirs(os.path.dirname(lock), exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)

        def take():
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        try:
            waiting.wait_until(
                take, timeout, 'another install into the Kerbside venv %s '
                'to finish (lock %s)' % (self.path, lock), interval=0.5)
            yield
        finally:
            os.close(fd)

    def ensure(self, source=None, version=KERBSIDE_VERSION, log=None,
               log_path=None, lock_timeout=1800):
        """Create or repair the venv so that it holds kerbside==`version`
        from PyPI or, with `source` (a Kerbside checkout), that checkout:
        installed again when the venv holds something else or the
        checkout changed since (SOURCE_STAMP). Returns a one-line
        description of what was done.
        """
        log = log or (lambda msg: print(msg, file=sys.stderr))
        if source is not None:
            source = os.path.abspath(source)
            if not os.path.isdir(source):
                raise errors.HarnessError(
                    'the Kerbside source %s is not a directory (a Kerbside '
                    'checkout)' % source)
        with self.install_lock(lock_timeout):
            return self._ensure(source, version, log, log_path)

    def _ensure(self, source, version, log, log_path):
        problems = self.check()
        force = False
        if not problems and source is None:
            if self.versions[0] == version and \
                    self.source == PYPI_SOURCE % version:
                return 'kerbside %s already in %s' % (version, self.path)
            if self.versions[0] == version:
                # Same version from a checkout: pip would call it
                # satisfied.
                force = True
            problems = ['kerbside %s from %s installed, %s wanted' % (
                self.versions[0], self.source, PYPI_SOURCE % version)]
        elif not problems:
            if self.source == source and self.stamp() == {
                    'source': source,
                    'fingerprint': source_fingerprint(source)}:
                return 'kerbside %s from %s (unchanged) already in %s' % (
                    self.versions[0], source, self.path)
            problems = ['kerbside from %s installed, the checkout %s wanted%s'
                        % (self.source, source, ' (changed since)'
                           if self.source == source else '')]
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
            try:
                os.unlink(self.stamp_path)
            except FileNotFoundError:
                pass
            target = source or 'kerbside==%s' % version
            steps = [['install', target]]
            if force:
                steps.insert(0, ['install', '--force-reinstall', '--no-deps',
                                 target])
            for step in steps:
                log('pip %s into %s' % (' '.join(step), self.path))
                proc = subprocess.run([self.bin('pip')] + step, stdout=out,
                                      stderr=out)
                if proc.returncode != 0:
                    raise errors.HarnessError(
                        'pip install %s failed (exit %d)%s. mysqlclient '
                        'builds from source: it needs '
                        'default-libmysqlclient-dev, pkg-config and a '
                        'compiler (see bindep.txt)' % (
                            target, proc.returncode,
                            '; see %s' % log_path if log_path else ''))
        finally:
            if out:
                out.close()
        problems = self.check()
        if problems:
            raise errors.HarnessError('kerbside venv still broken after '
                                      'install: %s' % '; '.join(problems))
        if source:
            if self.source != source:
                raise errors.HarnessError(
                    'pip installed %s into %s, but kerbside there now comes '
                    'from %s' % (source, self.path, self.source))
            # Taken after the build, which may write into the checkout.
            atomic.write_json(self.stamp_path, {
                'source': source, 'fingerprint': source_fingerprint(source)})
        return 'installed %s into %s (kerbside %s)' % (
            target, self.path, self.versions[0])


class Kerbside:
    """Kerbside API + daemon + proxy for one lane, fronting one console
    (`console_uuid`, `guest_port`, `ticket`, `guest_tls_port`) and, with
    `extra_consoles` (dicts: uuid, port, tls_port, ticket), more: all in
    the one static source, named CONSOLE_NAME, CONSOLE_NAME-2, ...

    `firewall_mode`, `firewall_permitted_channels`,
    `console_token_duration` and `proxy_bin` are Kerbside's settings
    (KerbsideSettings: None leaves Kerbside's default; `proxy_bin` None
    takes $KERBSIDE_PROXY_BIN when set), applied in env().
    """

    def __init__(self, venv, workdir, run_dir, secrets, registry, tls,
                 sql_url, api_port, secure_port, insecure_port,
                 metrics_port, console_uuid, guest_port, ticket,
                 verbose=True, guest_tls_port=None, guest_ca_cert=None,
                 guest_host_subject=None, extra_consoles=(),
                 firewall_mode=None, firewall_permitted_channels=None,
                 console_token_duration=None, proxy_bin=None):
        self.settings = KerbsideSettings.from_options(
            firewall_mode=firewall_mode,
            firewall_permitted_channels=firewall_permitted_channels,
            console_token_duration=console_token_duration,
            proxy_bin=proxy_bin)
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
        """The environment of every Kerbside process: the caller's, minus
        every KERBSIDE_* variable, plus the lane's configuration and the
        settings asked for (self.settings).
        """
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
        env.update(self.settings.env())
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

    def is_proxy_argv(self, argv):
        """Whether `argv` (a /proc cmdline) is a kerbside-proxy: the
        daemon starts it as argv[0] = the binary's path.
        """
        if not argv:
            return False
        names = {PROXY_NAME}
        if self.settings.proxy_bin:
            names.add(os.path.basename(self.settings.proxy_bin))
        return os.path.basename(argv[0]) in names

    def proxy_children(self):
        """Pids of the daemon's kerbside-proxy children (its process
        group), [] without a daemon.
        """
        if self.daemon is None:
            return []
        return [pid for pid in procs.group_members(self.daemon.pid)
                if self.is_proxy_argv(procs.proc_cmdline(pid))]

    def _record_proxy_child(self):
        for pid in self.proxy_children():
            self.registry.add(PROXY_NAME, pid, argv=procs.proc_cmdline(pid))

    def proxy_pids(self):
        """Live kerbside-proxy processes of this lane."""
        return [r['pid'] for r in self.registry.find(PROXY_NAME)
                if self.registry.alive(r)]

    def kerbside_build(self, running=None):
        """Which Kerbside this lane runs (build_of: kerbside_version,
        kerbside_proxy_version, proxy_bin, proxy_sha256,
        proxy_contract_hash, venv, source). While the proxy runs, the
        binary is checked against its /proc/<pid>/exe; `running=True`
        requires a running proxy (HarnessError without one).
        """
        pids = self.proxy_pids() if self.registry is not None and \
            self.daemon is not None else []
        if running and not pids:
            raise errors.HarnessError(
                'no kerbside-proxy runs under the Kerbside daemon; daemon '
                'output tail:\n%s' % self._log_tail('kerbside-daemon.out'))
        return build_of(self.venv, self.settings.proxy_bin,
                        running_pid=pids[0] if pids else None)

    def token(self):
        """The API JWT, minted by `kerbside demo token` (it lives an
        hour): kept in the lane's secrets, and minted again when it has
        less than TOKEN_MARGIN_S left (a lane up for longer than an hour,
        a workdir brought up again later).
        """
        path = self.secrets.file('api-token')
        token = (self.secrets.get('api-token') or '').strip()
        if token and jwt_seconds_left(token) > TOKEN_MARGIN_S:
            return token
        if token:
            os.unlink(path)
        self._run(['demo', 'token', '--subject', 'harness', '--output',
                   path], 'kerbside demo token')
        return self.secrets.get('api-token').strip()

    def fetch_vv(self, console_uuid=None):
        """A fresh proxy .vv of `console_uuid` (default: the first
        console); mints a console token that lives
        `console_token_duration` minutes (Kerbside's default: 1). Safe to
        call from several threads.
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

"""Run ryll headless with a control socket, and stop it cleanly.

Standard library only. Facts relied on (docs/contracts/ryll-control-socket.md
§2, §13, §14; docs/contracts/kerbside.md §5.3, §5.4):

- the socket is bound within ~20 ms, before SPICE is up, so a socket file
  does not mean a session: poll ``status`` (``wait_ready``);
- if SPICE cannot be reached ryll removes the socket and exits 1 at once;
- SIGINT is a clean stop (~225 ms, socket removed, exit 0); SIGTERM and
  SIGKILL leave a stale socket file behind, which ``stop()`` removes;
- ryll deletes a .vv that says ``delete-this-file=1``; the .vv carries the
  SPICE ticket or Kerbside token, so it lives 0600 in a private 0700
  directory and no copy is kept. Nothing here logs its contents.
"""

import logging
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time

from kerbside_tempest_plugin.common import logtext
from kerbside_tempest_plugin.common import tools
from kerbside_tempest_plugin.ryll import client as ryll_client

LOG = logging.getLogger(__name__)

# sun_path is 108 bytes on Linux including the NUL; stay well under.
MAX_SOCKET_PATH = 100


# What ryll 0.3.0 logs (INFO, stdout) once its inputs channel is linked.
INPUTS_READY_LOG = 'inputs: connected successfully'


class RyllProcessError(ryll_client.RyllError):
    """ryll exited, or could not be started, when it should be running."""


def find_ryll(binary='ryll'):
    """Resolve the ryll executable, the way every tool is found
    (common.tools): a path is used as given, so a local build can be
    tested; a bare name defers to $RYLL_BINARY, then the scripts directory
    of this interpreter's environment (PyPI ``ryll``), PATH, the sbins.
    """
    try:
        return tools.find('ryll', override=binary)
    except tools.ToolNotFound as e:
        raise RyllProcessError(str(e)) from e


class RyllProcess:
    """One headless ryll with a control socket.

    Give exactly one of ``vv_path`` (an existing .vv; ryll may delete it),
    ``vv_text`` (written here 0600 into the private socket directory) or
    ``direct='HOST:PORT'`` (unticketed servers only: ``--direct`` cannot
    carry a ticket). Logs go to ``<workdir>/<name>.stdout`` and
    ``.stderr``.
    """

    def __init__(self, vv_path=None, workdir=None, binary='ryll', *,
                 vv_text=None, direct=None, name='ryll',
                 enable_paste=True, extra_args=(), env=None):
        given = [x for x in (vv_path, vv_text, direct) if x is not None]
        if len(given) != 1:
            raise ValueError('give exactly one of vv_path, vv_text, direct')
        self.vv_path = str(vv_path) if vv_path is not None else None
        self._vv_text = vv_text
        self.direct = direct
        self.workdir = str(workdir) if workdir else tempfile.mkdtemp(
            prefix='ryll-work-')
        self.binary = binary
        self.name = name
        self.enable_paste = enable_paste
        self.extra_args = list(extra_args)
        self.env = env
        self.stdout_path = os.path.join(self.workdir, name + '.stdout')
        self.stderr_path = os.path.join(self.workdir, name + '.stderr')
        self.private_dir = None
        self.socket_path = None
        self._written_vv = None
        self._proc = None
        self._logs = []
        self.started_at = None
        self.argv = None

    # -- lifecycle

    def _make_private_dir(self):
        os.makedirs(self.workdir, exist_ok=True)
        # mkdtemp makes a 0700 directory. Prefer the workdir, but the
        # socket path must fit in sun_path.
        for parent in (self.workdir, tempfile.gettempdir(), '/tmp'):
            candidate = os.path.join(parent, 'ryll-XXXXXXXX', 'ctl.sock')
            if len(os.fsencode(candidate)) < MAX_SOCKET_PATH:
                break
        else:
            raise RyllProcessError('no directory gives a control socket '
                                   'path under %d bytes' % MAX_SOCKET_PATH)
        self.private_dir = tempfile.mkdtemp(prefix='ryll-', dir=parent)
        os.chmod(self.private_dir, 0o700)
        self.socket_path = os.path.join(self.private_dir, 'ctl.sock')

    def _write_vv(self):
        path = os.path.join(self.private_dir, 'console.vv')
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, 'w') as f:
            f.write(self._vv_text)
        self._written_vv = path
        return path

    def start(self):
        if self._proc is not None:
            raise RyllProcessError('%s already started' % self.name)
        exe = find_ryll(self.binary)
        self._make_private_dir()
        argv = [exe, '--headless', '--control-socket', self.socket_path]
        if self.enable_paste:
            argv.append('--enable-paste-as-keystrokes')
        if self.direct is not None:
            argv += ['--direct', self.direct]
        else:
            argv += ['--file', self.vv_path or self._write_vv()]
        argv += self.extra_args
        self.argv = argv
        out = open(self.stdout_path, 'ab')
        err = open(self.stderr_path, 'ab')
        self._logs = [out, err]
        try:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, close_fds=True, env=self.env)
        except OSError as e:
            self._cleanup_files()
            raise RyllProcessError('could not start %s: %s' % (exe, e))
        self.started_at = time.monotonic()
        # The argv holds paths only, never the ticket.
        LOG.info('started %s (pid %d): %s', self.name, self._proc.pid,
                 ' '.join(argv))
        return self

    def __enter__(self):
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    @property
    def pid(self):
        return self._proc.pid if self._proc else None

    @property
    def returncode(self):
        return self._proc.poll() if self._proc else None

    @property
    def alive(self):
        return self._proc is not None and self._proc.poll() is None

    def describe(self):
        """One line: pid and whether ryll is running or how it exited."""
        if self._proc is None:
            return '%s not started' % self.name
        rc = self._proc.poll()
        age = time.monotonic() - self.started_at
        if rc is None:
            return '%s pid %d running for %.1f s' % (self.name, self.pid, age)
        how = ('killed by signal %d' % -rc if rc < 0
               else 'exited with status %d' % rc)
        return '%s pid %d %s' % (self.name, self.pid, how)

    def log_tail(self, lines=20):
        def tail(path):
            return logtext.tail_file(path, lines, limit=None,
                                     max_bytes=16384, empty='')
        return ('--- %s (last %d lines) ---\n%s\n--- %s ---\n%s' % (
            self.stdout_path, lines, tail(self.stdout_path),
            self.stderr_path, tail(self.stderr_path)))

    # -- waiting

    def wait_for_socket(self, timeout=10.0):
        """Wait until the control socket exists; return its path.

        Fails fast with RyllProcessError if ryll exits first, and with
        RyllTimeout (saying whether ryll is alive, plus its log tail) at
        the deadline.
        """
        if self._proc is None:
            raise RyllProcessError('%s not started' % self.name)
        start = time.monotonic()
        deadline = start + timeout
        while True:
            try:
                if stat.S_ISSOCK(os.stat(self.socket_path).st_mode):
                    return self.socket_path
            except FileNotFoundError:
                pass
            if self._proc.poll() is not None:
                raise RyllProcessError(
                    '%s before its control socket %s appeared (%.2f s after '
                    'start)\n%s' % (self.describe(), self.socket_path,
                                    time.monotonic() - start,
                                    self.log_tail()))
            if time.monotonic() >= deadline:
                raise ryll_client.RyllTimeout(
                    'control socket %s did not appear within %.1f s; %s\n%s'
                    % (self.socket_path, timeout, self.describe(),
                       self.log_tail()),
                    waited_for='control socket', elapsed=timeout)
            time.sleep(0.01)

    def connect(self, timeout=10.0, **client_kwargs):
        """Wait for the socket, then return a connected ControlClient."""
        deadline = time.monotonic() + timeout
        path = self.wait_for_socket(timeout)
        client = ryll_client.ControlClient(path, **client_kwargs)
        try:
            client.connect(timeout=max(deadline - time.monotonic(), 0.1),
                           abort=self._exited)
        except ryll_client.RyllError as e:
            client.close()
            raise self._explain(e, 'connecting to the control socket')
        return client

    def _exited(self):
        """A reason when ryll has exited (for waits to stop at once)."""
        if self._proc is not None and self._proc.poll() is not None:
            return 'ryll exited with status %s' % self._proc.returncode
        return None

    def _explain(self, error, doing):
        """Re-raise ``error`` with ryll's state and log tail attached."""
        if self._proc is not None:
            try:
                self._proc.wait(0.5)   # an EOF usually means it is exiting
            except subprocess.TimeoutExpired:
                pass
        message = '%s: %s; %s\n%s' % (doing, error, self.describe(),
                                      self.log_tail())
        if isinstance(error, ryll_client.RyllTimeout):
            return ryll_client.RyllTimeout(message, error.waited_for,
                                           error.elapsed, error.seen)
        if isinstance(error, ryll_client.RyllConnectionClosed):
            return ryll_client.RyllConnectionClosed(message, error.reason)
        return error

    def wait_ready(self, client, timeout=30.0, settle=0.5, interval=0.05,
                   inputs_timeout=5.0):
        """Poll ``status`` until SPICE is connected with a surface, then
        wait for the inputs channel. Returns the last status.

        The inputs channel connects 50-100 ms after the first surface (more
        under load), and the control protocol does not report it. ryll 0.3.0
        logs ``inputs: connected successfully``; wait up to
        ``inputs_timeout`` for that line and, if it never comes (another
        build may word it differently), fall back to sleeping ``settle``
        seconds with a warning. ``settle=0`` skips this wait.
        """
        start = time.monotonic()
        deadline = start + timeout
        status = None
        polls = 0
        while True:
            try:
                status = client.status(timeout=max(
                    min(5.0, deadline - time.monotonic()), 0.1))
            except ryll_client.RyllError as e:
                raise self._explain(e, 'waiting for a SPICE surface')
            polls += 1
            if status.get('spice_connected') and status.get('surfaces'):
                break
            if time.monotonic() >= deadline:
                raise ryll_client.RyllTimeout(
                    'no SPICE surface within %.1f s (%d status polls, last '
                    'status %s); %s\n%s' % (timeout, polls, status,
                                            self.describe(),
                                            self.log_tail()),
                    waited_for='SPICE surface', elapsed=timeout)
            time.sleep(interval)
        if settle:
            if not self.wait_for_log(INPUTS_READY_LOG, inputs_timeout):
                LOG.warning('%s never logged %r within %.1f s; sleeping '
                            '%.1f s for the inputs channel instead',
                            self.name, INPUTS_READY_LOG, inputs_timeout,
                            settle)
                time.sleep(settle)
        LOG.info('%s ready after %.2f s: %s', self.name,
                 time.monotonic() - start, status.get('surfaces'))
        return status

    def wait_for_log(self, needle, timeout, interval=0.05):
        """Wait until ryll's stdout log contains `needle`; return whether
        it did within `timeout` seconds (False at once if ryll has exited
        without logging it).
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                with open(self.stdout_path, 'rb') as f:
                    if needle.encode() in f.read():
                        return True
            except FileNotFoundError:
                pass
            if not self.alive or time.monotonic() >= deadline:
                return False
            time.sleep(interval)

    # -- stopping

    def stop(self, timeout=5.0, kill_timeout=5.0):
        """SIGINT, wait, then SIGKILL; always reap and tidy up.

        Returns the exit status. Safe to call more than once, and never
        raises for a process that is already gone.
        """
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                LOG.warning('%s ignored SIGINT for %.1f s; killing it',
                            self.name, timeout)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    proc.kill()
                try:
                    proc.wait(kill_timeout)
                except subprocess.TimeoutExpired:
                    LOG.error('%s (pid %d) survived SIGKILL for %.1f s',
                              self.name, proc.pid, kill_timeout)
            except ProcessLookupError:
                pass
        if proc is not None:
            try:
                proc.wait(0)
            except subprocess.TimeoutExpired:
                pass
        self._cleanup_files()
        return self.returncode

    def _cleanup_files(self):
        for f in self._logs:
            try:
                f.close()
            except OSError:
                pass
        self._logs = []
        if self.socket_path and self.alive is False:
            try:
                if stat.S_ISSOCK(os.lstat(self.socket_path).st_mode):
                    os.unlink(self.socket_path)   # stale after SIGKILL
            except FileNotFoundError:
                pass
        if self._written_vv:
            try:
                os.unlink(self._written_vv)   # holds the ticket
            except FileNotFoundError:
                pass
        if self.private_dir and not self.alive:
            shutil.rmtree(self.private_dir, ignore_errors=True)

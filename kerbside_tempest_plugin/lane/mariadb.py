"""A private MariaDB for one lane (Kerbside 0.8.0 does not run on SQLite).

`mariadb-install-db` into the lane's own datadir, `mariadbd --no-defaults`
on a private socket and a free loopback port, a `kerbside` database and a
`kerbside` user with a random password for both localhost and 127.0.0.1 (a
TCP login to 127.0.0.1 matches `kerbside@localhost` because MariaDB
resolves the name). No system service is used or touched.

Every path either program writes is the lane's own: the datadir, the
socket and pid file (in the lane's run directory) and the tmpdir. The
tmpdir matters: both default to /tmp, and a starting mariadbd deletes
every `#sql*` file in its tmpdir as a crash leftover, so two lanes
sharing /tmp could delete the temporary tables of the other's
`mariadb-install-db` bootstrap (ERROR 1051 Unknown table
'mysql.tmp_user_nopasswd').
"""

import getpass
import os
import subprocess
import time

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import logtext
from kerbside_tempest_plugin.common import tools
from kerbside_tempest_plugin.common import waiting


def _tool(*names):
    # The one tool lookup (common.tools): the first of the names found.
    return tools.find_any(*names)


class PrivateMariaDB:
    """One mariadbd owned by the lane.

    `datadir` holds data that includes Kerbside's console tickets and
    tokens, so the lane puts it under its secrets directory; the tmpdir
    (temporary tables hold the same rows) is its sibling there,
    `<datadir>-tmp`, removed with the secrets directory at teardown.
    """

    DB = 'kerbside'
    USER = 'kerbside'
    # Small: the default 96 MiB redo log and 128 MiB buffer pool would
    # make every lane's datadir 114 MiB; these make it 26 MiB.
    TUNING = ['--innodb-log-file-size=8M', '--innodb-buffer-pool-size=32M']

    def __init__(self, datadir, run_dir, log_dir, port, registry, secrets):
        self.datadir = datadir
        self.tmpdir = os.path.normpath(datadir) + '-tmp'
        self.socket = os.path.join(run_dir, 'mysqld.sock')
        self.pid_file = os.path.join(run_dir, 'mariadbd.pid')
        self.log_path = os.path.join(log_dir, 'mariadbd.err')
        self.install_log = os.path.join(log_dir, 'mariadb-install-db.log')
        self.port = port
        self.registry = registry
        self.secrets = secrets
        self.proc = None
        self.timings = {}

    @property
    def password(self):
        return self.secrets.get_or_create('db-password')

    @property
    def sql_url(self):
        return 'mysql://%s:%s@127.0.0.1:%d/%s' % (
            self.USER, self.password, self.port, self.DB)

    def _client(self, name):
        return [_tool(name, name.replace('mariadb', 'mysql')),
                '--no-defaults', '--socket=%s' % self.socket]

    def _private_dirs(self):
        # The lane's own paths for both programs (mariadb-install-db hands
        # options it does not know, --tmpdir among them, to its bootstrap
        # mariadbd).
        os.makedirs(self.tmpdir, mode=0o700, exist_ok=True)
        return ['--datadir=%s' % self.datadir, '--tmpdir=%s' % self.tmpdir]

    def install_argv(self):
        return ([_tool('mariadb-install-db', 'mysql_install_db'),
                 '--no-defaults', '--user=%s' % getpass.getuser()] +
                self._private_dirs() +
                ['--auth-root-authentication-method=socket',
                 '--skip-test-db'] + self.TUNING)

    def server_argv(self):
        return ([_tool('mariadbd', 'mysqld'), '--no-defaults',
                 '--user=%s' % getpass.getuser()] + self._private_dirs() +
                ['--socket=%s' % self.socket, '--port=%d' % self.port,
                 '--bind-address=127.0.0.1',
                 '--pid-file=%s' % self.pid_file,
                 '--log-error=%s' % self.log_path] + self.TUNING)

    def _install(self):
        if os.path.isdir(os.path.join(self.datadir, 'mysql')):
            return
        os.makedirs(self.datadir, mode=0o700, exist_ok=True)
        t = time.monotonic()
        with open(self.install_log, 'ab') as log:
            proc = subprocess.run(
                self.install_argv(),
                stdout=log, stderr=subprocess.STDOUT, timeout=120)
        if proc.returncode != 0:
            raise errors.HarnessError(
                'mariadb-install-db failed (exit %d); log tail:\n%s' % (
                    proc.returncode, logtext.tail_file(self.install_log)))
        self.timings['install_db'] = time.monotonic() - t

    def ping(self):
        proc = subprocess.run(self._client('mariadb-admin') + ['ping'],
                              capture_output=True, timeout=10)
        return proc.returncode == 0

    def _sql(self, statements):
        proc = subprocess.run(self._client('mariadb') + ['-uroot'],
                              input=statements.encode(),
                              capture_output=True, timeout=30)
        if proc.returncode != 0:
            err = self.secrets.redactor.redact(
                proc.stderr.decode(errors='replace'))
            raise errors.HarnessError('MariaDB SQL failed: %s' % err.strip())

    def query(self, statement):
        """Rows of one SELECT (as root over the socket), each a list of
        strings: for looking at what Kerbside stored that its API does
        not show. Raises HarnessError with MariaDB's words.
        """
        proc = subprocess.run(self._client('mariadb') + [
            '-uroot', '--batch', '--skip-column-names', '-e', statement],
            capture_output=True, timeout=30)
        if proc.returncode != 0:
            err = self.secrets.redactor.redact(
                proc.stderr.decode(errors='replace'))
            raise errors.HarnessError('MariaDB query failed: %s'
                                      % err.strip())
        return [line.split('\t') for line in
                proc.stdout.decode(errors='replace').splitlines()]

    def start(self, timeout=60):
        self._install()
        t = time.monotonic()
        self.proc = self.registry.spawn(
            'mariadbd', self.server_argv(), self.log_path + '.stdout')

        def dead():
            if self.proc.poll() is not None:
                return 'mariadbd exited with %s' % self.proc.returncode
            return None

        waiting.wait_until(
            self.ping, timeout, 'mariadbd on %s to answer ping' % self.socket,
            seen=lambda: 'mariadbd %s; error log tail:\n%s' % (
                'running' if self.proc.poll() is None else 'exited',
                logtext.tail_file(self.log_path)),
            interval=0.1, abort=dead)
        self.timings['start_to_ping'] = time.monotonic() - t
        pw = self.password.replace("'", "''")
        stmts = ['CREATE DATABASE IF NOT EXISTS %s;' % self.DB]
        for host in ('localhost', '127.0.0.1'):
            stmts += [
                "CREATE USER IF NOT EXISTS '%s'@'%s' IDENTIFIED BY '%s';" % (
                    self.USER, host, pw),
                "ALTER USER '%s'@'%s' IDENTIFIED BY '%s';" % (
                    self.USER, host, pw),
                "GRANT ALL PRIVILEGES ON %s.* TO '%s'@'%s';" % (
                    self.DB, self.USER, host)]
        stmts.append('FLUSH PRIVILEGES;')
        self._sql('\n'.join(stmts) + '\n')
        return self

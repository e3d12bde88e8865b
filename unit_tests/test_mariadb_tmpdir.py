"""Each lane's MariaDB keeps its temporary files in its own directory.

Both `mariadb-install-db` (its bootstrap mariadbd) and `mariadbd` default
to /tmp, and a starting mariadbd deletes every `#sql*` file in its tmpdir
as a crash leftover: two lanes sharing /tmp lost the other's bootstrap
temporary tables (ERROR 1051 Unknown table 'mysql.tmp_user_nopasswd').
These tests read the argv the lane hands to both programs.
"""

import os
import subprocess

import pytest

from kerbside_tempest_plugin.lane import mariadb


class _Stop(Exception):
    pass


class _Registry:
    def __init__(self):
        self.spawned = []

    def spawn(self, name, argv, log_path):
        self.spawned.append((name, list(argv)))
        raise _Stop()


class _Secrets:
    def get_or_create(self, name):
        return 'pw'


def _argvs(monkeypatch, base, name):
    """The argv of mariadb-install-db and of mariadbd for a lane rooted at
    `base` (the programs are not run: the commands are recorded).
    """
    ran = []

    def run(argv, **kwargs):
        ran.append(list(argv))
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(mariadb.subprocess, 'run', run)
    monkeypatch.setattr(mariadb, '_tool', lambda *names: names[0])
    lane = os.path.join(str(base), name)
    for d in ('secrets', 'run', 'logs'):
        os.makedirs(os.path.join(lane, d))
    registry = _Registry()
    db = mariadb.PrivateMariaDB(
        os.path.join(lane, 'secrets', 'mariadb'), os.path.join(lane, 'run'),
        os.path.join(lane, 'logs'), 3306, registry, _Secrets())
    with pytest.raises(_Stop):
        db.start(timeout=1)
    assert [a[0] for a in ran] == ['mariadb-install-db']
    assert [s[0] for s in registry.spawned] == ['mariadbd']
    return lane, ran[0], registry.spawned[0][1]


def _opt(argv, name):
    values = [a.split('=', 1)[1] for a in argv if a.startswith(name + '=')]
    assert len(values) == 1, 'expected one %s in %s' % (name, argv)
    return values[0]


def test_both_commands_use_the_lanes_private_tmpdir(monkeypatch, tmp_path):
    lane, install, server = _argvs(monkeypatch, tmp_path, 'a')
    secrets = os.path.join(lane, 'secrets')
    for argv in (install, server):
        tmpdir = _opt(argv, '--tmpdir')
        assert os.path.dirname(tmpdir) == secrets
        assert os.path.isdir(tmpdir)
        assert os.stat(tmpdir).st_mode & 0o077 == 0
    assert _opt(install, '--tmpdir') == _opt(server, '--tmpdir')
    assert _opt(install, '--tmpdir') != _opt(install, '--datadir')


def test_two_lanes_share_no_path(monkeypatch, tmp_path):
    _, install_a, server_a = _argvs(monkeypatch, tmp_path, 'a')
    _, install_b, server_b = _argvs(monkeypatch, tmp_path, 'b')
    assert _opt(install_a, '--tmpdir') != _opt(install_b, '--tmpdir')
    for name in ('--tmpdir', '--datadir', '--socket', '--pid-file',
                 '--log-error'):
        assert _opt(server_a, name) != _opt(server_b, name)
    for argv in (install_a, install_b, server_a, server_b):
        assert os.path.normpath(_opt(argv, '--tmpdir')) != '/tmp'

"""common.tools: one lookup for every program the harness runs."""

import os
import subprocess
import sys

import pytest

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import tools


def _exe(path, text='#!/bin/sh\nexit 0\n'):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """An interpreter bin dir, a PATH dir and an sbin dir, all empty."""
    d = {k: tmp_path / k for k in ('scripts', 'path', 'sbin', 'venv')}
    for p in d.values():
        p.mkdir()
    monkeypatch.setattr(tools, 'interpreter_bin_dirs',
                        lambda: [str(d['scripts'])])
    monkeypatch.setattr(tools, 'SYSTEM_SBIN', (str(d['sbin']),))
    monkeypatch.setenv('PATH', str(d['path']))
    monkeypatch.delenv('RYLL_BINARY', raising=False)
    return d


def test_the_interpreters_bin_dir_comes_before_path(dirs):
    beside = _exe(dirs['scripts'] / 'ryll')
    _exe(dirs['path'] / 'ryll')
    assert tools.find('ryll') == beside


def test_path_then_the_sbins(dirs):
    on_path = _exe(dirs['path'] / 'qemu-img')
    assert tools.find('qemu-img') == on_path
    in_sbin = _exe(dirs['sbin'] / 'mariadbd')
    assert tools.find('mariadbd') == in_sbin


def test_a_non_executable_file_is_not_a_tool(dirs):
    (dirs['scripts'] / 'ryll').write_text('not executable')
    on_path = _exe(dirs['path'] / 'ryll')
    assert tools.find('ryll') == on_path


def test_an_override_path_wins_and_must_be_executable(dirs, tmp_path):
    _exe(dirs['scripts'] / 'ryll')
    local = _exe(tmp_path / 'build' / 'ryll')
    assert tools.find('ryll', override=local) == local
    with pytest.raises(tools.ToolNotFound) as e:
        tools.find('ryll', override=str(tmp_path / 'nope' / 'ryll'))
    assert 'configured override' in str(e.value)


def test_the_environment_variable_is_an_override(dirs, tmp_path,
                                                 monkeypatch):
    _exe(dirs['scripts'] / 'ryll')
    local = _exe(tmp_path / 'mine' / 'ryll')
    monkeypatch.setenv('RYLL_BINARY', local)
    assert tools.find('ryll') == local
    # The configured default ('ryll') defers to the variable; a path
    # given explicitly does not.
    assert tools.find('ryll', override='ryll') == local
    other = _exe(tmp_path / 'other' / 'ryll')
    assert tools.find('ryll', override=other) == other


def test_a_missing_tool_is_one_line_naming_package_and_command(dirs):
    with pytest.raises(tools.ToolNotFound) as e:
        tools.find('qemu-img')
    msg = str(e.value)
    assert isinstance(e.value, errors.HarnessError)
    assert '\n' not in msg
    assert 'Debian package qemu-utils' in msg
    assert '`apt-get install -y qemu-utils`' in msg
    assert str(dirs['scripts']) in msg and 'PATH' in msg
    with pytest.raises(tools.ToolNotFound) as e:
        tools.find('ryll')
    assert 'ryll==0.3.0' in str(e.value)
    assert '%s -m pip install ryll==0.3.0' % sys.executable in str(e.value)


def test_kerbside_programs_come_from_the_kerbside_venv_only(dirs):
    _exe(dirs['path'] / 'gunicorn')
    _exe(dirs['scripts'] / 'gunicorn')
    with pytest.raises(tools.ToolNotFound) as e:
        tools.find('gunicorn', venv=str(dirs['venv']))
    assert 'kerbside-harness setup' in str(e.value)
    mine = _exe(dirs['venv'] / 'bin' / 'gunicorn')
    assert tools.find('gunicorn', venv=str(dirs['venv'])) == mine


def test_default_kerbside_venv(monkeypatch, tmp_path):
    monkeypatch.delenv('KERBSIDE_VENV', raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    assert tools.default_kerbside_venv() == str(
        tmp_path / 'kerbside-tempest-plugin' / 'kerbside-venv')
    monkeypatch.setenv('KERBSIDE_VENV', str(tmp_path / 'kv'))
    assert tools.default_kerbside_venv() == str(tmp_path / 'kv')


def test_find_any_and_missing(dirs):
    mysqld = _exe(dirs['sbin'] / 'mysqld')
    assert tools.find_any('mariadbd', 'mysqld') == mysqld
    with pytest.raises(tools.ToolNotFound) as e:
        tools.find_any('mariadb-install-db', 'mysql_install_db')
    assert e.value.name == 'mariadb-install-db'
    assert [m.name for m in tools.missing(['mysqld', 'openssl'])] == [
        'openssl']


def test_the_command_line(dirs, capsys):
    path = _exe(dirs['path'] / 'openssl')
    assert tools.main(['openssl']) == 0
    assert capsys.readouterr().out == path + '\n'
    assert tools.main(['openssl', 'qemu-img']) == 1
    captured = capsys.readouterr()
    assert captured.out == path + '\n'
    assert captured.err.startswith('missing tool qemu-img: ')
    assert tools.main([]) == 2


def test_ryll_beside_the_interpreter_with_nothing_on_path(tmp_path):
    """The bug of issue 9: ryll installed by pip into the running
    environment, whose bin dir is not on the PATH of a fresh shell.
    """
    env = {'HOME': os.environ.get('HOME', str(tmp_path)),
           'PATH': '/usr/sbin:/usr/bin:/sbin:/bin'}
    proc = subprocess.run(
        [sys.executable, '-m', 'kerbside_tempest_plugin.common.tools',
         'ryll'], capture_output=True, text=True, env=env, timeout=60,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr
    found = proc.stdout.strip()
    assert os.path.dirname(found) in tools.interpreter_bin_dirs(), found

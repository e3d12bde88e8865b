"""Kerbside's settings as lane options, and which Kerbside a lane ran.

lane.kerbside.KerbsideSettings (firewall_mode, firewall_permitted_channels,
console_token_duration, proxy_bin) reach Kerbside's environment from the
Kerbside class, the direct-qemu Lane (its constructor and from_config),
the OpenStack cloud and lane, and the command lines; `build_of` names the
venv's versions, where kerbside came from and the proxy binary, checked
against a running process. Everything here runs on fakes: a fake venv
(shell scripts for python, pip and kerbside-proxy) and a copy of `sleep`
standing in for a running proxy.
"""

import hashlib
import json
import os
import shutil
import stat
import subprocess
import types

from oslo_config import cfg
import pytest

from kerbside_tempest_plugin.cmd import harness
from kerbside_tempest_plugin.cmd import openstack as os_cmd
from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import secrets
from kerbside_tempest_plugin.common import tls
from kerbside_tempest_plugin import config
from kerbside_tempest_plugin.lane import kerbside as lane_kerbside
from kerbside_tempest_plugin.lane import lane as lane_mod
from kerbside_tempest_plugin.lane.openstack import cloud as os_cloud
from kerbside_tempest_plugin.lane.openstack import kerbside as os_kerbside
from kerbside_tempest_plugin.lane.openstack import lane as os_lane

SETTING_VARS = ('KERBSIDE_FIREWALL_MODE',
                'KERBSIDE_FIREWALL_PERMITTED_CHANNELS',
                'KERBSIDE_CONSOLE_TOKEN_DURATION', 'KERBSIDE_PROXY_BIN')
CONTRACT = 'f06c4ef819009d68c0d0e91ff3ea3fa1b53f3d4cfe6a16efa4510f951e988291'


@pytest.fixture(autouse=True)
def _no_kerbside_env(monkeypatch):
    """The user's own KERBSIDE_* variables never leak into these tests."""
    for name in list(os.environ):
        if name.startswith('KERBSIDE_'):
            monkeypatch.delenv(name)


def _script(path, text):
    path.write_text('#!/bin/sh\n' + text)
    path.chmod(0o755)
    return path


def _proxy(path):
    """A fake kerbside-proxy that answers --contract-hash."""
    return _script(path, '[ "$1" = --contract-hash ] && echo %s\n'
                   % CONTRACT)


def _fake_venv(tmp_path, direct_url=None):
    """A venv whose python prints what KerbsideVenv.check reads (the
    direct_url.json beside it, if any) and whose pip records its
    arguments and writes direct_url.json as pip would: a file:// URL for a
    path, none for a requirement from the index.
    """
    venv = tmp_path / 'venv'
    b = venv / 'bin'
    b.mkdir(parents=True)
    du = venv / 'direct_url.json'
    if direct_url is not None:
        du.write_text(json.dumps(direct_url))
    _script(b / 'python', 'echo "PID 1 logging configured"\n'
            'echo "KTP-VERSIONS 0.8.0 0.8.0"\n'
            'if [ -f %s ]; then echo "KTP-DIRECT-URL $(cat %s)"; '
            'else echo "KTP-DIRECT-URL null"; fi\n' % (du, du))
    _script(b / 'pip', 'echo "$*" >> %s\n'
            'for a; do last=$a; done\n'
            'case $last in /*) printf \'{"dir_info": {}, "url": '
            '"file://%%s"}\' "$last" > %s;; *) rm -f %s;; esac\n'
            % (venv / 'pip-calls', du, du))
    for name in ('kerbside', 'gunicorn'):
        _script(b / name, 'exit 0\n')
    _proxy(b / 'kerbside-proxy')
    return lane_kerbside.KerbsideVenv(str(venv))


def _pip_calls(venv):
    path = os.path.join(venv.path, 'pip-calls')
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().splitlines()


def _kerbside(tmp_path, **settings):
    store = secrets.SecretStore(str(tmp_path / 'secrets'))
    material = tls.TLSMaterial('/t/ca.pem', '/s/ca-key.pem', '/t/proxy.pem',
                               '/s/proxy-key.pem', 'C=US,O=KB,CN=x')
    os.makedirs(tmp_path / 'logs', exist_ok=True)
    return lane_kerbside.Kerbside(
        lane_kerbside.KerbsideVenv(str(tmp_path / 'venv')), str(tmp_path),
        str(tmp_path / 'run'), store, None, material,
        'mysql://kerbside:pw123456@127.0.0.1:3306/kerbside', 13002, 15900,
        15901, 13009, '6f4e2c1a-0000-0000-0000-000000000001', 15910,
        '012345678901', **settings)


# -- env() ---------------------------------------------------------------

def test_no_option_sets_none_of_the_settings(tmp_path, monkeypatch):
    # A user's own KERBSIDE_FIREWALL_MODE never reaches the lane's
    # Kerbside (the lane owns every KERBSIDE_* variable).
    monkeypatch.setenv('KERBSIDE_FIREWALL_MODE', 'warn')
    monkeypatch.setenv('KERBSIDE_CONSOLE_TOKEN_DURATION', '9')
    env = _kerbside(tmp_path).env()
    for name in SETTING_VARS:
        assert name not in env
    assert env['KERBSIDE_NODE_NAME'] == 'harness'


def test_firewall_mode_reaches_the_environment(tmp_path):
    assert _kerbside(tmp_path, firewall_mode='warn').env()[
        'KERBSIDE_FIREWALL_MODE'] == 'warn'
    # Kerbside reads it case-insensitively; the lane writes it lower.
    assert _kerbside(tmp_path, firewall_mode=' Enforce ').env()[
        'KERBSIDE_FIREWALL_MODE'] == 'enforce'


def test_permitted_channels_are_comma_joined(tmp_path):
    kb = _kerbside(tmp_path, firewall_permitted_channels=(
        'main', 'Display', 'cursor', 'main'))
    assert kb.env()['KERBSIDE_FIREWALL_PERMITTED_CHANNELS'] == \
        'main,display,cursor'
    assert kb.settings.firewall_permitted_channels == (
        'main', 'display', 'cursor')
    every = list(lane_kerbside.CHANNEL_NAMES)
    assert _kerbside(tmp_path, firewall_permitted_channels=every).env()[
        'KERBSIDE_FIREWALL_PERMITTED_CHANNELS'] == ','.join(every)


def test_console_token_duration_reaches_the_environment(tmp_path):
    assert _kerbside(tmp_path, console_token_duration=2).env()[
        'KERBSIDE_CONSOLE_TOKEN_DURATION'] == '2'
    assert _kerbside(tmp_path, console_token_duration=0).env()[
        'KERBSIDE_CONSOLE_TOKEN_DURATION'] == '0'


def test_proxy_bin_is_absolute_in_the_environment(tmp_path, monkeypatch):
    _proxy(tmp_path / 'my-proxy')
    monkeypatch.chdir(tmp_path)
    kb = _kerbside(tmp_path, proxy_bin='my-proxy')
    # The daemon runs in kerbside/ under the workdir: a relative path
    # would name another file there.
    assert kb.env()['KERBSIDE_PROXY_BIN'] == str(tmp_path / 'my-proxy')


def test_the_users_kerbside_proxy_bin_is_the_default(tmp_path, monkeypatch):
    proxy = _proxy(tmp_path / 'kerbside-proxy')
    monkeypatch.setenv('KERBSIDE_PROXY_BIN', str(proxy))
    assert _kerbside(tmp_path).env()['KERBSIDE_PROXY_BIN'] == str(proxy)
    other = _proxy(tmp_path / 'other')
    assert _kerbside(tmp_path, proxy_bin=str(other)).env()[
        'KERBSIDE_PROXY_BIN'] == str(other)


def test_settings_info_has_each_setting_and_none_for_defaults():
    s = lane_kerbside.KerbsideSettings(firewall_permitted_channels=['main'])
    assert s.info() == {'firewall_mode': None,
                        'firewall_permitted_channels': ['main'],
                        'console_token_duration': None, 'proxy_bin': None}
    json.dumps(s.info())


# -- validation ------------------------------------------------------------

@pytest.mark.parametrize('kwargs, words', [
    (dict(firewall_mode='block'), ['firewall_mode', 'enforce, warn',
                                   "'block'"]),
    (dict(firewall_mode=1), ['firewall_mode']),
    (dict(firewall_mode=''), ['firewall_mode']),
    (dict(firewall_permitted_channels='main,display'),
     ['firewall_permitted_channels', 'list or tuple']),
    (dict(firewall_permitted_channels=[]),
     ['firewall_permitted_channels', 'permit every channel']),
    (dict(firewall_permitted_channels=['main', 'keyboard']),
     ["'keyboard'", 'valid names: main, display, inputs']),
    (dict(firewall_permitted_channels=['main', 3]), ['3']),
    (dict(firewall_permitted_channels={'main'}), ['list or tuple']),
    (dict(console_token_duration=-1), ['console_token_duration', '-1']),
    (dict(console_token_duration='2'), ['console_token_duration']),
    (dict(console_token_duration=1.5), ['console_token_duration']),
    (dict(console_token_duration=True), ['console_token_duration']),
    (dict(proxy_bin='/nonexistent/kerbside-proxy'),
     ['proxy_bin', '/nonexistent/kerbside-proxy', 'not an executable']),
    (dict(proxy_bin=''), ['proxy_bin']),
])
def test_bad_settings_are_readable_value_errors(tmp_path, kwargs, words):
    with pytest.raises(ValueError) as e:
        _kerbside(tmp_path, **kwargs)
    for w in words:
        assert w in str(e.value)


def test_a_proxy_bin_that_is_not_executable_is_refused(tmp_path):
    plain = tmp_path / 'kerbside-proxy'
    plain.write_text('not a program')
    for bad in (plain, tmp_path):
        with pytest.raises(ValueError, match='not an executable file'):
            lane_kerbside.KerbsideSettings(proxy_bin=str(bad))


def test_a_bad_kerbside_proxy_bin_variable_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv('KERBSIDE_PROXY_BIN', str(tmp_path / 'nope'))
    with pytest.raises(ValueError, match=r'\$KERBSIDE_PROXY_BIN .*nope'):
        lane_kerbside.KerbsideSettings.from_options()
    # An explicit proxy_bin wins over the variable.
    proxy = _proxy(tmp_path / 'kerbside-proxy')
    assert lane_kerbside.KerbsideSettings.from_options(
        proxy_bin=str(proxy)).proxy_bin == str(proxy)


# -- the lanes take them -------------------------------------------------

def test_lane_passes_its_settings_to_kerbside(tmp_path):
    proxy = _proxy(tmp_path / 'kerbside-proxy')
    lane = lane_mod.Lane(str(tmp_path / 'w'), firewall_mode='warn',
                         firewall_permitted_channels=['main', 'display',
                                                      'inputs', 'cursor'],
                         console_token_duration=2, proxy_bin=str(proxy))
    kb = _kerbside(tmp_path, **lane._kerbside_options())
    env = kb.env()
    assert env['KERBSIDE_FIREWALL_MODE'] == 'warn'
    assert env['KERBSIDE_FIREWALL_PERMITTED_CHANNELS'] == \
        'main,display,inputs,cursor'
    assert env['KERBSIDE_CONSOLE_TOKEN_DURATION'] == '2'
    assert env['KERBSIDE_PROXY_BIN'] == str(proxy)
    info = lane.info()
    assert info['kerbside_settings'] == {
        'firewall_mode': 'warn',
        'firewall_permitted_channels': ['main', 'display', 'inputs',
                                        'cursor'],
        'console_token_duration': 2, 'proxy_bin': str(proxy)}
    assert info['kerbside_build'] is None and info['kerbside_source'] is None
    assert lane.kerbside_build() is None   # not up


def test_lane_without_options_is_as_before(tmp_path):
    lane = lane_mod.Lane(str(tmp_path / 'w'))
    assert lane._kerbside_options() == dict(
        firewall_mode=None, firewall_permitted_channels=None,
        console_token_duration=None, proxy_bin=None)
    assert lane.kerbside_source is None


def test_lane_refuses_bad_settings_at_once(tmp_path):
    with pytest.raises(ValueError, match='console_token_duration'):
        lane_mod.Lane(str(tmp_path / 'w'), console_token_duration=-5)
    with pytest.raises(ValueError, match='kerbside_source'):
        lane_mod.Lane(str(tmp_path / 'w'),
                      kerbside_source=str(tmp_path / 'no-such-checkout'))


def test_a_lane_without_kerbside_ignores_kerbside_settings(tmp_path,
                                                           monkeypatch):
    monkeypatch.setenv('KERBSIDE_PROXY_BIN', '/nonexistent')
    monkeypatch.setenv('KERBSIDE_SOURCE', '/nonexistent')
    lane = lane_mod.Lane(str(tmp_path / 'w'), route='direct',
                         kerbside=False, firewall_mode='warn')
    info = lane.info()
    assert info['kerbside_settings'] is None
    assert info['kerbside_source'] is None
    assert lane.kerbside_build() is None


def test_lane_kerbside_source_defaults_to_the_variable(tmp_path,
                                                       monkeypatch):
    checkout = tmp_path / 'kerbside'
    checkout.mkdir()
    monkeypatch.setenv('KERBSIDE_SOURCE', str(checkout))
    assert lane_mod.Lane(str(tmp_path / 'w')).kerbside_source == \
        str(checkout)
    monkeypatch.setenv('KERBSIDE_SOURCE', str(tmp_path / 'gone'))
    with pytest.raises(ValueError, match=r'\$KERBSIDE_SOURCE'):
        lane_mod.Lane(str(tmp_path / 'w'))


@pytest.fixture
def make_conf():
    """Factory: make_conf(**[kerbside] overrides) -> ConfigOpts. The option
    groups are module objects shared by every ConfigOpts, and so are
    their overrides: each is cleared after the test.
    """
    made = []

    def make(**kerbside):
        conf = cfg.ConfigOpts()
        conf.register_group(cfg.OptGroup('service_available'))
        config.register_opts(conf)
        conf([], project='test')
        made.append(conf)
        for name, value in kerbside.items():
            conf.set_override(name, value, group='kerbside')
        return conf

    yield make
    for conf in made:
        conf.reset()


def test_from_config_reads_the_kerbside_options(tmp_path, make_conf):
    proxy = _proxy(tmp_path / 'kerbside-proxy')
    checkout = tmp_path / 'kerbside'
    checkout.mkdir()
    conf = make_conf(firewall_mode='warn',
                     firewall_permitted_channels=['main', 'display'],
                     console_token_duration=3, proxy_binary=str(proxy),
                     kerbside_source=str(checkout))
    lane = lane_mod.Lane.from_config(conf, workdir=str(tmp_path / 'w'))
    assert lane.kerbside_settings == lane_kerbside.KerbsideSettings(
        firewall_mode='warn', firewall_permitted_channels=('main',
                                                           'display'),
        console_token_duration=3, proxy_bin=str(proxy))
    assert lane.kerbside_source == str(checkout)
    # The caller's keywords win over the configuration.
    lane = lane_mod.Lane.from_config(conf, workdir=str(tmp_path / 'w'),
                                     firewall_mode='enforce')
    assert lane.kerbside_settings.firewall_mode == 'enforce'


def test_from_config_defaults_change_nothing(tmp_path, make_conf):
    lane = lane_mod.Lane.from_config(make_conf(),
                                     workdir=str(tmp_path / 'w'))
    assert lane.kerbside_settings == lane_kerbside.KerbsideSettings()
    # An empty list in tempest.conf is unset, not "permit nothing".
    lane = lane_mod.Lane.from_config(
        make_conf(firewall_permitted_channels=[]),
        workdir=str(tmp_path / 'w'))
    assert lane.kerbside_settings.firewall_permitted_channels is None


def test_the_config_options_refuse_bad_values(make_conf):
    conf = make_conf()
    with pytest.raises(ValueError):
        conf.set_override('firewall_mode', 'block', group='kerbside')
    with pytest.raises(ValueError):
        conf.set_override('console_token_duration', -1, group='kerbside')
    conf.set_override('firewall_permitted_channels', 'main,display',
                      group='kerbside')
    assert conf.kerbside.firewall_permitted_channels == ['main', 'display']


def test_cloud_kerbside_takes_the_settings(tmp_path):
    from unit_tests.test_openstack_lane_units import _layout
    store = secrets.SecretStore(str(tmp_path / 'secrets'))
    material = types.SimpleNamespace(ca_cert='/t/ca.pem', cert='/t/p.pem',
                                     key='/s/k.pem', host_subject='CN=x')
    (tmp_path / 'logs').mkdir()
    kb = os_kerbside.CloudKerbside(
        lane_kerbside.KerbsideVenv(str(tmp_path / 'v')), _layout(tmp_path),
        store, None, material, 'mysql://x', firewall_mode='warn',
        console_token_duration=5)
    env = kb.env()
    assert env['KERBSIDE_FIREWALL_MODE'] == 'warn'
    assert env['KERBSIDE_CONSOLE_TOKEN_DURATION'] == '5'
    assert 'KERBSIDE_FIREWALL_PERMITTED_CHANNELS' not in env


def test_openstack_cloud_and_lane_take_the_settings(tmp_path):
    cloud = os_cloud.OpenStackCloud(
        str(tmp_path / 'c'), firewall_permitted_channels=['main'],
        console_token_duration=4)
    assert cloud.kerbside_settings.console_token_duration == 4
    info = cloud.info()
    assert info['kerbside_settings']['firewall_permitted_channels'] == [
        'main']
    assert info['kerbside_build'] is None and cloud.kerbside_build() is None
    with pytest.raises(ValueError, match='firewall_mode'):
        os_cloud.OpenStackCloud(str(tmp_path / 'c'), firewall_mode='off')
    assert os_cloud.OpenStackCloud(str(tmp_path / 'c'),
                                   kerbside=False).kerbside_settings is None
    lane = os_lane.OpenStackLane(str(tmp_path / 'l'), firewall_mode='warn')
    assert lane.cloud.kerbside_settings.firewall_mode == 'warn'
    assert lane.kerbside_build() is None
    # A shared cloud already has its Kerbside: its settings are its own.
    with pytest.raises(ValueError, match='firewall_mode.*shared cloud'):
        os_lane.OpenStackLane(str(tmp_path / 'l2'), cloud=cloud,
                              firewall_mode='warn')


# -- the command lines --------------------------------------------------

def test_harness_up_parses_the_kerbside_options():
    args = harness.build_parser().parse_args([
        'up', '--proxy-bin', '/p', '--firewall-mode', 'warn',
        '--firewall-permitted-channels', 'main, display,,cursor',
        '--console-token-duration', '2', '--kerbside-source', '/k'])
    assert (args.proxy_bin, args.firewall_mode,
            args.firewall_permitted_channels, args.console_token_duration,
            args.kerbside_source) == ('/p', 'warn',
                                      ('main', 'display', 'cursor'), 2, '/k')
    args = harness.build_parser().parse_args(['up'])
    assert (args.proxy_bin, args.firewall_mode,
            args.firewall_permitted_channels,
            args.console_token_duration, args.kerbside_source) == (
        None, None, None, None, None)
    with pytest.raises(SystemExit):
        harness.build_parser().parse_args(['up', '--firewall-mode', 'off'])
    args = os_cmd.build_parser().parse_args([
        'up', '--firewall-mode', 'enforce', '--console-token-duration', '0'])
    assert (args.firewall_mode, args.console_token_duration) == (
        'enforce', 0)


def test_harness_up_refuses_a_bad_channel_before_anything_starts(
        tmp_path, capsys):
    rc = harness.main(['up', '--workdir', str(tmp_path / 'w'),
                       '--firewall-permitted-channels', 'main,keyboard'])
    assert rc == 2
    err = capsys.readouterr().err
    assert "'keyboard'" in err and 'valid names' in err
    assert not os.path.exists(tmp_path / 'w' / 'processes.json')


# -- which Kerbside ------------------------------------------------------

def test_describe_source():
    assert lane_kerbside.describe_source(None, '0.8.0') == \
        'PyPI kerbside==0.8.0'
    assert lane_kerbside.describe_source(
        {'url': 'file:///home/dev/kerbside', 'dir_info': {}}, '0.8.0') == \
        '/home/dev/kerbside'
    assert lane_kerbside.describe_source(
        {'url': 'file:///home/dev/my%20kerbside',
         'dir_info': {'editable': True}}, '0.8.1') == '/home/dev/my kerbside'
    assert lane_kerbside.describe_source(
        {'url': 'https://github.com/shakenfist/kerbside',
         'vcs_info': {'vcs': 'git', 'commit_id': 'abc123'}}, '0.8.0') == \
        'https://github.com/shakenfist/kerbside@abc123'


def test_build_of_a_pypi_venv(tmp_path):
    venv = _fake_venv(tmp_path)
    build = lane_kerbside.build_of(venv)
    proxy = os.path.join(venv.path, 'bin', 'kerbside-proxy')
    with open(proxy, 'rb') as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    assert build == {
        'kerbside_version': '0.8.0', 'kerbside_proxy_version': '0.8.0',
        'proxy_bin': proxy, 'proxy_sha256': sha,
        'proxy_contract_hash': CONTRACT, 'venv': venv.path,
        'source': 'PyPI kerbside==0.8.0'}


def test_build_of_a_checkout_and_another_proxy(tmp_path):
    venv = _fake_venv(tmp_path, direct_url={
        'url': 'file:///src/kerbside', 'dir_info': {}})
    other = _script(tmp_path / 'dev-proxy', 'exit 3\n')
    build = lane_kerbside.build_of(venv, str(other))
    assert build['source'] == '/src/kerbside'
    assert build['proxy_bin'] == str(other)
    assert build['proxy_sha256'] == hashlib.sha256(
        other.read_bytes()).hexdigest()
    # A binary that does not answer --contract-hash.
    assert build['proxy_contract_hash'] is None


def test_build_of_an_unusable_venv_says_so(tmp_path):
    with pytest.raises(errors.HarnessError, match='not usable'):
        lane_kerbside.build_of(lane_kerbside.KerbsideVenv(str(tmp_path)))


@pytest.fixture
def running_proxy(tmp_path):
    """A process whose /proc/<pid>/exe is tmp_path/run/kerbside-proxy (a
    copy of sleep).
    """
    d = tmp_path / 'run'
    d.mkdir()
    exe = d / 'kerbside-proxy'
    shutil.copy(shutil.which('sleep'), exe)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    proc = subprocess.Popen([str(exe), '30'])
    yield proc, exe
    proc.kill()
    proc.wait(timeout=10)


def test_build_of_a_running_proxy_is_checked_against_its_exe(
        tmp_path, running_proxy):
    proc, exe = running_proxy
    venv = _fake_venv(tmp_path)
    build = lane_kerbside.build_of(venv, str(exe), running_pid=proc.pid)
    assert build['proxy_bin'] == str(exe)
    assert build['proxy_sha256'] == hashlib.sha256(
        exe.read_bytes()).hexdigest()
    # The daemon runs another binary than the one asked for: an error,
    # never a build that names the wrong binary.
    with pytest.raises(errors.HarnessError) as e:
        lane_kerbside.build_of(venv, running_pid=proc.pid)
    assert str(exe) in str(e.value) and "the venv's" in str(e.value)


def test_kerbside_build_of_a_kerbside_not_started(tmp_path):
    kb = _kerbside(tmp_path)
    kb.venv = _fake_venv(tmp_path)
    assert kb.kerbside_build()['source'] == 'PyPI kerbside==0.8.0'
    with pytest.raises(errors.HarnessError, match='no kerbside-proxy runs'):
        kb.kerbside_build(running=True)


def test_proxy_children_know_a_renamed_proxy(tmp_path):
    proxy = _proxy(tmp_path / 'dev-build')
    kb = _kerbside(tmp_path, proxy_bin=str(proxy))
    assert kb.is_proxy_argv([str(proxy), '--vdi-address', '127.0.0.1'])
    assert kb.is_proxy_argv(['/v/bin/kerbside-proxy'])
    assert not kb.is_proxy_argv(['/v/bin/kerbside', 'daemon', 'run'])
    assert not kb.is_proxy_argv([])
    assert kb.proxy_children() == []


# -- a checkout in the venv --------------------------------------------

def test_source_fingerprint_follows_the_checkout(tmp_path):
    src = tmp_path / 'kerbside'
    (src / 'kerbside').mkdir(parents=True)
    (src / 'kerbside' / 'api.py').write_text('x = 1\n')
    first = lane_kerbside.source_fingerprint(str(src))
    for skipped in ('.git', '__pycache__', 'kerbside.egg-info', 'target'):
        (src / skipped).mkdir()
        (src / skipped / 'f').write_text('noise')
    assert lane_kerbside.source_fingerprint(str(src)) == first
    (src / 'kerbside' / 'api.py').write_text('x = 22\n')
    assert lane_kerbside.source_fingerprint(str(src)) != first


def test_ensure_installs_a_checkout_once_until_it_changes(tmp_path):
    venv = _fake_venv(tmp_path)
    src = tmp_path / 'kerbside'
    src.mkdir()
    (src / 'setup.py').write_text('# v1\n')
    logs = []
    done = venv.ensure(source=str(src), log=logs.append)
    assert 'installed %s' % src in done
    assert _pip_calls(venv) == ['install %s' % src]
    assert venv.source == str(src)
    assert venv.stamp()['source'] == str(src)
    # Unchanged: nothing installed again.
    assert 'unchanged' in venv.ensure(source=str(src), log=logs.append)
    assert len(_pip_calls(venv)) == 1
    # Changed: installed again.
    (src / 'setup.py').write_text('# version two\n')
    venv.ensure(source=str(src), log=logs.append)
    assert _pip_calls(venv)[1:] == ['install %s' % src]
    assert any('changed since' in m for m in logs)


def test_ensure_without_a_source_puts_pypi_back(tmp_path):
    venv = _fake_venv(tmp_path, direct_url={
        'url': 'file:///src/kerbside', 'dir_info': {}})
    logs = []
    venv.ensure(log=logs.append)
    # The same version from a checkout would be "already satisfied".
    assert _pip_calls(venv) == [
        'install --force-reinstall --no-deps kerbside==0.8.0',
        'install kerbside==0.8.0']
    assert venv.source == 'PyPI kerbside==0.8.0'
    assert venv.stamp() is None
    assert any('/src/kerbside installed' in m for m in logs)
    assert 'already' in venv.ensure(log=logs.append)
    assert len(_pip_calls(venv)) == 2


def test_ensure_refuses_a_source_that_is_not_a_directory(tmp_path):
    venv = _fake_venv(tmp_path)
    with pytest.raises(errors.HarnessError, match='not a directory'):
        venv.ensure(source=str(tmp_path / 'nope'))
    assert _pip_calls(venv) == []


def test_the_install_lock_has_a_deadline(tmp_path):
    venv = _fake_venv(tmp_path)
    with venv.install_lock():
        # flock is per open file: a second open of the lock conflicts
        # even in the same process.
        with pytest.raises(errors.HarnessTimeout, match='another install'):
            with venv.install_lock(timeout=0.3):
                pass
    with venv.install_lock(timeout=1):
        pass


def test_the_harness_setup_prints_the_build(tmp_path, capsys, monkeypatch):
    venv = _fake_venv(tmp_path)
    monkeypatch.setattr(harness.tools, 'missing', lambda names: [])
    monkeypatch.setattr(harness.tools, 'find_any', lambda *n: '/bin/true')
    monkeypatch.setattr(harness.tools, 'find', lambda *a, **k: '/bin/true')
    monkeypatch.setattr(harness.direct_qemu, 'find_ovmf', lambda: None)
    proxy = _proxy(tmp_path / 'dev-proxy')
    rc = harness.main(['setup', '--venv', venv.path, '--proxy-bin',
                       str(proxy)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out['kerbside_build']['proxy_bin'] == str(proxy)
    assert out['kerbside_build']['source'] == 'PyPI kerbside==0.8.0'
    assert out['kerbside_build']['proxy_contract_hash'] == CONTRACT


def _jwt(claims):
    import base64
    import json as _json

    def part(obj):
        return base64.urlsafe_b64encode(
            _json.dumps(obj).encode()).rstrip(b'=').decode()
    return '%s.%s.c2ln' % (part({'alg': 'HS256'}), part(claims))


def test_jwt_seconds_left_reads_exp_without_verifying():
    from kerbside_tempest_plugin.lane import kerbside as lane_kerbside
    assert lane_kerbside.jwt_seconds_left(
        _jwt({'exp': 1000}), now=400) == 600
    for bad in ('', 'not-a-jwt', _jwt({'sub': 'x'}),
                'a.%%%.c', _jwt({'exp': 'soon'})):
        assert lane_kerbside.jwt_seconds_left(bad, now=0) == 0


def test_a_kept_api_token_near_its_expiry_is_minted_again(tmp_path,
                                                          monkeypatch):
    from kerbside_tempest_plugin.common import secrets as common_secrets
    from kerbside_tempest_plugin.lane import kerbside as lane_kerbside
    import time as _time
    store = common_secrets.SecretStore(str(tmp_path / 'secrets'))
    kb = lane_kerbside.Kerbside.__new__(lane_kerbside.Kerbside)
    kb.secrets = store
    minted = []

    def fake_run(args, what, timeout=120):
        minted.append(args)
        store.put('api-token', _jwt({'exp': _time.time() + 3600}))
    monkeypatch.setattr(kb, '_run', fake_run)
    stale = _jwt({'exp': _time.time() - 10})
    store.put('api-token', stale)
    fresh = kb.token()
    assert fresh != stale and len(minted) == 1
    assert kb.token() == fresh and len(minted) == 1   # kept while valid

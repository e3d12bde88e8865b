"""Unit tests for the lane's pure logic: .vv files, secrets and redaction,
the process registry, port allocation, Kerbside configuration rendering
and the kerbside-harness command line."""

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import ports
from kerbside_tempest_plugin.common import secrets
from kerbside_tempest_plugin.common import tls
from kerbside_tempest_plugin.common import vv
from kerbside_tempest_plugin.lane import kerbside as lane_kerbside
from kerbside_tempest_plugin.lane import procs

PROXY_VV = """[virt-viewer]
type=spice
host=127.0.0.1
port=15901
tls-port=15900
password=0123456789abcdef0123456789abcdef0123456789abcdef
delete-this-file=1
title=sextant via proxy session ID abc%def
ca=-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n
host-subject=C=US,O=KB E2E,CN=kb-proxy
"""


# -- .vv -------------------------------------------------------------------

def test_parse_proxy_vv_keeps_case_and_percent():
    f = vv.parse_vv(PROXY_VV)
    assert f['tls-port'] == '15900'
    assert f['title'].endswith('abc%def')  # no interpolation
    assert f['host-subject'] == 'C=US,O=KB E2E,CN=kb-proxy'


def test_parse_vv_errors():
    with pytest.raises(vv.VVError):
        vv.parse_vv('type=spice\n')
    with pytest.raises(vv.VVError):
        vv.parse_vv('[other]\na=1\n')


def test_redact_vv_removes_only_the_password():
    out = vv.redact_vv(PROXY_VV)
    assert '0123456789abcdef' not in out
    assert 'password=<redacted>' in out
    assert 'host-subject=C=US,O=KB E2E,CN=kb-proxy' in out
    assert out.count('\n') == PROXY_VV.count('\n')
    # works on text that does not parse as a .vv at all
    assert vv.redact_vv('password=x\nfoo') == 'password=<redacted>\nfoo'


def test_direct_vv_round_trip():
    text = vv.direct_vv('127.0.0.1', 5910, 'tick3t', tls_port=5911,
                        ca='A\nB\n', host_subject='CN=qemu-hv')
    f = vv.parse_vv(text)
    assert f == {'type': 'spice', 'host': '127.0.0.1', 'port': '5910',
                 'tls-port': '5911', 'password': 'tick3t',
                 'ca': 'A\\nB\\n', 'host-subject': 'CN=qemu-hv'}


def test_vv_summary_has_no_secret():
    s = vv.summary(PROXY_VV)
    assert s['has_password'] and s['has_ca']
    assert '0123456789abcdef' not in json.dumps(s)


# -- secrets ---------------------------------------------------------------

def test_secret_store_files_are_private(tmp_path):
    store = secrets.SecretStore(str(tmp_path / 'secrets'))
    path = store.put('ticket', 'abcdef123456')
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o700
    assert store.get('ticket') == 'abcdef123456'
    assert store.get('missing') is None
    # get_or_create is stable
    v = store.get_or_create('pw')
    assert store.get_or_create('pw') == v and len(v) == 32


def test_write_private_never_follows_a_symlink(tmp_path):
    target = tmp_path / 'target'
    target.write_text('keep')
    link = tmp_path / 'link'
    link.symlink_to(target)
    secrets.write_private(str(link), 'secret')
    assert target.read_text() == 'keep'
    assert not link.is_symlink() and link.read_text() == 'secret'


def test_redactor_longest_first_and_min_length():
    r = secrets.Redactor()
    r.add('abc')  # too short to redact safely
    r.add('secret-token')
    r.add('secret-token-extended')
    r.add(None)
    text = 'x secret-token-extended y secret-token z abc'
    assert r.redact(text) == 'x <redacted> y <redacted> z abc'
    assert r.redact_bytes(text.encode()) == r.redact(text).encode()


def test_load_all_learns_vv_passwords_and_files(tmp_path):
    store = secrets.SecretStore(str(tmp_path))
    secrets.write_private(str(tmp_path / 'fetched-1.vv'), PROXY_VV)
    secrets.write_private(str(tmp_path / 'db-password'), 'dbpassword99')
    secrets.write_private(str(tmp_path / 'broken.vv'), 'not a vv at all')
    os.mkdir(tmp_path / 'mariadb')
    r = store.load_all()
    assert '0123456789abcdef0123456789abcdef0123456789abcdef' in r.values
    assert 'dbpassword99' in r.values


def test_scrub_tree_skips_secrets_and_rewrites_logs(tmp_path):
    r = secrets.Redactor()
    r.add('topsecretvalue')
    (tmp_path / 'logs').mkdir()
    (tmp_path / 'secrets').mkdir()
    (tmp_path / 'logs' / 'a.log').write_text('token=topsecretvalue end')
    (tmp_path / 'logs' / 'clean.log').write_text('nothing here')
    (tmp_path / 'secrets' / 'ticket').write_text('topsecretvalue')
    changed = secrets.scrub_tree(str(tmp_path), r,
                                 skip=[str(tmp_path / 'secrets')])
    assert changed == [str(tmp_path / 'logs' / 'a.log')]
    assert (tmp_path / 'logs' / 'a.log').read_text() == \
        'token=<redacted> end'
    assert (tmp_path / 'secrets' / 'ticket').read_text() == 'topsecretvalue'


def test_scrub_tree_masks_token_shapes_nobody_registered(tmp_path):
    """A console token minted in another process (tempest's) and logged
    by Nova and Kerbside: masked by its shape, in text files only.
    """
    token = '247c9b3e-806c-446a-9171-e8c44ec81b64'
    jwt = 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJoYXJuZXNzIn0.c2lnbmF0dXJl'
    (tmp_path / 'nova.log').write_text(
        'INFO nova.api.openstack.requestlog 127.0.0.1 "GET /v2.1/'
        'os-console-auth-tokens/%s" status: 200\n' % token)
    (tmp_path / 'kerbside.log').write_text(
        '{"url": "http://127.0.0.1:1/nova-console.vv?token=%s", '
        '"auth": "%s", "key": "enter"}\n' % (token, jwt))
    (tmp_path / 'image.qcow2').write_bytes(
        b'QFI\xfb\0\0\0\3' + ('?token=%s' % token).encode())
    events = '{"verb": "key", "key": "enter", "password": "shown"}\n'
    (tmp_path / 'events.jsonl').write_text(events)
    changed = secrets.scrub_tree(str(tmp_path), secrets.Redactor())
    assert sorted(os.path.basename(p) for p in changed) == [
        'kerbside.log', 'nova.log']
    for name in ('nova.log', 'kerbside.log'):
        text = (tmp_path / name).read_text()
        assert token not in text and jwt not in text, text
    assert 'os-console-auth-tokens/<redacted>"' in \
        (tmp_path / 'nova.log').read_text()
    assert '"key": "enter"' in (tmp_path / 'kerbside.log').read_text()
    # Binary files and everything not token-shaped are left as they were.
    assert token.encode() in (tmp_path / 'image.qcow2').read_bytes()
    assert (tmp_path / 'events.jsonl').read_text() == events
    # A second scrub finds nothing more to do.
    assert secrets.scrub_tree(str(tmp_path), secrets.Redactor()) == []


# -- ports -----------------------------------------------------------------

def test_free_ports_are_distinct_and_bindable():
    got = ports.free_ports(6)
    assert len(set(got)) == 6
    for p in got:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(('127.0.0.1', p))
        s.close()


class _SameRng:
    """Offers the same ports in the same order to every allocation."""

    def __init__(self, ports_):
        self.ports = list(ports_)
        self.i = 0

    def randrange(self, low, high):
        p = self.ports[self.i % len(self.ports)]
        self.i += 1
        assert low <= p < high
        return p


def test_free_ports_stay_below_the_ephemeral_range():
    low, high = ports.allocation_range()
    eph_low, eph_high = ports.ephemeral_range()
    assert high < eph_low or low > eph_high
    for p in ports.free_ports(20):
        assert low <= p <= high


def test_allocation_range_moves_with_the_kernel_range(tmp_path):
    assert ports.allocation_range((32768, 60999)) == (10000, 32767)
    assert ports.allocation_range((1024, 40000)) == (40001, 65535)
    assert ports.allocation_range((1024, 65000)) == (1024, 65535)
    f = tmp_path / 'range'
    f.write_text('20000\t50000\n')
    assert ports.ephemeral_range(str(f)) == (20000, 50000)
    assert ports.ephemeral_range(str(tmp_path / 'none')) == (32768, 60999)


def test_two_allocations_never_share_a_port(tmp_path, monkeypatch):
    """Two lanes starting at once: the second allocation must not get the
    ports the first was given (and closed) but has not bound yet, even when
    the kernel would say they are free.
    """
    monkeypatch.setenv('KTP_PORT_RESERVATIONS', str(tmp_path / 'r.json'))
    low, _ = ports.allocation_range()
    offered = [low + 17, low + 18, low + 19, low + 20, low + 21, low + 22]
    first = ports.free_ports(3, rng=_SameRng(offered))
    second = ports.free_ports(3, rng=_SameRng(offered))
    assert not set(first) & set(second), (first, second)
    window = ports.free_window(2, rng=_SameRng([first[0], second[0] + 10]))
    assert window == (second[0] + 10, second[0] + 11)


def test_reservations_expire(tmp_path):
    path = str(tmp_path / 'r.json')
    now = [1000.0]
    clock = lambda: now[0]  # noqa: E731
    low, _ = ports.allocation_range()
    got = ports.free_ports(1, rng=_SameRng([low + 5, low + 6]),
                           reservations=ports._Reservations(
                               path, ttl=60, clock=clock))
    assert got == [low + 5]
    again = ports.free_ports(1, rng=_SameRng([low + 5, low + 6]),
                             reservations=ports._Reservations(
                                 path, ttl=60, clock=clock))
    assert again == [low + 6]
    now[0] += 61
    later = ports.free_ports(1, rng=_SameRng([low + 5]),
                             reservations=ports._Reservations(
                                 path, ttl=60, clock=clock))
    assert later == [low + 5]


def test_a_garbled_reservation_file_is_ignored(tmp_path, monkeypatch):
    path = tmp_path / 'r.json'
    path.write_text('{not json')
    monkeypatch.setenv('KTP_PORT_RESERVATIONS', str(path))
    assert len(ports.free_ports(2)) == 2
    assert len(json.loads(path.read_text())) == 2


def test_reservations_live_in_a_private_directory(tmp_path, monkeypatch):
    import tempfile
    monkeypatch.delenv('KTP_PORT_RESERVATIONS', raising=False)
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
    path = ports.reservation_file()
    d = os.path.dirname(path)
    assert d == str(tmp_path / ('ktp-ports-%d' % os.getuid()))
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    got = ports.free_ports(2)
    assert sorted(int(k) for k in json.load(open(path))) == sorted(got)
    # Someone else's (or an open) directory in its place: not used, and
    # allocation still works, with a warning.
    os.chmod(d, 0o777)
    with pytest.raises(OSError, match='not a private directory'):
        ports.reservation_file()
    assert len(ports.free_ports(2)) == 2


def test_no_free_port_is_a_readable_error(tmp_path, monkeypatch):
    monkeypatch.setenv('KTP_PORT_RESERVATIONS', str(tmp_path / 'r.json'))
    held = socket.socket()
    low, _ = ports.allocation_range()
    for p in range(low + 100, low + 200):
        try:
            held.bind(('127.0.0.1', p))
            break
        except OSError:
            continue
    held.listen()
    try:
        with pytest.raises(errors.HarnessError, match='only 0 of 1'):
            ports.free_ports(1, rng=_SameRng([held.getsockname()[1]]))
    finally:
        held.close()


def test_listening_ports_sees_a_listener():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    assert not ports.is_listening(port)
    s.listen(1)
    try:
        assert ports.is_listening(port)
        assert ports.busy_ports([port, None, 1]) == [port]
    finally:
        s.close()
    assert not ports.is_listening(port)


# -- process registry ------------------------------------------------------

def _sleeper_with_child(tmp_path):
    # A parent that forks a child in its own group (like the daemon and
    # its kerbside-proxy) and ignores SIGTERM in the child.
    code = ('import os, signal, subprocess, sys, time\n'
            'subprocess.Popen([sys.executable, "-c", '
            '"import signal, time; signal.signal(signal.SIGTERM, '
            'signal.SIG_IGN); time.sleep(600)"])\n'
            'time.sleep(600)\n')
    return [sys.executable, '-c', code]


def test_registry_records_and_stops_in_lane_order(tmp_path):
    reg = procs.ProcessRegistry(str(tmp_path / 'processes.json'))
    log = str(tmp_path / 'x.log')
    started = {}
    # Each stand-in takes SIGINT back (a run started from a shell without
    # job control inherits it ignored, and ryll is stopped with SIGINT),
    # then says it is ready, so the stop never races its start-up.
    ready = tmp_path / 'ready'
    ready.mkdir()
    code = ('import signal, sys, time\n'
            'signal.signal(signal.SIGINT, signal.default_int_handler)\n'
            'open(sys.argv[1], "w").close()\n'
            'time.sleep(600)\n')
    for name in ('mariadbd', 'gunicorn', 'kerbside-daemon', 'qemu:g1',
                 'ryll:1'):
        started[name] = reg.spawn(
            name, [sys.executable, '-c', code,
                   str(ready / name.replace(':', '-'))], log)
    deadline = time.monotonic() + 30
    while len(os.listdir(ready)) < len(started) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(os.listdir(ready)) == len(started), (
        'stand-ins ready after 30 s: %s' % sorted(os.listdir(ready)))
    data = json.load(open(tmp_path / 'processes.json'))
    assert [r['name'] for r in data] == list(started)
    assert all(r['start_ticks'] for r in data)
    # A second registry (as `kerbside-harness down` would) sees them alive.
    again = procs.ProcessRegistry(str(tmp_path / 'processes.json'))
    assert len(again.living()) == 5
    reports = reg.stop_all(signals={'ryll': signal.SIGINT})
    assert [r['name'] for r in reports] == [
        'ryll:1', 'kerbside-daemon', 'gunicorn', 'qemu:g1', 'mariadbd']
    assert all(r['result'].startswith('exited') for r in reports)
    assert again.living() == [] and again.leftovers() == []
    # idempotent
    assert all(r['result'] == 'not running' for r in reg.stop_all())


def test_registry_removes_scratch_only_once_the_process_is_gone(tmp_path):
    reg = procs.ProcessRegistry(str(tmp_path / 'processes.json'))
    proc = subprocess.Popen([sys.executable, '-c',
                             'import time; time.sleep(600)'])
    scratch = tmp_path / 'ryll-private'
    scratch.mkdir()
    (scratch / 'ctl.sock').write_text('')
    reg.add('ryll:1', proc.pid, scratch=[str(scratch)])
    # A registry re-read from disk (as `kerbside-harness down` does).
    again = procs.ProcessRegistry(str(tmp_path / 'processes.json'))
    assert again.remove_scratch() == [] and scratch.is_dir()
    proc.kill()
    proc.wait(10)
    assert again.remove_scratch() == [str(scratch)]
    assert not scratch.exists()


def test_registry_kills_group_leftovers(tmp_path):
    reg = procs.ProcessRegistry(str(tmp_path / 'processes.json'))
    proc = reg.spawn('kerbside-daemon', _sleeper_with_child(tmp_path),
                     str(tmp_path / 'd.log'))
    deadline = time.time() + 10
    while len(procs.group_members(proc.pid)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert len(procs.group_members(proc.pid)) == 2
    report = reg.stop(reg.records[0], timeout=5, group_timeout=0.5)
    assert report['group_leftovers']
    assert procs.group_members(proc.pid) == []
    assert reg.leftovers() == []


def test_registry_never_kills_a_recycled_pid(tmp_path):
    reg = procs.ProcessRegistry(str(tmp_path / 'processes.json'))
    me = os.getpid()
    record = reg.add('qemu:ghost', me)
    record['start_ticks'] += 1  # pretend the pid was recycled
    assert not reg.alive(record)
    assert reg.stop(record)['result'] == 'not running'


def test_registry_unreadable_file_starts_empty(tmp_path):
    path = tmp_path / 'processes.json'
    path.write_text('{broken')
    assert procs.ProcessRegistry(str(path)).records == []


def test_rank_order():
    names = ['mariadbd', 'qemu:g2', 'gunicorn', 'kerbside-proxy',
             'kerbside-daemon', 'ryll:3', 'other']
    assert sorted(names, key=procs.rank_of) == [
        'ryll:3', 'kerbside-daemon', 'kerbside-proxy', 'gunicorn',
        'qemu:g2', 'mariadbd', 'other']


def test_registry_redacts_argv(tmp_path):
    r = secrets.Redactor()
    r.add('s3cr3t-value')
    reg = procs.ProcessRegistry(str(tmp_path / 'p.json'), r)
    reg.add('x', os.getpid(), argv=['prog', '--password=s3cr3t-value'])
    assert 's3cr3t-value' not in (tmp_path / 'p.json').read_text()


# -- Kerbside configuration -------------------------------------------------

def _kerbside(tmp_path):
    store = secrets.SecretStore(str(tmp_path / 'secrets'))
    material = tls.TLSMaterial('/t/ca.pem', '/s/ca-key.pem', '/t/proxy.pem',
                               '/s/proxy-key.pem',
                               'C=US,O=Kerbside Harness,CN=x')
    (tmp_path / 'logs').mkdir()
    return lane_kerbside.Kerbside(
        lane_kerbside.KerbsideVenv(str(tmp_path / 'venv')), str(tmp_path),
        str(tmp_path / 'run'), store, None, material,
        'mysql://kerbside:pw123456@127.0.0.1:3306/kerbside', 13002, 15900,
        15901, 13009, '6f4e2c1a-0000-0000-0000-000000000001', 15910,
        '012345678901')


def test_kerbside_env(tmp_path, monkeypatch):
    monkeypatch.setenv('KERBSIDE_SQL_URL', 'sqlite://leaked')
    kb = _kerbside(tmp_path)
    env = kb.env()
    assert env['PATH'].split(os.pathsep)[0] == str(tmp_path / 'venv' / 'bin')
    assert env['KERBSIDE_SQL_URL'].startswith('mysql://kerbside:')
    assert env['KERBSIDE_VDI_SECURE_PORT'] == \
        env['KERBSIDE_PUBLIC_SECURE_PORT'] == '15900'
    assert env['KERBSIDE_VDI_INSECURE_PORT'] == \
        env['KERBSIDE_PUBLIC_INSECURE_PORT'] == '15901'
    assert env['KERBSIDE_PROXY_HOST_SUBJECT'] == \
        'C=US,O=Kerbside Harness,CN=x'
    assert env['KERBSIDE_API_SOCKET_PATH'].startswith(str(tmp_path / 'run'))
    assert len(env['KERBSIDE_AUTH_SECRET_SEED']) == 64
    assert env['KERBSIDE_AUTH_SECRET_SEED'] == kb.env()[
        'KERBSIDE_AUTH_SECRET_SEED']
    assert '127.0.0.1' in env['no_proxy']


def test_sources_yaml_quotes_the_ticket_and_is_private(tmp_path):
    kb = _kerbside(tmp_path)
    text = kb.sources_yaml()
    assert 'type: static' in text and 'insecure_port: 15910' in text
    assert 'ticket: "012345678901"' in text
    kb.write_sources()
    assert stat.S_IMODE(os.stat(kb.sources_path).st_mode) == 0o600
    assert kb.sources_path.startswith(str(tmp_path / 'secrets'))
    redacted = (tmp_path / 'kerbside' / 'sources.redacted.yaml').read_text()
    assert '012345678901' not in redacted and 'uuid: 6f4e2c1a' in redacted
    try:
        import yaml
    except ImportError:
        return
    data = yaml.safe_load(text)
    assert data[0]['consoles'][0]['ticket'] == '012345678901'


def test_default_venv(monkeypatch):
    monkeypatch.delenv('KERBSIDE_VENV', raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', '/c')
    assert lane_kerbside.default_venv() == \
        '/c/kerbside-tempest-plugin/kerbside-venv'
    monkeypatch.setenv('KERBSIDE_VENV', '/v')
    assert lane_kerbside.default_venv() == '/v'


def test_venv_check_reports_missing_binaries(tmp_path):
    problems = lane_kerbside.KerbsideVenv(str(tmp_path)).check()
    assert any('kerbside-proxy' in p for p in problems)


# -- TLS -------------------------------------------------------------------

def test_subject_forms():
    subj = (('C', 'US'), ('O', 'KB E2E'), ('CN', 'kb-proxy'))
    assert tls.subject_slash(subj) == '/C=US/O=KB E2E/CN=kb-proxy'
    assert tls.subject_comma(subj) == 'C=US,O=KB E2E,CN=kb-proxy'


def test_make_tls_v3_with_loopback_san(tmp_path):
    m = tls.make_tls(str(tmp_path / 'tls'), str(tmp_path / 'keys'),
                     qemu=True)
    for key in (m.ca_key, m.key,
                os.path.join(m.qemu_x509_dir, 'server-key.pem')):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    text = subprocess.run(['openssl', 'x509', '-in', m.cert, '-noout',
                           '-text'], capture_output=True, text=True).stdout
    assert 'Version: 3' in text
    assert 'IP Address:127.0.0.1' in text and 'DNS:localhost' in text
    assert m.host_subject == \
        'C=US,O=Kerbside Harness,CN=kerbside-harness-proxy'
    assert sorted(os.listdir(m.qemu_x509_dir)) == [
        'ca-cert.pem', 'server-cert.pem', 'server-key.pem']
    assert m.ca_pem().startswith('-----BEGIN CERTIFICATE-----')


# -- the command line --------------------------------------------------------

def test_harness_parser():
    from kerbside_tempest_plugin.cmd import harness
    p = harness.build_parser()
    a = p.parse_args(['up', '--route', 'direct', '--workdir', '/w',
                      '--diskless'])
    assert (a.route, a.workdir, a.diskless, a.image) == ('direct', '/w',
                                                         True, None)
    with pytest.raises(SystemExit):
        p.parse_args(['up', '--image', 'x', '--diskless'])
    with pytest.raises(SystemExit):
        p.parse_args(['up', '--route', 'vnc'])


def test_harness_no_image_is_said_clearly(monkeypatch, tmp_path):
    from kerbside_tempest_plugin import guest_images
    monkeypatch.setenv('SEXTANT_IMAGE', str(tmp_path / 'no.qcow2'))
    with pytest.raises(errors.HarnessError) as e:
        guest_images.sextant_image()
    assert 'SEXTANT_IMAGE' in str(e.value)
    assert 'no such file' in str(e.value)


def test_harness_refuses_a_foreign_workdir(tmp_path, capsys):
    from kerbside_tempest_plugin.cmd import harness
    (tmp_path / 'precious.txt').write_text('keep me')
    rc = harness.main(['up', '--workdir', str(tmp_path), '--diskless'])
    assert rc == 1
    assert (tmp_path / 'precious.txt').read_text() == 'keep me'
    assert 'not a lane workdir' in capsys.readouterr().err


def test_harness_down_and_status_without_a_lane(tmp_path, capsys):
    from kerbside_tempest_plugin.cmd import harness
    assert harness.main(['down', '--workdir', str(tmp_path)]) == 0
    assert harness.main(['status', '--workdir', str(tmp_path)]) == 1
    assert '"absent"' in capsys.readouterr().out


def test_redact_patterns_masks_every_secret_shape():
    jwt = 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJoYXJuZXNzIn0.c2lnbmF0dXJl'
    text = ('Authorization: Bearer %s\n'
            'GET /sf-console.vv?token=abc.def.ghi&x=1\n'
            '/os-console-auth-tokens/tok-123\n'
            '{"ticket": "t1cket", "Password": "pw", "name": "keep"}\n'
            '  password = hunter2 more\n'
            '-spice port=1,password=legacy,addr=x\n' % jwt)
    out = secrets.redact_patterns(text)
    for secret in (jwt, 'abc.def.ghi', 'tok-123', 't1cket', '"pw"',
                   'hunter2', 'legacy'):
        assert secret not in out, secret
    for kept in ('x=1', '"name": "keep"', 'addr=x'):
        assert kept in out, kept


def test_teardown_runs_with_an_unreadable_state_file(tmp_path):
    """A lane that crashed while writing lane.json still tears down: the
    registered process is stopped and the report comes back.
    """
    from kerbside_tempest_plugin.lane import lane as lane_mod
    (tmp_path / lane_mod.STATE_FILE).write_text('{"state": "up", "por')
    assert lane_mod.load_state(str(tmp_path)) is None
    registry = procs.ProcessRegistry(str(tmp_path / 'processes.json'))
    sleeper = subprocess.Popen(['sleep', '300'], start_new_session=True)
    try:
        registry.add('sleeper', sleeper.pid)
        report = lane_mod.teardown_workdir(str(tmp_path), port_timeout=0.5)
        assert sleeper.wait(10) is not None
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
    assert report['leftover_pids'] == []
    assert [s['name'] for s in report['stopped']] == ['sleeper']

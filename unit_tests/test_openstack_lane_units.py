"""Unit tests for the OpenStack lane's pure parts: config rendering, the
SPICE port window, the REST client's errors, token parsing, the shims and
teardown of a workdir with nothing running.
"""

import ast
import http.server
import json
import os
import socket
import threading
import time
import types

import pytest

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import secrets
from kerbside_tempest_plugin.lane.openstack import api
from kerbside_tempest_plugin.lane.openstack import cloud as os_cloud
from kerbside_tempest_plugin.lane.openstack import compute
from kerbside_tempest_plugin.lane.openstack import config
from kerbside_tempest_plugin.lane.openstack import services


def _layout(tmp_path, spice_tls=True):
    ports = {name: 20000 + i for i, name in enumerate(config.PORT_NAMES)}
    passwords = {'admin': 'adm!n pw', 'db': 'db/pw@x', 'rabbit': 'rab:pw'}
    for user in config.SERVICE_USERS:
        passwords[user] = user + '-secret'
    return config.Layout(workdir=str(tmp_path), ports=ports,
                         spice_range=(30000, 30007), passwords=passwords,
                         venv='/venv', run_dir=str(tmp_path / 'run'),
                         spice_tls=spice_tls)


def _parse_ini(text):
    sections, current = {}, None
    for line in text.splitlines():
        if line.startswith('['):
            current = sections.setdefault(line.strip('[]'), {})
        elif ' = ' in line:
            key, value = line.split(' = ', 1)
            current[key] = value
    return sections


def test_render_ini_types():
    text = config.render_ini({'a': {'t': True, 'f': False, 'n': None,
                                    'l': ['x', 'y'], 'i': 3}})
    assert text.splitlines() == ['[a]', 't = true', 'f = false', 'l = x,y',
                                 'i = 3']


def test_db_and_transport_urls_quote_passwords(tmp_path):
    lay = _layout(tmp_path)
    assert lay.db_url('nova_api') == (
        'mysql+pymysql://openstack:db%2Fpw%40x@127.0.0.1:20000/nova_api'
        '?charset=utf8')
    assert lay.transport_url == 'rabbit://openstack:rab%3Apw@127.0.0.1:20001/'


def test_nova_conf_spice_on_vnc_off_qemu_on_the_lane_libvirt(tmp_path):
    lay = _layout(tmp_path)
    conf = _parse_ini(config.render_ini(config.nova_conf(lay)))
    assert conf['vnc']['enabled'] == 'false'
    assert conf['spice']['enabled'] == 'true'
    assert conf['spice']['server_listen'] == '127.0.0.1'
    assert conf['spice']['spice_direct_proxy_base_url'] == (
        'http://127.0.0.1:%d/nova-console.vv' % lay.ports['kerbside_api'])
    assert conf['libvirt']['virt_type'] == 'qemu'
    assert conf['libvirt']['connection_uri'] == (
        'qemu+unix:///system?socket=%s' % lay.libvirt_sock)
    assert lay.libvirt_sock.startswith(str(tmp_path))
    assert conf['wsgi']['api_paste_config'].endswith('nova/api-paste.ini')
    assert conf['DEFAULT']['instances_path'].startswith(str(tmp_path))
    assert conf['api_database']['connection'].endswith('/nova_api'
                                                       '?charset=utf8')
    assert conf['database']['connection'].endswith('/nova?charset=utf8')
    # privsep without sudo, from the venv
    assert conf['nova_sys_admin']['helper_command'].startswith(
        '/venv/bin/privsep-helper --config-file ')
    for section, user in (('placement', 'placement'),
                          ('neutron', 'neutron'), ('service_user', 'nova'),
                          ('keystone_authtoken', 'nova')):
        assert conf[section]['username'] == user
        assert conf[section]['password'] == user + '-secret'
        assert conf[section]['project_name'] == config.SERVICE_PROJECT


def test_every_service_listens_on_loopback_only(tmp_path):
    lay = _layout(tmp_path)
    for _, _, url in lay.endpoints():
        assert url.startswith('http://127.0.0.1:')
    env = config.rabbitmq_env(lay)
    assert env['RABBITMQ_NODE_IP_ADDRESS'] == '127.0.0.1'
    assert env['ERL_EPMD_ADDRESS'] == '127.0.0.1'
    assert env['RABBITMQ_NODENAME'] == 'ktp-20001@localhost'
    assert env['RABBITMQ_DIST_PORT'] == '20002'
    assert env['ERL_EPMD_PORT'] == '20003'
    assert '{127,0,0,1}' in env['RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS']
    for key in ('RABBITMQ_MNESIA_BASE', 'RABBITMQ_LOG_BASE', 'HOME',
                'RABBITMQ_CONFIG_FILE'):
        assert env[key].startswith(str(tmp_path))
    assert 'listeners.tcp.1 = 127.0.0.1:20001' in config.rabbitmq_conf(lay)
    qemu = config.qemu_conf(lay)
    assert 'spice_listen = "127.0.0.1"' in qemu
    assert 'remote_display_port_min = 30000' in qemu
    assert 'remote_display_port_max = 30007' in qemu
    assert 'listen_tcp = 0' in config.libvirtd_conf(lay)


def test_spice_tls_follows_the_layout(tmp_path):
    on = config.qemu_conf(_layout(tmp_path))
    assert 'spice_tls = 1' in on
    assert 'spice_tls_x509_cert_dir = "%s"' % os.path.join(
        str(tmp_path), 'secrets', 'spice-x509') in on
    assert 'spice_tls' not in config.qemu_conf(_layout(tmp_path, False))
    # TLS only: Nova's require_secure makes libvirt refuse plain channels.
    for tls in (True, False):
        nova = _parse_ini(config.render_ini(config.nova_conf(
            _layout(tmp_path, tls))))
        assert nova['spice']['require_secure'] == str(tls).lower()


def test_libvirt_namespace_binds_stay_in_the_workdir(tmp_path):
    lay = _layout(tmp_path)
    targets = [dst for _, dst in lay.ns_binds]
    assert targets == ['/etc/libvirt', '/var/lib/libvirt',
                       '/var/cache/libvirt', '/var/log/libvirt', '/run']
    for src, _ in lay.ns_binds:
        assert src.startswith(str(tmp_path))


def test_config_files_live_with_the_secrets(tmp_path):
    lay = _layout(tmp_path)
    assert lay.conf_dir('nova').startswith(lay.secrets_dir)
    text = config.render_ini(config.keystone_conf(lay))
    assert 'secrets/keystone-fernet' in text


def test_spice_port_range_is_free_and_consecutive():
    lo, hi = os_cloud.spice_port_range(count=6)
    assert hi - lo == 5
    for port in range(lo, hi + 1):
        s = socket.socket()
        s.bind(('127.0.0.1', port))
        s.close()


def test_spice_port_range_skips_a_busy_window():
    held = socket.socket()
    held.bind(('127.0.0.1', 0))
    held.listen()
    busy = held.getsockname()[1]
    try:
        class Rng:
            calls = []

            def randrange(self, low, high):
                self.calls.append(1)
                # first a window holding the busy port, then one past it
                return busy - 1 if len(self.calls) == 1 else busy + 10

        lo, hi = os_cloud.spice_port_range(count=3, low=busy - 100,
                                           high=busy + 100, rng=Rng())
        assert lo == busy + 10
        assert not lo <= busy <= hi
    finally:
        held.close()


def test_spice_port_range_gives_up_with_a_readable_error():
    class Rng:
        def randrange(self, low, high):
            return self.port

    held = socket.socket()
    held.bind(('127.0.0.1', 0))
    held.listen()
    rng = Rng()
    rng.port = held.getsockname()[1]
    try:
        with pytest.raises(Exception, match='consecutive free ports'):
            os_cloud.spice_port_range(count=2, rng=rng)
    finally:
        held.close()


def test_token_of():
    assert compute.token_of('http://h:1/nova?token=abc-123') == 'abc-123'
    with pytest.raises(Exception, match='no token'):
        compute.token_of('http://h:1/nova?x=1')


def test_libvirt_version_parsed_and_checked(tmp_path):
    fake = tmp_path / 'libvirtd'
    fake.write_text('#!/bin/sh\necho "libvirtd (libvirt) 9.0.0"\n')
    fake.chmod(0o755)
    assert services.libvirt_version(str(fake)) == (9, 0, 0)
    with pytest.raises(errors.HarnessError, match='bookworm-backports'):
        services.check_libvirt((9, 0, 0))
    services.check_libvirt((11, 3, 0))
    fake.write_text('#!/bin/sh\necho garbage\n')
    with pytest.raises(errors.HarnessError, match='not a version'):
        services.libvirt_version(str(fake))
    with pytest.raises(errors.HarnessError, match='cannot run'):
        services.libvirt_version(str(tmp_path / 'absent'))


def test_shims_are_valid_python():
    for name, (app, _, _) in services.WSGI_APPS.items():
        module, attr = app.split(':')
        ast.parse(services.WSGI_SHIM % {
            'module': module, 'attr': attr,
            'extra': services.WSGI_SHIM_EXTRA.get(name, '')})


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get('Content-Length') or 0)
        body = json.loads(self.rfile.read(length))
        pw = body['auth']['identity']['password']['user']['password']
        if pw != 'right-password':
            self._send(401, {'error': {'message': 'bad password %s' % pw}})
            return
        self.send_response(201)
        self.send_header('X-Subject-Token', 'tok-1234567890')
        self.send_header('Content-Type', 'application/json')
        data = json.dumps({'token': {'catalog': [{
            'type': 'compute', 'endpoints': [{
                'interface': 'public',
                'url': 'http://127.0.0.1:%d/c' % self.server.server_port}]}]}
        }).encode()
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(409, {'conflictingRequest': {
            'message': 'token %s echoed' % self.headers['X-Auth-Token']}})

    def _send(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def keystone_server():
    srv = http.server.HTTPServer(('127.0.0.1', 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield 'http://127.0.0.1:%d/v3' % srv.server_port
    srv.shutdown()
    srv.server_close()


def test_client_errors_are_typed_and_redacted(keystone_server):
    red = secrets.Redactor()
    bad = api.Client(keystone_server, 'admin', 'wrong-password',
                     redactor=red)
    with pytest.raises(api.CloudAPIError) as e:
        bad.authenticate()
    assert e.value.status == 401
    assert 'wrong-password' not in str(e.value)
    good = api.Client(keystone_server, 'admin', 'right-password',
                      redactor=red)
    with pytest.raises(api.CloudAPIError) as e:
        good.call('GET', 'compute', '/servers/x')
    assert e.value.status == 409
    assert 'tok-1234567890' not in str(e.value)
    assert 'GET /servers/x answered HTTP 409' in str(e.value)


def test_client_no_answer_is_typed():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    c = api.Client('http://127.0.0.1:%d/v3' % port, 'admin', 'pw-123456')
    with pytest.raises(api.CloudAPIError, match='no answer'):
        c.authenticate()


def test_teardown_of_an_empty_workdir_is_clean(tmp_path):
    report = os_cloud.teardown_workdir(str(tmp_path))
    assert report['leftover_pids'] == []
    assert report['busy_ports'] == []
    assert report['stopped'] == []
    assert os_cloud.cloud_status(str(tmp_path / 'nothing'))['state'] == \
        'absent'


def test_cloud_memory_sums_registered_groups(tmp_path):
    from kerbside_tempest_plugin.lane import procs
    registry = procs.ProcessRegistry(str(tmp_path / 'processes.json'))
    registry.spawn('sleeper', ['sh', '-c', 'sleep 30 & exec sleep 30'],
                   str(tmp_path / 'sleeper.out'))
    try:
        time.sleep(0.3)
        mem = os_cloud.cloud_memory(str(tmp_path))
        assert set(mem['by_process']) == {'sleeper'}
        assert mem['total_mib'] > 0
        assert os_cloud.cloud_pids(str(tmp_path))
    finally:
        report = os_cloud.teardown_workdir(str(tmp_path))
    assert report['leftover_pids'] == []
    assert [s['name'] for s in report['stopped']] == ['sleeper']
    assert os_cloud.cloud_memory(str(tmp_path))['total_mib'] == 0


def test_cli_down_and_status_without_a_cloud(tmp_path, capsys):
    from kerbside_tempest_plugin.cmd import openstack as cli
    assert cli.main(['down', '--workdir', str(tmp_path)]) == 0
    assert 'no cloud in' in capsys.readouterr().err
    assert cli.main(['status', '--workdir', str(tmp_path / 'x')]) == 1
    assert json.loads(capsys.readouterr().out)['state'] == 'absent'


def test_cli_up_refuses_a_directory_that_is_not_a_cloud(tmp_path, capsys):
    from kerbside_tempest_plugin.cmd import openstack as cli
    (tmp_path / 'precious.txt').write_text('keep me')
    assert cli.main(['up', '--no-boot', '--workdir', str(tmp_path)]) == 1
    assert 'not a cloud workdir' in capsys.readouterr().err
    assert (tmp_path / 'precious.txt').exists()


def test_kerbside_openstack_source_and_its_redacted_copy(tmp_path):
    from kerbside_tempest_plugin.lane.openstack import kerbside as os_kb
    lay = _layout(tmp_path)
    store = secrets.SecretStore(str(tmp_path / 'secrets'),
                                secrets.Redactor())
    ca = tmp_path / 'ca-cert.pem'
    ca.write_text('-----BEGIN CERTIFICATE-----\nQUJD\n'
                  '-----END CERTIFICATE-----\n')
    tls = types.SimpleNamespace(ca_cert=str(ca))
    kb = os_kb.CloudKerbside(None, lay, store, None, tls, 'mysql://x')
    assert kb.api_port == lay.ports['kerbside_api']
    assert sorted(kb.ports) == sorted(
        lay.ports[n] for n in ('kerbside_api', 'kerbside_secure',
                               'kerbside_insecure', 'kerbside_metrics'))
    text = kb.sources_yaml()
    for line in ('type: openstack', 'url: %s' % lay.auth_url,
                 'username: kerbside', 'password: "kerbside-secret"',
                 'project_name: service', 'user_domain_id: default',
                 'project_domain_id: default', 'interface: internal'):
        assert '  %s\n' % line in text
    # The CA the proxy verifies libvirt's SPICE TLS port with.
    assert text.endswith('  ca_cert: |\n    -----BEGIN CERTIFICATE-----\n'
                         '    QUJD\n    -----END CERTIFICATE-----\n')
    assert 'ca_cert' not in os_kb.CloudKerbside(
        None, _layout(tmp_path, False), store, None, tls,
        'mysql://x').sources_yaml()
    red = kb.sources_yaml(ticket='<redacted>')
    assert 'kerbside-secret' not in red and '"<redacted>"' in red
    # Nova's spice-direct URL is Kerbside's Nova flow.
    nova = _parse_ini(config.render_ini(config.nova_conf(lay)))
    assert nova['spice']['spice_direct_proxy_base_url'] == \
        kb.api_url + '/nova-console.vv'


def test_tempest_conf_for_the_cloud(tmp_path):
    from kerbside_tempest_plugin.lane.openstack import tempest_conf
    state = {'auth_url': 'http://127.0.0.1:5000/v3', 'flavor': 'flv-1'}
    conf = _parse_ini(tempest_conf.render(state, 'pw', 'direct', '/ws',
                                          'img-1'))
    assert 'hypervisor_ca_file' not in conf['nova_provider']
    state['spice_ca_file'] = '/w/tls/ca-cert.pem'
    conf = _parse_ini(tempest_conf.render(state, 'pw', 'direct', '/ws',
                                          'img-1'))
    assert conf['nova_provider']['hypervisor_ca_file'] == state[
        'spice_ca_file']
    assert conf['auth']['use_dynamic_credentials'] == 'true'
    assert conf['auth']['create_isolated_networks'] == 'false'
    assert conf['auth']['admin_password'] == 'pw'
    assert conf['identity']['uri_v3'] == state['auth_url']
    assert conf['service_available']['nova'] == 'true'
    assert conf['kerbside']['provider'] == 'nova'
    assert conf['kerbside']['route'] == 'direct'
    assert conf['nova_provider']['image_ref'] == 'img-1'
    assert conf['nova_provider']['flavor_ref'] == 'flv-1'
    assert conf['nova_provider']['network'] == 'none'
    assert conf['compute']['image_ref'] == 'img-1'
    red = tempest_conf.render(state, tempest_conf.REDACTED, 'kerbside',
                              '/ws', 'img-1')
    assert 'pw\n' not in red and '<redacted>' in red


def test_cloud_kerbside_trusts_the_lane_ca_or_the_one_it_is_given(
        tmp_path):
    import yaml

    from kerbside_tempest_plugin.lane.openstack import kerbside as os_kb
    lay = _layout(tmp_path)
    lane_ca = tmp_path / 'lane-ca.pem'
    lane_ca.write_text('-----BEGIN CERTIFICATE-----\nLANE\n'
                       '-----END CERTIFICATE-----\n')
    other = tmp_path / 'other-ca.pem'
    other.write_text('-----BEGIN CERTIFICATE-----\nOTHER\n'
                     '-----END CERTIFICATE-----\n')

    class Tls:
        ca_cert = str(lane_ca)

    def source(**kw):
        kb = os_kb.CloudKerbside(
            None, lay, secrets.SecretStore(str(tmp_path / "s")),
            None, Tls(), 'mysql://x', **kw)
        [src] = yaml.safe_load(kb.sources_yaml())
        return src

    assert source()['ca_cert'] == lane_ca.read_text()
    assert source(hypervisor_ca=str(other))['ca_cert'] == other.read_text()
    assert source()['type'] == 'openstack'


def test_tempest_conf_names_kerbside_api_and_its_login(tmp_path):
    from kerbside_tempest_plugin.lane.openstack import tempest_conf
    state = {'auth_url': 'http://127.0.0.1:5000/v3', 'flavor': 'flv-1',
             'kerbside_url': 'http://127.0.0.1:13002',
             'kerbside_metrics_url': 'http://127.0.0.1:13005/metrics',
             'kerbside_source_name': 'ktp-openstack',
             'kerbside_api_user': 'admin'}
    conf = _parse_ini(tempest_conf.render(state, 'pw', 'kerbside', '/ws',
                                          'img-1'))
    k = conf['kerbside']
    assert (k['api_url'], k['metrics_url'], k['openstack_source'],
            k['api_username'], k['api_password']) == (
        'http://127.0.0.1:13002', 'http://127.0.0.1:13005/metrics',
        'ktp-openstack', 'admin', 'pw')
    assert conf['nova_provider']['image_ref'] == 'img-1'
    red = _parse_ini(tempest_conf.render(state, tempest_conf.REDACTED,
                                         'kerbside', '/ws', 'img-1'))
    assert red['kerbside']['api_password'] == '<redacted>'
    assert red['auth']['admin_password'] == '<redacted>'
    # No Kerbside in front: no API options.
    state['kerbside_url'] = None
    conf = _parse_ini(tempest_conf.render(state, 'pw', 'kerbside', '/ws',
                                          'img-1'))
    assert 'api_url' not in conf['kerbside']
    assert 'api_password' not in conf['kerbside']


def _cloud_kerbside(tmp_path, redactor=None):
    from kerbside_tempest_plugin.lane.openstack import kerbside as os_kb
    lay = _layout(tmp_path)
    store = secrets.SecretStore(str(tmp_path / 'secrets'),
                                redactor or secrets.Redactor())
    ca = tmp_path / 'ca-cert.pem'
    ca.write_text('-----BEGIN CERTIFICATE-----\nQUJD\n'
                  '-----END CERTIFICATE-----\n')
    tls = types.SimpleNamespace(ca_cert=str(ca), cert='c', key='k',
                                host_subject='CN=x')
    venv = types.SimpleNamespace(path=str(tmp_path / 'kvenv'))
    return os_kb.CloudKerbside(venv, lay, store, None, tls, 'mysql://x')


def test_cloud_kerbside_logs_api_users_in_against_the_lane_keystone(
        tmp_path):
    kb = _cloud_kerbside(tmp_path)
    env = kb.env()
    lay = kb.layout
    assert env['KERBSIDE_KEYSTONE_AUTH_URL'] == lay.auth_url
    assert env['KERBSIDE_KEYSTONE_SERVICE_AUTH_USER'] == 'kerbside'
    assert env['KERBSIDE_KEYSTONE_SERVICE_AUTH_PASSWORD'] == \
        lay.passwords['kerbside']
    assert env['KERBSIDE_KEYSTONE_SERVICE_AUTH_PROJECT'] == \
        config.SERVICE_PROJECT
    assert env['KERBSIDE_KEYSTONE_SERVICE_AUTH_USER_DOMAIN_ID'] == \
        'default'
    assert env['KERBSIDE_KEYSTONE_SERVICE_AUTH_PROJECT_DOMAIN_ID'] == \
        'default'
    assert env['KERBSIDE_KEYSTONE_ACCESS_GROUP'] == \
        config.KERBSIDE_ACCESS_GROUP
    # The rest of Kerbside's environment is the lane's, as before.
    assert env['KERBSIDE_SQL_URL'] == 'mysql://x'
    assert env['KERBSIDE_AUTH_SECRET_SEED']


class _Auth(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        import base64
        length = int(self.headers.get('Content-Length') or 0)
        body = json.loads(self.rfile.read(length))
        self.server.logins.append((self.path, body['username']))
        ok = body['password'] == self.server.password
        claims = {'sub': body['username'], 'openstack_token': 'gAAAA-ks-' +
                  'z' * 30, 'exp': int(time.time()) + self.server.life}
        payload = base64.urlsafe_b64encode(json.dumps(claims).encode())
        token = 'eyJhbGciOiJIUzI1NiJ9.%s.c2ln%d' % (
            payload.decode().rstrip('='), len(self.server.logins))
        out = json.dumps({'access_token': token, 'expires_in': 3600,
                          'token_type': 'Bearer'} if ok else
                         {'error': 'unauthorized', 'status': 401}).encode()
        self.send_response(200 if ok else 401)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(out)))
        self.end_headers()
        self.wfile.write(out)


def test_cloud_kerbside_token_is_a_login_kept_until_near_its_expiry(
        tmp_path):
    from kerbside_tempest_plugin.lane.openstack import kerbside as os_kb
    red = secrets.Redactor()
    kb = _cloud_kerbside(tmp_path, red)
    srv = http.server.HTTPServer(('127.0.0.1', 0), _Auth)
    srv.logins, srv.life = [], 3600
    srv.password = kb.layout.passwords[config.KERBSIDE_OPERATOR]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        kb.api_port = srv.server_port
        first = kb.token()
        assert kb.token() == first
        assert srv.logins == [('/auth', config.KERBSIDE_OPERATOR)]
        assert kb.secrets.get('api-token') == first
        assert red.redact(first) == '<redacted>'
        assert red.redact('gAAAA-ks-' + 'z' * 30) == '<redacted>'
        # A JWT near its expiry is replaced by a fresh login.
        srv.life = os_kb.TOKEN_MARGIN_S - 5
        kb.secrets.put('api-token', 'not-a-jwt-at-all')
        second = kb.token()
        assert second != first and len(srv.logins) == 2
        third = kb.token()
        assert third != second and len(srv.logins) == 3
        srv.password = 'changed-password'
        kb.secrets.put('api-token', 'not-a-jwt-at-all')
        with pytest.raises(os_kb.LoginError) as e:
            kb.token()
        assert e.value.status == 401 and 'unauthorized' in str(e.value)
    finally:
        srv.shutdown()
        srv.server_close()


def test_keystone_makes_kerbsides_access_group_with_the_operator():
    from kerbside_tempest_plugin.lane.openstack import keystone

    class Client:
        def __init__(self, groups):
            self.groups = groups
            self.calls = []

        def find(self, service, collection, key, name):
            self.calls.append(('find', collection, name))
            return self.groups.get(name)

        def call(self, method, service, path, body=None, expect=(200,)):
            self.calls.append((method, path, body, expect))
            if method == 'POST':
                return {'group': dict(body['group'], id='g-new')}
            return None

    c = Client({})
    group = keystone.kerbside_access(c, {'id': 'u-admin', 'name': 'admin'})
    assert group['id'] == 'g-new'
    post = [x for x in c.calls if x[0] == 'POST'][0]
    assert post[1] == '/groups' and post[2]['group']['name'] == \
        config.KERBSIDE_ACCESS_GROUP
    assert ('PUT', '/groups/g-new/users/u-admin', None, (204,)) in c.calls
    # Idempotent: an existing group is reused, the membership put again.
    c = Client({config.KERBSIDE_ACCESS_GROUP: {'id': 'g-1'}})
    keystone.kerbside_access(c, {'id': 'u-admin'})
    assert [x[0] for x in c.calls] == ['find', 'PUT']

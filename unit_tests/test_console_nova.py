"""The console's Nova lane without a tempest test: NovaProvider built from
tempest.lib's real auth provider and service clients (Keystone v3 password
auth, the catalog, lazy authentication) against the cloud fakes, the
credential sources (a cloud workdir, OS_*), and the redaction of the
password and the Keystone token.
"""

import json
import re

import pytest

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.console import nova_cloud
from kerbside_tempest_plugin.console import session as session_mod
from kerbside_tempest_plugin.providers import nova
from unit_tests import fake_clouds

PASSWORD = 'n0t-the-real-admin-passw0rd'


class FakeKeystone(fake_clouds.FakeHTTP):
    """POST /v3/auth/tokens: password auth for one user; the token is the
    fakes' admin or member token, the catalog points at the fakes.
    """

    def __init__(self, nova_url, glance_url, admin=True):
        super().__init__()
        self.nova_url = nova_url
        self.glance_url = glance_url
        self.token = fake_clouds.NOVA_ADMIN_TOKEN if admin else \
            fake_clouds.NOVA_TOKEN
        self.auths = []

    def handle(self, method, path, query, headers, body):
        if method != 'POST' or path != '/v3/auth/tokens':
            return 404, {}, {'error': {'code': 404, 'message': 'no route'}}
        req = json.loads(body)['auth']
        user = req['identity']['password']['user']
        self.auths.append(req)
        if user['password'] != PASSWORD or user['name'] != 'admin':
            return 401, {}, {'error': {'code': 401, 'message':
                                       'The request you have made requires '
                                       'authentication.'}}

        def ep(kind, name, url):
            return {'type': kind, 'name': name, 'id': name, 'endpoints': [
                {'interface': 'public', 'region': 'RegionOne',
                 'region_id': 'RegionOne', 'url': url, 'id': name + '-p'}]}
        token = {
            'expires_at': '2099-01-01T00:00:00.000000Z',
            'issued_at': '2026-12-01T00:00:00.000000Z',
            'methods': ['password'],
            'user': {'id': 'u1', 'name': 'admin',
                     'domain': {'id': 'default', 'name': 'Default'}},
            'project': {'id': 'p1', 'name': 'admin',
                        'domain': {'id': 'default', 'name': 'Default'}},
            'roles': [{'id': 'r1', 'name': 'admin'}],
            'catalog': [
                ep('compute', 'nova', self.nova_url),
                ep('image', 'glance', self.glance_url)]}
        return 201, {'X-Subject-Token': self.token}, {'token': token}


@pytest.fixture
def cloud():
    fake_nova = fake_clouds.FakeNova().start()
    kerbside = fake_clouds.FakeKerbside(nova=fake_nova).start()
    fake_nova.kerbside_url = kerbside.url
    glance = fake_clouds.FakeGlance().start()
    keystone = FakeKeystone(fake_nova.url + fake_clouds.FakeNova.PREFIX,
                            glance.url + '/image').start()
    yield fake_nova, glance, keystone
    for app in (keystone, glance, kerbside, fake_nova):
        app.stop()


def creds(keystone, **kw):
    out = {'source': 'test', 'auth_url': keystone.url + '/v3',
           'username': 'admin', 'password': PASSWORD,
           'project_name': 'admin', 'user_domain_name': 'Default',
           'project_domain_name': 'Default', 'region': 'RegionOne',
           'ca_file': None, 'verify': True, 'admin': True,
           'flavor': 'flv-small', 'image': None, 'network': 'none'}
    out.update(kw)
    return out


def write_cloud(tmp_path, state='up', password=PASSWORD, **extra):
    tmp_path.mkdir(parents=True, exist_ok=True)
    secrets = tmp_path / 'secrets'
    secrets.mkdir(mode=0o700)
    (secrets / 'admin-password').write_text(password + '\n')
    data = dict(state=state, auth_url='http://127.0.0.1:1/v3',
                flavor='ktp-flavor', images={'/x/sextant.qcow2': 'img-1'},
                admin_password_file=str(secrets / 'admin-password'))
    data.update(extra)
    (tmp_path / 'cloud.json').write_text(json.dumps(data))
    return str(tmp_path)


def test_service_clients_authenticate_and_find_the_endpoints(cloud):
    fake_nova, glance, keystone = cloud
    servers, images = nova.service_clients(
        keystone.url + '/v3', 'admin', PASSWORD, 'admin',
        region='RegionOne')
    assert keystone.auths == []            # lazy: nothing sent yet
    image_id = glance.add(hw_video_model='qxl', hw_firmware_type='uefi')
    assert images.show_image(image_id)['id'] == image_id
    body = servers.create_server(name='s1', imageRef=image_id,
                                 flavorRef='flv-small')
    assert servers.show_server(body['server']['id'])['server']['name'] == \
        's1'
    # One password authentication (shared), with the user's scope.
    assert len(keystone.auths) == 1
    scope = keystone.auths[0]['scope']['project']
    assert scope['name'] == 'admin' and \
        scope['domain']['name'] == 'Default'
    token = servers.auth_provider.auth_data[0]
    assert token == fake_clouds.NOVA_ADMIN_TOKEN
    assert all(r['headers'].get('x-auth-token') == token
               for r in fake_nova.requests)


def test_wrong_password_is_a_typed_error(cloud):
    _, _, keystone = cloud
    servers, _ = nova.service_clients(keystone.url + '/v3', 'admin',
                                      'wrong', 'admin', region='RegionOne')
    from tempest.lib import exceptions as lib_exc
    with pytest.raises(lib_exc.Unauthorized):
        servers.list_servers()


def test_nova_lane_boots_reads_serial_and_resolves_direct(cloud, tmp_path):
    fake_nova, glance, keystone = cloud
    image_id = glance.add(hw_video_model='qxl', hw_firmware_type='uefi',
                          hw_machine_type='q35')
    lane = nova_cloud.NovaLane(creds(keystone, image=image_id),
                               str(tmp_path / 'lane'), route='direct')
    p = lane.provider
    p.poll_interval = p.serial_interval = 0.01
    assert lane.redactor.redact('x %s y' % PASSWORD) == 'x <redacted> y'
    guest = lane.boot_guest(None, name='g1', timeout=10)
    try:
        server = fake_nova.servers[guest.server_id]
        assert server['image'] == image_id and \
            server['flavor'] == 'flv-small'
        # The Keystone token is known to the redactor once issued.
        assert fake_clouds.NOVA_ADMIN_TOKEN not in lane.redactor.redact(
            'token %s' % fake_clouds.NOVA_ADMIN_TOKEN)
        fake_nova.set_console(guest.server_id, 'Hello from Sextant\n')
        guest.serial.wait_for('Hello from Sextant', 5)
        vv = lane.console_vv(guest)
        assert 'host=192.0.2.10' in vv and 'port=5900' in vv
        route = guest.console_route()
        assert (route.kind, route.host, route.port) == (
            'direct', '192.0.2.10', 5900)
    finally:
        lane.down()
    assert fake_nova.requests_to('DELETE', guest.server_id)
    assert guest.show() is None            # gone, as teardown waited for


def test_direct_route_needs_an_admin(cloud, tmp_path):
    _, _, keystone = cloud
    with pytest.raises(nova_cloud.CloudConfigError, match='admin-only'):
        nova_cloud.NovaLane(creds(keystone, admin=False),
                            str(tmp_path), route='direct')


def test_cloud_workdir_credentials(tmp_path):
    c = nova_cloud.from_cloud_workdir(write_cloud(
        tmp_path, spice_ca_file='/w/tls/ca-cert.pem'))
    assert (c['auth_url'], c['username'], c['password'], c['flavor'],
            c['image'], c['admin']) == ('http://127.0.0.1:1/v3', 'admin',
                                        PASSWORD, 'ktp-flavor', 'img-1',
                                        True)
    # The direct route's tls_port is checked against the lane CA.
    assert c['hypervisor_ca_file'] == '/w/tls/ca-cert.pem'
    provider = nova_cloud.make_provider(c, route='direct')
    assert provider.hypervisor_ca_file == '/w/tls/ca-cert.pem'


def test_environment_hypervisor_ca():
    env = {'OS_AUTH_URL': 'http://k/v3', 'OS_USERNAME': 'u',
           'OS_PASSWORD': 'p', 'OS_PROJECT_NAME': 'x',
           'KTP_NOVA_HYPERVISOR_CA': '/etc/ca.pem'}
    assert nova_cloud.from_environment(env)['hypervisor_ca_file'] == \
        '/etc/ca.pem'
    del env['KTP_NOVA_HYPERVISOR_CA']
    assert nova_cloud.from_environment(env)['hypervisor_ca_file'] is None


def test_cloud_workdir_not_up_or_absent(tmp_path):
    with pytest.raises(nova_cloud.CloudConfigError, match='cloud state'):
        nova_cloud.from_cloud_workdir(str(tmp_path / 'none'))
    d = write_cloud(tmp_path, state='down')
    with pytest.raises(nova_cloud.CloudConfigError, match='is down, not up'):
        nova_cloud.from_cloud_workdir(d)


def test_environment_credentials():
    env = {'OS_AUTH_URL': 'http://k/v3', 'OS_USERNAME': 'demo',
           'OS_PASSWORD': PASSWORD, 'OS_PROJECT_NAME': 'demo',
           'OS_REGION_NAME': 'R2', 'OS_FLAVOR': 'f1', 'OS_INSECURE': 'true'}
    c = nova_cloud.from_environment(env)
    assert (c['username'], c['region'], c['flavor'], c['verify'],
            c['admin']) == ('demo', 'R2', 'f1', False, False)
    with pytest.raises(nova_cloud.CloudConfigError,
                       match='missing OS_PASSWORD, OS_PROJECT_NAME'):
        nova_cloud.from_environment({'OS_AUTH_URL': 'x', 'OS_USERNAME': 'y'})


def test_session_start_nova_without_a_cloud_is_readable(tmp_path):
    with pytest.raises(session_mod.ConsoleError) as e:
        session_mod.Session.start(provider='nova', workdir=str(tmp_path),
                                  environ={})
    assert 'cannot make the nova lane' in str(e.value)
    assert '--os-cloud-workdir' in str(e.value)
    assert isinstance(e.value, errors.HarnessError)


def test_session_start_nova_keeps_the_password_out(cloud, tmp_path):
    # The fake compute API refuses the unknown image: the error reaches
    # the person at the console without the password or the token.
    _, _, keystone = cloud
    d = write_cloud(tmp_path / 'cloud', auth_url=keystone.url + '/v3',
                    images={})
    with pytest.raises(session_mod.ConsoleError) as e:
        session_mod.Session.start(provider='nova', cloud_workdir=d,
                                  workdir=str(tmp_path / 'lane'),
                                  boot_timeout=5)
    text = str(e.value)
    assert 'no Nova image' in text
    assert PASSWORD not in text and \
        fake_clouds.NOVA_ADMIN_TOKEN not in text


class StoppedNoConsoleNova(fake_clouds.FakeNova):
    """As real Nova 34 on libvirt answered in test_console_nova's run: no
    console output for a server whose domain is shut off.
    """

    def _route(self, method, path, headers, body, version):
        m = re.match(r'^%s/servers/([^/]+)/action$' % re.escape(self.PREFIX),
                     path)
        if m and method == 'POST' and b'os-getConsoleOutput' in body:
            server = self.servers.get(m.group(1))
            if server and server['status'] == 'SHUTOFF':
                return fake_clouds._nova_error(
                    404, 'itemNotFound',
                    'Guest does not have a console available.')
        return super()._route(method, path, headers, body, version)


def test_stopped_server_serial_falls_back_to_the_local_log(tmp_path):
    fake_nova = StoppedNoConsoleNova().start()
    glance = fake_clouds.FakeGlance().start()
    keystone = FakeKeystone(fake_nova.url + fake_clouds.FakeNova.PREFIX,
                            glance.url + '/image').start()
    instances = tmp_path / 'instances'
    image_id = glance.add(hw_video_model='qxl', hw_firmware_type='uefi',
                          hw_machine_type='q35')
    lane = nova_cloud.NovaLane(
        creds(keystone, image=image_id, instances_path=str(instances),
              admin=False), str(tmp_path / 'lane'), route='kerbside')
    lane.provider.poll_interval = 0.01
    try:
        guest = lane.boot_guest(None, name='g1', timeout=10)
        fake_nova.set_console(guest.server_id, 'Hello\n')
        guest.serial.wait_for('Hello', 5)
        # The drain lands in the log, then the guest powers off at once.
        log = instances / guest.server_id / 'console.log'
        log.parent.mkdir(parents=True)
        log.write_bytes(b'Hello\r\n\x1b[0mtype=refresh_stats n=1\r\n')
        fake_nova.set_status(guest.server_id, 'SHUTOFF')
        guest.serial.wait_for('type=refresh_stats n=1', 10)
        # What Nova's API would have removed is removed here too.
        assert '\x1b' not in guest.serial.read()
        assert '\r' not in guest.serial.read()
        assert lane.local_reads >= 1
    finally:
        lane.down()
        for app in (keystone, glance, fake_nova):
            app.stop()

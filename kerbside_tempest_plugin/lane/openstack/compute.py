"""Nova for the lane: cells v2, the flavor, the Sextant image, servers and
their consoles.

Cells v2 as Nova's own tools do it: `api_db sync`, `cell_v2 map_cell0`
(cell0's URL derived from [database]/connection, so no password on a
command line), `cell_v2 create_cell --name cell1` (from the config), `db
sync`, and, once nova-compute has registered, `cell_v2 discover_hosts`.
"""

import os
import time
import urllib.parse

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import waiting
from kerbside_tempest_plugin.lane.openstack import api

MICROVERSION = '2.99'  # spice-direct (Nova 2025.1 and later)
FLAVOR = {'name': 'ktp.sextant', 'ram': 256, 'vcpus': 1, 'disk': 1}
# What the Sextant guest needs from Nova's libvirt driver:
# - UEFI (a UEFI application on an ESP) and no secure boot (Nova would
#   pick a secure-boot OVMF, which needs SMM, when the property is unset
#   and only secure descriptors match);
# - q35 with the disk on SATA (AHCI): the guest has no virtio driver;
# - QXL video: the SPICE display surface the guest paints on.
IMAGE_PROPERTIES = {
    'hw_firmware_type': 'uefi',
    'os_secure_boot': 'disabled',
    'hw_machine_type': 'q35',
    'hw_disk_bus': 'sata',
    'hw_video_model': 'qxl',
    'hw_qemu_guest_agent': 'no',
    'os_type': 'linux',
}


def cells_before_compute(services, layout, pool=None, step=None):
    """api_db sync, then map_cell0 and db sync (which also syncs the
    mapped cell0), and create_cell cell1. With `pool` (an executor),
    create_cell runs beside map_cell0 + db sync: it only writes cell1's
    mapping into the API database. `step()`, when given, is called
    between commands (it raises to stop early).
    """
    conf = os.path.join(layout.conf_dir('nova'), 'nova.conf')
    manage = [services.bin('nova-manage'), '--config-file', conf]
    create_cell = ('nova-manage-create-cell', manage + [
        'cell_v2', 'create_cell', '--name', 'cell1', '--verbose'])
    services.run('nova-manage-api-db-sync', manage + ['api_db', 'sync'])
    side = pool.submit(services.run, *create_cell) if pool else None
    if step:
        step()
    services.run('nova-manage-map-cell0', manage + ['cell_v2', 'map_cell0'])
    if side is None:
        services.run(*create_cell)
    if step:
        step()
    services.run('nova-manage-db-sync', manage + ['db', 'sync'])
    if side is not None:
        side.result()


# Nova's cells in one Python process (the parallel bring-up): the same
# nova-manage command objects, in the order cells_before_compute() runs
# them as commands, after one import of Nova and one parse of nova.conf
# (as nova-manage's main() does them), instead of four processes that
# each import all of Nova (3-5 s each on this box while the rest of the
# cloud starts). Each step's seconds go to a JSON file; a step that
# returns non-zero (nova-manage's own exit code) or raises ends it.
CELLS_SHIM = """import json
import sys
import time

t0 = time.monotonic()
from nova.cmd import manage
from nova import config
from nova import objects
from oslo_log import log as logging

timings_file, conf_file = sys.argv[1], sys.argv[2]
manage.CONF.register_cli_opts([manage.category_opt, manage.post_mortem_opt])
config.parse_args(['nova-manage', '--config-file', conf_file, 'version'])
logging.setup(manage.CONF, 'nova')
objects.register_all()
timings = {'nova-manage-import': time.monotonic() - t0}
steps = [
    ('nova-manage-api-db-sync', lambda: manage.ApiDbCommands().sync()),
    ('nova-manage-map-cell0', lambda: manage.CellV2Commands().map_cell0()),
    ('nova-manage-create-cell', lambda: manage.CellV2Commands().create_cell(
        name='cell1', verbose=True)),
    ('nova-manage-db-sync', lambda: manage.DbCommands().sync()),
]
status = 0
for name, step in steps:
    t = time.monotonic()
    print('== %s' % name, flush=True)
    status = step() or 0
    timings[name] = time.monotonic() - t
    with open(timings_file, 'w') as f:
        json.dump(timings, f)
    if status:
        print('%s exited %s' % (name, status), flush=True)
        break
sys.exit(status)
"""


def cells_in_one_process(services, layout):
    """cells_before_compute()'s four nova-manage commands in one process
    (CELLS_SHIM); each step's seconds in services.timings under the
    command's own name, the whole process as `nova-manage-cells`.
    """
    services.run_script('nova-manage-cells', CELLS_SHIM, [
        os.path.join(layout.conf_dir('nova'), 'nova.conf')])


def discover_hosts(services, layout, client, host, timeout=180,
                   db=None, interval=1.0):
    """Wait until nova-compute on `host` is up in the API, map it into
    cell1, and wait until a hypervisor is listed.

    Without `db`, the host is mapped with `nova-manage cell_v2
    discover_hosts` once the service is up (the serial bring-up). With
    `db` (the lane's MariaDB), the scheduler maps it itself (nova.conf's
    [scheduler] discover_hosts_in_cells_interval, see config.nova_conf):
    this waits until nova_api.host_mappings has `host`, then for the
    hypervisor. `interval`: seconds between looks.
    """
    t = time.monotonic()
    state = {}

    def compute_up():
        svcs = client.call('GET', 'compute', '/os-services?binary='
                           'nova-compute', microversion=MICROVERSION)
        state['services'] = svcs.get('services')
        return any(s.get('host') == host and s.get('state') == 'up'
                   for s in svcs.get('services', []))

    waiting.wait_until(
        compute_up, timeout, 'nova-compute on %s to report up' % host,
        seen=lambda: 'os-services: %s; nova-compute alive: %s' % (
            state.get('services'), not services._dead('nova-compute')),
        interval=interval, abort=lambda: services._dead('nova-compute'))
    services.timings['nova_compute_up'] = time.monotonic() - t
    if db is None:
        conf = os.path.join(layout.conf_dir('nova'), 'nova.conf')
        services.run('nova-manage-discover-hosts', [
            services.bin('nova-manage'), '--config-file', conf, 'cell_v2',
            'discover_hosts', '--verbose'])
    else:
        wait_host_mapped(services, db, host, timeout, interval=interval)
    services.timings['nova_host_mapped'] = time.monotonic() - t

    def hypervisor():
        hv = client.call('GET', 'compute', '/os-hypervisors/detail',
                         microversion=MICROVERSION)
        state['hypervisors'] = [(h.get('hypervisor_hostname'),
                                 h.get('state'), h.get('status'))
                                for h in hv.get('hypervisors', [])]
        return any(h.get('state') == 'up' for h in hv.get('hypervisors', []))

    waiting.wait_until(hypervisor, timeout, 'a hypervisor to be listed',
                       seen=lambda: str(state.get('hypervisors')),
                       interval=interval)
    services.timings['nova_discover'] = time.monotonic() - t


def mapped_hosts(db):
    """Hosts mapped to a cell (nova_api.host_mappings), from the lane's
    MariaDB: what `nova-manage cell_v2 discover_hosts` or the scheduler's
    periodic discovery writes, and what nova-conductor looks a scheduled
    host up in (an unmapped host's server is buried in cell0).
    """
    return sorted(r[0] for r in db.query(
        'SELECT host FROM nova_api.host_mappings') if r)


def wait_host_mapped(services, db, host, timeout, interval=0.25):
    """Until nova-scheduler's periodic discovery has mapped `host`."""
    state = {}

    def mapped():
        state['hosts'] = mapped_hosts(db)
        return host in state['hosts']

    waiting.wait_until(
        mapped, timeout, "nova-scheduler to map compute host %s into a "
        'cell (periodic discover_hosts_in_cells)' % host,
        seen=lambda: 'mapped hosts %s; %s' % (
            state.get('hosts'), services._seen('nova-scheduler')()),
        interval=interval, abort=lambda: services._dead('nova-scheduler'))


def ensure_flavor(client):
    flavors = client.call('GET', 'compute', '/flavors/detail?is_public=None',
                          microversion=MICROVERSION)['flavors']
    for f in flavors:
        if f['name'] == FLAVOR['name']:
            return f
    return client.call('POST', 'compute', '/flavors', {'flavor': dict(
        FLAVOR, **{'os-flavor-access:is_public': True})},
        microversion=MICROVERSION)['flavor']


def image_format(path):
    with open(path, 'rb') as f:
        return 'qcow2' if f.read(4) == b'QFI\xfb' else 'raw'


def upload_image(client, path, name=None, timeout=120):
    """Upload a local qcow2/raw file with the Sextant properties; return
    the active image.
    """
    name = name or 'ktp-' + os.path.basename(path)
    body = dict(IMAGE_PROPERTIES, name=name, container_format='bare',
                disk_format=image_format(path), visibility='public')
    image = client.call('POST', 'image', '/v2/images', body, expect=(201,))
    with open(path, 'rb') as f:
        data = f.read()
    client.call('PUT', 'image', '/v2/images/%s/file' % image['id'], data,
                headers={'Content-Type': 'application/octet-stream'},
                expect=(204,), timeout=timeout)
    state = {}

    def active():
        state['image'] = client.call('GET', 'image', '/v2/images/%s' %
                                     image['id'])
        if state['image']['status'] in ('killed', 'deleted'):
            raise errors.HarnessError('Glance image %s from %s went %s' % (
                image['id'], path, state['image']['status']))
        return state['image']['status'] == 'active'

    waiting.wait_until(active, timeout, 'Glance image %s to be active' %
                       image['id'],
                       seen=lambda: 'status %s' % state.get('image', {}).get(
                           'status'), interval=0.5)
    return state['image']


def boot(client, name, image_id, flavor_id):
    body = {'server': {'name': name, 'imageRef': image_id,
                       'flavorRef': flavor_id, 'networks': 'none'}}
    return client.call('POST', 'compute', '/servers', body, expect=(202,),
                       microversion=MICROVERSION)['server']


def show(client, server_id):
    return client.call('GET', 'compute', '/servers/%s' % server_id,
                       microversion=MICROVERSION)['server']


def wait_active(client, server_id, timeout):
    state = {}

    def active():
        server = show(client, server_id)
        state['server'] = server
        if server['status'] == 'ERROR':
            fault = server.get('fault') or {}
            raise errors.ProviderError(
                'server %s went ERROR: %s %s' % (
                    server_id, fault.get('code'), fault.get('message')))
        return server['status'] == 'ACTIVE' and server

    return waiting.wait_until(
        active, timeout, 'server %s to become ACTIVE' % server_id,
        seen=lambda: 'status %s, task %s' % (
            state.get('server', {}).get('status'),
            state.get('server', {}).get('OS-EXT-STS:task_state')),
        interval=1.0)


def console_output(client, server_id, length=None):
    out = client.call('POST', 'compute', '/servers/%s/action' % server_id,
                      {'os-getConsoleOutput': {'length': length}},
                      microversion=MICROVERSION)
    return (out or {}).get('output') or ''


def wait_console(client, server_id, needle, timeout):
    state = {'text': ''}

    def seen_it():
        state['text'] = console_output(client, server_id)
        return needle in state['text']

    waiting.wait_until(
        seen_it, timeout, '%r in the console output of %s' % (
            needle, server_id),
        seen=lambda: 'last %d bytes: %r' % (
            len(state['text']), state['text'][-300:]), interval=2.0)
    return state['text']


def spice_direct(client, server_id):
    """POST /servers/{id}/remote-consoles (spice-direct, 2.99): the
    remote_console body (protocol, type, url with ?token=).
    """
    remote = client.call(
        'POST', 'compute', '/servers/%s/remote-consoles' % server_id,
        {'remote_console': {'protocol': 'spice', 'type': 'spice-direct'}},
        microversion=MICROVERSION)['remote_console']
    if client.redactor is not None and '?' in remote.get('url', ''):
        client.redactor.add(token_of(remote['url']))
    return remote


def token_of(url):
    """The `token` query parameter of a spice-direct URL."""
    values = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).get(
        'token')
    if not values or not values[0]:
        raise errors.HarnessError('no token in the spice-direct URL (%s)' %
                                  url.split('?', 1)[0])
    return values[0]


def console_auth_token(client, token):
    """GET /os-console-auth-tokens/{token} (admin): host, port, tls_port.
    """
    return client.call('GET', 'compute', '/os-console-auth-tokens/%s' %
                       token, microversion=MICROVERSION)['console']


def delete(client, server_id, timeout):
    try:
        client.call('DELETE', 'compute', '/servers/%s' % server_id,
                    expect=(204,), microversion=MICROVERSION)
    except api.CloudAPIError as e:
        if e.status == 404:
            return
        raise

    def gone():
        try:
            show(client, server_id)
        except api.CloudAPIError as e:
            if e.status == 404:
                return True
            raise
        return False

    waiting.wait_until(gone, timeout, 'server %s to be deleted' % server_id,
                       interval=1.0)

"""Configuration of the single-box cloud: one `Layout`, pure renderers.

`Layout` holds every path and port of one cloud (all under its workdir,
all ports allocated by the caller) and the secrets' values; each
`*_conf()` function returns the sections of one ini file as a dict of
dicts, and `render_ini()` turns that into text. Nothing here touches the
disk or starts anything, so the unit tests check the rendered options
directly.

What Nova needed beyond the documents is commented where it is set.
"""

import dataclasses
import os
import urllib.parse

REGION = 'RegionOne'
SERVICE_PROJECT = 'service'
# Service users created in Keystone, one per service that validates
# tokens or calls another service.
# kerbside: the user of Kerbside's `openstack` source (it looks console
# tokens up, which is admin-only).
SERVICE_USERS = ('nova', 'placement', 'glance', 'neutron', 'kerbside')
# Kerbside's API login (POST /auth, docs/contracts/kerbside.md §16.6):
# Kerbside checks a user's password against Keystone, scoped to project
# `admin`, and wants the user in its KEYSTONE_ACCESS_GROUP. The lane
# makes the group and puts the bootstrap admin in it: the cloud's
# operator is Kerbside's operator.
KERBSIDE_ACCESS_GROUP = 'kerbside'
KERBSIDE_OPERATOR = 'admin'
# One MariaDB database per service (Nova has three: API, cell0, cell1).
# And one for Kerbside.
DATABASES = ('keystone', 'placement', 'glance', 'neutron', 'nova_api',
             'nova_cell0', 'nova', 'kerbside')
DB_USER = 'openstack'
# kerbside_api is Kerbside's API (the base of Nova's spice-direct URLs);
# the other kerbside_* ports are its proxy's TLS, plain and metrics ports.
PORT_NAMES = ('mariadb', 'rabbit', 'rabbit_dist', 'epmd', 'memcached',
              'keystone', 'placement', 'glance', 'neutron', 'nova_api',
              'kerbside_api', 'kerbside_secure', 'kerbside_insecure',
              'kerbside_metrics')
# Seconds a Nova console token stays valid ([consoleauth] token_ttl).
CONSOLE_TOKEN_TTL = 30
# Nova's TCP serial console ports (one per guest).
SERIAL_PORT_COUNT = 4
# The qemu SPICE ports libvirt may hand out (plain and TLS per guest).
SPICE_PORT_COUNT = 8
# Seconds between nova-compute's power-state syncs ([DEFAULT]
# sync_power_state_interval; Nova's default is 600). A guest that powers
# itself off (Sextant does, after its serial drain) is otherwise seen
# STOPPED only through libvirt's lifecycle event, which nova-compute's
# libvirt host holds back 15 s, hard-coded (nova/virt/libvirt/host.py
# _init_events, delay=15, so that a reboot's STARTED can cancel it);
# the periodic sync calls the stop API for a domain found shut off
# (compute/manager.py _sync_instance_power_state), the same thing the
# event would do. None: Nova's default.
POWER_STATE_SYNC_INTERVAL = 1


@dataclasses.dataclass
class Layout:
    """Paths, ports and secret values of one cloud."""
    workdir: str
    ports: dict
    spice_range: tuple           # (min, max) for libvirt's SPICE ports
    passwords: dict              # name -> value ('admin', 'db', 'rabbit',
    #                              one per service user)
    venv: str
    run_dir: str = None          # short path for unix sockets
    serial_range: tuple = None   # (min, max) for Nova's TCP serial ports
    spice_tls: bool = True

    def path(self, *parts):
        return os.path.join(self.workdir, *parts)

    @property
    def secrets_dir(self):
        return self.path('secrets')

    @property
    def etc(self):
        # Config files hold passwords (DB URLs, transport_url, service
        # users): they live with the secrets.
        return os.path.join(self.secrets_dir, 'etc')

    def conf_dir(self, service):
        return os.path.join(self.etc, service)

    @property
    def log_dir(self):
        return self.path('logs')

    @property
    def lock_dir(self):
        return self.path('locks')

    # -- libvirt's private mount namespace --------------------------------
    # libvirtd as root keeps its driver state in fixed system paths; the
    # lane runs it in a mount namespace with these lane directories bound
    # over them, so nothing outside the workdir is written.
    @property
    def ns_binds(self):
        return [(self.path('libvirt', 'etc'), '/etc/libvirt'),
                (self.path('libvirt', 'lib'), '/var/lib/libvirt'),
                (self.path('libvirt', 'cache'), '/var/cache/libvirt'),
                (self.path('libvirt', 'log'), '/var/log/libvirt'),
                (self.libvirt_run, '/run')]

    @property
    def libvirt_run(self):
        return os.path.join(self.run_dir or self.path('run'), 'ns-run')

    @property
    def libvirt_sock(self):
        # Host-side path of the socket libvirtd makes at
        # /run/libvirt/libvirt-sock inside its namespace.
        return os.path.join(self.libvirt_run, 'libvirt', 'libvirt-sock')

    @property
    def libvirt_uri(self):
        return 'qemu+unix:///system?socket=%s' % self.libvirt_sock

    @property
    def instances_path(self):
        return self.path('nova', 'instances')

    @property
    def spice_x509_dir(self):
        return os.path.join(self.secrets_dir, 'spice-x509')

    # -- URLs -----------------------------------------------------------
    def url(self, service, suffix=''):
        return 'http://127.0.0.1:%d%s' % (self.ports[service], suffix)

    @property
    def auth_url(self):
        return self.url('keystone', '/v3')

    def endpoints(self):
        """Catalog: (service name, type, URL) for every API."""
        return [('keystone', 'identity', self.auth_url),
                ('placement', 'placement', self.url('placement')),
                ('glance', 'image', self.url('glance')),
                ('neutron', 'network', self.url('neutron')),
                ('nova', 'compute', self.url('nova_api', '/v2.1'))]

    def db_url(self, database):
        return 'mysql+pymysql://%s:%s@127.0.0.1:%d/%s?charset=utf8' % (
            DB_USER, urllib.parse.quote(self.passwords['db'], safe=''),
            self.ports['mariadb'], database)

    @property
    def transport_url(self):
        return 'rabbit://openstack:%s@127.0.0.1:%d/' % (
            urllib.parse.quote(self.passwords['rabbit'], safe=''),
            self.ports['rabbit'])

    @property
    def memcached(self):
        return '127.0.0.1:%d' % self.ports['memcached']


def render_ini(sections):
    """Text of an ini file from {section: {option: value}}; values that
    are lists are joined with commas, booleans lower-cased, None skipped.
    """
    out = []
    for section, options in sections.items():
        out.append('[%s]' % section)
        for key, value in options.items():
            if value is None:
                continue
            if isinstance(value, bool):
                value = 'true' if value else 'false'
            elif isinstance(value, (list, tuple)):
                value = ','.join(str(v) for v in value)
            out.append('%s = %s' % (key, value))
        out.append('')
    return '\n'.join(out)


def _common(layout, service, db=None, messaging=False):
    sections = {'DEFAULT': {'debug': True, 'use_stderr': False,
                            'log_file': os.path.join(layout.log_dir,
                                                     service + '.log')},
                'oslo_concurrency': {'lock_path': os.path.join(
                    layout.lock_dir, service)}}
    if db:
        sections['database'] = {'connection': layout.db_url(db)}
    if messaging:
        sections['DEFAULT']['transport_url'] = layout.transport_url
        # Notifications would pile up in queues nobody reads.
        sections['oslo_messaging_notifications'] = {'driver': 'noop'}
    return sections


def _service_auth(layout, user):
    """A keystoneauth password section for service user `user`."""
    return {'auth_type': 'password', 'auth_url': layout.auth_url,
            'username': user, 'password': layout.passwords[user],
            'user_domain_name': 'Default', 'project_name': SERVICE_PROJECT,
            'project_domain_name': 'Default', 'region_name': REGION}


def _authtoken(layout, user):
    s = _service_auth(layout, user)
    s.pop('region_name')
    s.update({'www_authenticate_uri': layout.auth_url,
              'memcached_servers': layout.memcached,
              'service_token_roles_required': True})
    return s


def keystone_conf(layout):
    s = _common(layout, 'keystone', db='keystone')
    s['token'] = {'provider': 'fernet'}
    s['fernet_tokens'] = {'key_repository': os.path.join(
        layout.secrets_dir, 'keystone-fernet')}
    s['fernet_receipts'] = {'key_repository': os.path.join(
        layout.secrets_dir, 'keystone-fernet')}
    s['credential'] = {'key_repository': os.path.join(
        layout.secrets_dir, 'keystone-credential')}
    s['cache'] = {'enabled': True, 'backend': 'dogpile.cache.pymemcache',
                  'memcache_servers': layout.memcached}
    return s


def placement_conf(layout):
    s = _common(layout, 'placement')
    s['placement_database'] = {'connection': layout.db_url('placement')}
    s['api'] = {'auth_strategy': 'keystone'}
    s['keystone_authtoken'] = _authtoken(layout, 'placement')
    return s


def glance_conf(layout):
    s = _common(layout, 'glance', db='glance')
    s['DEFAULT']['enabled_backends'] = 'file:file'
    s['glance_store'] = {'default_backend': 'file'}
    s['file'] = {'filesystem_store_datadir': layout.path('glance',
                                                         'images')}
    # Glance's reserved stores must have a place too, or the API refuses
    # to start with multiple backends configured.
    s['os_glance_staging_store'] = {
        'filesystem_store_datadir': layout.path('glance', 'staging')}
    s['os_glance_tasks_store'] = {
        'filesystem_store_datadir': layout.path('glance', 'tasks')}
    s['paste_deploy'] = {'flavor': 'keystone', 'config_file': os.path.join(
        layout.conf_dir('glance'), 'glance-api-paste.ini')}
    s['keystone_authtoken'] = _authtoken(layout, 'glance')
    s['oslo_policy'] = {'enforce_new_defaults': True}
    return s


def neutron_conf(layout):
    """neutron-api with ML2 and no agents: Nova's server views list the
    ports of every server they show (security groups), so a Neutron API
    must answer even for a server booted with networks none.
    """
    s = _common(layout, 'neutron', db='neutron', messaging=True)
    s['DEFAULT'].update({
        'core_plugin': 'ml2',
        # The L3 plugin loads the port-forwarding model that Neutron's
        # port listing joins on; without it GET /v2.0/ports fails with
        # AttributeError (no agents are needed for the listing).
        'service_plugins': 'router',
        'auth_strategy': 'keystone',
        'api_paste_config': os.path.join(layout.conf_dir('neutron'),
                                         'api-paste.ini'),
        'notify_nova_on_port_status_changes': False,
        'notify_nova_on_port_data_changes': False,
        'dhcp_agent_notification': False})
    s['keystone_authtoken'] = _authtoken(layout, 'neutron')
    s['nova'] = _service_auth(layout, 'nova')
    s['ml2'] = {'type_drivers': 'flat', 'tenant_network_types': '',
                'mechanism_drivers': '', 'extension_drivers': ''}
    return s


# [scheduler] discover_hosts_in_cells_interval when the lane lets the
# scheduler map the compute host (OpenStackCloud's parallel bring-up):
# Nova's own periodic discovery, once a second, instead of a
# `nova-manage cell_v2 discover_hosts` that imports all of Nova (3-5 s)
# after the compute node exists.
DISCOVER_HOSTS_INTERVAL = 1


def nova_conf(layout, host='ktp-compute', scheduler_discovery=False,
              power_state_sync=POWER_STATE_SYNC_INTERVAL):
    """nova.conf. `scheduler_discovery`: the scheduler maps new compute
    hosts into cell1 itself (every DISCOVER_HOSTS_INTERVAL s) and every
    service starts its periodic tasks at once (periodic_fuzzy_delay 0:
    the random delay of up to 60 s only spreads a fleet's restarts);
    else nobody discovers hosts but `nova-manage cell_v2 discover_hosts`.
    `power_state_sync`: nova-compute's sync_power_state_interval (see
    POWER_STATE_SYNC_INTERVAL); None leaves Nova's default.
    """
    s = _common(layout, 'nova', db='nova', messaging=True)
    s['DEFAULT'].update({
        'host': host, 'my_ip': '127.0.0.1',
        'compute_driver': 'libvirt.LibvirtDriver',
        'state_path': layout.path('nova', 'state'),
        'instances_path': layout.instances_path,
        # No metadata service and no config drive: the guest is a UEFI
        # application that reads neither.
        'enabled_apis': 'osapi_compute',
        'force_config_drive': False,
        # One small guest; keep the compute node's claims honest.
        'reserved_host_memory_mb': 0, 'reserved_host_disk_mb': 0,
        'heal_instance_info_cache_interval': 60,
        # A lane's teardown should not wait a minute per service; with
        # 5 s nova-compute took all 5 of them to exit after its SIGTERM
        # in every teardown (no server left by then).
        'graceful_shutdown_timeout': 1})
    if power_state_sync is not None:
        s['DEFAULT']['sync_power_state_interval'] = int(power_state_sync)
        # From nova-compute's start, not after a random 0-60 s.
        s['DEFAULT']['periodic_fuzzy_delay'] = 0
    s['wsgi'] = {'api_paste_config': os.path.join(layout.conf_dir('nova'),
                                                  'api-paste.ini')}
    s['api_database'] = {'connection': layout.db_url('nova_api')}
    s['api'] = {'auth_strategy': 'keystone'}
    s['keystone_authtoken'] = _authtoken(layout, 'nova')
    s['service_user'] = dict(_service_auth(layout, 'nova'),
                             send_service_user_token=True)
    s['placement'] = _service_auth(layout, 'placement')
    s['neutron'] = _service_auth(layout, 'neutron')
    s['glance'] = {'region_name': REGION}
    s['scheduler'] = {'discover_hosts_in_cells_interval':
                      DISCOVER_HOSTS_INTERVAL if scheduler_discovery else -1,
                      'workers': 1}
    if scheduler_discovery:
        s['DEFAULT']['periodic_fuzzy_delay'] = 0
    s['conductor'] = {'workers': 1}
    s['libvirt'] = {
        # KVM is unusable with OVMF on these machines: TCG.
        'virt_type': 'qemu',
        'connection_uri': layout.libvirt_uri,
        'cpu_mode': 'none',
        # Sextant's disk is SATA on q35 (hw_disk_bus/hw_machine_type on
        # the image); this default only matters for other images.
        'hw_machine_type': 'x86_64=q35'}
    s['vnc'] = {'enabled': False}
    # Console tokens live 30 s (Nova's default is 600): Kerbside redeems
    # one at once, and the expired-token test need not wait ten minutes.
    s['consoleauth'] = {'token_ttl': CONSOLE_TOKEN_TTL}
    if layout.serial_range:
        # A TCP serial console with a <log file> instead of the default
        # pty: os-getConsoleOutput finds a pty console's log only while
        # the domain runs (the pty path is its source), so the drain the
        # guest writes right before it powers off could not be read
        # back. The TCP console's log path is in the XML of a stopped
        # domain too. Nothing connects to the TCP port (no serial proxy).
        s['serial_console'] = {
            'enabled': True, 'proxyclient_address': '127.0.0.1',
            'port_range': '%d:%d' % tuple(layout.serial_range)}
    s['spice'] = {
        'enabled': True,
        # No spice-vdagent in the guest: no spicevmc channel.
        'agent_enabled': False,
        'server_listen': '127.0.0.1',
        'server_proxyclient_address': '127.0.0.1',
        # Where the spice-direct URL points: Kerbside's Nova flow (Nova
        # appends ?token=<token>).
        'spice_direct_proxy_base_url': layout.url('kerbside_api',
                                                  '/nova-console.vv'),
        # With SPICE TLS on, libvirt's graphics get defaultMode='secure':
        # qemu refuses plain channels (NEED_SECURED), the only thing that
        # moves Kerbside's proxy to the tls_port (contracts §15.2).
        'require_secure': bool(layout.spice_tls),
        # A lossless, replayable display (libvirt's <image
        # compression='off'/> and <streaming mode='off'/>): the per-frame
        # check replays the wire's draws (docs/plans/
        # frame-verification.md).
        'image_compression': 'off',
        'streaming_mode': 'off'}
    # Nova's privsep helper is started with `sudo privsep-helper` unless
    # told otherwise; the lane runs as root from a venv without sudo.
    helper = '%s --config-file %s' % (
        os.path.join(layout.venv, 'bin', 'privsep-helper'),
        os.path.join(layout.conf_dir('nova'), 'nova.conf'))
    for section in ('nova_sys_admin', 'privsep_osbrick',
                    'vif_plug_linux_bridge_privileged',
                    'vif_plug_ovs_privileged'):
        s[section] = {'helper_command': helper}
    s['os_vif_ovs'] = {}
    s['workarounds'] = {}
    return s


def libvirtd_conf(layout):
    """libvirtd.conf (key = "value" syntax, not ini)."""
    return _libvirt_kv({
        'listen_tls': 0, 'listen_tcp': 0,
        'unix_sock_group': 'root', 'unix_sock_rw_perms': '0700',
        'unix_sock_ro_perms': '0700',
        'auth_unix_rw': 'none', 'auth_unix_ro': 'none',
        'log_outputs': '2:file:/var/log/libvirt/libvirtd.log',
        'max_workers': 4, 'min_workers': 1})


def virtlogd_conf(layout):
    return _libvirt_kv({'log_outputs': '2:file:/var/log/libvirt/'
                                       'virtlogd.log'})


def qemu_conf(layout):
    values = {
        'user': 'root', 'group': 'root',
        # No apparmor/selinux labelling and no per-domain /dev namespace
        # (both need host facilities a container may not have).
        'security_driver': 'none', 'namespaces': [],
        'remember_owner': 0,
        # No cgroup controllers: libvirt cannot create cgroups inside a
        # container, and no machined is reachable from the namespace.
        'cgroup_controllers': [],
        'spice_listen': '127.0.0.1',
        'remote_display_port_min': layout.spice_range[0],
        'remote_display_port_max': layout.spice_range[1],
        # Console logs (Nova's <log file=...> on the serial pty) go
        # through virtlogd.
        'stdio_handler': 'logd',
    }
    if layout.spice_tls:
        values.update({'spice_tls': 1,
                       'spice_tls_x509_cert_dir': layout.spice_x509_dir})
    return _libvirt_kv(values)


def _libvirt_kv(values):
    lines = []
    for key, value in values.items():
        if isinstance(value, int):
            lines.append('%s = %d' % (key, value))
        elif isinstance(value, list):
            lines.append('%s = [%s]' % (key, ', '.join(
                '"%s"' % v for v in value)))
        else:
            lines.append('%s = "%s"' % (key, value))
    return '\n'.join(lines) + '\n'


def rabbitmq_conf(layout):
    """rabbitmq.conf (sysctl syntax): loopback listener, the lane's user.
    """
    return '\n'.join([
        'listeners.tcp.1 = 127.0.0.1:%d' % layout.ports['rabbit'],
        'loopback_users = none',
        'default_user = openstack',
        'default_pass = %s' % layout.passwords['rabbit'],
        'default_vhost = /',
        'log.file.level = info',
        'log.console = false',
        # The disk alarm would block publishers on a small /tmp.
        'disk_free_limit.absolute = 50MB',
        '']) + '\n'


def rabbitmq_env(layout):
    """Environment of rabbitmq-server: its own node name, dirs and ports.
    """
    base = layout.path('rabbitmq')
    return {
        'RABBITMQ_NODENAME': 'ktp-%d@localhost' % layout.ports['rabbit'],
        'RABBITMQ_NODE_IP_ADDRESS': '127.0.0.1',
        'RABBITMQ_NODE_PORT': str(layout.ports['rabbit']),
        'RABBITMQ_DIST_PORT': str(layout.ports['rabbit_dist']),
        'RABBITMQ_CONFIG_FILE': os.path.join(
            layout.conf_dir('rabbitmq'), 'rabbitmq.conf'),
        'RABBITMQ_ENABLED_PLUGINS_FILE': os.path.join(base,
                                                      'enabled_plugins'),
        'RABBITMQ_MNESIA_BASE': os.path.join(base, 'mnesia'),
        'RABBITMQ_LOG_BASE': os.path.join(layout.log_dir, 'rabbitmq'),
        'RABBITMQ_PID_FILE': os.path.join(base, 'rabbitmq.pid'),
        'RABBITMQ_CONF_ENV_FILE': os.path.join(base, 'rabbitmq-env.conf'),
        'RABBITMQ_ADVANCED_CONFIG_FILE': os.path.join(base,
                                                      'advanced.config'),
        # The Erlang cookie lives in $HOME: a private one per lane.
        'HOME': os.path.join(layout.secrets_dir, 'rabbitmq'),
        'ERL_EPMD_PORT': str(layout.ports['epmd']),
        'ERL_EPMD_ADDRESS': '127.0.0.1',
        'RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS':
            '-kernel inet_dist_use_interface {127,0,0,1}',
    }

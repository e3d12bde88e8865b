"""The Nova guest provider: a thin layer over tempest's ServersClient.

The tempest test owns the credentials and hands in its clients (the member
`servers_client`, optionally an admin one for console-token lookups); the
provider never talks to Keystone.

- boot: `create_server` then `show_server` until ACTIVE (our own waiter
  with a deadline: `tempest.common.waiters` is not a stable API). ERROR
  raises ProviderError naming the server's fault. With an images client
  the image's properties are checked first (hw_video_model=qxl,
  hw_firmware_type=uefi) and a local image file is uploaded with them.
- console_vv(): `get_remote_console(id, 'spice-direct', 'spice')` at
  microversion 2.99 (Nova 2025.1 Epoxy and later), then a plain GET of the
  returned URL, which Kerbside (`/nova-console.vv?token=`) answers with a
  .vv after validating the token with Nova. Kerbside's console token lives
  a minute: call it just before ryll starts. The `direct` route needs the
  admin client: the token resolved (os-console-auth-tokens) to the
  hypervisor's host and port, with no ticket (Nova sets none).
- serial: `get_console_output` polled into a cached, growing text. Nova's
  API drops control characters (ESC and CR among them) from console
  output, so ANSI sequences arrive as bare `[..m` text.
- teardown: `delete_server`; idempotent, never raises, keeps serial.log
  and server.json in the artifact dir. Nothing after a test needs its
  server gone, so by default (`wait_for_delete=False`) the test does not
  wait for it: cleanup() waits until every server the provider booted
  is gone (one deadline, `delete_timeout`) and raises naming any left.

tempest is imported lazily so that the libraries work without it.
"""

import contextlib
import logging
import os
import threading
import urllib.parse

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import vv as common_vv
from kerbside_tempest_plugin.common import waiting
from kerbside_tempest_plugin import config
from kerbside_tempest_plugin.providers import base
from kerbside_tempest_plugin.providers import cloud

LOG = logging.getLogger(__name__)

SPICE_DIRECT_MICROVERSION = '2.99'
STOPPED_STATUSES = ('SHUTOFF', 'STOPPED', 'SUSPENDED', 'PAUSED', 'SHELVED',
                    'SHELVED_OFFLOADED', 'ERROR', 'DELETED', 'SOFT_DELETED')

NO_DIRECT_ROUTE = (
    "route 'direct' is not available on Nova without an admin servers "
    "client: Nova hands out SPICE consoles only through a console proxy "
    "(spice-direct resolves to Kerbside); only an admin can resolve the "
    "console token to the hypervisor's host and port "
    "(os-console-auth-tokens), and Nova never reveals a SPICE ticket; use "
    "route 'kerbside', or give the provider an admin servers client")

# Image properties the Sextant guest needs on Nova: without QXL there is no
# SPICE display surface, and the guest is a UEFI application. q35 matches
# the direct-qemu provider (AHCI disk); other machine types only warn.
REQUIRED_IMAGE_PROPERTIES = {'hw_video_model': 'qxl',
                             'hw_firmware_type': 'uefi'}
RECOMMENDED_IMAGE_PROPERTIES = {'hw_machine_type': 'q35'}

_MICROVERSION_LOCK = threading.RLock()


@contextlib.contextmanager
def compute_microversion(version):
    """Send compute requests at `version` inside the block.

    tempest keeps the compute microversion in a module global
    (base_compute_client.COMPUTE_MICROVERSION; its fixture does the same);
    the previous value is restored on exit.
    """
    from tempest.lib.services.compute import base_compute_client as bcc
    with _MICROVERSION_LOCK:
        old = bcc.COMPUTE_MICROVERSION
        bcc.COMPUTE_MICROVERSION = version
        try:
            yield
        finally:
            bcc.COMPUTE_MICROVERSION = old


def _exc():
    from tempest.lib import exceptions as lib_exc
    return lib_exc


def _error_text(e):
    body = getattr(e, 'resp_body', None)
    if isinstance(body, dict):
        # tempest unwraps {"badRequest": {...}} to the inner dict.
        candidates = [body] + [v for v in body.values()
                               if isinstance(v, dict)]
        for value in candidates:
            if 'message' in value:
                return cloud.redact('%s %s' % (
                    value.get('code', ''), value['message'])).strip()
    if isinstance(body, (bytes, str)) and body:
        text = body.decode('utf-8', 'replace') if isinstance(
            body, bytes) else body
        return cloud.redact(' '.join(text.split())[:300])
    return cloud.redact(str(e).splitlines()[0] if str(e) else repr(e))


def describe_server(server):
    """Status, task/vm/power state and fault of a server dict, for
    messages.
    """
    if not server:
        return 'no server details yet'
    parts = ['status %s' % server.get('status')]
    for key, label in (('OS-EXT-STS:task_state', 'task_state'),
                       ('OS-EXT-STS:vm_state', 'vm_state'),
                       ('OS-EXT-STS:power_state', 'power_state')):
        if server.get(key) is not None:
            parts.append('%s %s' % (label, server[key]))
    fault = server.get('fault')
    if fault:
        parts.append('fault: %s (code %s)%s' % (
            fault.get('message'), fault.get('code'),
            '; details: %s' % fault['details'][:300]
            if fault.get('details') else ''))
    return ', '.join(parts)


class NovaGuest(cloud.CloudGuest):
    """A Nova server booted for one test."""

    label = 'Nova server'
    source = 'nova'
    record_name = 'server.json'

    def __init__(self, provider, name, artifact_dir, server_id):
        self.server_id = server_id
        self._direct = None       # the last direct ConsoleRoute
        super().__init__(provider, name, artifact_dir, server_id,
                         self._console_output, 'Nova console output')

    @property
    def transient_errors(self):
        return (_exc().ServerRestClientException,)

    @property
    def last_server(self):
        return self.last

    # -- state -------------------------------------------------------------
    def show(self):
        """The server dict (None once it is gone); remembered for
        messages.
        """
        try:
            server = self.provider.servers_client.show_server(
                self.server_id)['server']
        except _exc().NotFound:
            return None
        self.last = server
        return server

    def _gone(self, server):
        return server is None or server.get('status') == 'DELETED'

    def describe_state(self, server):
        return describe_server(server)

    def status(self):
        server = self.show()
        return server.get('status') if server else 'DELETED'

    def is_running(self):
        try:
            return self.status() not in STOPPED_STATUSES
        except self.transient_errors as e:   # unknown: assume it still is
            LOG.debug('status of %s unknown: %s', self.title, e)
            return True

    def _console_output(self):
        body = self.provider.servers_client.get_console_output(
            self.server_id)
        return body['output'] or ''

    # -- console -----------------------------------------------------------
    def _check_route(self, route):
        route = route or self.provider.route
        if route == 'direct' and self.provider.admin_servers_client is None:
            raise errors.ProviderError(NO_DIRECT_ROUTE)
        if route not in ('kerbside', 'direct'):
            raise errors.ProviderError('unknown route %r' % route)
        return route

    def _mint(self):
        """A new spice-direct console URL (a fresh Nova console token)."""
        lib_exc = _exc()
        mv = self.provider.microversion
        try:
            with compute_microversion(mv):
                body = self.provider.servers_client.get_remote_console(
                    self.server_id, 'spice-direct', 'spice')
        except lib_exc.BadRequest as e:
            raise errors.ProviderError(
                'Nova refused a spice-direct console for %s at microversion '
                '%s: %s. spice-direct needs Nova 2025.1 (Epoxy) or later '
                '(microversion 2.99) with [spice] enabled' % (
                    self.server_id, mv, _error_text(e))) from None
        except lib_exc.NotAcceptable as e:
            raise errors.ProviderError(
                'Nova does not support microversion %s (needed for '
                'spice-direct): %s' % (mv, _error_text(e))) from None
        except lib_exc.RestClientException as e:
            raise errors.ProviderError(
                'creating a spice-direct console for %s failed: %s: %s' % (
                    self.server_id, type(e).__name__,
                    _error_text(e))) from None
        console = body['remote_console']
        self.console_fetches += 1
        return console['url']

    def console_vv(self, route=None):
        """A fresh .vv for this server (holds a password): from Kerbside,
        or (direct) to the host and port a fresh spice-direct token
        resolves to. Nova sets no SPICE password, so the direct .vv's is
        empty.
        """
        if self._check_route(route) == 'direct':
            d = self.console_details()
            self._direct = base.ConsoleRoute(
                kind='direct', host=d['host'], port=d['port'],
                tls_port=d.get('tls_port'), source=self.source,
                uuid=self.ref)
            tls_port = ca = None
            if d.get('tls_port') and self.provider.hypervisor_ca_file:
                # ryll takes tls-port whenever the .vv has one.
                tls_port = d['tls_port']
                with open(self.provider.hypervisor_ca_file) as f:
                    ca = f.read()
            return common_vv.direct_vv(d['host'], d['port'], '',
                                       tls_port=tls_port, ca=ca,
                                       title='%s (direct)' % self.name)
        return self.kerbside_vv(self._mint)

    def console_route(self, route=None):
        """The route of the last .vv (Kerbside's proxy host and ports,
        or the hypervisor's); known only after console_vv().
        """
        if self._check_route(route) == 'direct' and self._direct:
            return self._direct
        return self.kerbside_route()

    def console_details(self):
        """What Nova tells the proxy about a fresh spice-direct token:
        {instance_uuid, host, port, tls_port, internal_access_path}.
        Needs the admin client. The token itself is not returned.
        """
        admin = self.provider.admin_servers_client
        if admin is None:
            raise errors.ProviderError(
                'console_details needs an admin servers client '
                '(os-console-auth-tokens is admin-only)')
        url = self._mint()
        token = urllib.parse.parse_qs(
            urllib.parse.urlparse(url).query).get('token', [None])[0]
        if not token:
            raise errors.ProviderError('the spice-direct URL %s has no token'
                                       % cloud.redact_url(url))
        try:
            with compute_microversion(self.provider.microversion):
                body = admin.get_console_auth_token_details(token)
        except _exc().RestClientException as e:
            raise errors.ProviderError(
                'looking up the console token of %s failed: %s: %s' % (
                    self.server_id, type(e).__name__,
                    _error_text(e))) from None
        return dict(body['console'])

    def _delete(self):
        try:
            self.provider.servers_client.delete_server(self.server_id)
        except _exc().NotFound:
            return False
        return True


class NovaProvider(base.GuestProvider):
    """Boots guests as Nova servers through tempest's ServersClient.

    `servers_client`: the test's member ServersClient; `admin_servers_client`
    (optional): an admin one, for console_details(). `image_ref` and
    `flavor_ref` are the defaults for boot(); the image must carry
    hw_video_model=qxl, hw_firmware_type=uefi and hw_machine_type=q35.
    `network`: a network UUID, 'auto', 'none' or None (omit `networks`).
    `images_client` (optional, tempest's image v2 ImagesClient): checks the
    image's properties before booting and uploads local image files (then
    call cleanup() to delete them).
    """

    name = 'nova'

    def __init__(self, servers_client, admin_servers_client=None,
                 image_ref=None, flavor_ref=None, network=None,
                 route='kerbside', boot_timeout=300, delete_timeout=120,
                 poll_interval=2.0, microversion=SPICE_DIRECT_MICROVERSION,
                 console_timeout=60, console_retry_interval=5.0,
                 console_ca_file=None, console_verify=True,
                 serial_interval=2.0, create_kwargs=None, images_client=None,
                 check_image=True, image_upload_timeout=600,
                 hypervisor_ca_file=None, wait_for_delete=False):
        if route == 'direct' and admin_servers_client is None:
            raise errors.ProviderError(NO_DIRECT_ROUTE)
        self.servers_client = servers_client
        self.admin_servers_client = admin_servers_client
        self.image_ref = image_ref
        self.flavor_ref = flavor_ref
        self.network = network
        self.route = route
        self.boot_timeout = boot_timeout
        self.delete_timeout = delete_timeout
        self.poll_interval = poll_interval
        self.microversion = microversion
        self.console_timeout = console_timeout
        self.console_retry_interval = console_retry_interval
        self.console_ca_file = console_ca_file
        self.console_verify = console_verify
        self.serial_interval = serial_interval
        self.create_kwargs = dict(create_kwargs or {})
        self.images_client = images_client
        self.check_image = check_image
        self.image_upload_timeout = image_upload_timeout
        self.hypervisor_ca_file = hypervisor_ca_file
        self.wait_for_delete = wait_for_delete
        self.guests = []
        self.uploaded = {}        # local path -> Glance image id
        self._checked = set()
        cloud.install_log_redaction('tempest.lib.common.rest_client',
                                    'urllib3.connectionpool')

    @classmethod
    def from_config(cls, conf, servers_client, admin_servers_client=None,
                    **kwargs):
        """Build from [nova_provider] and [kerbside]."""
        np = conf.nova_provider
        kwargs.setdefault('route', conf.kerbside.route)
        values = dict(
            image_ref=np.image_ref,
            flavor_ref=np.flavor_ref or config.compute_option(
                conf, 'flavor_ref', None),
            network=np.network,
            boot_timeout=np.build_timeout or config.compute_option(
                conf, 'build_timeout', config.DEFAULT_BUILD_TIMEOUT),
            delete_timeout=np.delete_timeout,
            poll_interval=np.poll_interval, microversion=np.microversion,
            console_timeout=np.console_timeout,
            console_ca_file=np.console_ca_file,
            console_verify=np.console_verify,
            serial_interval=np.serial_poll_interval,
            hypervisor_ca_file=np.hypervisor_ca_file)
        values.update(kwargs)
        return cls(servers_client, admin_servers_client, **values)

    @classmethod
    def from_credentials(cls, auth_url, username, password, project_name,
                         user_domain_name='Default',
                         project_domain_name='Default', region=None,
                         ca_file=None, verify=True, admin=True, **kwargs):
        """Build without a tempest test: tempest.lib's service clients
        from a Keystone v3 URL and a user's credentials (no tempest.conf).
        `admin`: the user may resolve console tokens (the direct route).
        """
        servers, images = service_clients(
            auth_url, username, password, project_name,
            user_domain_name=user_domain_name,
            project_domain_name=project_domain_name, region=region,
            ca_file=ca_file, verify=verify)
        kwargs.setdefault('images_client', images)
        return cls(servers, servers if admin else None, **kwargs)

    def boot(self, image, name, artifact_dir):
        """Boot `image`: a Glance image ref, or a local image file that is
        uploaded once per provider (needs `images_client`); None boots the
        configured image_ref. With an images client the image's properties
        are checked first.
        """
        image = image or self.image_ref
        if not image:
            raise errors.ProviderError(
                'no Nova image: pass one or set [nova_provider] image_ref')
        if not self.flavor_ref:
            raise errors.ProviderError('no Nova flavor: set [nova_provider] '
                                       'flavor_ref')
        image_ref = self.ensure_image(image)
        artifact_dir = os.path.abspath(artifact_dir)
        os.makedirs(artifact_dir, exist_ok=True)
        kwargs = dict(self.create_kwargs, name=name, imageRef=image_ref,
                      flavorRef=self.flavor_ref)
        if self.network in ('auto', 'none'):
            kwargs['networks'] = self.network
        elif self.network:
            kwargs['networks'] = [{'uuid': self.network}]
        # networks 'auto'/'none' exist from microversion 2.37; tempest's
        # default (2.1) refuses them ("'none' is not of type 'array'").
        mv = self.microversion if 'networks' in kwargs and isinstance(
            kwargs['networks'], str) else None
        try:
            with compute_microversion(mv):
                body = self.servers_client.create_server(**kwargs)
        except _exc().RestClientException as e:
            raise errors.ProviderError(
                'Nova refused to create server %s (image %s, flavor %s): '
                '%s: %s' % (name, image_ref, self.flavor_ref,
                            type(e).__name__, _error_text(e))) from None
        guest = NovaGuest(self, name, artifact_dir, body['server']['id'])
        self.guests.append(guest)
        LOG.info('booting Nova server %s (%s) from image %s, flavor %s',
                 name, guest.server_id, image_ref, self.flavor_ref)
        try:
            self._wait_active(guest)
        except BaseException:
            guest.teardown()
            raise
        return guest

    # -- images ------------------------------------------------------------
    def ensure_image(self, image):
        """The Glance ref to boot for `image` (a ref or a local file)."""
        if os.path.exists(str(image)) and os.path.isfile(str(image)):
            if self.images_client is None:
                raise errors.ProviderError(
                    '%s is a local file; pass images_client to upload it, or '
                    'upload it to Glance yourself (with hw_video_model=qxl, '
                    'hw_firmware_type=uefi, hw_machine_type=q35) and set '
                    '[nova_provider] image_ref' % image)
            path = os.path.abspath(image)
            if path not in self.uploaded:
                self.uploaded[path] = self._upload(path)
            return self.uploaded[path]
        if self.images_client is not None and self.check_image and \
                image not in self._checked:
            self._check_image(image)
            self._checked.add(image)
        return image

    def _check_image(self, image_ref):
        try:
            props = self.images_client.show_image(image_ref)
        except _exc().RestClientException as e:
            raise errors.ProviderError(
                'cannot show Glance image %s: %s: %s' % (
                    image_ref, type(e).__name__, _error_text(e))) from None
        wrong = ['%s=%s (has %r)' % (k, v, props.get(k))
                 for k, v in REQUIRED_IMAGE_PROPERTIES.items()
                 if props.get(k) != v]
        if wrong:
            raise errors.ProviderError(
                'Glance image %s is not set up for the Sextant guest: needs '
                '%s. Without hw_video_model=qxl there is no SPICE display '
                'surface; the guest is a UEFI application' % (
                    image_ref, ', '.join(wrong)))
        for k, v in RECOMMENDED_IMAGE_PROPERTIES.items():
            if props.get(k) != v:
                LOG.warning('Glance image %s has %s=%r; the harness is tested '
                            'with %s=%s', image_ref, k, props.get(k), k, v)

    def _upload(self, path):
        with open(path, 'rb') as f:
            magic = f.read(4)
        disk_format = 'qcow2' if magic == b'QFI\xfb' else 'raw'
        props = dict(REQUIRED_IMAGE_PROPERTIES)
        props.update(RECOMMENDED_IMAGE_PROPERTIES)
        lib_exc = _exc()
        try:
            image = self.images_client.create_image(
                name='ktp-%s' % os.path.basename(path),
                container_format='bare', disk_format=disk_format,
                visibility='private', **props)
            image_id = image['id']
            with open(path, 'rb') as f:
                self.images_client.store_image_file(image_id, f)
        except lib_exc.RestClientException as e:
            raise errors.ProviderError('uploading %s to Glance failed: %s: %s'
                                       % (path, type(e).__name__,
                                          _error_text(e))) from None
        state = {}

        def active():
            state['image'] = self.images_client.show_image(image_id)
            status = state['image'].get('status')
            if status in ('killed', 'deleted', 'deactivated'):
                raise errors.ProviderError(
                    'Glance image %s from %s went %s' % (
                        image_id, path, status))
            return status == 'active'

        waiting.wait_until(
            active, self.image_upload_timeout,
            'Glance image %s (from %s) to become active' % (image_id, path),
            seen=lambda: 'status %s' % state.get('image', {}).get('status'),
            interval=self.poll_interval)
        LOG.info('uploaded %s to Glance as %s (%s)', path, image_id,
                 disk_format)
        return image_id

    def cleanup(self):
        """Delete every server this provider booted that is not deleted
        yet and wait until all are gone (one deadline: delete_timeout),
        then delete the images it uploaded. Raises ProviderError naming
        the servers still there after the deadline (the images are
        deleted first all the same); image failures are logged.
        """
        try:
            cloud.wait_all_deleted(self.guests, self.delete_timeout)
        finally:
            self._delete_uploads()

    def _delete_uploads(self):
        for path, image_id in list(self.uploaded.items()):
            try:
                self.images_client.delete_image(image_id)
            except _exc().NotFound:
                pass
            except Exception:
                LOG.exception('deleting Glance image %s (from %s) failed',
                              image_id, path)
            del self.uploaded[path]

    def _wait_active(self, guest):
        guest.wait_for_state(
            'become ACTIVE', lambda server: server.get('status') == 'ACTIVE',
            lambda server: server.get('status') == 'ERROR' and 'ERROR',
            self.boot_timeout)


def service_clients(auth_url, username, password, project_name,
                    user_domain_name='Default', project_domain_name='Default',
                    region=None, ca_file=None, verify=True):
    """(ServersClient, image v2 ImagesClient) for one Keystone v3 user,
    from tempest.lib alone (lazily authenticated on the first request).
    """
    from tempest.lib import auth
    from tempest.lib.services.compute import servers_client
    from tempest.lib.services.image.v2 import images_client
    creds = auth.KeystoneV3Credentials(
        username=username, password=password, project_name=project_name,
        user_domain_name=user_domain_name,
        project_domain_name=project_domain_name)
    tls = dict(disable_ssl_certificate_validation=not verify,
               ca_certs=ca_file)
    provider = auth.KeystoneV3AuthProvider(creds, auth_url, **tls)
    return (servers_client.ServersClient(provider, 'compute', region, **tls),
            images_client.ImagesClient(provider, 'image', region, **tls))

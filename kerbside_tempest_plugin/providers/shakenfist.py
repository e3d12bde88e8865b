"""The Shaken Fist guest provider: a thin layer over shakenfist-client.

- boot: `create_instance` with a SPICE videospec and `uefi=True`, then
  `get_instance` until the state is `created` (our own deadline: the
  client's ASYNC_BLOCK strategy would wait up to an hour, so its calls run
  with ASYNC_CONTINUE and the provider polls).
- console_vv(): `get_vdi_console_proxy()` (GET /instances/<ref>/
  vdiconsoleproxy -> {url, expires_at}) then a plain GET of the
  `<KERBSIDE_URL>/sf-console.vv?token=<JWT>` URL, with no Shaken Fist
  credentials. Kerbside only knows a console after its 60 s scrape and
  answers 404 without using the token up, so the provider mints and
  retries until `console_timeout` (180 s by default); 401 (used, expired,
  wrong audience, unknown key) raises ConsoleTokenRejected at once.
- route `direct`: `get_vdi_console_helper()`, Shaken Fist's own .vv
  pointing at the hypervisor (no ticket: Shaken Fist's SPICE channels are
  TLS-only with the cluster CA).
- serial: `get_console_data(ref, length)` polled into a growing text.
- teardown: `delete_instance` and wait for `deleted`; idempotent, never
  raises, keeps serial.log and instance.json.

shakenfist_client is imported lazily: it is optional.
"""

import contextlib
import json
import logging
import os

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import vv as common_vv
from kerbside_tempest_plugin import config
from kerbside_tempest_plugin.providers import base
from kerbside_tempest_plugin.providers import cloud

LOG = logging.getLogger(__name__)

ERROR_STATES = ('error', 'deleted')


def _sf():
    try:
        from shakenfist_client import apiclient
    except ImportError as e:
        raise errors.ProviderError(
            'the shakenfist provider needs shakenfist-client (pip install '
            'shakenfist-client): %s' % e) from None
    return apiclient


def make_client(api_url, namespace, key, timeout=60):
    """A shakenfist_client Client that never reads ~/.shakenfist and whose
    calls return at once (the provider does the waiting).
    """
    apiclient = _sf()
    cloud.install_log_redaction('shakenfist_client.apiclient',
                                'urllib3.connectionpool')
    try:
        return apiclient.Client(
            base_url=api_url, namespace=namespace, key=key,
            suppress_configuration_lookup=True, sync_request_timeout=timeout,
            async_strategy=apiclient.ASYNC_CONTINUE)
    except Exception as e:
        raise errors.ProviderError(
            'cannot reach the Shaken Fist API at %s: %s: %s' % (
                api_url, type(e).__name__, cloud.redact(e))) from None


def _error_text(e):
    text = getattr(e, 'text', None) or ''
    try:
        body = json.loads(text)
        if isinstance(body, dict) and body.get('error'):
            text = body['error']
    except (TypeError, ValueError):
        pass
    status = getattr(e, 'status_code', None)
    text = ' '.join(str(text or e).split())[:300]
    return cloud.redact('%s%s: %s' % (
        type(e).__name__, ' (HTTP %s)' % status if status else '', text))


def describe_instance(inst):
    if not inst:
        return 'no instance details yet'
    parts = ['state %s' % inst.get('state')]
    for key in ('power_state', 'node', 'error_message'):
        if inst.get(key):
            parts.append('%s %s' % (key, inst[key]))
    return ', '.join(parts)


@contextlib.contextmanager
def _no_client_waits(client):
    """Run client calls with ASYNC_CONTINUE: they return at once instead
    of polling (create/delete) or retrying 406 up to the client's deadline.
    """
    old = getattr(client, 'async_strategy', None)
    client.async_strategy = 'continue'
    try:
        yield
    finally:
        client.async_strategy = old


class ShakenFistGuest(cloud.CloudGuest):
    """A Shaken Fist instance booted for one test."""

    label = 'Shaken Fist instance'
    source = 'shakenfist'
    record_name = 'instance.json'

    def __init__(self, provider, name, artifact_dir, uuid):
        self.uuid = uuid
        super().__init__(provider, name, artifact_dir, uuid,
                         self._console_data, 'Shaken Fist console data')

    @property
    def transient_errors(self):
        apiclient = _sf()
        return (apiclient.InternalServerError,
                apiclient.DependenciesNotReadyException)

    @property
    def last_instance(self):
        return self.last

    # -- state -------------------------------------------------------------
    def show(self):
        """The instance dict (None once it is gone)."""
        apiclient = _sf()
        try:
            inst = self.provider.client.get_instance(self.uuid)
        except apiclient.ResourceNotFoundException:
            return None
        self.last = inst
        return inst

    def _gone(self, inst):
        return inst is None or inst.get('state') == 'deleted'

    def describe_state(self, inst):
        return describe_instance(inst)

    def is_running(self):
        try:
            inst = self.show()
        except self.transient_errors as e:   # unknown: assume it still is
            LOG.debug('state of %s unknown: %s', self.title, e)
            return True
        if not inst or inst.get('state') != 'created':
            return False
        return inst.get('power_state') not in ('off', 'crashed', 'paused')

    def _console_data(self):
        return self.provider.client.get_console_data(
            self.uuid, self.provider.console_data_length, decode=None)

    # -- console -----------------------------------------------------------
    def _mint(self):
        apiclient = _sf()
        try:
            with _no_client_waits(self.provider.client):
                result = self.provider.client.get_vdi_console_proxy(
                    self.uuid)
        except apiclient.ResourceStateConflictException as e:
            raise errors.ProviderError(
                'Shaken Fist has no SPICE console proxy for %s (not a SPICE '
                'instance?): %s' % (self.uuid, _error_text(e))) from None
        except apiclient.ResourceNotFoundException as e:
            raise errors.ProviderError(
                'Shaken Fist refused vdiconsoleproxy for %s (no KERBSIDE_URL '
                'configured, or the instance is gone): %s' % (
                    self.uuid, _error_text(e))) from None
        except apiclient.APIException as e:
            raise errors.ProviderError(
                'Shaken Fist vdiconsoleproxy for %s failed: %s' % (
                    self.uuid, _error_text(e))) from None
        self.console_fetches += 1
        return result['url']

    def console_vv(self, route=None):
        """A fresh .vv for `route` (kerbside: holds a password)."""
        route = route or self.provider.route
        if route == 'direct':
            return self._helper_vv()
        if route != 'kerbside':
            raise errors.ProviderError('unknown route %r' % route)
        text = self.kerbside_vv(self._mint)
        if '/sf-console.vv?token=' in text:
            raise errors.ProviderError(
                'the .vv for %s still points at the token exchange URL '
                '(Kerbside returned the URL, not a console)' % self.uuid)
        return text

    def _helper_vv(self):
        apiclient = _sf()
        try:
            text = self.provider.client.get_vdi_console_helper(self.uuid)
        except apiclient.APIException as e:
            raise errors.ProviderError(
                'Shaken Fist vdiconsolehelper for %s failed: %s' % (
                    self.uuid, _error_text(e))) from None
        try:
            common_vv.parse_vv(text)
        except common_vv.VVError as e:
            raise errors.ProviderError(
                'Shaken Fist vdiconsolehelper for %s did not return a .vv: '
                '%s' % (self.uuid, e)) from None
        return text

    def console_route(self, route=None):
        route = route or self.provider.route
        if route == 'direct':
            inst = self.show() or self.last_instance or {}
            return base.ConsoleRoute(
                kind='direct', host=inst.get('node'),
                port=inst.get('vdi_port'), tls_port=inst.get('vdi_tls_port'),
                source='shakenfist', uuid=self.uuid)
        return self.kerbside_route()

    def _delete(self):
        apiclient = _sf()
        try:
            with _no_client_waits(self.provider.client):
                self.provider.client.delete_instance(self.uuid,
                                                     async_request=True)
        except apiclient.ResourceNotFoundException:
            return False
        return True


class ShakenFistProvider(base.GuestProvider):
    """Boots guests as Shaken Fist instances.

    `client`: a shakenfist_client.apiclient.Client (see make_client()).
    `image`: the default disk base (a label, URL or `sf://...` ref).
    """

    name = 'shakenfist'

    def __init__(self, client, image=None, namespace=None, cpus=1,
                 memory_mb=1024, disk_gb=1, disk_bus=None,
                 video_model='qxl', video_memory_kb=16384, network=None,
                 route='kerbside', boot_timeout=300, delete_timeout=120,
                 poll_interval=2.0, console_timeout=180,
                 console_retry_interval=5.0, console_ca_file=None,
                 console_verify=True, serial_interval=2.0,
                 console_data_length=200000):
        self.client = client
        self.image = image
        self.namespace = namespace
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.disk_gb = disk_gb
        self.disk_bus = disk_bus
        self.video_model = video_model
        self.video_memory_kb = video_memory_kb
        self.network = network
        self.route = route
        self.boot_timeout = boot_timeout
        self.delete_timeout = delete_timeout
        self.poll_interval = poll_interval
        self.console_timeout = console_timeout
        self.console_retry_interval = console_retry_interval
        self.console_ca_file = console_ca_file
        self.console_verify = console_verify
        self.serial_interval = serial_interval
        self.console_data_length = console_data_length
        self.guests = []
        cloud.install_log_redaction('shakenfist_client.apiclient',
                                    'urllib3.connectionpool')

    @classmethod
    def from_config(cls, conf, client=None, **kwargs):
        """Build from [shakenfist_provider] and [kerbside]; the client too
        unless one is given.
        """
        sp = conf.shakenfist_provider
        if client is None:
            if not sp.api_url:
                raise errors.ProviderError(
                    'set [shakenfist_provider] api_url (and namespace, key)')
            client = make_client(sp.api_url, sp.namespace, sp.key)
        kwargs.setdefault('route', conf.kerbside.route)
        values = dict(
            image=sp.image, namespace=sp.namespace, cpus=sp.cpus,
            memory_mb=sp.memory_mb, disk_gb=sp.disk_gb,
            disk_bus=sp.disk_bus, video_model=sp.video_model,
            video_memory_kb=sp.video_memory_kb, network=sp.network,
            boot_timeout=sp.build_timeout or config.compute_option(
                conf, 'build_timeout', config.DEFAULT_BUILD_TIMEOUT),
            delete_timeout=sp.delete_timeout,
            poll_interval=sp.poll_interval,
            console_timeout=sp.console_timeout,
            console_ca_file=sp.console_ca_file,
            console_verify=sp.console_verify,
            serial_interval=sp.serial_poll_interval,
            console_data_length=sp.console_data_length)
        values.update(kwargs)
        return cls(client, **values)

    def _specs(self, image):
        disk = {'size': self.disk_gb, 'base': image, 'type': 'disk'}
        if self.disk_bus:
            disk['bus'] = self.disk_bus
        network = [{'network_uuid': self.network}] if self.network else []
        video = {'model': self.video_model, 'memory': self.video_memory_kb,
                 'vdi': 'spice'}
        return [disk], network, video

    def boot(self, image, name, artifact_dir):
        """Boot a disk based on `image` (None: the configured one)."""
        apiclient = _sf()
        image = image or self.image
        if not image:
            raise errors.ProviderError(
                'no Shaken Fist image: pass one or set [shakenfist_provider] '
                'image')
        artifact_dir = os.path.abspath(artifact_dir)
        os.makedirs(artifact_dir, exist_ok=True)
        disk, network, video = self._specs(image)
        try:
            with _no_client_waits(self.client):
                inst = self.client.create_instance(
                    name, self.cpus, self.memory_mb, network, disk, None,
                    None, namespace=self.namespace, video=video, uefi=True,
                    secure_boot=False)
        except apiclient.APIException as e:
            raise errors.ProviderError(
                'Shaken Fist refused to create instance %s (image %s): %s'
                % (name, image, _error_text(e))) from None
        guest = ShakenFistGuest(self, name, artifact_dir, inst['uuid'])
        guest.last = inst
        self.guests.append(guest)
        LOG.info('booting Shaken Fist instance %s (%s) from %s', name,
                 guest.uuid, image)
        try:
            self._wait_created(guest)
        except BaseException:
            guest.teardown()
            raise
        return guest

    def _wait_created(self, guest):
        def failed(inst):
            state = inst.get('state') or ''
            if state in ERROR_STATES or state.endswith('-error'):
                return state
            return None

        guest.wait_for_state(
            "reach state 'created'",
            lambda inst: inst.get('state') == 'created', failed,
            self.boot_timeout)

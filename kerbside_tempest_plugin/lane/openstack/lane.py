"""The OpenStack lane as a lane.base.Lane: guests booted through Nova on
the single-box cloud, consoles over Kerbside's Nova flow or straight to
the hypervisor.

`OpenStackLane(workdir, route)` brings its own cloud up in `up()`
(cloud.OpenStackCloud under `<workdir>/cloud`, Kerbside in front) and
tears it down in `down()`. Given `cloud=` (an OpenStackCloud that is
already up) it uses that one and leaves it running, so that several
lanes (both routes, several tests) share one cloud.

Guests, their .vv and their serial come from the same
providers.nova.NovaProvider the tempest scenario uses on a cloud, here
over tempest.lib clients authenticated as the cloud's admin (the member
and the admin client are the same user). Routes:

- `kerbside`: POST remote-consoles spice-direct at 2.99, Kerbside's
  `/nova-console.vv?token=`, ryll through the proxy;
- `direct`: the token's host and tls_port straight to libvirt's qemu,
  checked against the lane CA (the cloud sets `[spice] require_secure`,
  so the plain port refuses the link).

The tempest job (tools/openstack-job.sh) does not use this class: there
the cloud is up before tempest starts and the test classes use
provider_lane.ProviderLane with tempest's own credentials. This is for
integration tests and benchmarks.
"""

import logging
import os

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.lane.openstack import cloud as os_cloud
from kerbside_tempest_plugin.lane.openstack import tempest_conf as \
    os_tempest_conf
from kerbside_tempest_plugin.lane import provider_lane
from kerbside_tempest_plugin.providers import nova

LOG = logging.getLogger(__name__)


class OpenStackLane(provider_lane.ProviderLane):
    """`firewall_mode`, `firewall_permitted_channels`,
    `console_token_duration`, `proxy_bin` and `kerbside_source` go to the
    Kerbside of the cloud this lane brings up (cloud.OpenStackCloud); a
    shared `cloud=` already has its Kerbside, so they are refused there.
    `provider_kwargs` go to the NovaProvider (default: the job's polls).
    """

    def __init__(self, workdir, route='kerbside', ryll_binary='ryll',
                 image=None, cloud=None, cloud_kwargs=None,
                 hypervisor_ca_file=None, kerbside_source=None,
                 firewall_mode=None, firewall_permitted_channels=None,
                 console_token_duration=None, proxy_bin=None,
                 provider_kwargs=None):
        kerbside_options = {k: v for k, v in dict(
            kerbside_source=kerbside_source, firewall_mode=firewall_mode,
            firewall_permitted_channels=firewall_permitted_channels,
            console_token_duration=console_token_duration,
            proxy_bin=proxy_bin).items() if v is not None}
        if cloud is not None and kerbside_options:
            raise ValueError(
                '%s belong to the shared cloud\'s Kerbside, which is '
                'already up: give them to its OpenStackCloud' % ', '.join(
                    sorted(kerbside_options)))
        os.makedirs(workdir, exist_ok=True)
        self.owns_cloud = cloud is None
        self.cloud = cloud or os_cloud.OpenStackCloud(
            os.path.join(workdir, 'cloud'),
            **dict(cloud_kwargs or {}, **kerbside_options))
        self.image_path = image
        self.hypervisor_ca_file = hypervisor_ca_file
        # The NovaProvider's options, as tempest.conf sets them for the
        # job (tempest_conf.POLL_INTERVAL) unless given.
        self.provider_kwargs = dict(
            dict(poll_interval=os_tempest_conf.POLL_INTERVAL,
                 serial_interval=os_tempest_conf.POLL_INTERVAL),
            **(provider_kwargs or {}))
        # The provider exists once the cloud is up.
        super().__init__(None, workdir, route=route,
                         ryll_binary=ryll_binary)
        self.log_dir = None
        self.redactor = self.cloud.redactor

    def up(self, timeout=300):
        """The cloud (unless shared), the image in Glance, the provider."""
        from kerbside_tempest_plugin import guest_images
        if self.owns_cloud:
            self.cloud.up(timeout=timeout)
        elif not self.cloud.layout:
            raise errors.HarnessError('the shared cloud %s is not up' %
                                      self.cloud.workdir)
        self.log_dir = self.cloud.layout.log_dir
        image = guest_images.sextant_image(self.image_path)
        image_id = self.cloud.images.get(image) or \
            self.cloud.upload_image(image)['id']
        lay = self.cloud.layout
        self.provider = nova.NovaProvider.from_credentials(
            lay.auth_url, 'admin', lay.passwords['admin'], 'admin',
            image_ref=image_id, flavor_ref=self.cloud.flavor['id'],
            network='none', route=self.route,
            hypervisor_ca_file=self.hypervisor_ca_file or
            self.cloud.tls.ca_cert, **self.provider_kwargs)
        self.timings.update(self.cloud.timings)
        return self

    def kerbside_build(self):
        """Which Kerbside fronts the cloud (lane.kerbside.build_of's
        dict), None without one.
        """
        return self.cloud.kerbside_build()

    def _check_up(self):
        if self.provider is None:
            raise errors.HarnessError('the OpenStack lane is not up')

    def down(self):
        """Guests (through Nova), then the cloud if it is ours; never
        raises.
        """
        if self.provider is not None:
            report = super().down()
        else:
            self.stop_ryll()
            report = {'guests': len(self.guests), 'problems': []}
        if self.owns_cloud:
            report['cloud'] = self.cloud.down()
        return report

"""A lane over any GuestProvider, for providers whose Kerbside and
hypervisor live elsewhere (Nova, Shaken Fist).

The direct-qemu provider has its own `lane.Lane`, which also runs MariaDB
and Kerbside locally. Here the provider's guest hands out the .vv (from
the cloud's console API, through the cloud's Kerbside) and its serial
source; the lane.base.Lane interface adds ryll and the bookkeeping the
runner reads.
"""

import logging
import os

from kerbside_tempest_plugin.lane import base

LOG = logging.getLogger(__name__)


class ProviderLane(base.Lane):

    def __init__(self, provider, workdir, route='kerbside',
                 ryll_binary='ryll'):
        # log_dir None: the cloud's logs are not ours to copy.
        super().__init__(workdir, route=route, ryll_binary=ryll_binary)
        self.provider = provider
        os.makedirs(workdir, exist_ok=True)

    def up(self):
        """Nothing to start: the cloud runs Kerbside and the hypervisor."""
        return self

    def _boot(self, image, name, artifact_dir):
        return self.provider.boot(image, name, artifact_dir)

    def console_vv(self, guest, route=None):
        """The cloud's .vv: the guest asks its console API."""
        return guest.console_vv(route or self.route)

    def down(self):
        """Stop ryll and tear every guest down; never raises. Returns a
        short report.
        """
        self.stop_ryll()
        problems = []
        for guest in self.guests:
            try:
                guest.teardown()
            except Exception as e:   # teardown() should not raise; be sure
                LOG.exception('guest teardown failed')
                problems.append('%s: %r' % (guest.name, e))
        try:
            self.provider.cleanup()
        except Exception as e:
            LOG.exception('provider cleanup failed')
            problems.append('provider cleanup: %r' % e)
        return {'guests': len(self.guests), 'problems': problems}

"""A lane over any GuestProvider: what the scenario runner needs from a
lane (boot a fresh guest, start ryll on its console, stop ryll, tear down),
for providers whose Kerbside and hypervisor live elsewhere (Nova, Shaken
Fist).

The direct-qemu provider has its own `lane.Lane`, which also runs MariaDB
and Kerbside locally. Here the provider's guest hands out the .vv (from
the cloud's console API, through the cloud's Kerbside) and its serial
source; this class only adds ryll and the bookkeeping the runner reads
(`ryll_procs`, `redactor`, `log_dir`).
"""

import logging
import os
import time

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import secrets as common_secrets
from kerbside_tempest_plugin.lane import console as lane_console

LOG = logging.getLogger(__name__)


class ProviderLane:

    def __init__(self, provider, workdir, route='kerbside',
                 ryll_binary='ryll'):
        self.provider = provider
        self.workdir = workdir
        self.route = route
        self.ryll_binary = ryll_binary
        self.redactor = common_secrets.Redactor()
        self.log_dir = None         # the cloud's logs are not ours to copy
        self.guest = None
        self.guests = []
        self.ryll = None
        self.ryll_procs = []
        self.timings = {}
        os.makedirs(workdir, exist_ok=True)

    def up(self):
        """Nothing to start: the cloud runs Kerbside and the hypervisor."""
        return self

    def boot_guest(self, image=None, name=None, banner=None, timeout=120):
        """Boot a fresh guest through the provider (any previous one is
        torn down first) and, with `banner`, wait for it on serial.
        """
        if self.guest is not None:
            self.guest.teardown()
        name = name or 'guest%d' % (len(self.guests) + 1)
        t = time.monotonic()
        guest = self.provider.boot(
            image, name, os.path.join(self.workdir, 'guests', name))
        self.guest = guest
        self.guests.append(guest)
        if banner:
            guest.serial.wait_for(banner, timeout)
            guest.boot_seconds = time.monotonic() - t
            self.timings['boot_to_banner'] = guest.boot_seconds
        return guest

    def start_ryll(self, guest=None, route=None, timeout=30, extra_args=()):
        """Start ryll headless on a fresh .vv for `route`; wait for its
        control socket. Returns the RyllProcess.
        """
        guest = guest or self.guest
        if guest is None:
            raise errors.HarnessError('no guest to connect ryll to')
        route = route or self.route
        self.stop_ryll()
        ryll_dir = os.path.join(self.workdir, 'ryll', '%d-%s' % (
            len(self.ryll_procs) + 1, route))
        t = time.monotonic()
        rp = lane_console.start_ryll_on(guest, route, ryll_dir,
                                        self.ryll_binary, self.redactor,
                                        extra_args=extra_args)
        self.ryll = rp
        self.ryll_procs.append(rp)
        rp.wait_for_socket(timeout)
        self.timings['ryll_to_socket'] = time.monotonic() - t
        return rp

    def stop_ryll(self):
        lane_console.stop_ryll_quietly(self.ryll)
        self.ryll = None

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
        cleanup = getattr(self.provider, 'cleanup', None)
        if cleanup is not None:
            try:
                cleanup()
            except Exception as e:
                LOG.exception('provider cleanup failed')
                problems.append('provider cleanup: %r' % e)
        return {'guests': len(self.guests), 'problems': problems}

    def __enter__(self):
        return self.up()

    def __exit__(self, *exc):
        self.down()
        return False

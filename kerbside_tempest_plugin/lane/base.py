"""The one Lane interface: what the scenario runner, the loadtest and the
tempest classes use, whatever runs the services in front of the guest.

A lane boots fresh guests, starts ryll on a guest's console over a route
(`kerbside` through the proxy, `direct` to the hypervisor), stops ryll and
tears everything down. Every lane offers the same attributes:

- `workdir`, `route` (the default route: held here and nowhere else),
  `redactor` (a common.secrets.Redactor that knows every secret the lane
  handed out), `log_dir` (the lane's own service logs, copied into the
  artifacts; None when the services are not ours, as on a cloud);
- `guest` (the current one), `guests`, `ryll` (the running RyllProcess or
  None), `ryll_procs`, `last_ryll`;
- `timings`, with the same names on every lane (TIMINGS below).

A subclass implements `up()`, `down()`, `_boot(image, name, artifact_dir)`
and `console_vv(guest, route)`; it may hook `_check_up()`, `_changed()`
(state worth saving) and `_ryll_started(n, rp)`. The direct-qemu lane
(lane.lane.Lane), the provider lane (lane.provider_lane.ProviderLane) and
the OpenStack lane implement it.

N consoles at once: a lane built for several (`consoles`, e.g. the
direct-qemu lane's `Lane(consoles=N)`) hands out `console_slots()`, one
ConsoleSlot per console. A slot has the lane's guest/ryll verbs and
attributes (boot_guest, start_ryll, stop_ryll, last_ryll, guest, ryll,
workdir, redactor, log_dir, timings) for its own console only, so N walks
(scenario.runner.run_scenario(slot, ...)) run on N threads without sharing
a "current" guest or ryll. Slot 1 and the lane's own current guest use the
same console: use one or the other, not both.
"""

import threading

import abc
import logging
import os
import time

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import secrets as common_secrets
from kerbside_tempest_plugin.common import vv as common_vv
from kerbside_tempest_plugin.ryll import process as ryll_process

LOG = logging.getLogger(__name__)

# The timing names every lane records (seconds).
TIMINGS = {
    'boot_to_banner': 'guest boot started -> the banner on serial',
    'ryll_to_socket': 'ryll started -> its control socket exists',
}


class ConsoleHolder:
    """One console's current guest and ryll, and the verbs on them.

    A Lane is one (its own console); a ConsoleSlot is one of a lane's N.
    The holder provides `workdir`, `route`, `ryll_binary`, `redactor`,
    `timings` and the hooks `_check_up`, `_boot`, `_changed`,
    `_ryll_started` and `console_vv`.
    """

    def _init_console(self):
        self.guest = None
        self.guests = []
        self.ryll = None
        self.ryll_procs = []
        self.timings = {}
        self._ryll_count = 0

    # -- guests ------------------------------------------------------------
    def boot_guest(self, image=None, name=None, banner=None, timeout=120):
        """Boot a fresh guest (any previous one is torn down first).

        With `banner` (a regex), wait for it on serial and record the time
        as `boot_to_banner` (also the guest's `boot_seconds`).
        """
        self._check_up()
        if self.guest is not None:
            self.guest.teardown()
        name = name or 'guest%d' % (len(self.guests) + 1)
        t = time.monotonic()
        guest = self._boot(image, name,
                           os.path.join(self.workdir, 'guests', name))
        self.guest = guest
        self.guests.append(guest)
        self._changed()
        if banner:
            guest.serial.wait_for(banner, timeout)
            guest.boot_seconds = time.monotonic() - t
            self.timings['boot_to_banner'] = guest.boot_seconds
        return guest

    # -- ryll --------------------------------------------------------------
    def start_ryll(self, guest=None, route=None, timeout=30, verbose=False,
                   extra_args=(), vv=None):
        """Start ryll headless on `guest` (default: the current one) over
        `route` (default: the lane's); wait for its control socket.
        Returns the RyllProcess.

        The .vv is fetched (kerbside: a console token lives 60 s) or
        written (direct) right before the start; `vv` (a .vv text the
        caller fetched, e.g. to know its session or to replay a token)
        is used instead.
        """
        guest = guest or self.guest
        if guest is None:
            raise errors.HarnessError('no guest to connect ryll to')
        route = route or self.route
        self.stop_ryll()
        self._ryll_count += 1
        n = self._ryll_count
        ryll_dir = os.path.join(self.workdir, 'ryll', '%d-%s' % (n, route))
        t = time.monotonic()
        rp = start_ryll_on(
            vv or self.console_vv(guest, route), ryll_dir, self.ryll_binary,
            self.redactor,
            extra_args=list(extra_args) + (['--verbose'] if verbose
                                           else []))
        self._ryll_started(n, rp)
        self.ryll = rp
        self.ryll_procs.append(rp)
        rp.wait_for_socket(timeout)
        self.timings['ryll_to_socket'] = time.monotonic() - t
        self._changed()
        return rp

    def stop_ryll(self):
        stop_ryll_quietly(self.ryll)
        self.ryll = None

    @property
    def last_ryll(self):
        """The most recent RyllProcess (running or not), or None."""
        return self.ryll_procs[-1] if self.ryll_procs else None


class Lane(ConsoleHolder, abc.ABC):
    """A lane: the services in front of guests, and ryll on their consoles.

    Use as a context manager, or call up() and (always) down().
    """

    consoles = 1

    def __init__(self, workdir, route='kerbside', ryll_binary='ryll',
                 log_dir=None):
        self.workdir = workdir
        self.route = route
        self.ryll_binary = ryll_binary
        self.log_dir = log_dir
        self.redactor = common_secrets.Redactor()
        self._init_console()
        self._slots = None
        self._slots_lock = threading.Lock()

    # -- what a lane implements --------------------------------------------
    @abc.abstractmethod
    def up(self):
        """Start the lane's services; return self."""

    @abc.abstractmethod
    def down(self):
        """Stop ryll, tear every guest and service down; idempotent,
        never raises over an original failure; keeps the artifacts.
        Returns a report (a dict).
        """

    @abc.abstractmethod
    def _boot(self, image, name, artifact_dir):
        """Boot `image` as guest `name`; return a providers.base.Guest."""

    @abc.abstractmethod
    def console_vv(self, guest, route=None):
        """A fresh .vv for `guest` over `route` (default: the lane's).

        A Kerbside console token lives 60 s, so call it right before ryll
        starts. The text carries a password: never log it.
        """

    def dead_services(self):
        """Lane services (not guests or ryll) that should run but do not."""
        return []

    def _check_up(self):
        """Raise HarnessError when the lane cannot boot guests yet."""

    def _changed(self):
        """The guest or ryll changed (the direct-qemu lane saves state)."""

    def _ryll_started(self, n, rp):
        """ryll number `n` was started (before its socket exists)."""

    def _boot_console(self, index, image, name, artifact_dir):
        """Boot guest `name` on console `index` (0-based) of the lane's
        `consoles`; a lane with several overrides this.
        """
        if index != 0:
            raise errors.HarnessError('this lane has one console, not %d'
                                      % (index + 1))
        return self._boot(image, name, artifact_dir)

    # -- N consoles --------------------------------------------------------
    def console_slots(self):
        """One ConsoleSlot per console of the lane (made once)."""
        with self._slots_lock:
            if self._slots is None:
                self._slots = [ConsoleSlot(self, i)
                               for i in range(self.consoles)]
            return list(self._slots)

    def _stop_slots(self):
        """Stop every slot's ryll and tear its guests down; never raises."""
        for slot in self._slots or []:
            slot.stop_ryll()
            for guest in slot.guests:
                try:
                    guest.teardown()
                except Exception:
                    LOG.exception('tearing down %s failed', guest.name)

    # -- context manager ---------------------------------------------------
    def __enter__(self):
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc):
        self.down()
        return False


class ConsoleSlot(ConsoleHolder):
    """Console `index` (0-based) of a lane with several: its own current
    guest, ryll, timings and a workdir of its own
    (`<lane workdir>/consoles/<index + 1>`, for guests' and ryll's
    directories), the lane's route, redactor, logs and services.

    Guest names must be unique across the lane's slots (the qemu
    registry, QMP sockets and ticket files are named after them).
    """

    def __init__(self, lane, index):
        self.lane = lane
        self.index = index
        self.workdir = os.path.join(lane.workdir, 'consoles',
                                    str(index + 1))
        self._init_console()

    @property
    def route(self):
        return self.lane.route

    @property
    def ryll_binary(self):
        return self.lane.ryll_binary

    @property
    def redactor(self):
        return self.lane.redactor

    @property
    def log_dir(self):
        return self.lane.log_dir

    def _check_up(self):
        self.lane._check_up()

    def _boot(self, image, name, artifact_dir):
        return self.lane._boot_console(self.index, image, name,
                                       artifact_dir)

    def console_vv(self, guest, route=None):
        return self.lane.console_vv(guest, route or self.route)

    def _changed(self):
        self.lane._changed()

    def _ryll_started(self, n, rp):
        self.lane._ryll_started('c%d.%d' % (self.index + 1, n), rp)

    def __repr__(self):
        return '<ConsoleSlot %d of %s>' % (self.index + 1,
                                           self.lane.workdir)


def start_ryll_on(vv_text, ryll_dir, binary, redactor, extra_args=()):
    """Start ryll headless on `vv_text` (a fresh .vv).

    The .vv's password goes to `redactor`; only a redacted copy is kept in
    `ryll_dir`. RyllProcess writes the real one 0600 into its private 0700
    directory, and ryll deletes it after reading (delete-this-file=1).
    Returns the started RyllProcess; the caller waits for its socket.
    """
    os.makedirs(ryll_dir, exist_ok=True)
    redactor.add(common_vv.parse_vv(vv_text).get('password'))
    with open(os.path.join(ryll_dir, 'console.redacted.vv'), 'w') as f:
        f.write(common_vv.redact_vv(vv_text))
    rp = ryll_process.RyllProcess(workdir=ryll_dir, binary=binary,
                                  vv_text=vv_text, extra_args=extra_args)
    rp.start()
    return rp


def stop_ryll_quietly(rp):
    """Stop a RyllProcess (or None); log, never raise."""
    if rp is None:
        return
    try:
        rp.stop()
    except Exception:
        LOG.exception('stopping ryll failed')

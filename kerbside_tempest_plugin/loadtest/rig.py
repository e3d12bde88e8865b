"""Bringing the latency guest up on each route, with a ryll and a client.

SPICE (qemu's spice-server) serves one client at a time, so the two routes
cannot share one guest: each route gets its own lane, its own copy of the
latency guest and its own ryll:

- ``kerbside``: a full `lane.Lane` (private MariaDB, Kerbside API, daemon
  and proxy with a static source) and ryll through the proxy;
- ``direct``: a `lane.Lane(kerbside=False)` and ryll straight to qemu.

Both guests are the same image with the same qemu command line, booted at
the same time; the loadtest alternates the routes sample by sample so what
the machine does to one it does to the other.

With `capture_dir` (``--packets``) the kerbside lane's proxy talks plain
SPICE to qemu and dumpcap records both of its legs while the keys are
pressed (`loadtest.packets`); with `load_consoles` N (``--load-consoles``)
that lane holds 1 + N consoles behind its one proxy and the N others are
keyed all along (`start_load`).

Lane workdirs live in a private temporary directory (their ``secrets/``
must never become an artifact); after teardown the logs are copied into
the run's output directory and the workdir is removed.
"""

import logging
import os
import shutil
import tempfile
import threading
import time

from kerbside_tempest_plugin.loadtest import fake as fake_ryll
from kerbside_tempest_plugin.loadtest import sampler

LOG = logging.getLogger(__name__)

BANNER = r'ready: waiting for keys'
# Files and directories from a lane workdir that are never copied out.
_NO_COPY = ('secrets', 'run', '*.sock', 'overlay.qcow2', 'OVMF_VARS.fd',
            '*.vv')


class Route:
    """One route's parts: lane, guest, ryll, control client, session."""

    def __init__(self, name):
        self.name = name
        self.lane = None
        self.guest = None
        self.ryll = None
        self.client = None
        self.session = None
        self.fake = None
        self.slot = None
        self.workdir = None
        self.timings = {}

    def alive(self):
        """None while ryll and the guest run; else what has gone."""
        rp = self.ryll
        if rp is not None:
            rc = rp.returncode
            if rc is not None:
                return 'ryll exited with status %s' % rc
        g = self.guest
        if g is not None and not g.is_running():
            return 'the guest (qemu %s) stopped with status %s' % (
                g.name, getattr(g, 'returncode', '?'))
        return None

    def explain(self):
        """Lane services that have died (MariaDB, the Kerbside API,
        daemon or proxy), for a timeout's note; None when all run.
        """
        dead = self.lane.dead_services() if self.lane is not None else None
        return 'lane services down: %s' % '; '.join(dead) if dead else None


def _connect(path, timeout, name):
    from kerbside_tempest_plugin.ryll import client as ryll_client
    c = ryll_client.ControlClient(path, client_name='kerbside-latency-%s'
                                  % name)
    c.connect(timeout=timeout)
    return c


def _close_client(r):
    """Detach the console session and close the control client of `r` (a
    route or a load console); never raises.
    """
    try:
        if r.session is not None:
            r.session.detach()
        if r.client is not None:
            r.client.close()
    except Exception:
        LOG.exception('closing the control client of %s', r.name)


class Rig:
    """All routes of one loadtest run. Use `up()` then (always) `down()`.
    """

    def __init__(self, routes, image, out_dir, accel='auto',
                 boot_timeout=120, ryll_binary='ryll', kerbside_venv=None,
                 keep_workdir=False, say=None, hypervisor_tls=True,
                 capture_dir=None, load_consoles=0, load_gap=0.1):
        self.route_names = list(routes)
        self.image = image
        self.out_dir = out_dir
        self.accel = accel
        self.boot_timeout = boot_timeout
        self.ryll_binary = ryll_binary
        self.kerbside_venv = kerbside_venv
        self.keep_workdir = keep_workdir
        self.say = say or LOG.info
        # --packets: the proxy's leg to qemu in plain SPICE, and dumpcap
        # on both legs of the kerbside route (loadtest.packets).
        self.hypervisor_tls = hypervisor_tls
        self.capture_dir = capture_dir
        self.capture = None
        self.capture_ports = None
        self.capture_stats = None
        # Load: more consoles through the kerbside route's one proxy
        # (Lane(consoles=1 + N)), each a latency guest whose ryll gets a
        # key every `load_gap` seconds while the routes are measured.
        self.load_consoles = int(load_consoles or 0)
        self.load_gap = load_gap
        self.load = []              # Route per load console
        self._load_threads = []
        self._load_stop = threading.Event()
        self.routes = [Route(n) for n in self.route_names]
        self.base = None
        self.teardown_reports = {}
        self.scrubbed = {}

    def up(self):
        from kerbside_tempest_plugin.lane import lane as lane_mod
        self.base = tempfile.mkdtemp(prefix='ktp-latency-')
        if self.load_consoles and 'kerbside' not in self.route_names:
            raise ValueError('load consoles need the kerbside route')
        for r in self.routes:
            t = time.monotonic()
            r.workdir = os.path.join(self.base, r.name)
            kwargs = {}
            if r.name == 'kerbside' and self.load_consoles:
                kwargs['consoles'] = 1 + self.load_consoles
            r.lane = lane_mod.Lane(
                workdir=r.workdir, route=r.name,
                kerbside=(r.name == 'kerbside'),
                kerbside_venv=self.kerbside_venv,
                ryll_binary=self.ryll_binary, accel=self.accel,
                hypervisor_tls=self.hypervisor_tls, **kwargs)
            self.say('route %s: starting its lane%s' % (
                r.name, ' (MariaDB + Kerbside)' if r.name == 'kerbside'
                else ' (qemu only)'))
            r.lane.up()
            r.timings['lane_up_s'] = time.monotonic() - t
        # Boot every guest first, then wait for the banners together.
        for r in self.routes:
            r.timings['boot_started'] = time.monotonic()
            r.guest = r.lane.boot_guest(self.image,
                                        name='latency-%s' % r.name)
        self._boot_load()
        for r in self.load:
            r.guest.serial.wait_for(BANNER, self.boot_timeout)
        for r in self.routes:
            r.guest.serial.wait_for(BANNER, self.boot_timeout)
            r.timings['qemu_to_ready_s'] = \
                time.monotonic() - r.timings.pop('boot_started')
            self.say('route %s: guest ready after %.1f s (accel %s)' % (
                r.name, r.timings['qemu_to_ready_s'], r.guest.accel))
        self._start_capture()
        for r in self.routes:
            t = time.monotonic()
            r.ryll = r.lane.start_ryll(r.guest, r.name, timeout=30)
            r.client = _connect(r.ryll.socket_path, 15, r.name)
            # A surface, then the inputs channel: a key sent before it
            # links is lost, which would read as a timeout sample.
            r.ryll.wait_ready(r.client, timeout=30)
            r.timings['ryll_to_spice_ready_s'] = time.monotonic() - t
            r.session = sampler.RouteSession(r.name, r.client,
                                             alive=r.alive,
                                             explain=r.explain)
            r.session.attach()
            self.say('route %s: ryll connected in %.2f s' % (
                r.name, r.timings['ryll_to_spice_ready_s']))
        for r in self.load:
            r.ryll = r.slot.start_ryll(r.guest, 'kerbside', timeout=30)
            r.client = _connect(r.ryll.socket_path, 15, r.name)
            r.ryll.wait_ready(r.client, timeout=30)
            r.session = sampler.RouteSession(r.name, r.client,
                                             alive=r.alive)
            r.session.attach()
        if self.load:
            self.say('%d load consoles connected through the same proxy'
                     % len(self.load))
        return self

    def _boot_load(self):
        if not self.load_consoles:
            return
        lane = next(r.lane for r in self.routes if r.name == 'kerbside')
        for slot in lane.console_slots()[1:]:
            r = Route('load-%d' % (slot.index + 1))
            r.slot = slot
            r.guest = slot.boot_guest(self.image, name='latency-%s' % r.name)
            self.load.append(r)

    def start_load(self):
        """Press keys on every load console until `stop_load()`."""
        def run(r):
            i = 0
            while not self._load_stop.is_set():
                try:
                    r.session.measure(i, deadline_s=5.0, hold_s=0.05,
                                      quiet_s=0.05)
                except sampler.RouteDead as e:
                    r.session.dead = str(e)
                    return
                except Exception as e:
                    r.session.dead = '%s: %s' % (type(e).__name__, e)
                    return
                i += 1
                self._load_stop.wait(self.load_gap)
        for r in self.load:
            t = threading.Thread(target=run, args=(r,), daemon=True,
                                 name='kerbside-latency-%s' % r.name)
            t.start()
            self._load_threads.append(t)

    def stop_load(self):
        self._load_stop.set()
        for t in self._load_threads:
            t.join(timeout=10)
        self._load_threads = []

    def load_summary(self):
        """Keypress-to-screen of the load consoles (while measuring)."""
        from kerbside_tempest_plugin.loadtest import report
        return {r.name: report.route_summary(r.session)
                for r in self.load if r.session is not None}

    def _start_capture(self):
        if self.capture_dir is None:
            return
        from kerbside_tempest_plugin.loadtest import packets
        r = next((r for r in self.routes if r.name == 'kerbside'), None)
        if r is None:
            raise ValueError('capturing packets needs the kerbside route')
        ports = r.lane.ports
        self.capture_ports = {'proxy': ports['proxy_secure'],
                              'qemu': ports['guest_spice']}
        self.capture = packets.Capture(
            os.path.join(self.capture_dir, 'kerbside-legs.pcapng'),
            self.capture_ports.values())
        self.capture.start()
        self.say('capturing both legs of the kerbside route on lo (ports '
                 '%(proxy)d and %(qemu)d)' % self.capture_ports)

    def stop_capture(self):
        """Stop dumpcap (idempotent); returns its stats or None."""
        if self.capture is not None and self.capture_stats is None:
            self.capture_stats = self.capture.stop()
        return self.capture_stats

    def sessions(self):
        return [r.session for r in self.routes if r.session is not None]

    def info(self):
        out = {}
        for r in self.routes:
            info = {'timings': {k: round(v, 3) for k, v in
                                r.timings.items()}}
            if r.guest is not None:
                info['accel'] = r.guest.accel
                info['accel_reason'] = r.guest.accel_reason
            if r.client is not None:
                info['ryll_protocol'] = r.client.protocol_version
            out[r.name] = info
        return out

    def down(self):
        """Close clients, stop ryll, tear the lanes down, copy logs out.
        Never raises; returns the lanes' teardown reports.
        """
        try:
            self.stop_load()
            self.stop_capture()
        except Exception:
            LOG.exception('stopping the load or the packet capture')
        for r in self.load:
            _close_client(r)
        for r in reversed(self.routes):
            _close_client(r)
            if r.lane is not None:
                try:
                    self.teardown_reports[r.name] = r.lane.down()
                except Exception as e:
                    LOG.exception('tearing down the %s lane', r.name)
                    self.teardown_reports[r.name] = {'error': repr(e)}
        if self.base is not None:
            for r in self.routes:
                if r.workdir and os.path.isdir(r.workdir):
                    dst = os.path.join(self.out_dir, 'lanes', r.name)
                    _copy_logs(r.workdir, dst)
                    self.scrubbed[r.name] = _scrub(dst, r.lane)
            if self.keep_workdir:
                self.say('lane workdirs kept in %s (holds secrets/)'
                         % self.base)
            else:
                shutil.rmtree(self.base, ignore_errors=True)
        return self.teardown_reports


class FakeRig:
    """Routes backed by instant fake control sockets (`fake.FakeRyll`):
    the whole pipeline without qemu, Kerbside or ryll, for tests and for a
    dry run. `delays` maps route name -> draw delay in seconds.
    """

    def __init__(self, routes, delays=None, fake_kwargs=None, say=None):
        self.route_names = list(routes)
        self.delays = delays or {}
        self.fake_kwargs = fake_kwargs or {}
        self.say = say or LOG.info
        self.routes = [Route(n) for n in self.route_names]
        self.teardown_reports = {}

    def up(self):
        for r in self.routes:
            kwargs = dict(self.fake_kwargs.get(r.name, {}))
            kwargs.setdefault('draw_delay_s', self.delays.get(r.name, 0.0))
            r.fake = fake_ryll.FakeRyll(**kwargs).start()
            r.client = _connect(r.fake.path, 10, r.name)
            r.session = sampler.RouteSession(r.name, r.client)
            r.session.attach()
        return self

    def sessions(self):
        return [r.session for r in self.routes if r.session is not None]

    def info(self):
        return {r.name: {'fake': True, 'draw_delay_s':
                         self.delays.get(r.name, 0.0)} for r in self.routes}

    def down(self):
        for r in reversed(self.routes):
            try:
                if r.client is not None:
                    r.client.close()
            finally:
                if r.fake is not None:
                    r.fake.stop()
        return self.teardown_reports


def _scrub(root, lane):
    """Redact the lane's known secrets in copied logs (a safety net: the
    lane scrubs its own workdir at teardown). Returns the files changed.
    """
    redactor = lane.redactor if lane is not None else None
    if redactor is None or not os.path.isdir(root):
        return []
    try:
        from kerbside_tempest_plugin.common import secrets as common_secrets
        return [os.path.relpath(p, root)
                for p in common_secrets.scrub_tree(root, redactor)]
    except Exception:
        LOG.exception('scrubbing %s failed', root)
        return []


def _copy_logs(src, dst):
    try:
        shutil.copytree(src, dst, dirs_exist_ok=True, symlinks=True,
                        ignore=shutil.ignore_patterns(*_NO_COPY))
    except Exception:
        LOG.exception('copying the logs of %s failed', src)

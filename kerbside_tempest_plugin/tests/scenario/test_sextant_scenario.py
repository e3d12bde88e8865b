"""The Sextant scenario: a SPICE console end to end, judged by two oracles.

Each test boots a fresh Uncalibrated Sextant guest through the configured
provider, connects the real ryll client to its console over the configured
route (through the Kerbside proxy, or straight to the hypervisor), drives
it over ryll's control socket, and judges it by the QR visual digest the
guest paints (decoded on the host from ryll's screenshots, continuously)
and by the event log it drains to serial when it powers off.

The heavy lifting lives in kerbside_tempest_plugin.scenario (no tempest
there); this module only wires configuration, the lane and the verdict.
Nothing heavy is imported at module level, so `tempest run` discovery
never depends on zxing-cpp, qemu.qmp or a lane being installed.

The four walks are laid out in two classes of two (canonical + retry,
wrong paste + display mode; about the same walk time each), because
stestr, under `tempest run`, keeps a class's tests on one worker (its
group_regex groups by class). Each class brings its own lane up in its
own workdir (ports, run directory, guests, ryll sockets), so with
`tempest run --concurrency 2` each worker has one lane of its own; run
serially, the two lanes follow each other (docs/plans/
soak-and-concurrency.md).

Issue 20 (docs/plans/fast-feedback.md): on direct_qemu each lane boots
its first guest cold, saves it at Awaiting and restores every later
test's guest from that save ($KTP_GUEST_RESTORE, default on); and the
classes of one worker whose lanes would be the same (same route, same
lane settings) share one lane ($KTP_LANE_PER_WORKER, default on): the
first class brings it up, the worker tears it down when it exits (or on
a signal; its reaper after a crash).
"""

import atexit

import functools
import os
import tempfile

from oslo_log import log as logging
from tempest import config
from tempest.lib import decorators
from tempest import test

CONF = config.CONF
LOG = logging.getLogger(__name__)
LANE_PER_WORKER_ENV = 'KTP_LANE_PER_WORKER'
# This worker's shared direct-qemu lanes: key -> (lane, image).
_WORKER_LANES = {}


def artifact_root():
    return os.path.abspath(CONF.kerbside.artifact_dir or 'artifacts')


class SextantScenarioBase(test.BaseTestCase):
    """Sextant walks on a fresh guest each, over the configured route.

    The base of the scenario classes (it holds no test itself).

    Common steps of every walk (each wait has a deadline of
    [kerbside] step_timeout and its timeout says what it saw):

    1. Boot a fresh guest through [kerbside] provider (direct_qemu, nova
       or shakenfist) from [sextant] image (direct_qemu: else
       SEXTANT_IMAGE, else the bundled guest, built into the user's cache)
       and wait for the serial banner.
    2. Start ryll headless on a fresh .vv for [kerbside] route; connect to
       its control socket, subscribe to surface_drawn and the paste
       events, and wait for a SPICE surface.
    3. Capture digests continuously: every burst of surface_drawn events
       triggers a screenshot of ryll's surface mirror, which is decoded;
       each new frame counter is kept with its capture time.
    4. Walk the beats (keys as explicit down then up; pastes at [sextant]
       paste_char_delay_ms per character, Enter only after
       paste_completed); each beat waits for a digest showing its record.
    5. The final Enter in Parked: the guest drains its event ring to
       serial and powers off; ryll exits (EOF on the control socket is
       expected). Read the drain up to type=refresh_stats.
    6. Judge: the drain holds the walk's ordered sequence, its t never
       decreases, refresh_stats is present; the CRC32C channel chains
       replayed from the drain equal the last digest's hashes (less the
       events after it); the framebuffer hash recomputed on the host
       matches (the quiescent screens within a few captures); frame
       counters strictly increase; capture fidelity is reported.
    7. Teardown always runs; the artifact directory (beat PNGs,
       digests.jsonl, logs, report.md) is printed and kept.
    """

    # direct_qemu and shakenfist need no Keystone users; nova needs a member
    # (boot, ask for the console) and an admin (resolve console tokens).
    # Chosen in skip_checks, before tempest provisions credentials.
    credentials = []

    @classmethod
    def skip_checks(cls):
        if CONF.kerbside.provider == 'nova':
            cls.credentials = ['primary', 'admin']
        super().skip_checks()
        if not CONF.service_available.kerbside:
            raise cls.skipException(
                'the Kerbside console lane is not configured: set '
                '[service_available] kerbside = True (and [kerbside] '
                'provider and route) to run the Sextant scenario')
        if (CONF.kerbside.provider == 'nova'
                and not CONF.service_available.nova):
            raise cls.skipException(
                '[kerbside] provider = nova but [service_available] nova '
                'is False')

    @classmethod
    def resource_setup(cls):
        super().resource_setup()
        cls.route = CONF.kerbside.route
        cls.artifact_root = artifact_root()
        lanes = os.path.join(cls.artifact_root, 'lanes')
        os.makedirs(lanes, exist_ok=True)
        if CONF.kerbside.provider == 'direct_qemu' and cls._worker_lane():
            return
        # One workdir per lane: the class name in it (the first class's,
        # for a worker's shared lane) tells the lanes apart.
        workdir = tempfile.mkdtemp(
            prefix='%s-%s-' % (cls.route, cls.__name__), dir=lanes)
        if CONF.kerbside.provider == 'direct_qemu':
            cls._direct_qemu_lane(workdir)
        else:
            cls._cloud_lane(workdir)

    @classmethod
    def _lane_kwargs(cls):
        """Extra lane.Lane keyword arguments of a class (none here)."""
        return {}

    @classmethod
    def _direct_qemu_kwargs(cls):
        """lane.Lane keywords of this class's direct-qemu lane.

        Boot once, restore per test ($KTP_GUEST_RESTORE, default on):
        a lane's first guest boots cold and is saved at Awaiting before
        anything touches it; its later guests are restored from that
        save (docs/plans/fast-feedback.md).
        """
        from kerbside_tempest_plugin.tests.scenario import guest_restore
        kwargs = guest_restore.lane_kwargs()
        kwargs.update(cls._lane_kwargs())
        return kwargs

    @classmethod
    def _worker_key(cls):
        """What makes two classes' lanes the same lane (None: sharing is
        off, $KTP_LANE_PER_WORKER=0).
        """
        from kerbside_tempest_plugin.lane import lane as lane_mod
        if not lane_mod.env_flag(LANE_PER_WORKER_ENV, True):
            return None
        kwargs = cls._direct_qemu_kwargs()
        return (cls.route, tuple(sorted(
            (k, getattr(v, '__qualname__', None) or repr(v))
            for k, v in kwargs.items())))

    @classmethod
    def _worker_lane(cls):
        """Take this worker's lane with the same settings, when an
        earlier class left one up and healthy. Returns whether it did.
        """
        key = cls._worker_key()
        # One shared lane at a time: another settings' lane (the classes
        # before this one, in test-id order) is not needed again.
        _down_worker_lanes(keep=key)
        held = _WORKER_LANES.get(key) if key else None
        if held is None:
            return False
        lane, image = held
        if not lane._up or lane.dead_services():
            LOG.warning('the worker\'s %s lane in %s is not usable (%s): '
                        'a new one', cls.route, lane.workdir,
                        lane.dead_services() or 'down')
            _WORKER_LANES.pop(key, None)
            return False
        cls.lane, cls.image, cls._shared_key = lane, image, key
        cls.addClassResourceCleanup(cls._lane_release)
        LOG.info('%s uses this worker\'s %s lane in %s', cls.__name__,
                 cls.route, lane.workdir)
        return True

    @classmethod
    def _direct_qemu_lane(cls, workdir):
        # Imported here, not at module level: discovery must never need
        # the lane's dependencies.
        from kerbside_tempest_plugin.lane import lane as lane_mod

        key = cls._worker_key()
        cls.lane = lane_mod.Lane.from_config(
            CONF, workdir=workdir, route=cls.route,
            kerbside=cls.route == 'kerbside', **cls._direct_qemu_kwargs())
        cls._shared_key = key
        # Registered before up(): a lane that fails half-way is still
        # torn down (tempest runs class cleanups from tearDownClass).
        cls.addClassResourceCleanup(cls._lane_release if key
                                    else cls._lane_down)
        cls._down_on_signal(functools.partial(_crash_safe_down, cls.lane))
        LOG.info('bringing the %s lane up in %s', cls.route, workdir)
        cls.lane.up()
        # [sextant] image, else SEXTANT_IMAGE, else the bundled guest.
        from kerbside_tempest_plugin import guest_images
        cls.image = guest_images.sextant_image(
            CONF.sextant.image, log_dir=os.path.join(workdir, 'logs'))
        if key:
            if not _WORKER_LANES:
                atexit.register(_down_worker_lanes)
            _WORKER_LANES[key] = (cls.lane, cls.image)

    @classmethod
    def _lane_release(cls):
        """A class's cleanup of a worker's shared lane: its last guest
        and ryll go; the lane stays up for the worker's next class with
        the same settings, unless it is not healthy.
        """
        lane = cls.lane
        held = _WORKER_LANES.get(cls._shared_key)
        if held is None or held[0] is not lane or not lane._up or \
                lane.dead_services():
            _WORKER_LANES.pop(cls._shared_key, None)
            cls._lane_down()
            return
        lane.stop_ryll()
        if lane.guest is not None:
            lane.guest.teardown()
        LOG.info('%s done; the %s lane in %s stays up for this worker',
                 cls.__name__, cls.route, lane.workdir)

    @classmethod
    def _cloud_lane(cls, workdir):
        # The cloud runs Kerbside and the hypervisor; the provider boots
        # the guest and hands out its .vv and serial; ryll runs here.
        from kerbside_tempest_plugin.lane import provider_lane
        from kerbside_tempest_plugin.providers import factory

        kw = {}
        if CONF.kerbside.provider == 'nova':
            kw = dict(servers_client=cls.os_primary.servers_client,
                      admin_servers_client=cls.os_admin.servers_client,
                      images_client=cls.os_primary.image_client_v2)
        provider = factory.provider_from_config(CONF, **kw)
        cls.lane = provider_lane.ProviderLane(
            provider, workdir, route=cls.route,
            ryll_binary=CONF.kerbside.ryll_binary)
        cls.addClassResourceCleanup(cls._lane_down)
        cls._down_on_signal(cls.lane.down)
        # None lets the provider use its configured image reference.
        cls.image = CONF.sextant.image

    @classmethod
    def _down_on_signal(cls, teardown):
        """A SIGTERM, SIGINT or SIGHUP to this worker (a CI job's timeout,
        Ctrl-C, tools/direct-qemu-job.sh passing one on) runs `teardown`
        and drops the lane's secrets, then the worker dies of the signal
        (common.signals.tear_down_on). Only from the main thread, where
        tempest sets classes up; elsewhere the signal does what it always
        did and the lane's reaper tears a direct-qemu lane down.
        _lane_down() undoes it.
        """
        from kerbside_tempest_plugin.common import signals
        workdir = cls.lane.workdir

        def down():
            teardown()
            _drop_secrets(workdir)
        # keyed by the lane: a worker's shared lane is one owner
        signals.tear_down_on(cls.lane, down, 'the %s lane of %s in %s' % (
            cls.route, cls.__name__, workdir))

    @classmethod
    def _lane_down(cls):
        from kerbside_tempest_plugin.common import signals
        # A signal during the teardown waits for its end; then, the
        # handlers put back, it does what it does by default.
        with signals.shielded():
            report = cls.lane.down()
            _drop_secrets(cls.lane.workdir)
            signals.forget(cls.lane)
        LOG.info('lane down: %s', report)

    def _walk(self, walk):
        from kerbside_tempest_plugin.scenario import evidence
        from kerbside_tempest_plugin.scenario import runner
        result = runner.run_scenario(
            self.lane, walk, self.route, self.image, self.artifact_root,
            step_timeout=CONF.kerbside.step_timeout,
            boot_timeout=CONF.kerbside.boot_timeout,
            drain_timeout=CONF.kerbside.step_timeout,
            paste_secret=CONF.sextant.paste_secret,
            char_delay_ms=CONF.sextant.paste_char_delay_ms,
            log=LOG.info,
            evidence=evidence.EvidenceOptions.from_conf(CONF.kerbside))
        report = os.path.join(result.artifact_dir, 'report.md')
        print('artifacts: %s\nreport: %s (%s)\n%s' % (
            result.artifact_dir, report,
            os.path.join(result.artifact_dir, 'report.html'),
            result.summary_line()))
        self.addDetail('sextant-artifacts', _text(
            '%s\n%s' % (result.artifact_dir, result.summary_line())))
        if not result.passed:
            self.fail(result.failure_message())
        return result


class SextantScenarioTest(SextantScenarioBase):
    """The canonical walk and the Retry path, on one lane."""

    @decorators.idempotent_id('5bc6359c-429f-4410-8ca3-f23c70562e87')
    def test_sextant_canonical_walk(self):
        """The canonical walk (contract section 4.3).

        Awaiting; Enter -> scene_transition awaiting->booting; the 19 boot
        lines and the bootloader prompt (line_rendered row 21); `i` ->
        bootloader_decision ignore attempt 1; paste sextant{HELLO_OPERATOR}
        and Enter -> paste_received correct=true len=23; booting->parked;
        Enter powers off; then every check.
        """
        self._walk('canonical')

    @decorators.idempotent_id('8a288479-dff6-4033-a6e7-c7207185db8e')
    def test_sextant_retry_path(self):
        """The Retry path: decision attempts count up.

        At the bootloader prompt press `r` twice (bootloader_decision retry
        attempt 1, then 2; each time the retry animation runs and the
        prompt is re-rendered), then `i` (ignore, attempt 3), then the
        paste and Parked as in the canonical walk.
        """
        self._walk('retry')


class SextantScenarioVariantsTest(SextantScenarioBase):
    """A wrong paste and a display-mode key, on a lane of their own (a
    second worker's, under `tempest run --concurrency 2`).
    """

    @decorators.idempotent_id('79c0f5b0-3f3b-42fa-b43a-ec8bb28372d8')
    def test_sextant_wrong_paste_then_right(self):
        """A wrong paste, then the right one.

        As the canonical walk, but first paste a wrong payload: the digest
        shows paste_received correct=false with its length and the attempt
        indicator (line_rendered row 26); then the right paste is accepted
        and the drain holds both pastes in order.
        """
        self._walk('wrong_paste')

    @decorators.idempotent_id('284cc1cb-cc4c-4a27-9a47-cb3e918e5ebb')
    def test_sextant_mode_key_1280x720(self):
        """A display-mode key: the QR moves and the decoder follows.

        In Awaiting press `4`: keypress and mode_switch to 1280x720; the
        screen and the QR move (origin 1084,508) and decoding continues at
        the new size, past the toast repaint; then the canonical walk at
        1280x720, with keypress `4` and the mode_switch first in the drain.
        """
        self._walk('mode_switch')


def _down_worker_lanes(keep=None):
    """This worker's shared lanes down (but the one of key `keep`), as
    a class's cleanup takes its own lane down: at exit (atexit), and
    when a class needs a lane of other settings. Never raises.
    """
    from kerbside_tempest_plugin.common import signals
    for key in [k for k in _WORKER_LANES if k != keep]:
        lane, _image = _WORKER_LANES.pop(key)
        try:
            with signals.shielded():
                lane.down()
                _drop_secrets(lane.workdir)
                signals.forget(lane)
        except Exception:
            LOG.exception('taking the worker lane in %s down failed',
                          lane.workdir)


def _crash_safe_down(lane):
    """A direct-qemu lane's teardown on a signal: the crash-safe one (what
    its reaper would run), not lane.down(), since the signal may have
    stopped this worker anywhere, holding any lock of the lane's; then
    the reaper is stopped, as down() stops it, so none outlives the
    worker.
    """
    from kerbside_tempest_plugin.lane import lane as lane_mod
    lane_mod.teardown_workdir(lane.workdir)
    lane.leave_running()


def _drop_secrets(workdir):
    """The lane's secrets (ticket, JWT, DB datadir) must not outlive it
    inside the artifact tree.
    """
    import shutil
    shutil.rmtree(os.path.join(workdir, 'secrets'), ignore_errors=True)


def _text(text):
    from testtools import content
    return content.text_content(text)

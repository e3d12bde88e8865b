"""Fixtures for integration tests that boot real guests under qemu.

`qemu_guest` is a factory: `qemu_guest(image)` boots a UEFI guest through
the direct-qemu provider (providers.direct_qemu.DirectQemuProvider, the
one qemu launcher: q35, OVMF 4M, QXL, AHCI disk through a throwaway
overlay, -no-reboot, QMP), here under TCG and without a SPICE server, and
returns a `QemuGuest`: the provider's guest plus the waits a test wants
(serial text, exit) failing as test failures. Keys go in through the
provider's QMP send-key (`send_key_qmp`), named as sextant.keys names
them. Every guest is torn down by the provider in teardown.
`sextant_image` is the Sextant-compatible image: the SEXTANT_IMAGE
environment variable (a real Sextant qcow2 or raw image) or the bundled
guest, built when missing (kerbside_tempest_plugin.guest_images).

Waits always have a deadline and fail with what was awaited and what was
seen (serial tail, last digest).
"""

import os
import pathlib
import re
import time

import pytest

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import logtext
from kerbside_tempest_plugin.providers import direct_qemu
from kerbside_tempest_plugin.sextant import keys
from unit_tests.conftest import require_tools

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


class WaitTimeout(errors.HarnessTimeout, AssertionError):
    """A guest test's wait ran out: the one timeout class (HarnessTimeout),
    and a test failure (AssertionError).
    """


class QemuGuest:
    """One guest booted by its own DirectQemuProvider (TCG; no SPICE unless
    asked: `spice=True`, `ticketing=`, `ticket=` go to the provider).
    `q` is the provider's DirectQemuGuest; this adds the test's waits.
    """

    def __init__(self, image, workdir, name='guest', memory_mb=256,
                 accel='tcg', spice=False, **provider_options):
        self.name = name
        self.workdir = pathlib.Path(workdir)
        self._shots = 0
        try:
            self.provider = direct_qemu.DirectQemuProvider(
                accel=accel, memory_mb=memory_mb, spice=spice,
                **provider_options)
        except errors.ProviderError as e:
            pytest.fail('%s (install ovmf)' % e)
        try:
            self.q = self.provider.boot(image and str(image), name,
                                        str(self.workdir))
        except BaseException:
            self.provider.close()
            raise
        self.serial_path = pathlib.Path(self.q.serial_path)
        # Fixed once booted: the provider's Popen, command line and port.
        self.proc, self.argv = self.q.proc, self.q.argv
        self.spice_port = self.q.spice_port

    # -- process (the provider's) -----------------------------------------
    @property
    def alive(self):
        return self.q.is_running()

    def qemu_log(self):
        return logtext.tail_file(self.q.log_path, 30)

    def wait_exit(self, timeout):
        """Wait for qemu to exit by itself; returns its exit code."""
        try:
            return self.q.wait_stopped(timeout)
        except errors.HarnessTimeout:
            raise WaitTimeout(
                '%s: qemu still running after %.0f s; serial tail:\n%s'
                % (self.name, timeout, self.serial_tail())) from None

    def kill(self):
        """Tear the guest down (the provider's teardown: QMP quit, then
        SIGTERM/SIGKILL); idempotent.
        """
        self.provider.close()

    # -- keys and frames over QMP ------------------------------------------
    def send_key(self, key, hold_ms=None):
        """Press one key: a sextant.keys name or character (`Enter`,
        `space`, `i`, `A`; Shift is held for a shifted character).
        """
        chord = (keys.chords(key)[0] if len(key) == 1
                 else (keys.scancode(key),))
        self.q.send_key_qmp(*chord, hold_ms=hold_ms)

    def type_text(self, text, delay=0.08):
        """Type characters one by one, `delay` s apart."""
        self.q.send_keys_qmp(keys.chords(text), delay)

    def screendump(self, path=None):
        """A lossless PNG of the guest screen; returns the path."""
        if path is None:
            self._shots += 1
            path = self.workdir / ('shot-%04d.png' % self._shots)
        return pathlib.Path(self.q.screendump(str(path)))

    # -- serial -----------------------------------------------------------
    def serial_text(self):
        try:
            return self.serial_path.read_bytes().decode('utf-8', 'replace')
        except OSError:
            return ''

    def serial_tail(self, n=1200):
        return self.serial_text()[-n:]

    def wait_serial(self, pattern, timeout, what=None, count=1):
        """Wait until the serial log matches `pattern` (a regex) `count`
        times.
        """
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while len(rx.findall(self.serial_text())) < count:
            if time.monotonic() >= deadline:
                raise WaitTimeout(
                    '%s: waited %.0f s for %s; qemu %s; serial tail:\n%s'
                    % (self.name, timeout,
                       what or 'serial text %r x%d' % (pattern, count),
                       'running' if self.alive else
                       'exited %s' % self.proc.returncode,
                       self.serial_tail()))
            time.sleep(0.1)


@pytest.fixture
def qemu_guest(tmp_path):
    """Factory: qemu_guest(image, name='guest', **options) -> QemuGuest.

    Each guest gets its own directory under tmp_path (overlay, OVMF vars,
    serial log, qemu log, screendumps; the QMP socket is in the provider's
    short run directory) and is torn down at teardown.
    """
    require_tools('qemu-system-x86_64', 'qemu-img')
    guests = []

    def boot(image, name='guest', **kwargs):
        guest = QemuGuest(image, tmp_path / name, name=name, **kwargs)
        guests.append(guest)
        return guest

    yield boot
    for guest in reversed(guests):
        guest.kill()    # the provider's teardown never raises


@pytest.fixture(scope='session')
def sextant_image():
    """The Sextant(-compatible) image the guest tests boot, resolved as
    every caller resolves it (guest_images): SEXTANT_IMAGE points at a real
    Sextant image; otherwise the bundled guest, built when missing.
    """
    from kerbside_tempest_plugin.common import errors
    from kerbside_tempest_plugin import guest_images
    try:
        return pathlib.Path(guest_images.sextant_image())
    except errors.HarnessError as e:
        pytest.fail(str(e))


class DigestWatcher:
    """Screendumps of one guest decoded as visual digests (contract §1, §2).

    `capture()` returns a FrameAnalysis or None (no QR, torn QR, bad
    payload: pitfall 5, retry). `wait_for(predicate, timeout, what)` captures
    until a decoded frame satisfies the predicate. Every decoded frame is
    kept in `frames` (capture order) for later cross-checks.
    """

    def __init__(self, guest, keep_shots=False):
        self.guest = guest
        self.frames = []
        self.undecoded = 0
        self.keep_shots = keep_shots or bool(os.environ.get('KTP_KEEP_SHOTS'))

    @property
    def last(self):
        return self.frames[-1] if self.frames else None

    def capture(self):
        from kerbside_tempest_plugin.digest import errors
        from kerbside_tempest_plugin.digest import frame
        path = self.guest.screendump()
        try:
            analysis = frame.analyse(str(path))
        except errors.DigestError:
            self.undecoded += 1
            return None
        finally:
            if not self.keep_shots:
                self._drop(path)
        self.frames.append(analysis)
        return analysis

    @staticmethod
    def _drop(path):
        try:
            os.unlink(path)
        except OSError:
            pass

    def describe(self):
        last = self.last
        if last is None:
            seen = 'no decodable digest'
        else:
            d = last.digest
            seen = ('last digest: frame %d at %dx%d, events %s, hashes %s, '
                    'fb ok %s' % (d.frame_counter, last.frame_size[0],
                                  last.frame_size[1],
                                  [e.to_json() for e in d.events],
                                  {k: '%08x' % v for k, v in d.hashes.items()},
                                  last.framebuffer_hash_ok))
        return '%d digests decoded, %d captures undecodable; %s' % (
            len(self.frames), self.undecoded, seen)

    def wait_for(self, predicate, timeout, what, interval=0.25):
        deadline = time.monotonic() + timeout
        while True:
            if not self.guest.alive:
                raise WaitTimeout('%s: qemu exited (%s) while waiting for %s; '
                                  '%s; serial tail:\n%s' % (
                                      self.guest.name,
                                      self.guest.proc.returncode, what,
                                      self.describe(),
                                      self.guest.serial_tail()))
            analysis = self.capture()
            if analysis is not None and predicate(analysis):
                return analysis
            if time.monotonic() >= deadline:
                raise WaitTimeout(
                    '%s: waited %.0f s for a digest with %s; %s; serial '
                    'tail:\n%s' % (self.guest.name, timeout, what,
                                   self.describe(), self.guest.serial_tail()))
            time.sleep(interval)

    def framebuffer_hash_matches(self, tries=5, interval=0.3, timeout=60):
        """True when one of `tries` decoded captures has a trailer equal to
        the hash recomputed on the host (pitfall 7: a capture can straddle
        a cursor blink and the QR redraw).
        """
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < tries and time.monotonic() < deadline:
            analysis = self.capture()
            if analysis is not None:
                got.append(analysis)
                if analysis.framebuffer_hash_ok:
                    return analysis
            time.sleep(interval)
        raise AssertionError(
            '%s: no framebuffer hash match in %d decoded captures: %s' % (
                self.guest.name, len(got),
                ['frame %d trailer %08x host %s at %dx%d' % (
                    a.digest.frame_counter, a.digest.framebuffer_hash,
                    '%08x' % a.framebuffer_hash_computed
                    if a.framebuffer_hash_computed is not None else None,
                    a.frame_size[0], a.frame_size[1]) for a in got]))


@pytest.fixture
def digest_watcher():
    """Factory: digest_watcher(guest) -> DigestWatcher."""
    return DigestWatcher


@pytest.fixture(scope='session')
def openstack_cloud(tmp_path_factory):
    """One single-box cloud (lane.openstack.cloud.OpenStackCloud, Kerbside
    in front) for every `openstack` test of the session: bringing one up
    takes 80-130 s here. Torn down at the end of the session, which must
    leave no process, port or temporary directory (asserted). Tests that
    boot servers delete them themselves.
    """
    from kerbside_tempest_plugin.lane.openstack import cloud as os_cloud
    from kerbside_tempest_plugin.lane.openstack import venv as os_venv
    require_tools('qemu-system-x86_64', 'mariadbd', 'libvirtd', 'virtlogd',
                  'epmd', 'memcached', 'unshare', 'openssl', 'ryll')
    problems = os_venv.OpenStackVenv().check()
    if problems:
        pytest.fail('the OpenStack venv is not usable (%s); run '
                    '`kerbside-openstack setup`' % '; '.join(problems))
    # pytest keeps the last few base temp dirs: the logs stay to read.
    workdir = str(tmp_path_factory.mktemp('openstack'))
    c = os_cloud.OpenStackCloud(workdir)
    try:
        c.up(timeout=300)
        yield c
    finally:
        report = c.down()
        assert report['leftover_pids'] == [], report
        assert report['busy_ports'] == [], report
        assert 'left: []' in (report['domains'] or ''), report['domains']
        assert os_cloud.cloud_pids(workdir) == []
        run_dir = os_cloud.load_state(workdir).get('run_dir')
        if run_dir and not run_dir.startswith(workdir):
            assert not os.path.exists(run_dir)
        # No console token or JWT left in any kept log (the secrets/
        # directory is the lane's own, never an artifact).
        from kerbside_tempest_plugin.common import secrets
        leaks = [(os.path.relpath(p, workdir), n)
                 for p, n in secrets.find_token_shapes(workdir)
                 if not p.startswith(os.path.join(workdir, 'secrets') +
                                     os.sep)]
        assert leaks == [], leaks

"""Fixtures for integration tests that boot real guests under qemu.

`qemu_guest` is a factory: `qemu_guest(image)` boots a UEFI guest (q35,
OVMF 4M, TCG, QXL, AHCI disk through a throwaway overlay, -no-reboot) with
a QMP socket and a serial log, and returns a `QemuGuest`. The command line,
the OVMF lookup, the image-format probe and the QMP wrapper are the
direct-qemu provider's (one qemu launcher); this adds only the process
handling and QMP key typing the guest tests need. Every guest is
killed in teardown. `sextant_image` is the Sextant-compatible image: the
SEXTANT_IMAGE environment variable (a real Sextant qcow2 or raw image) or
the bundled guest, built when missing (kerbside_tempest_plugin.guest_images).

Waits always have a deadline and fail with what was awaited and what was
seen (serial tail, last digest).
"""

import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import tools
from kerbside_tempest_plugin.providers import direct_qemu
from unit_tests.conftest import require_tools

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

# QMP qcodes for the characters the tests type (US layout).
_SHIFTED = dict(zip('!@#$%^&*()_+{}:"~|<>?',
                    ['1', '2', '3', '4', '5', '6', '7', '8', '9', '0',
                     'minus', 'equal', 'bracket_left', 'bracket_right',
                     'semicolon', 'apostrophe', 'grave_accent', 'backslash',
                     'comma', 'dot', 'slash']))
_PLAIN = {'-': 'minus', '=': 'equal', '[': 'bracket_left',
          ']': 'bracket_right', ';': 'semicolon', "'": 'apostrophe',
          '`': 'grave_accent', '\\': 'backslash', ',': 'comma', '.': 'dot',
          '/': 'slash', ' ': 'spc', '\n': 'ret', '\r': 'ret'}


def qcodes_for(char):
    """The QMP send-key qcodes that type `char` on a US keyboard."""
    if char in _SHIFTED:
        return ['shift', _SHIFTED[char]]
    if char in _PLAIN:
        return [_PLAIN[char]]
    if char.isascii() and char.isalpha():
        return ['shift', char.lower()] if char.isupper() else [char]
    if char.isascii() and char.isdigit():
        return [char]
    raise ValueError('no qcode for %r' % char)


def ovmf_files():
    try:
        return direct_qemu.find_ovmf()
    except errors.ProviderError as e:
        pytest.fail('%s (install ovmf)' % e)


def terminate(proc, timeout=10):
    """SIGTERM `proc`, then SIGKILL if it is still there after `timeout`;
    always reaps it.
    """
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


class WaitTimeout(errors.HarnessTimeout, AssertionError):
    """A guest test's wait ran out: the one timeout class (HarnessTimeout),
    and a test failure (AssertionError).
    """


class QemuGuest:
    """One qemu process: QMP (a short connection per command), serial log,
    keys, screendumps.
    """

    def __init__(self, image, workdir, name='guest', memory='256M',
                 extra_args=(), accel='tcg'):
        self.name = name
        self.image = str(image)
        self.workdir = pathlib.Path(workdir)
        self.serial_path = self.workdir / 'serial.log'
        self.qmp_path = self.workdir / 'qmp.sock'
        self.log_path = self.workdir / 'qemu.log'
        self.overlay = self.workdir / 'disk.qcow2'
        self._qmp = direct_qemu.QMP(str(self.qmp_path), timeout=20.0)
        self._shots = 0
        code, tmpl = ovmf_files()
        vars_copy = self.workdir / 'OVMF_VARS.fd'
        shutil.copy(tmpl, vars_copy)
        subprocess.run(
            [tools.find('qemu-img'), 'create', '-q', '-f', 'qcow2', '-F',
             direct_qemu.image_format(self.image), '-b',
             os.path.abspath(self.image), str(self.overlay)], check=True)
        # The provider's command line, without a SPICE server.
        self.argv = direct_qemu.build_argv(
            tools.find('qemu-system-x86_64'), name, accel, memory, code,
            vars_copy, self.serial_path, None, None, self.qmp_path,
            overlay=self.overlay, extra_args=extra_args)
        self.started = time.monotonic()
        self._log = open(self.log_path, 'wb')
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self._wait_for(lambda: self.qmp_path.exists() or not self.alive,
                       15, 'the QMP socket %s' % self.qmp_path)
        if not self.alive:
            raise AssertionError('qemu exited at once (%s): %s'
                                 % (self.proc.returncode, self.qemu_log()))

    # -- process ----------------------------------------------------------
    @property
    def alive(self):
        return self.proc.poll() is None

    def qemu_log(self):
        try:
            return self.log_path.read_text(errors='replace')[-2000:]
        except OSError:
            return ''

    def wait_exit(self, timeout):
        """Wait for qemu to exit by itself; returns its exit code."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise WaitTimeout(
                '%s: qemu still running after %.0f s; serial tail:\n%s'
                % (self.name, timeout, self.serial_tail())) from None

    def kill(self):
        if self.alive:
            terminate(self.proc)
        self._log.close()

    # -- QMP --------------------------------------------------------------
    def qmp(self, name, timeout=20.0, **args):
        from qemu.qmp import ExecuteError  # lazy, as in the provider
        try:
            return self._qmp.cmd(name, timeout=timeout, **args)
        except ExecuteError as e:
            raise AssertionError('QMP %s failed: %s' % (name, e)) from None

    def send_key(self, *qcodes, hold_ms=None):
        args = {'keys': [{'type': 'qcode', 'data': q} for q in qcodes]}
        if hold_ms:
            args['hold-time'] = hold_ms
        self.qmp('send-key', **args)

    def type_text(self, text, delay=0.08):
        """Type characters one by one, `delay` s apart (Sextant reads one
        key per 50 ms poll; firmware buffers the rest).
        """
        for ch in text:
            self.send_key(*qcodes_for(ch))
            time.sleep(delay)

    def screendump(self, path=None):
        """A lossless PNG of the guest screen; returns the path."""
        if path is None:
            self._shots += 1
            path = self.workdir / ('shot-%04d.png' % self._shots)
        self.qmp('screendump', filename=str(path), format='png')
        return pathlib.Path(path)

    # -- serial -----------------------------------------------------------
    def serial_text(self):
        try:
            return self.serial_path.read_bytes().decode('utf-8', 'replace')
        except OSError:
            return ''

    def serial_tail(self, n=1200):
        return self.serial_text()[-n:]

    def wait_serial(self, pattern, timeout, what=None):
        """Wait until the serial log matches `pattern` (a regex)."""
        rx = re.compile(pattern)
        self._wait_for(lambda: rx.search(self.serial_text()), timeout,
                       what or 'serial text %r' % pattern)

    def _wait_for(self, predicate, timeout, what, interval=0.1):
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return
            if time.monotonic() >= deadline:
                raise WaitTimeout(
                    '%s: waited %.0f s for %s; qemu %s; serial tail:\n%s'
                    % (self.name, timeout, what,
                       'running' if self.alive else
                       'exited %s' % self.proc.returncode,
                       self.serial_tail()))
            time.sleep(interval)


@pytest.fixture
def qemu_guest(tmp_path):
    """Factory: qemu_guest(image, name='guest', extra_args=()) -> QemuGuest.

    Each guest gets its own directory under tmp_path (overlay, OVMF vars,
    QMP socket, serial log, screendumps) and is killed at teardown.
    """
    require_tools('qemu-system-x86_64', 'qemu-img')
    guests = []

    def boot(image, name='guest', **kwargs):
        workdir = tmp_path / name
        workdir.mkdir(exist_ok=True)
        # unix socket paths are limited to ~107 bytes
        if len(str(workdir / 'qmp.sock')) > 100:
            workdir = pathlib.Path(tempfile.mkdtemp(prefix='qg-'))
        guest = QemuGuest(image, workdir, name=name, **kwargs)
        guests.append(guest)
        return guest

    yield boot
    for guest in reversed(guests):
        try:
            guest.kill()
        except Exception:   # never mask the test's own failure
            pass


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

"""A faster QEMU display refresh: a private X server for qemu's GTK
display, with one monitor that refreshes `hz` times a second.

Why (docs/plans/capture-fidelity.md, "The display refresh"): with
`-vga qxl` in VGA mode (what OVMF's GOP drives), QEMU hands the guest's
framebuffer to spice only from its GUI timer (ui/console.c gui_update ->
spice display_refresh -> qemu_spice_create_update). The timer's period
is the smallest `update_interval` of the display listeners, 30 ms unless
one asks for less (GUI_REFRESH_INTERVAL_DEFAULT). spice asks nothing;
the GTK listener asks for its monitor's refresh period
(ui/gtk.c gd_update_monitor_refresh_rate, min(period, 30 ms)). So a GTK
window on a monitor of `hz` Hz makes every listener, spice included,
refresh every 1000/hz ms. A frame the guest keeps on screen for less
than one refresh (it draws two back to back) then still reaches the
SPICE wire.

The monitor is the Xorg dummy driver with one modeline; nothing is
shown anywhere. It needs Debian's xserver-xorg-core and
xserver-xorg-video-dummy, and qemu's GTK module (qemu-system-gui, the
same qemu version; `QEMU_MODULE_DIR` may point at an unpacked copy).
The guest is not touched: a real Sextant image runs unchanged.
"""

import logging
import os
import shutil
import signal
import socket
import subprocess
import time

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import waiting

LOG = logging.getLogger(__name__)

XORG_CANDIDATES = ('/usr/lib/xorg/Xorg', 'Xorg')
DUMMY_DRIVER = '/usr/lib/xorg/modules/drivers/dummy_drv.so'
ENV_VAR = 'KTP_DISPLAY_REFRESH_HZ'
FIRST_DISPLAY = 90
DISPLAY_TRIES = 20
# One 640x480 mode: the window's size does not matter, only the
# refresh rate GDK reads back (dot clock / (htotal * vtotal)).
HTOTAL, VTOTAL = 800, 525


class RefreshDisplayError(errors.ProviderError):
    """The private X server could not be set up or started."""


def modeline(hz):
    """The Xorg modeline of a 640x480 mode refreshing `hz` times a
    second (dot clock in MHz = hz * htotal * vtotal / 1e6).
    """
    try:
        hz = int(hz)
    except (TypeError, ValueError):
        raise RefreshDisplayError('display refresh %r is not a number of '
                                  'Hz' % (hz,))
    if not 34 <= hz <= 1000:
        raise RefreshDisplayError(
            'display refresh of %r Hz: QEMU only refreshes faster than its '
            '30 ms default for a monitor above 33 Hz; give 34-1000' % hz)
    clock = hz * HTOTAL * VTOTAL / 1e6
    return ('Modeline "640x480_%d" %.3f 640 656 752 %d 480 490 492 %d'
            % (hz, clock, HTOTAL, VTOTAL)), '640x480_%d' % hz


def hz_from_env(env=None):
    """$KTP_DISPLAY_REFRESH_HZ as a checked rate, or 0 (off) when it is
    unset or empty.
    """
    value = (os.environ if env is None else env).get(ENV_VAR, '').strip()
    if not value:
        return 0
    modeline(value)                 # a typed error for a bad value
    return int(value)


def xorg_conf(hz):
    line, name = modeline(hz)
    return '\n'.join([
        'Section "Device"', '    Identifier "dummy"', '    Driver "dummy"',
        '    VideoRam 16384', 'EndSection',
        'Section "Monitor"', '    Identifier "mon"',
        '    HorizSync 1.0-2000.0', '    VertRefresh 1.0-1000.0',
        '    ' + line, 'EndSection',
        'Section "Screen"', '    Identifier "scr"', '    Device "dummy"',
        '    Monitor "mon"', '    DefaultDepth 24',
        '    SubSection "Display"', '        Depth 24',
        '        Modes "%s"' % name, '    EndSubSection', 'EndSection',
        '']) + '\n'


def find_xorg():
    for c in XORG_CANDIDATES:
        path = c if os.sep in c else shutil.which(c)
        if path and os.access(path, os.X_OK):
            return path
    return None


def missing(qemu_binary='qemu-system-x86_64', env=None):
    """What is missing for the fast refresh, as readable strings (empty
    when everything is there).
    """
    out = []
    if find_xorg() is None:
        out.append('Xorg not found (apt-get install xserver-xorg-core)')
    if not os.path.exists(DUMMY_DRIVER):
        out.append('%s not found (apt-get install '
                   'xserver-xorg-video-dummy)' % DUMMY_DRIVER)
    try:
        proc = subprocess.run([qemu_binary, '-display', 'help'],
                              capture_output=True, text=True, timeout=20,
                              env=env)
        listed = proc.stdout.split()
    except (OSError, subprocess.TimeoutExpired) as e:
        listed = []
        out.append('%s -display help failed: %s' % (qemu_binary, e))
    if 'gtk' not in listed:
        out.append('qemu has no GTK display (apt-get install '
                   'qemu-system-gui, or QEMU_MODULE_DIR)')
    return out


def _socket_path(n):
    return '/tmp/.X11-unix/X%d' % n


def _accepts(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(_socket_path(n))
        return True
    except OSError:
        return False
    finally:
        s.close()


class RefreshDisplay:
    """One private Xorg (dummy driver, one `hz` Hz monitor).

    start() picks a free display number and waits (with a deadline) for
    the server to accept connections; env() is what qemu's environment
    needs; qemu_args() the display option; stop() ends the server (TERM,
    then KILL) and never raises. `spawn(name, argv, log_path)` (the
    lane's process registry) records the server for crash recovery.
    """

    def __init__(self, workdir, hz=250, spawn=None):
        self.workdir = workdir
        self.hz = int(hz)
        self.spawn = spawn
        self.proc = None
        self.display = None
        self.conf_path = os.path.join(workdir, 'xorg-refresh.conf')
        self.log_path = os.path.join(workdir, 'xorg-refresh.log')

    def describe(self):
        tail = ''
        if os.path.exists(self.log_path):
            with open(self.log_path, errors='replace') as f:
                tail = ''.join(f.readlines()[-8:])
        state = 'not started' if self.proc is None else (
            'running' if self.proc.poll() is None else
            'exited %s' % self.proc.returncode)
        return 'Xorg :%s (%s); log tail:\n%s' % (self.display, state, tail)

    def start(self, timeout=20.0):
        xorg = find_xorg()
        if xorg is None:
            raise RefreshDisplayError('Xorg not found (apt-get install '
                                      'xserver-xorg-core)')
        os.makedirs(self.workdir, exist_ok=True)
        with open(self.conf_path, 'w') as f:
            f.write(xorg_conf(self.hz))
        deadline = time.monotonic() + timeout
        n = FIRST_DISPLAY
        for _ in range(DISPLAY_TRIES):
            while os.path.exists('/tmp/.X%d-lock' % n) or \
                    os.path.exists(_socket_path(n)):
                n += 1
            argv = [xorg, ':%d' % n, '-config', self.conf_path,
                    '-noreset', '-nolisten', 'tcp', '-logfile',
                    self.log_path]
            if self.spawn is not None:
                self.proc = self.spawn('xorg-refresh', argv,
                                       self.log_path + '.out')
            else:
                with open(self.log_path + '.out', 'ab') as out:
                    self.proc = subprocess.Popen(
                        argv, stdin=subprocess.DEVNULL, stdout=out,
                        stderr=out, start_new_session=True)
            self.display = n

            def dead():
                if self.proc.poll() is not None:
                    return 'Xorg exited %s' % self.proc.returncode
                return None
            try:
                waiting.wait_until(
                    lambda: _accepts(n),
                    max(0.5, deadline - time.monotonic()),
                    'Xorg :%d to accept connections' % n,
                    seen=self.describe, abort=dead)
                LOG.info('refresh display: Xorg :%d at %d Hz (pid %d)', n,
                         self.hz, self.proc.pid)
                return self
            except errors.HarnessError:
                if self.proc.poll() is None or \
                        time.monotonic() >= deadline:
                    self.stop()
                    raise
                n += 1          # display taken by someone else: next one
        raise RefreshDisplayError('no free X display from :%d in %d tries: '
                                  '%s' % (FIRST_DISPLAY, DISPLAY_TRIES,
                                          self.describe()))

    def env(self, base=None):
        env = dict(os.environ if base is None else base)
        env['DISPLAY'] = ':%d' % self.display
        return env

    @staticmethod
    def qemu_args():
        return ['-display', 'gtk']

    def stop(self, timeout=5.0):
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
            except (OSError, subprocess.TimeoutExpired) as e:
                LOG.warning('Xorg :%s did not stop: %s', self.display, e)

"""The direct-qemu guest provider: the harness runs qemu itself.

q35 with OVMF (4M code read-only, a per-guest copy of the vars file), the
image on a throw-away qcow2 overlay as an AHCI disk (no `if=`: Sextant has no
virtio driver and q35's default controller is AHCI), `-vga qxl` (without it
there is no display surface), SPICE on loopback with a random ticket passed
through `-object secret,file=` (never on the command line), an optional
TLS port, serial to a file, `-no-reboot`, and QMP over a unix socket through
qemu.qmp (imported lazily).

The accelerator is probed: /dev/kvm exists on the CI machines but OVMF dies
under it with "KVM internal error ... emulation failure", so `auto` boots
OVMF under KVM for a few seconds and only uses KVM when firmware output
appears; otherwise TCG. The choice and its reason are logged once per
process.

Boot once, restore per guest (issue 20; docs/plans/fast-feedback.md): a
provider built with `restore_when` (a predicate on a booted guest, e.g.
"its screen shows the Awaiting digest and no event yet") saves the first
guest of each image the moment the predicate holds: qemu stops, its
migration stream goes to a file, the OVMF vars and the disk overlay are
copied as they are at that instant, with the serial output so far, and
the guest runs on (cont). Every later guest of that image starts a new
qemu with the same devices, `-incoming defer`, fresh copies of the vars
and overlay, the saved serial output in its own serial file, and loads
the stream: the guest resumes where the saved one stood, before anything
touched it. The SPICE server (port, TLS, ticket) is the new qemu's own:
SPICE settings are host-side and not in the migration stream.
"""

import dataclasses

import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import logtext
from kerbside_tempest_plugin.common import ports as common_ports
from kerbside_tempest_plugin.common import secrets as common_secrets
from kerbside_tempest_plugin.common import tools
from kerbside_tempest_plugin.common import vv as common_vv
from kerbside_tempest_plugin.common import waiting
from kerbside_tempest_plugin.providers import base
from kerbside_tempest_plugin.providers import refresh_display

LOG = logging.getLogger(__name__)

OVMF_CANDIDATES = [
    ('/usr/share/OVMF/OVMF_CODE_4M.fd', '/usr/share/OVMF/OVMF_VARS_4M.fd'),
    ('/usr/share/edk2/ovmf/OVMF_CODE_4M.fd',
     '/usr/share/edk2/ovmf/OVMF_VARS_4M.fd'),
    ('/usr/share/OVMF/OVMF_CODE.fd', '/usr/share/OVMF/OVMF_VARS.fd'),
    ('/usr/share/edk2/ovmf/OVMF_CODE.fd', '/usr/share/edk2/ovmf/OVMF_VARS.fd'),
    ('/usr/share/qemu/OVMF_CODE.fd', '/usr/share/qemu/OVMF_VARS.fd'),
]

SPICE_HOST = '127.0.0.1'
# A lossless, replayable display: uncompressed bitmaps (unless the client
# asks for a compression of its own) and no lossy video streams, so the
# wire's draws can be replayed pixel-exact (spice.draw, the per-frame
# check; docs/plans/frame-verification.md).
SPICE_DISPLAY = ('image-compression=off', 'streaming-video=off')
QEMU_HOST_SUBJECT = 'CN=qemu-hv'
# qemu 7.2's trace events of a key's path from SPICE to the guest
# (scenario.keyhops): the PS/2 keyboard took a key and put its scancode
# byte(s) in its 16-byte queue; the guest's poll took a byte off the
# queue (ps2_read_data) and read its value from port 0x60
# (pckbd_kbd_read_data).
PS2_TRACE_EVENTS = ('ps2_keyboard_event', 'ps2_put_keycode',
                    'ps2_read_data', 'pckbd_kbd_read_data')
PS2_TRACE_FILE = 'ps2-trace.log'

_ACCEL_CACHE = {}
_ACCEL_LOCK = threading.Lock()


def find_ovmf(code=None, vars_template=None):
    """(code, vars) paths: the given ones, or the first Debian/Fedora pair
    that exists (4M preferred: Sextant is tested against it).
    """
    if code or vars_template:
        missing = [p for p in (code, vars_template)
                   if not p or not os.path.exists(p)]
        if missing:
            raise errors.ProviderError(
                'OVMF files not found: %s (set [direct_qemu] ovmf_code and '
                'ovmf_vars)' % ', '.join(str(p) for p in missing))
        return code, vars_template
    for c, v in OVMF_CANDIDATES:
        if os.path.exists(c) and os.path.exists(v):
            return c, v
    raise errors.ProviderError(
        'no OVMF firmware found (looked for %s); install the ovmf package '
        'or set [direct_qemu] ovmf_code/ovmf_vars' % ', '.join(
            c for c, _ in OVMF_CANDIDATES))


def probe_kvm(qemu_binary, ovmf_code, ovmf_vars, timeout=10.0):
    """Boot OVMF under KVM briefly. Returns (usable, reason)."""
    if not os.path.exists('/dev/kvm'):
        return False, '/dev/kvm does not exist'
    if not os.access('/dev/kvm', os.R_OK | os.W_OK):
        return False, '/dev/kvm is not readable and writable by this user'
    tmp = tempfile.mkdtemp(prefix='ktp-kvm-probe-')
    proc = None
    started = time.monotonic()
    try:
        vars_copy = os.path.join(tmp, 'vars.fd')
        shutil.copyfile(ovmf_vars, vars_copy)
        serial = os.path.join(tmp, 'serial.log')
        errlog = os.path.join(tmp, 'qemu.log')
        argv = [qemu_binary, '-accel', 'kvm', '-machine', 'q35', '-m', '128',
                '-drive', 'if=pflash,format=raw,readonly=on,file=%s'
                % ovmf_code,
                '-drive', 'if=pflash,format=raw,file=%s' % vars_copy,
                '-display', 'none', '-nic', 'none', '-no-reboot',
                '-serial', 'file:%s' % serial]
        with open(errlog, 'wb') as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                    stdout=err, stderr=err,
                                    start_new_session=True)
        while True:
            elapsed = time.monotonic() - started
            with open(errlog, 'rb') as f:
                errtext = f.read().decode(errors='replace')
            if 'KVM internal error' in errtext:
                line = [x for x in errtext.splitlines()
                        if 'emulation failure' in x or 'internal error' in x]
                return False, ('OVMF crashed under KVM after %.1f s (%s)' % (
                    elapsed, '; '.join(line[:2]).strip()))
            if proc.poll() is not None:
                return False, 'qemu -accel kvm exited %s: %s' % (
                    proc.returncode, logtext.tail_text(errtext, 3))
            if os.path.exists(serial) and os.path.getsize(serial) > 0:
                return True, ('OVMF reached firmware output under KVM in '
                              '%.1f s' % elapsed)
            if elapsed > timeout:
                return False, ('no firmware output under KVM within %.0f s'
                               % timeout)
            time.sleep(0.1)
    except OSError as e:
        return False, 'KVM probe failed to run: %s' % e
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def choose_accel(setting='auto', qemu_binary='qemu-system-x86_64',
                 ovmf_code=None, ovmf_vars=None):
    """('kvm'|'tcg', reason). `auto` probes once per process."""
    if setting in ('kvm', 'tcg'):
        return setting, 'configured ([direct_qemu] accel=%s)' % setting
    code, vars_template = find_ovmf(ovmf_code, ovmf_vars)
    key = (qemu_binary, code)
    with _ACCEL_LOCK:
        if key not in _ACCEL_CACHE:
            ok, why = probe_kvm(qemu_binary, code, vars_template)
            choice = ('kvm', why) if ok else (
                'tcg', 'KVM unusable: %s' % why)
            LOG.info('accelerator: %s (%s)', *choice)
            _ACCEL_CACHE[key] = choice
        return _ACCEL_CACHE[key]


def image_format(path):
    """'qcow2', 'raw', ... as qemu-img sees it."""
    proc = subprocess.run(
        [tools.find('qemu-img'), 'info', '--output=json', path],
        capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise errors.ProviderError('qemu-img info %s failed: %s' % (
            path, proc.stderr.strip()[-500:]))
    return json.loads(proc.stdout)['format']


def build_argv(qemu_binary, name, accel, memory_mb, ovmf_code, vars_copy,
               serial_path, ticket_file, spice_port, qmp_path, overlay=None,
               tls_port=None, x509_dir=None, extra_args=(), tls_only=False,
               trace_path=None, serial_append=False, incoming=False):
    """The qemu command line. It holds paths and ports, never the ticket.

    The one qemu launcher's command line (the integration tests' guests
    use it too): `spice_port=None` starts no SPICE server, and
    `ticket_file=None` an unticketed one (disable-ticketing). `tls_only`
    forces TLS on every channel (`tls-channel=default`): a plain link gets
    NEED_SECURED, which is what sends Kerbside to the TLS port.
    `trace_path` writes qemu's PS/2 trace (PS2_TRACE_EVENTS, each line
    with its wall-clock time) there. `serial_append` opens the serial
    file for appending (a restored guest's file already holds what the
    guest wrote before its save); `incoming` waits for a migration stream
    (`-incoming defer`, then QMP migrate-incoming).
    """
    argv = [qemu_binary, '-name', name, '-accel', accel, '-machine', 'q35',
            '-m', str(memory_mb),
            '-drive', 'if=pflash,format=raw,readonly=on,file=%s' % ovmf_code,
            '-drive', 'if=pflash,format=raw,file=%s' % vars_copy]
    if overlay:
        # No if=: q35's default controller is AHCI (Sextant has no virtio).
        argv += ['-drive', 'format=qcow2,file=%s' % overlay]
    argv += ['-vga', 'qxl', '-display', 'none', '-nic', 'none',
             '-no-reboot']
    if serial_append:
        # the same isa-serial device; only the host side appends
        argv += ['-chardev', 'file,id=serial0,path=%s,append=on'
                 % serial_path, '-serial', 'chardev:serial0']
    else:
        argv += ['-serial', 'file:%s' % serial_path]
    if spice_port is not None:
        spice = ['port=%d' % spice_port, 'addr=%s' % SPICE_HOST]
        spice += SPICE_DISPLAY
        if ticket_file:
            spice.append('password-secret=spice-ticket')
            argv += ['-object', 'secret,id=spice-ticket,format=raw,file=%s'
                     % ticket_file]
        else:
            spice.append('disable-ticketing=on')
        if tls_port:
            spice += ['tls-port=%d' % tls_port, 'x509-dir=%s' % x509_dir]
            if tls_only:
                spice.append('tls-channel=default')
        argv += ['-spice', ','.join(spice)]
    argv += ['-qmp', 'unix:%s,server=on,wait=off' % qmp_path]
    if trace_path:
        # one -trace per event: a second enable= in one option replaces
        # the first (only the last event was traced)
        for event in PS2_TRACE_EVENTS:
            argv += ['-trace', 'enable=%s' % event]
        argv += ['-D', trace_path, '-msg', 'timestamp=on']
    if incoming:
        argv += ['-incoming', 'defer']
    return argv + list(extra_args)


def qnum(code):
    """QEMU's key number (QMP send-key `{'type': 'number'}`) for an AT
    set-1 make code: the code itself, or 0x80 | the second byte for an
    extended 0xE0xx key (right Ctrl 0xE01D is 0x9D).
    """
    if not isinstance(code, int) or isinstance(code, bool) or not (
            0 < code < 0x80 or 0xE000 < code < 0xE080):
        raise errors.ProviderError('not an AT set-1 make code: %r'
                                   % (code,))
    return code if code < 0x80 else 0x80 | (code & 0x7F)


class QMP:
    """A short QMP connection per command (qemu.qmp's sync shim).

    A fresh connection for each call means no event queue grows without
    bound and a dead qemu shows up as an error on the next call.
    """

    def __init__(self, path, timeout=10.0):
        self.path = path
        self.timeout = timeout
        self._lock = threading.Lock()

    def cmd(self, name, timeout=None, **args):
        from qemu.qmp.legacy import QEMUMonitorProtocol  # lazy, optional
        with self._lock:
            mon = QEMUMonitorProtocol(self.path)
            try:
                mon.connect(negotiate=True)
                mon.settimeout(timeout or self.timeout)
                return mon.cmd(name, **args)
            finally:
                try:
                    mon.close()
                except Exception:
                    pass


# What a save or a restore may take before it is called stuck.
SAVE_TIMEOUT = 30.0
RESTORE_TIMEOUT = 30.0
RESTORE_FILE = 'restore.json'


@dataclasses.dataclass
class SavedGuest:
    """A guest saved by the provider, as later guests start from it.

    `state` is qemu's migration stream; `vars_fd` and `overlay` the OVMF
    vars and the disk overlay copied while the saved qemu stood stopped;
    `serial` what the guest had written to serial by then (its banner and
    mode list). `note` is what the provider's `restore_when` said of the
    saved guest (e.g. its frame counter); `seconds` how long the save
    held the guest stopped.
    """
    image: str
    source: str
    state: str
    vars_fd: str
    overlay: str
    serial: bytes
    note: str
    seconds: float
    size: int

    def info(self):
        return {'image': self.image, 'saved_from': self.source,
                'state_bytes': self.size, 'serial_bytes': len(self.serial),
                'saved_at': self.note, 'save_seconds': round(self.seconds, 3)}


def _migration_done(guest):
    """QMP query-migrate's answer once the migration has ended, else None.
    """
    mig = guest.qmp.cmd('query-migrate')
    if mig.get('status') in ('completed', 'failed', 'cancelled'):
        return mig
    return None


def _write_restore_info(guest, info):
    """`restore.json` in the guest's artifacts: where it came from (no
    secret: paths, sizes, times).
    """
    with open(os.path.join(guest.artifact_dir, RESTORE_FILE), 'w') as f:
        json.dump(info, f, indent=1, sort_keys=True)
        f.write('\n')


class DirectQemuGuest(base.Guest):
    """A qemu process started by the harness."""

    def __init__(self, provider, name, artifact_dir, spice_port, ticket,
                 ticket_file, tls_port=None, x509_dir=None):
        self.provider = provider
        self.name = name
        self.artifact_dir = artifact_dir
        self.spice_port = spice_port
        self.tls_port = tls_port
        self.x509_dir = x509_dir
        self._ticket = ticket
        self.ticket_file = ticket_file
        self.serial_path = os.path.join(artifact_dir, 'serial.log')
        self.log_path = os.path.join(artifact_dir, 'qemu.log')
        self.serial = base.FileSerialSource(self.serial_path,
                                            running=self.is_running)
        self.run_dir = None
        self.trace_path = None          # qemu's PS/2 trace, when on
        self.qmp_path = None
        self.qmp = None
        self.argv = None
        self.proc = None
        self.record = None
        self.accel = None
        self.accel_reason = None
        self.started_at = None
        self.boot_seconds = None
        # Boot once, restore per guest: the SavedGuest this guest was
        # restored from (None: it booted cold), and for a cold guest the
        # SavedGuest it became (None: not saved).
        self.restored_from = None
        self.saved_as = None
        self.restore_seconds = None
        self._torn_down = False
        self._scratch = []

    # -- state -------------------------------------------------------------
    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def is_running(self):
        if self.proc is None:
            return False
        return self.proc.poll() is None

    @property
    def returncode(self):
        return self.proc.poll() if self.proc else None

    def exit_note(self):
        """'' while qemu runs; else how it ended, said plainly (a
        signal by name: a SIGSEGV is the hypervisor crashing, not the
        proxy or the guest).
        """
        rc = self.returncode
        if rc is None:
            return ''
        if rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = 'signal %d' % -rc
            crash = ' (qemu crashed)' if name in (
                'SIGSEGV', 'SIGABRT', 'SIGBUS', 'SIGILL', 'SIGFPE') else ''
            return '; qemu had died of %s%s' % (name, crash)
        return '; qemu had exited with status %d' % rc

    def status(self):
        """QMP query-status (e.g. {'status': 'running', 'running': True})."""
        return self.qmp.cmd('query-status')

    def describe(self):
        rc = self.returncode
        return 'qemu %s (pid %s) %s; qemu log tail:\n%s' % (
            self.name, self.pid,
            'running' if rc is None else 'exited with %s' % rc,
            logtext.tail_file(self.log_path, 8))

    # -- console: qemu offers the direct route only; the kerbside route of a
    # lane's guest is the lane's (lane.Lane.console_vv / console_route).
    def _spice(self):
        if self.spice_port is None:
            raise errors.ProviderError(
                'qemu %s has no SPICE server (the provider has spice=False)'
                % self.name)

    @staticmethod
    def _direct_only(route):
        if route not in (None, 'direct'):
            raise errors.ProviderError(
                'route %r needs a lane (Kerbside): ask lane.Lane; a bare '
                'direct-qemu guest only offers the direct route' % route)

    def console_route(self, route=None):
        self._direct_only(route)
        self._spice()
        return base.ConsoleRoute(kind='direct', host=SPICE_HOST,
                                 port=self.spice_port,
                                 tls_port=self.tls_port)

    def console_vv(self, route=None):
        self._direct_only(route)
        self._spice()
        ca = host_subject = None
        if self.tls_port and self.x509_dir:
            with open(os.path.join(self.x509_dir, 'ca-cert.pem')) as f:
                ca = f.read()
            host_subject = QEMU_HOST_SUBJECT
        return common_vv.direct_vv(SPICE_HOST, self.spice_port,
                                   self._ticket, tls_port=self.tls_port,
                                   ca=ca, host_subject=host_subject,
                                   title='%s (direct)' % self.name)

    # -- QMP helpers -------------------------------------------------------
    def screendump(self, path):
        """Write a PNG of the guest screen as qemu sees it."""
        path = os.path.abspath(path)
        try:
            self.qmp.cmd('screendump', filename=path, format='png')
        except Exception as e:
            if 'format' not in str(e) and 'png' not in str(e).lower():
                raise errors.ProviderError('screendump failed: %s%s' % (
                    e, self.exit_note())) from e
            # qemu without PNG support: take PPM and convert.
            ppm = path + '.ppm'
            self.qmp.cmd('screendump', filename=ppm)
            from PIL import Image  # lazy
            Image.open(ppm).save(path, 'PNG')
            os.unlink(ppm)
        return path

    def send_key_qmp(self, *codes, hold_ms=None):
        """Press the keys `codes` (AT set-1 make codes: what
        sextant.keys.scancode gives) together, with QMP send-key, and
        release them after `hold_ms` (qemu's default: 100 ms). No SPICE
        client is involved.
        """
        args = {'keys': [{'type': 'number', 'data': qnum(c)}
                         for c in codes]}
        if hold_ms:
            args['hold-time'] = int(hold_ms)
        self.qmp.cmd('send-key', **args)

    def send_keys_qmp(self, chords, delay=0.08):
        """Type `chords` one at a time, `delay` s apart: each a make code
        or a tuple of codes pressed together, as sextant.keys.chords(text)
        gives. Sextant reads one key per 50 ms poll; the firmware buffers
        the rest.
        """
        for chord in chords:
            self.send_key_qmp(*(chord if isinstance(chord, tuple)
                                else (chord,)))
            time.sleep(delay)

    def powerdown(self):
        """Press the ACPI power button (the guest may ignore it)."""
        self.qmp.cmd('system_powerdown')

    def quit(self):
        """Ask qemu to exit. The reply races the socket EOF: both are
        success.
        """
        try:
            self.qmp.cmd('quit', timeout=5)
        except Exception as e:
            LOG.debug('qmp quit for %s ended with %r (expected)', self.name,
                      e)

    # -- lifecycle ---------------------------------------------------------
    def wait_stopped(self, timeout):
        waiting.wait_until(lambda: not self.is_running(), timeout,
                           'qemu %s to exit' % self.name, seen=self.describe)
        return self.returncode

    def teardown(self):
        if self._torn_down:
            return
        self._torn_down = True
        try:
            if self.is_running():
                self.quit()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    LOG.warning('qemu %s ignored quit; SIGTERM', self.name)
            if self.record is not None and self.provider.registry:
                self.provider.registry.stop(self.record, timeout=10)
            elif self.is_running():
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        except Exception:
            LOG.exception('teardown of qemu %s failed', self.name)
        for path in self._scratch:
            try:
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
            except OSError:
                pass


class DirectQemuProvider(base.GuestProvider):
    """Boots guests in qemu on this host.

    `spice_port`/`ticket`: fixed values to reuse for every guest (the lane
    does this so Kerbside's static source never changes); None allocates a
    free port and a random ticket per guest. `registry` (a lane's
    ProcessRegistry) records qemu for crash recovery. `secrets` is a
    SecretStore for the ticket file; without one a private temporary
    directory is used. A bare hypervisor offers the `direct` route only;
    the kerbside route of a lane's guest is the lane's. `spice=False`
    starts no SPICE server (guests driven over QMP only: keys with
    send_key_qmp, frames with screendump); `ticketing=False` an
    unticketed one on loopback (`ryll --direct` without a password).

    `restore_when` (a callable taking a booted DirectQemuGuest): boot
    once, restore per guest (module docstring). It returns a short note
    (truthy) once the guest is in the state to save, None until then, and
    raises when the guest can never be saved (e.g. it was touched). The
    first guest of each image boots cold and is saved when it says so;
    every later one is restored from that save. `state_dir` holds the
    saves (default: a private temporary directory); close() removes them.
    """

    name = 'direct_qemu'

    def __init__(self, qemu_binary='qemu-system-x86_64', accel='auto',
                 ovmf_code=None, ovmf_vars=None, memory_mb=256,
                 spice_port=None, ticket=None, tls=False, registry=None,
                 secrets=None, run_dir=None, route='direct',
                 boot_timeout=60, extra_args=(), spice=True,
                 ticketing=True, tls_port=None, x509_dir=None,
                 tls_only=False, display_refresh_hz=None, ps2_trace=None,
                 restore_when=None, state_dir=None):
        DirectQemuGuest._direct_only(route)
        self.restore_when = restore_when
        self.state_dir = state_dir
        self._own_state_dir = False
        self.saved = {}         # image path -> SavedGuest
        # None: on unless $KTP_PS2_TRACE is 0 (scenario.keyhops reads it)
        if ps2_trace is None:
            ps2_trace = os.environ.get('KTP_PS2_TRACE', '1').strip() not in (
                '0', 'off', 'no', 'false')
        self.ps2_trace = ps2_trace
        # None: $KTP_DISPLAY_REFRESH_HZ, else off (qemu's 30 ms refresh)
        if display_refresh_hz is None:
            display_refresh_hz = refresh_display.hz_from_env()
        self.display_refresh_hz = display_refresh_hz
        self._refresh = None
        self.qemu_binary = qemu_binary
        self.accel_setting = accel
        self.ovmf_code, self.ovmf_vars = find_ovmf(ovmf_code, ovmf_vars)
        self.memory_mb = memory_mb
        self.spice_port = spice_port
        self.ticket = ticket
        self.tls = tls
        # A lane passes its own TLS port, x509 dir (its CA) and tls_only.
        self.tls_port = tls_port
        self.tls_only = tls_only
        self.registry = registry
        self.secrets = secrets
        self.run_dir = run_dir
        self.route = route
        self.boot_timeout = boot_timeout
        self.extra_args = list(extra_args)
        self.spice = spice
        self.ticketing = ticketing
        self._x509_dir = x509_dir
        self.guests = []

    @classmethod
    def from_config(cls, conf, **kwargs):
        """Build from oslo.config groups [direct_qemu] and [kerbside]."""
        dq = conf.direct_qemu
        return cls(qemu_binary=dq.qemu_binary, accel=dq.accel,
                   ovmf_code=dq.ovmf_code, ovmf_vars=dq.ovmf_vars,
                   memory_mb=dq.memory_mb, **kwargs)

    def _secret_store(self):
        if self.secrets is None:
            self.secrets = common_secrets.SecretStore(
                tempfile.mkdtemp(prefix='ktp-qemu-secrets-'))
            self._own_secrets = True
        return self.secrets

    def close(self):
        """Tear down every guest; remove the private secrets directory
        when the provider made it itself. Never raises.
        """
        for guest in self.guests:
            guest.teardown()
        self.drop_saved()
        if self._refresh is not None:
            self._refresh.stop()
            self._refresh = None
        if getattr(self, '_own_secrets', False):
            shutil.rmtree(self.secrets.path, ignore_errors=True)
            self.secrets = None
            self._own_secrets = False
            self._x509_dir = None

    def _refresh_display(self, artifact_dir):
        """The provider's one private X server for display_refresh_hz,
        started at the first boot that needs it.
        """
        if self._refresh is None or self._refresh.proc is None:
            self._refresh = refresh_display.RefreshDisplay(
                self.run_dir or os.path.dirname(artifact_dir),
                hz=self.display_refresh_hz,
                spawn=self.registry.spawn if self.registry else None).start()
        return self._refresh

    def _x509(self):
        if self._x509_dir is None:
            from kerbside_tempest_plugin.common import tls as common_tls
            self._x509_dir = common_tls.make_self_contained_x509(
                os.path.join(self._secret_store().path, 'qemu-x509'))
        return self._x509_dir

    def boot(self, image, name, artifact_dir):
        """Boot `image` (qcow2 or raw path; None boots OVMF diskless, which
        still gives a SPICE surface and the EFI shell).
        """
        artifact_dir = os.path.abspath(artifact_dir)
        os.makedirs(artifact_dir, exist_ok=True)
        spice_port = self.spice_port
        if spice_port is None and self.spice:
            spice_port = common_ports.free_port()
        tls_port = None
        x509_dir = None
        if self.tls and self.spice:
            if self.tls_port is None:
                self.tls_port = common_ports.free_port()
            tls_port = self.tls_port
            x509_dir = self._x509()
        ticket = ticket_file = None
        if self.spice and self.ticketing:
            ticket = self.ticket or common_secrets.random_token(12)
            ticket_file = self._secret_store().put('spice-ticket-%s' % name,
                                                   ticket)

        guest = DirectQemuGuest(self, name, artifact_dir, spice_port, ticket,
                                ticket_file, tls_port=tls_port,
                                x509_dir=x509_dir)
        self.guests.append(guest)
        saved = self.saved.get(os.path.abspath(image)) if image else None
        try:
            if saved is not None:
                self._start(guest, image, restore=saved)
            else:
                self._start(guest, image)
                if self.restore_when is not None and image:
                    self._save(guest, os.path.abspath(image))
        except BaseException:
            guest.teardown()
            raise
        return guest

    # -- boot once, restore per guest ----------------------------------
    def _state_dir(self):
        if self.state_dir is None:
            self.state_dir = tempfile.mkdtemp(prefix='ktp-guest-state-')
            self._own_state_dir = True
        os.makedirs(self.state_dir, exist_ok=True)
        return self.state_dir

    def drop_saved(self):
        """Forget every save and delete its files. Never raises."""
        for saved in self.saved.values():
            shutil.rmtree(os.path.dirname(saved.state), ignore_errors=True)
        self.saved = {}
        if self._own_state_dir and self.state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self.state_dir = None
            self._own_state_dir = False

    def _save(self, guest, image):
        """Wait until `restore_when(guest)` holds, then save the guest
        (stop, migration stream to a file, vars, overlay and serial
        copied) and let it run on. The guest's own run is unchanged but
        for the pause (its clocks stop with it).
        """
        t0 = time.monotonic()

        def dead():
            if not guest.is_running():
                return 'qemu exited with %s' % guest.returncode
            return None

        note = waiting.wait_until(
            lambda: self.restore_when(guest), SAVE_TIMEOUT,
            'guest %s to reach the state to save (restore_when)'
            % guest.name, seen=guest.describe, abort=dead, interval=0.2)
        waited = time.monotonic() - t0
        where = tempfile.mkdtemp(prefix='%s-' % guest.name,
                                 dir=self._state_dir())
        state = os.path.join(where, 'state.mig')
        t = time.monotonic()
        guest.qmp.cmd('stop')
        try:
            guest.qmp.cmd('migrate', uri='exec:cat > %s' % state)
            status = waiting.wait_until(
                lambda: _migration_done(guest), SAVE_TIMEOUT,
                'the save of %s (QMP query-migrate)' % guest.name,
                seen=guest.describe, abort=dead, interval=0.02)
            if status.get('status') != 'completed':
                raise errors.ProviderError(
                    'saving %s failed: %s%s' % (
                        guest.name, status.get('error-desc', status),
                        guest.exit_note()))
            # qemu flushed its disks when it stopped: the files are as
            # the saved guest sees them.
            vars_fd = os.path.join(where, 'OVMF_VARS.fd')
            shutil.copyfile(os.path.join(guest.artifact_dir, 'OVMF_VARS.fd'),
                            vars_fd)
            overlay = os.path.join(where, 'overlay.qcow2')
            shutil.copyfile(os.path.join(guest.artifact_dir,
                                         'overlay.qcow2'), overlay)
            with open(guest.serial_path, 'rb') as f:
                serial = f.read()
        finally:
            guest.qmp.cmd('cont')
        held = time.monotonic() - t
        saved = SavedGuest(image=image, source=guest.name, state=state,
                           vars_fd=vars_fd, overlay=overlay, serial=serial,
                           note=str(note), seconds=held,
                           size=os.path.getsize(state))
        self.saved[image] = saved
        guest.saved_as = saved
        info = dict(saved.info(), role='saved', waited_for_save_s=round(
            waited, 3))
        _write_restore_info(guest, info)
        LOG.info('saved %s at %s in %.2f s (%d bytes; waited %.1f s for '
                 'it): later guests of %s are restored from it',
                 guest.name, saved.note, held, saved.size, waited, image)
        return saved

    def _start(self, guest, image, restore=None):
        """Start qemu for `guest`: a cold boot of `image`, or with
        `restore` (a SavedGuest of that image) a new qemu that loads the
        saved guest and runs on from it.
        """
        # A previous guest on the same (lane) port must be gone.
        wanted = [p for p in (guest.spice_port, guest.tls_port) if p]
        waiting.wait_until(
            lambda: not common_ports.busy_ports(wanted), 15,
            'SPICE port(s) %s to be free for %s' % (wanted, guest.name),
            seen=lambda: 'busy: %s' % common_ports.busy_ports(wanted))
        qemu = tools.find('qemu-system-x86_64', override=self.qemu_binary)
        guest.accel, guest.accel_reason = choose_accel(
            self.accel_setting, qemu, self.ovmf_code, self.ovmf_vars)

        run_dir = self.run_dir or tempfile.mkdtemp(prefix='ktp-q-')
        if not self.run_dir:
            guest._scratch.append(run_dir)
        guest.run_dir = run_dir
        guest.qmp_path = os.path.join(run_dir, 'qmp-%s.sock' % guest.name)
        if len(guest.qmp_path) > 100:
            raise errors.ProviderError('QMP socket path too long (>100 bytes):'
                                       ' %s' % guest.qmp_path)
        if os.path.exists(guest.qmp_path):
            os.unlink(guest.qmp_path)
        guest.qmp = QMP(guest.qmp_path)

        vars_copy = os.path.join(guest.artifact_dir, 'OVMF_VARS.fd')
        shutil.copyfile(restore.vars_fd if restore else self.ovmf_vars,
                        vars_copy)
        guest._scratch.append(vars_copy)

        overlay = None
        if restore is not None:
            # The saved guest's disk as it was at the save (its backing
            # file is the image, by absolute path), and what it had
            # written to serial: the new serial file starts with it.
            overlay = os.path.join(guest.artifact_dir, 'overlay.qcow2')
            shutil.copyfile(restore.overlay, overlay)
            guest._scratch.append(overlay)
            with open(guest.serial_path, 'wb') as f:
                f.write(restore.serial)
        elif image:
            image = os.path.abspath(image)
            if not os.path.exists(image):
                raise errors.ProviderError('guest image %s does not exist'
                                           % image)
            fmt = image_format(image)
            overlay = os.path.join(guest.artifact_dir, 'overlay.qcow2')
            if os.path.exists(overlay):
                os.unlink(overlay)
            proc = subprocess.run(
                [tools.find('qemu-img'), 'create', '-q', '-f', 'qcow2', '-F',
                 fmt, '-b', image, overlay], capture_output=True, text=True,
                timeout=60)
            if proc.returncode != 0:
                raise errors.ProviderError('qemu-img create overlay failed: %s'
                                           % proc.stderr.strip()[-500:])
            guest._scratch.append(overlay)
        trace_path = None
        if self.ps2_trace:
            trace_path = os.path.join(guest.artifact_dir, PS2_TRACE_FILE)
            if os.path.exists(trace_path):      # an earlier boot's
                os.unlink(trace_path)
        guest.trace_path = trace_path
        argv = build_argv(
            qemu, guest.name, guest.accel, self.memory_mb,
            self.ovmf_code, vars_copy, guest.serial_path, guest.ticket_file,
            guest.spice_port, guest.qmp_path, overlay=overlay,
            tls_port=guest.tls_port, x509_dir=guest.x509_dir,
            extra_args=self.extra_args, tls_only=self.tls_only,
            trace_path=trace_path, serial_append=restore is not None,
            incoming=restore is not None)
        env = None
        if self.display_refresh_hz:
            # qemu's GTK display on a private fast monitor: every display
            # listener (spice too) refreshes at its rate (refresh_display)
            argv += refresh_display.RefreshDisplay.qemu_args()
            env = self._refresh_display(guest.artifact_dir).env()
        guest.argv = argv
        with open(os.path.join(guest.artifact_dir, 'qemu-argv.txt'),
                  'w') as f:
            f.write(' '.join(argv) + '\n')
        LOG.info('booting %s: accel=%s (%s), SPICE %s%s',
                 guest.name, guest.accel, guest.accel_reason,
                 '127.0.0.1:%d' % guest.spice_port if guest.spice_port
                 else 'off', ', TLS %d' % guest.tls_port
                 if guest.tls_port else '')

        guest.started_at = time.monotonic()
        if self.registry is not None:
            guest.proc = self.registry.spawn('qemu:%s' % guest.name, argv,
                                             guest.log_path, env=env)
            guest.record = self.registry.find('qemu:%s' % guest.name)[-1]
        else:
            with open(guest.log_path, 'ab') as log:
                guest.proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    start_new_session=True, env=env)

        def status():
            if not os.path.exists(guest.qmp_path):
                return None
            try:
                return guest.status().get('status')
            except Exception:
                return None

        def dead():
            if not guest.is_running():
                return 'qemu exited with %s' % guest.returncode
            return None

        if restore is not None:
            self._load(guest, restore, status, dead)
        waiting.wait_until(lambda: status() == 'running', 30,
                           'qemu %s to run (QMP query-status)' % guest.name,
                           seen=guest.describe, abort=dead)
        if restore is not None:
            guest.restore_seconds = time.monotonic() - guest.started_at
            _write_restore_info(guest, dict(
                restore.info(), role='restored',
                restore_seconds=round(guest.restore_seconds, 3)))
        if guest.spice_port is None:
            return
        waiting.wait_until(
            lambda: common_ports.is_listening(guest.spice_port), 10,
            'qemu SPICE port %d to listen' % guest.spice_port,
            seen=guest.describe, abort=dead)

    @staticmethod
    def _load(guest, restore, status, dead):
        """Feed the saved stream to a qemu started with -incoming defer,
        and run the guest once the stream is in (it comes up paused, as
        the saved qemu stood).
        """
        waiting.wait_until(lambda: status() == 'inmigrate', 30,
                           'qemu %s to wait for its saved state (QMP '
                           'query-status inmigrate)' % guest.name,
                           seen=guest.describe, abort=dead)
        guest.restored_from = restore
        guest.qmp.cmd('migrate-incoming', uri='exec:cat %s' % restore.state)

        def loaded():
            mig = guest.qmp.cmd('query-migrate')
            if mig.get('status') == 'failed':
                raise errors.ProviderError(
                    'restoring %s from %s failed: %s%s' % (
                        guest.name, restore.source,
                        mig.get('error-desc', mig), guest.exit_note()))
            now = status()
            if now == 'paused':
                # Loaded (it is 'inmigrate' until then). The stream carries
                # the saved qemu's run state, stopped for the save, so the
                # restored one comes up paused.
                guest.qmp.cmd('cont')
                return False
            return now == 'running'

        waiting.wait_until(loaded, RESTORE_TIMEOUT,
                           'qemu %s to load the state saved from %s' % (
                               guest.name, restore.source),
                           seen=guest.describe, abort=dead, interval=0.02)

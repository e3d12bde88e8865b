"""A fake Sextant guest behind a fake ryll ControlClient, for unit tests.

`FakeGuest` follows the scene logic of the contract (§5) closely enough to
walk: it records events, bumps the frame counter on every refresh, stalls
(scaled down) where the guest stalls, and renders each screenshot with
digest.render exactly as the guest paints it. `FakeClient` offers the
ControlClient surface the scenario library uses: add_listener,
remove_listener, send_key, paste, screenshot, drain_events.
"""

import io
import queue
import threading
import time
import types

from kerbside_tempest_plugin.digest import chains
from kerbside_tempest_plugin.digest import events as ev
from kerbside_tempest_plugin.digest import render
from kerbside_tempest_plugin.providers import base as provider_base
from kerbside_tempest_plugin.ryll import client as ryll_client

MODE_KEYS = {'1': (640, 480), '2': (800, 600), '3': (1024, 768),
             '4': (1280, 720), '5': (1280, 1024), '6': (1920, 1080)}
SECRET = 'sextant{HELLO_OPERATOR}'


def png_bytes(rgb):
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format='PNG')
    return buf.getvalue()


class FakeGuest:
    """The guest's scenes, driven by keys, on a worker thread."""

    def __init__(self, scale=0.1, blink_s=None):
        self.scale = scale              # wall seconds per guest second
        self.t = 0
        self.history = []
        self.frame = 0
        self.size = (1024, 768)
        self.state = 'awaiting'
        self.attempt = 0
        self.wrong = 0
        self.buffer = ''
        self.drain = None
        self.off = False
        self.listeners = []
        self._keys = queue.Queue()
        self._lock = threading.Lock()
        self.tamper = None              # fn(payload_args) for fault tests
        self.stale_fb = False
        self.blink_s = blink_s
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.refresh()

    # -- guest side

    def stall(self, ms):
        self.t += ms
        time.sleep(ms / 1000.0 * self.scale)

    def push(self, event):
        with self._lock:
            self.history.append(event)

    def refresh(self):
        with self._lock:
            self.frame += 1
        for fn in list(self.listeners):
            fn(types.SimpleNamespace(name='surface_drawn', data={}))

    def key(self, char):
        self.push(ev.Keypress(self.t, ord(char), 0))

    def _run(self):
        last_blink = time.monotonic()
        while not self.off:
            try:
                char = self._keys.get(timeout=0.02)
            except queue.Empty:
                if self.blink_s and self.state in ('awaiting', 'parked') \
                        and time.monotonic() - last_blink > self.blink_s:
                    last_blink = time.monotonic()
                    self.refresh()
                continue
            self.handle(char)

    def handle(self, c):
        s = self.state
        if s in ('awaiting', 'parked') and c in MODE_KEYS:
            self.key(c)
            w, h = MODE_KEYS[c]
            self.push(ev.ModeSwitch(self.t, w, h, w, h))
            self.size = (w, h)
            self.refresh()
            return
        if s == 'awaiting':
            self.key(c)
            self.push(ev.SceneTransition(self.t, 'awaiting', 'booting'))
            self.refresh()
            for row in range(19):
                self.push(ev.LineRendered(self.t, row))
                self.refresh()
                self.stall(200)
            for row in (19, 20):
                self.push(ev.LineRendered(self.t, row))
                self.refresh()
                self.stall(200)
            self.prompt()
        elif s == 'prompt':
            self.key(c)
            if c == 'r':
                self.push(ev.BootloaderDecision(self.t, 'retry',
                                                self.attempt))
                for _ in range(8):
                    self.stall(200)
                    self.refresh()
                self.prompt()
            elif c == 'i':
                self.push(ev.BootloaderDecision(self.t, 'ignore',
                                                self.attempt))
                for row in (21, 23, 25):
                    self.push(ev.LineRendered(self.t, row))
                    self.refresh()
                self.state = 'paste'
                self.buffer = ''
        elif s == 'paste':
            self.stall(50)
            self.key(c)
            if c in '\r\n':
                ok = self.buffer == SECRET
                self.push(ev.PasteReceived(self.t, len(self.buffer), ok))
                self.refresh()
                if ok:
                    self.refresh()
                    self.push(ev.LineRendered(self.t, 21))
                    self.refresh()
                    self.stall(600)
                    self.push(ev.LineRendered(self.t, 22))
                    self.refresh()
                    self.stall(200)
                    self.push(ev.SceneTransition(self.t, 'booting',
                                                 'parked'))
                    self.refresh()
                    self.refresh()       # SYSTEM ONLINE line
                    self.state = 'parked'
                else:
                    self.wrong += 1
                    self.buffer = ''
                    self.push(ev.LineRendered(self.t, 25))
                    self.push(ev.LineRendered(self.t, 26))
                    self.refresh()
            else:
                self.buffer += c
                self.refresh()
        elif s == 'parked':
            self.key(c)
            self.push(ev.SceneTransition(self.t, 'parked', 'parked'))
            self.refresh()
            self.drain = self.drain_text()
            self.state = 'off'
            self.off = True

    def prompt(self):
        self.attempt += 1
        self.push(ev.LineRendered(self.t, 21))
        self.refresh()
        self.state = 'prompt'

    def drain_text(self):
        lines = ['Hello from Uncalibrated Sextant',
                 'available GOP modes: 640x480 1024x768 1280x720']
        for e in self.history:
            lines.append(serial_line(e))
        lines.append('type=refresh_stats count=%d total_ms=1 mean_us=1 '
                     'max_us=1 p99_us=1' % self.frame)
        return '\r\n'.join(lines) + '\r\n'

    # -- host side

    def screen(self):
        with self._lock:
            frame, history = self.frame, list(self.history)
        w, h = self.size
        hashes = chains.ChannelChains.replay(history)
        img = render.render_guest_frame(frame, hashes, history[-256:],
                                        width=w, height=h)
        if self.stale_fb:
            img[5, 5] = (255, 255, 255)   # drawn after the hash was taken
        return png_bytes(img)


def serial_line(e):
    k = e.kind
    if k == 'keypress':
        return 't=%d type=keypress unicode=%04x scancode=%04x' % (
            e.timestamp_ms, e.unicode, e.scancode)
    if k == 'line_rendered':
        return 't=%d type=line row=%d' % (e.timestamp_ms, e.row)
    if k == 'scene_transition':
        return 't=%d type=transition from=%s to=%s' % (
            e.timestamp_ms, e.from_phase, e.to_phase)
    if k == 'bootloader_decision':
        return 't=%d type=bootloader_decision choice=%s attempt=%d' % (
            e.timestamp_ms, e.choice, e.attempt)
    if k == 'paste_received':
        return 't=%d type=paste len=%d correct=%s' % (
            e.timestamp_ms, e.length, 'true' if e.correct else 'false')
    if k == 'mode_switch':
        return 't=%d type=mode_switch requested=%dx%d applied=%dx%d' % (
            e.timestamp_ms, e.req_w, e.req_h, e.app_w, e.app_h)
    raise ValueError(k)


KEYS = {'enter': '\r', 'return': '\r'}


class FakeClient:
    """The ControlClient surface the scenario library uses."""

    def __init__(self, guest):
        self.guest = guest
        self.screenshots = 0

    def add_listener(self, fn):
        self.guest.listeners.append(fn)

    def remove_listener(self, fn):
        if fn in self.guest.listeners:
            self.guest.listeners.remove(fn)

    def _check(self):
        if self.guest.off:
            raise ryll_client.RyllConnectionClosed(
                'EOF from ryll (the guest powered off)', reason='eof')

    def send_key(self, key, state=None):
        self._check()
        self.guest._keys.put(KEYS.get(key, key))
        time.sleep(0.01)
        self._check()       # the key-up races the power-off

    def paste(self, text, char_delay_ms=20, timeout=None):
        self._check()
        for c in text:
            self.guest._keys.put(c)
        time.sleep(len(text) * char_delay_ms / 1000.0 * self.guest.scale)
        return len(text)

    def screenshot(self):
        self._check()
        self.screenshots += 1
        return types.SimpleNamespace(png=self.guest.screen())

    def drain_events(self, predicate=None):
        return []


class _Serial:
    def __init__(self, guest):
        self.guest = guest

    def read(self):
        text = 'Hello from Uncalibrated Sextant\r\n'
        return self.guest.drain if self.guest.drain else text

    def wait_for(self, pattern, timeout):
        import re
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.read())
            if m:
                return m
            time.sleep(0.02)
        raise TimeoutError('timed out waiting for %r in the fake serial'
                           % pattern)


class LaneGuest:
    """What Lane.boot_guest returns, around a FakeGuest (with the
    attributes providers.base.Guest declares).
    """

    serial_path = None
    accel_reason = None
    facts = provider_base.Guest.facts

    def describe(self):
        return 'fake guest %s' % self.name

    def __init__(self, fake, artifact_dir):
        self.fake = fake
        self.name = 'fake'
        self.serial = _Serial(fake)
        self.artifact_dir = artifact_dir
        self.boot_seconds = 0.01
        self.torn_down = False
        self.accel = 'fake'

    def wait_stopped(self, timeout):
        return 0

    def teardown(self):
        self.torn_down = True
        self.fake.off = True


class FakeRyllProcess:
    """A stand-in RyllProcess whose connect() hands back an in-process
    FakeClient driving FakeGuest (no socket: the scenario tests exercise
    the walk and the capture, not the control protocol, which ryll.fake
    serves).
    """

    def __init__(self, guest, workdir, secret):
        import os
        self.guest = guest
        self.stdout_path = os.path.join(workdir, 'ryll.stdout')
        self.stderr_path = os.path.join(workdir, 'ryll.stderr')
        with open(self.stdout_path, 'w') as f:
            f.write('connecting with password=%s\n' % secret)
        with open(self.stderr_path, 'w') as f:
            f.write('ok\n')
        self.client = None

    def connect(self, timeout, **client_kwargs):
        self.client = FakeClient(self.guest.fake)
        self.client.protocol_version = '1.5'
        self.client.supported_events = list(
            ('surface_drawn', 'paste_completed', 'paste_failed'))
        self.client.subscribe = lambda names: [
            n for n in names if n in self.client.supported_events]
        self.client.close = lambda: None
        return self.client

    def wait_ready(self, client, timeout):
        return {'surfaces': [1]}

    def describe(self):
        return 'fake ryll'


class FakeLane:
    """Lane.boot_guest / start_ryll / stop_ryll / redactor / log_dir."""

    def __init__(self, workdir, scale=0.1, secret='s3cr3t-ticket-value',
                 guest_hook=None):
        import os

        from kerbside_tempest_plugin.common import secrets
        self.workdir = workdir
        self.log_dir = os.path.join(workdir, 'logs')
        os.makedirs(self.log_dir, exist_ok=True)
        with open(os.path.join(self.log_dir, 'kerbside.log'), 'w') as f:
            f.write('token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4eHh4In0.'
                    'c2lnbmF0dXJlc2ln issued; ticket %s\n' % secret)
        self.redactor = secrets.Redactor()
        self.redactor.add(secret)
        self.secret = secret
        self.scale = scale
        self.guest_hook = guest_hook
        self.guests = []
        self.ryll_procs = []
        self.stopped_ryll = 0

    def boot_guest(self, image, name=None, banner=None, timeout=None):
        import os
        d = os.path.join(self.workdir, 'guests', name or 'g')
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, 'qemu.log'), 'w') as f:
            f.write('qemu started\n')
        g = LaneGuest(FakeGuest(scale=self.scale, blink_s=0.1), d)
        if self.guest_hook:
            self.guest_hook(g.fake)
        self.guests.append(g)
        return g

    def start_ryll(self, guest, route=None, timeout=None, extra_args=()):
        self.ryll_extra_args = list(extra_args)
        rp = FakeRyllProcess(guest, guest.artifact_dir, self.secret)
        self.ryll_procs.append(rp)
        return rp

    def stop_ryll(self):
        self.stopped_ryll += 1

    @property
    def last_ryll(self):
        return self.ryll_procs[-1] if self.ryll_procs else None

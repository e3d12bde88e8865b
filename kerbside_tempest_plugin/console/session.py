"""One console session on one lane: the verbs, as methods returning dicts.

A `Session` holds a connected ryll ControlClient (key names resolved by
sextant.keys), a running scenario.capture.DigestStream on it, and the
guest's serial source. It is either

- *owned* (`Session.start`): it brings a lane.base.Lane up (the
  direct-qemu lane.lane.Lane, or a ProviderLane over a configured cloud
  provider), boots a guest, starts ryll, and tears everything down on
  `close()`; `boot()` gives a fresh guest on the same lane; or
- *attached* (`Session.attach`): it reads a `kerbside-harness up` workdir
  (lane.json, processes.json), connects to the running ryll's control
  socket and reads the guest's serial log; `close()` leaves the lane up
  unless the session was told to own it (`own=True`: teardown_workdir).

Every verb returns a JSON-able dict. Every failure is a ConsoleError whose
message says what happened in words (ryll gone and how it exited, the
guest powered off, an unknown key name, a timeout with what it saw), with
every secret the lane handed out redacted. Nothing here prints.
"""

import json
import logging
import os
import re
import tempfile
import threading
import time

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import secrets as common_secrets
from kerbside_tempest_plugin.common import waiting
from kerbside_tempest_plugin.scenario import capture as cap
from kerbside_tempest_plugin.sextant import contract
from kerbside_tempest_plugin.sextant import keys

LOG = logging.getLogger(__name__)

# What the capture and the paste need (the runner's own list).
EVENTS = ('surface_drawn', 'paste_completed', 'paste_failed')
PROVIDERS = ('direct_qemu', 'shakenfist', 'nova')
DRAIN_TIMEOUT = 60.0


class ConsoleError(errors.HarnessError):
    """A verb failed; the message is meant for the person at the console."""


class UsageError(ConsoleError):
    """A verb was called wrongly (unknown verb, key name, bad argument)."""


# --------------------------------------------------------------- targets


class _Owned:
    """A lane this session started (a lane.base.Lane)."""

    owned = True

    def __init__(self, lane):
        self.lane = lane
        self.redactor = lane.redactor
        self.workdir = lane.workdir
        self.route = lane.route

    @property
    def serial(self):
        return self.lane.guest.serial if self.lane.guest else None

    def guest_running(self):
        g = self.lane.guest
        return bool(g is not None and g.is_running())

    def ryll(self):
        rp = self.lane.last_ryll
        if rp is None:
            return {'state': 'not started'}
        rc = rp.returncode
        return {'state': 'running' if rp.alive else 'exited',
                'pid': rp.pid, 'returncode': rc,
                'log_tail': None if rp.alive else rp.log_tail(8)}

    def guest_info(self):
        g = self.lane.guest
        if g is None:
            return None
        return {'name': g.name, 'running': g.is_running(),
                'serial_log': g.serial_path,
                'artifact_dir': g.artifact_dir}

    def teardown(self):
        return self.lane.down()


class _Attached:
    """A lane `kerbside-harness up` left running in `workdir`."""

    owned = False

    def __init__(self, workdir, own=False):
        from kerbside_tempest_plugin.lane import lane as lane_mod
        from kerbside_tempest_plugin.lane import procs
        from kerbside_tempest_plugin.providers import base
        self.workdir = os.path.abspath(workdir)
        self.owned = own
        self.state = lane_mod.load_state(self.workdir)
        if self.state is None:
            raise ConsoleError(
                'no lane in %s (no lane.json): start one with '
                '`kerbside-harness up --workdir %s`, or let the console '
                'start its own (no --attach)' % (self.workdir, self.workdir))
        if self.state.get('state') != 'up':
            raise ConsoleError('the lane in %s is %s, not up' % (
                self.workdir, self.state.get('state')))
        self.route = self.state.get('route')
        self.redactor = common_secrets.Redactor()
        secrets_dir = os.path.join(self.workdir, 'secrets')
        if os.path.isdir(secrets_dir):
            try:
                common_secrets.SecretStore(secrets_dir,
                                           self.redactor).load_all()
            except Exception:
                LOG.exception('could not read the lane secrets to redact')
        self.registry = procs.ProcessRegistry(
            os.path.join(self.workdir, 'processes.json'))
        self.control_socket = self.state.get('control_socket')
        if not self.control_socket:
            raise ConsoleError('the lane in %s runs no ryll (started with '
                               '--no-ryll?)' % self.workdir)
        path = self.state.get('serial_log')
        self.serial = base.FileSerialSource(path, self.guest_running) \
            if path else None

    def _records(self, prefix):
        return [r for r in self.registry.records
                if r['name'].startswith(prefix)]

    def guest_running(self):
        recs = self._records('qemu')
        return bool(recs) and self.registry.alive(recs[-1])

    def ryll(self):
        recs = self._records('ryll')
        if not recs:
            return {'state': 'not started'}
        alive = self.registry.alive(recs[-1])
        out = {'state': 'running' if alive else 'exited',
               'pid': recs[-1]['pid'], 'returncode': None}
        if not alive:
            from kerbside_tempest_plugin.common import logtext
            out['log_tail'] = '\n'.join(
                logtext.tail_file(p, 8) for p in recs[-1].get('logs') or ())
        return out

    def guest_info(self):
        g = self.state.get('guest') or {}
        return {'name': g.get('name'), 'running': self.guest_running(),
                'serial_log': self.state.get('serial_log'),
                'artifact_dir': g.get('artifact_dir')}

    def teardown(self):
        if not self.owned:
            return None
        from kerbside_tempest_plugin.lane import lane as lane_mod
        return lane_mod.teardown_workdir(self.workdir)


def make_lane(provider='direct_qemu', route='kerbside', workdir=None,
              config_file=None, ryll_binary='ryll', accel='auto',
              cloud_workdir=None, flavor=None, environ=None, relay=None,
              fault=None):
    """A lane.base.Lane for `provider` (not up yet). Nova: credentials
    from `cloud_workdir` (a `kerbside-openstack up` workdir) or the OS_*
    environment (console.nova_cloud).
    """
    if provider not in PROVIDERS:
        raise UsageError('unknown provider %r (known: %s)' % (
            provider, ', '.join(PROVIDERS)))
    if provider == 'nova':
        from kerbside_tempest_plugin.console import nova_cloud
        return nova_cloud.NovaLane(
            nova_cloud.credentials(cloud_workdir, environ),
            workdir or tempfile.mkdtemp(prefix='kerbside-console-'),
            route=route, ryll_binary=ryll_binary, flavor=flavor)
    if provider == 'direct_qemu':
        from kerbside_tempest_plugin.lane import lane as lane_mod
        # Never the `up` default: a console's own lane gets a fresh dir.
        workdir = workdir or tempfile.mkdtemp(prefix='kerbside-console-')
        return lane_mod.Lane(workdir, route=route,
                             kerbside=route == 'kerbside',
                             ryll_binary=ryll_binary, accel=accel,
                             relay=relay, fault=fault)
    from kerbside_tempest_plugin import config
    from kerbside_tempest_plugin.lane import provider_lane
    from kerbside_tempest_plugin.providers import factory
    from oslo_config import cfg
    conf = cfg.ConfigOpts()
    config.register_opts(conf)
    conf([], project='tempest', default_config_files=[config_file]
         if config_file else None)
    workdir = os.path.abspath(workdir or 'kerbside-console-%s' % provider)
    return provider_lane.ProviderLane(
        factory.provider_from_config(conf, provider=provider), workdir,
        route=route, ryll_binary=ryll_binary or conf.kerbside.ryll_binary)


# --------------------------------------------------------------- session


class Session:
    """The verbs on one lane; see the module docstring."""

    def __init__(self, target, step_timeout=90.0, log=None):
        self.target = target
        self.step_timeout = step_timeout
        self.client = None
        self.stream = None
        self.rp = None
        self.walk_name = None
        self.started = None         # what the last boot() returned
        self.shots = 0
        self.since = 0              # digest index before the last input
        self.serial_pos = 0
        self._log = log or LOG.info
        self._lock = threading.RLock()
        self._closed = False
        self.console_dir = os.path.join(target.workdir, 'console')
        os.makedirs(self.console_dir, exist_ok=True)

    # -- construction --------------------------------------------------
    @classmethod
    def start(cls, lane=None, image=None, boot_timeout=120,
              ready_timeout=60, up=True, **lane_kwargs):
        """Bring `lane` (default: make_lane(**lane_kwargs)) up (unless
        `up` is False: a lane already up), boot a guest and connect. On
        failure everything is torn down again.
        """
        if lane is None:
            try:
                lane = make_lane(**lane_kwargs)
            except ConsoleError:
                raise
            except (errors.HarnessError, ValueError, OSError,
                    ImportError) as e:
                raise ConsoleError('cannot make the %s lane: %s' % (
                    lane_kwargs.get('provider', 'direct_qemu'), e))
        session = cls(_Owned(lane))
        try:
            if up:
                lane.up()
            session.boot(image=image, boot_timeout=boot_timeout,
                         ready_timeout=ready_timeout)
        except BaseException as e:
            session.close()
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise ConsoleError(session.explain(e, 'bringing the lane up'))
        return session

    @classmethod
    def attach(cls, workdir, own=False, ready_timeout=30):
        """Attach to the lane `kerbside-harness up` left in `workdir`."""
        session = cls(_Attached(workdir, own=own))
        try:
            session._connect_path(session.target.control_socket,
                                  ready_timeout)
        except BaseException as e:
            session.close(teardown=False)
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise ConsoleError(session.explain(e, 'attaching to %s'
                                               % workdir))
        return session

    @property
    def owned(self):
        return self.target.owned

    @property
    def redactor(self):
        return self.target.redactor

    # -- connection ----------------------------------------------------
    def _connect_path(self, path, ready_timeout):
        from kerbside_tempest_plugin.ryll import client as ryll_client
        client = ryll_client.ControlClient(path, resolve_key=keys.resolve)
        client.connect(timeout=ready_timeout)
        self._subscribe(client)
        waiting.wait_until(
            lambda: (lambda s: s.get('spice_connected') and
                     s.get('surfaces'))(client.status()),
            ready_timeout, 'a SPICE surface in ryll',
            seen=lambda: 'status %s' % client.last_status)
        self._start_stream(client)

    def _subscribe(self, client):
        accepted = client.subscribe(list(EVENTS))
        missing = [e for e in EVENTS if e not in accepted]
        if missing:
            raise ConsoleError('ryll %s does not offer event(s) %s' % (
                client.protocol_version, ', '.join(missing)))

    def _start_stream(self, client):
        self.client = client
        self.stream = cap.DigestStream(client, keep_png=False).start()
        self.since = 0
        self.serial_pos = 0

    def _disconnect(self):
        if self.stream is not None:
            self.stream.stop()
        if self.client is not None:
            try:
                self.client.close()
            except Exception:
                LOG.exception('closing the control client failed')
        self.stream = self.client = None

    def boot(self, image=None, boot_timeout=120, ready_timeout=60):
        """A fresh guest on the owned lane, ryll on it, connected."""
        if not self.owned or not isinstance(self.target, _Owned):
            raise ConsoleError(
                'this console is attached to %s, which `kerbside-harness '
                'up` started; a fresh guest needs `kerbside-harness down '
                '&& kerbside-harness up`, or a console that starts its own '
                'lane' % self.target.workdir)
        with self._lock:
            self._disconnect()
            lane = self.target.lane
            from kerbside_tempest_plugin.lane import lane as lane_mod
            # A cloud provider boots its configured image when None.
            if image is None and isinstance(lane, lane_mod.Lane):
                from kerbside_tempest_plugin import guest_images
                image = guest_images.sextant_image(
                    None, log_dir=os.path.join(lane.workdir, 'logs'))
            t = time.monotonic()
            guest = lane.boot_guest(image, banner=re.escape(contract.BANNER),
                                    timeout=boot_timeout)
            rp = lane.start_ryll(guest, timeout=30)
            self.rp = rp
            client = rp.connect(timeout=30, resolve_key=keys.resolve)
            self._subscribe(client)
            rp.wait_ready(client, timeout=ready_timeout)
            self._start_stream(client)
            self.started = {'guest': guest.name, 'route': lane.route,
                            'workdir': lane.workdir,
                            'boot_s': round(time.monotonic() - t, 2),
                            'boot_to_banner_s': _round(guest.boot_seconds)}
            return self.started

    def close(self, teardown=True):
        """Disconnect; tear the lane down when this session owns it.
        Idempotent; never raises. Returns the teardown report (or None).
        """
        with self._lock:
            if self._closed:
                return None
            self._closed = True
            self._disconnect()
            if not teardown:
                return None
            try:
                return self.target.teardown()
            except Exception:
                LOG.exception('lane teardown failed')
                return {'error': 'teardown failed (see the log)'}

    # -- error text ----------------------------------------------------
    def explain(self, exc, doing):
        """A readable, redacted message for `exc` raised while `doing`."""
        from kerbside_tempest_plugin.digest import errors as digest_errors
        from kerbside_tempest_plugin.ryll import errors as ryll_errors
        if isinstance(exc, keys.UnknownKey):
            text = '%s; key names are those of sextant/keys.py (%s), a ' \
                   'single character, or modifiers joined with + ' \
                   '(ctrl+alt+delete)' % (exc, _some_names())
        elif isinstance(exc, ryll_errors.RyllConnectionClosed) or (
                isinstance(exc, cap.StreamClosed)):
            text = '%s: the control connection closed (%s); %s' % (
                doing, exc, self._why_gone())
        elif isinstance(exc, (errors.HarnessError, digest_errors.DigestError,
                              ValueError, OSError)):
            text = '%s: %s' % (doing, exc)
            if self.client is not None and self.client.closed:
                text += '; %s' % self._why_gone()
        else:
            LOG.exception('unexpected error while %s', doing)
            text = '%s: unexpected %s: %s' % (doing, type(exc).__name__, exc)
        return self.redactor.redact(text)

    def _why_gone(self):
        ryll = self.target.ryll()
        guest = 'the guest is running' if self.target.guest_running() \
            else 'the guest is powered off (its hypervisor process exited)'
        if ryll['state'] == 'exited':
            r = 'ryll is gone (exit status %s)' % ryll.get('returncode') \
                if ryll.get('returncode') is not None else 'ryll is gone'
        else:
            r = 'ryll is %s' % ryll['state']
        hint = ''
        if not self.target.guest_running():
            hint = '; `boot` gives a fresh guest' if self.owned and \
                isinstance(self.target, _Owned) else ''
        return '%s; %s%s' % (r, guest, hint)

    def _need_client(self):
        if self.client is None or self.client.closed:
            reason = self.client.close_reason if self.client else \
                'never connected'
            raise ConsoleError('no live control connection (%s); %s' % (
                reason, self._why_gone()))
        return self.client

    # -- input verbs ---------------------------------------------------
    def key(self, names):
        """Press each key (or combo like ctrl+alt+delete) in turn."""
        if isinstance(names, str):
            names = names.split()
        if not names:
            raise UsageError('key needs at least one key name')
        combos = [parse_combo(n) for n in names]   # all checked first
        client = self._need_client()
        self.since = self.stream.mark()
        from kerbside_tempest_plugin.ryll import client as ryll_client
        sent = []
        pressed = False     # the current key's down reached ryll
        try:
            for name, (mods, main) in zip(names, combos):
                pressed = False
                held = []
                try:
                    for m in mods:
                        client.send_key(m, state='down')
                        held.append(m)
                    client.send_key(main, state='down')
                    pressed = True
                    time.sleep(client.key_gap)
                    client.send_key(ryll_client.release_code(main),
                                    state='up')
                finally:
                    for m in reversed(held):
                        client.send_key(ryll_client.release_code(m),
                                        state='up')
                sent.append(name)
        except ryll_client.RyllError as e:
            note = self._went_away(e) if pressed else None
            if note is None:
                raise
            # The Enter in Parked: the guest drains and powers off, and
            # ryll loses its input channel before the key-up.
            return {'keys': sent + [names[len(sent)]], 'note': note}
        return {'keys': list(names)}

    def _went_away(self, exc, timeout=5.0):
        """After a ryll error during a key: a note when the guest powered
        off or ryll left within `timeout` (the key went out first), else
        None (a real failure).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.client.closed or not self.target.guest_running():
                return self.redactor.redact(
                    'the console went away during the key (%s): %s' % (
                        exc, self._why_gone()))
            time.sleep(0.1)
        return None

    def type(self, text):
        """Type `text` key by key (Shift held where the US layout needs
        it); unlike paste, no paste_completed to wait for.
        """
        if not text:
            raise UsageError('type needs some text')
        strokes = keys.keystrokes(text)             # checked first
        client = self._need_client()
        self.since = self.stream.mark()
        from kerbside_tempest_plugin.ryll import client as ryll_client
        for code, shift in strokes:
            if shift:
                client.send_key(keys.LSHIFT, state='down')
            try:
                client.send_key(code)
            finally:
                if shift:
                    client.send_key(ryll_client.release_code(keys.LSHIFT),
                                    state='up')
        return {'typed': len(text)}

    def paste(self, text, char_delay_ms=contract.PASTE_CHAR_DELAY_MS):
        """ryll's paste; returns once ryll reports paste_completed."""
        if not text:
            raise UsageError('paste needs some text')
        client = self._need_client()
        self.since = self.stream.mark()
        t = time.monotonic()
        sent = client.paste(text, char_delay_ms=char_delay_ms)
        if sent != len(text):
            raise ConsoleError('ryll typed %r of the %d characters pasted'
                               % (sent, len(text)))
        return {'chars_sent': sent,
                'seconds': round(time.monotonic() - t, 2)}

    # -- screen verbs --------------------------------------------------
    def screenshot(self):
        """(png bytes, width, height) from ryll's copy of the screen."""
        shot = self._need_client().screenshot()
        return shot.png, shot.width, shot.height

    def shot(self, path=None):
        png, w, h = self.screenshot()
        self.shots += 1
        path = os.path.abspath(path or os.path.join(
            self.console_dir, 'shot-%03d.png' % self.shots))
        d = os.path.dirname(path)
        if d:
            os.makedirs(d, exist_ok=True)
        with open(path, 'wb') as f:
            f.write(png)
        return {'path': path, 'width': w, 'height': h, 'bytes': len(png)}

    def digest(self, save=None, timeout=10.0):
        """Decode the digest on the screen now (a fresh screenshot); while
        the screen shows none yet (the first frames after a boot or a mode
        switch), retry for up to `timeout` seconds.
        """
        from kerbside_tempest_plugin.digest import errors as digest_errors
        from kerbside_tempest_plugin.digest import frame
        deadline = time.monotonic() + timeout
        tries = 0
        while True:
            png, w, h = self.screenshot()
            tries += 1
            try:
                analysis = frame.analyse(png)
                break
            except digest_errors.QrNotFound as e:
                if time.monotonic() >= deadline:
                    raise ConsoleError(
                        'no digest on the screen after %.1f s (%d '
                        'screenshots of %dx%d; last: %s)' % (
                            timeout, tries, w, h, e))
                time.sleep(0.3)
        if save:
            save = os.path.abspath(save)
            with open(save, 'wb') as f:
                f.write(png)
        out = digest_json(analysis)
        out['scene'], out['scene_from'] = self.scene(analysis.digest)
        if save:
            out['saved'] = save
        return out

    def scene(self, digest=None):
        """(scene, how it is known): the `to` of the newest
        scene_transition seen, or awaiting while that channel's hash is
        still 0 (no transition since boot).
        """
        candidates = [digest.events] if digest is not None else []
        snap = self.stream.snapshot() if self.stream else []
        candidates += [d.events for d in reversed(snap)]
        for events in candidates:
            for e in events:
                if getattr(e, 'kind', None) == 'scene_transition':
                    return e.to_json().get('to'), 'scene_transition'
        last = digest if digest is not None else (
            snap[-1].digest if snap else None)
        if last is not None and not last.hashes.get('scene_transition'):
            return contract.AWAITING, 'no transition yet (hash 0)'
        return None, 'unknown: no scene_transition in any captured window'

    def wait(self, kind, fields=None, timeout=None, since=None,
             unless=()):
        """Wait for a digest showing a record of `kind` with `fields`,
        scanning from before the last input (or `since`). `unless`:
        (kind, fields) pairs that end the wait at once as a failure (a
        rejected paste while waiting for Parked).
        """
        self._need_client()
        timeout = self.step_timeout if timeout is None else timeout
        since = self.since if since is None else since
        pred = cap.shows(kind, **(fields or {}))
        stops = [cap.shows(k, **(f or {})) for k, f in unless]

        def accept(cd):
            return pred(cd) or any(p(cd) for p in stops)
        cd = self.stream.wait_for(accept, timeout, pred.__name__,
                                  since=since)
        if not pred(cd):
            hit = [p.__name__ for p in stops if p(cd)][0]
            raise ConsoleError(
                'waiting for %s, the guest showed %s instead (frame %d at '
                '%.2f s: %s)' % (pred.__name__, hit.replace('shows ', ''),
                                 cd.frame_counter, cd.at,
                                 '; '.join(cd.records_text())))
        return captured_json(cd)

    def watch(self, emit, count=None, timeout=None, stop=None):
        """emit(dict) for each new digest until `count`, `timeout`, the
        `stop` event, or the connection closing. Returns a summary.
        """
        self._need_client()
        pos = self.stream.mark()
        n = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        ended = 'count'
        while count is None or n < count:
            if stop is not None and stop.is_set():
                ended = 'stopped'
                break
            left = 1.0 if deadline is None else min(
                1.0, deadline - time.monotonic())
            if left <= 0:
                ended = 'timeout'
                break
            try:
                cd = self.stream.wait_for(lambda cd: True, left,
                                          'a new digest', since=pos)
            except cap.StreamClosed as e:
                ended = 'stream closed: %s' % self.explain(e, 'watching')
                break
            except cap.CaptureTimeout:
                continue
            pos = cd.index + 1
            n += 1
            emit(captured_json(cd))
        return {'digests': n, 'ended': ended}

    # -- serial --------------------------------------------------------
    def _serial(self):
        serial = self.target.serial
        if serial is None:
            raise ConsoleError('no guest serial to read')
        return serial

    def serial(self, new_only=False):
        text = self._serial().read()
        start = self.serial_pos if new_only else 0
        self.serial_pos = len(text)
        return {'text': self.redactor.redact(text[start:]),
                'chars': len(text), 'from': start,
                'guest_running': self.target.guest_running()}

    def serial_follow(self, emit, timeout=None, stop=None):
        """emit({'text': chunk}) as serial output arrives, until the guest
        stops, `timeout` or `stop`.
        """
        serial = self._serial()
        deadline = None if timeout is None else time.monotonic() + timeout
        pos = len(serial.read())
        chunks = 0
        while True:
            running = self.target.guest_running()
            text = serial.read()
            if len(text) > pos:
                emit({'text': self.redactor.redact(text[pos:])})
                pos = len(text)
                chunks += 1
            elif not running:
                ended = 'guest stopped'
                break
            if stop is not None and stop.is_set():
                ended = 'stopped'
                break
            if deadline is not None and time.monotonic() >= deadline:
                ended = 'timeout'
                break
            time.sleep(0.2)
        self.serial_pos = pos
        return {'chunks': chunks, 'ended': ended}

    def drain(self, timeout=DRAIN_TIMEOUT, walk=None):
        """Wait for the guest's serial drain (after the Enter in Parked),
        parse it, and judge it against walk `walk` (default: the last walk
        run here, else canonical) and the digests captured.
        """
        from kerbside_tempest_plugin.scenario import checks
        from kerbside_tempest_plugin.scenario import walk as walk_mod
        from kerbside_tempest_plugin.sextant import drain as drain_mod
        serial = self._serial()
        try:
            serial.wait_for(walk_mod.DRAIN_END_RE, timeout)
        except errors.HarnessError as e:
            raise ConsoleError(
                'no serial drain within %.0f s (the guest drains its event '
                'log when Enter is pressed in Parked): %s' % (timeout, e))
        parsed = drain_mod.parse(serial.read())
        # After the drain the guest powers off (ACPI); say whether it did.
        deadline = time.monotonic() + 30
        while self.target.guest_running() and time.monotonic() < deadline:
            time.sleep(0.2)
        walk = walk or self.walk_name or 'canonical'
        results = [checks.check_drain_sequence(parsed,
                                               walk_mod.expected(walk))]
        digests = self.stream.snapshot() if self.stream else []
        if digests:
            results.append(checks.check_chains(parsed.to_events(), digests))
        return {
            'records': len(parsed.records),
            'complete': parsed.complete,
            'types': [r.type for r in parsed.records],
            'refresh_stats': dict(parsed.refresh_stats.fields)
            if parsed.refresh_stats is not None else None,
            'walk': walk,
            'powered_off': not self.target.guest_running(),
            'checks': [{'name': r.name, 'passed': r.passed,
                        'message': r.message()} for r in results],
            'passed': all(r.passed for r in results),
        }

    # -- status --------------------------------------------------------
    def fault(self, spec=None, clear=False, console=None):
        """Arm `spec` (spice.faults) on the lane's fault relay, clear its
        faults, or (neither) show what it armed, fired and saw.
        """
        from kerbside_tempest_plugin.lane import relay as lane_relay
        op = 'clear' if clear else ('arm' if spec else 'status')
        answers = lane_relay.command(self.target.workdir, op, spec, console)
        bad = [a for a in answers if not a.get('ok')]
        if bad:
            raise ConsoleError('fault: %s' % bad[0].get('error'))
        return answers[0] if len(answers) == 1 else {'relays': answers}

    def status(self):
        out = {'workdir': self.target.workdir, 'route': self.target.route,
               'owned': self.owned, 'ryll': self.target.ryll(),
               'guest': self.target.guest_info()}
        c = self.client
        out['control'] = None if c is None else {
            'path': c.path, 'closed': c.closed,
            'close_reason': c.close_reason,
            'protocol_version': c.protocol_version}
        if c is not None and not c.closed:
            try:
                st = c.status(timeout=5)
                out['spice'] = {'connected': st.get('spice_connected'),
                                'surfaces': st.get('surfaces')}
            except Exception as e:
                out['spice'] = {'error': self.explain(e, 'status')}
        if self.stream is not None:
            s = self.stream.summary()
            out['capture'] = {k: s.get(k) for k in (
                'digests_total', 'captures_total', 'decode_failures_total',
                'surface_drawn', 'closed_reason')}
            if s.get('last'):
                out['capture']['last_frame'] = s['last']['frame_counter']
            out['scene'] = self.scene()[0]
        return out

    # -- walks ---------------------------------------------------------
    def walk(self, name, emit=None, drain=True):
        """Run scenario walk `name` beat by beat (emit(beat dict) as each
        lands), then read and judge the drain.
        """
        from kerbside_tempest_plugin.scenario import walk as walk_mod
        if name not in walk_mod.WALKS:
            raise UsageError('unknown walk %r (known: %s)' % (
                name, ', '.join(sorted(walk_mod.WALKS))))
        client = self._need_client()
        self.walk_name = name
        walker = walk_mod.Walker(
            client, self.stream, None, step_timeout=self.step_timeout,
            log=LOG.info, on_beat=None if emit is None else
            (lambda b: emit(beat_json(b))))
        t = time.monotonic()
        try:
            walk_mod.run_walk(name, walker)
        except AssertionError as e:
            raise ConsoleError('walk %s failed at beat %s: %s' % (
                name, walker.beats[-1].name if walker.beats else '?', e))
        out = {'walk': name, 'beats': len(walker.beats),
               'walk_s': round(time.monotonic() - t, 2)}
        if drain:
            out['drain'] = self.drain(walk=name)
            if not out['drain']['passed']:
                raise ConsoleError('walk %s: the drain failed its checks: %s'
                                   % (name, '; '.join(
                                       c['message'] for c in
                                       out['drain']['checks']
                                       if not c['passed'])))
        return out


# --------------------------------------------------------------- helpers


def parse_combo(name):
    """'ctrl+alt+delete' -> ([modifier codes], main code); a shifted
    character ('A', '{') adds LSHIFT. Raises keys.UnknownKey.
    """
    if not isinstance(name, str) or not name:
        raise keys.UnknownKey('not a key name: %r' % (name,))
    parts = [name] if name == '+' or '+' not in name.strip('+') \
        else name.split('+')
    if any(not p for p in parts):
        raise keys.UnknownKey('malformed key combination %r' % name)
    mods = [keys.scancode(p) for p in parts[:-1]]
    main = parts[-1]
    code = keys.scancode(main)
    if keys.needs_shift(main) and keys.LSHIFT not in mods:
        mods.append(keys.LSHIFT)
    return mods, code


def _some_names():
    return ', '.join(sorted(n for n in keys.NAMED if len(n) < 7)[:20]) + \
        ', ...'


def _round(v, n=3):
    return None if v is None else round(v, n)


def digest_json(analysis):
    """A FrameAnalysis as the console prints it."""
    d = analysis.digest
    return {
        'frame_counter': d.frame_counter,
        'frame_size': list(analysis.frame_size),
        'origin': list(analysis.origin),
        'method': analysis.method,
        'records': [cap.describe_event(e) for e in d.events],
        'events': [e.to_json() for e in d.events],
        'hashes': {k: '0x%08x' % v for k, v in d.hashes.items()},
        'framebuffer_hash': '0x%08x' % d.framebuffer_hash,
        'framebuffer_hash_computed': None
        if analysis.framebuffer_hash_computed is None
        else '0x%08x' % analysis.framebuffer_hash_computed,
        'framebuffer_hash_ok': analysis.framebuffer_hash_ok,
    }


def captured_json(cd):
    """A scenario.capture.CapturedDigest as the console prints it."""
    out = digest_json(cd.analysis)
    out['at_s'] = round(cd.at, 3)
    out['index'] = cd.index
    return out


def beat_json(beat):
    out = {'beat': beat.name, 'ok': beat.ok, 'what': beat.what,
           'elapsed_s': _round(beat.elapsed, 2),
           'frame_counter': beat.frame_counter,
           'records': beat.records}
    for k in ('inferred', 'note', 'error'):
        if getattr(beat, k):
            out[k] = getattr(beat, k)
    return out


def dumps(obj, redactor=None):
    """One JSON line, with every known secret redacted."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return redactor.redact(text) if redactor is not None else text

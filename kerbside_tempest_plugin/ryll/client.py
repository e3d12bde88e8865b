"""A client for ryll's control socket (protocol 1.x, NDJSON over Unix).

Standard library only, usable without tempest. The facts this is written
against are in docs/contracts/ryll-control-socket.md (ryll 0.3.0 from PyPI,
protocol 1.5); the design notes are in docs/plans/ryll-control-client.md.

Threading model: one reader thread per connection reads the socket in
chunks, splits on ``\\n`` and routes each line: replies go to the waiting
request (matched by id), events go to whoever waits for them, else to a
bounded queue, and to every registered listener. Any thread may call any
method; writes are serialised by a lock.
"""

import base64
import collections
import errno
import json
import logging
import socket
import threading
import time

from kerbside_tempest_plugin.ryll import errors as ryll_errors
from kerbside_tempest_plugin.ryll import reader
from kerbside_tempest_plugin.ryll import values

LOG = logging.getLogger(__name__)

PROTOCOL_VERSION = '1.5'
PROTOCOL_MAJOR = 1
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
# ryll cuts a socket paste to this many characters without an error.
PASTE_MAX_CHARS = 4096
# The guest polls its keyboard every 50 ms; a 20 ms paste lost characters
# under load (docs/plans/sextant-scenario.md), so paste at the poll rate.
PASTE_CHAR_DELAY_MS = 50
# A 1280x800 RGBA screenshot is ~5.5 MB of base64; leave lots of room.
DEFAULT_MAX_LINE = 64 * 1024 * 1024
DEFAULT_EVENT_QUEUE = 10000

# The errors and values, importable from here too (ryll.client.RyllError).
RyllError = ryll_errors.RyllError
RyllRpcError = ryll_errors.RyllRpcError
RyllBusy = ryll_errors.RyllBusy
RyllTimeout = ryll_errors.RyllTimeout
RyllConnectionClosed = ryll_errors.RyllConnectionClosed
RyllProtocolError = ryll_errors.RyllProtocolError
RyllPasteFailed = ryll_errors.RyllPasteFailed
RyllUnsupported = ryll_errors.RyllUnsupported
Event = values.Event
Screenshot = values.Screenshot
SubscribeResult = values.SubscribeResult
_Pending = reader._Pending
_Waiter = reader._Waiter
_excerpt = reader._excerpt
_as_predicate = reader._as_predicate


def release_code(code):
    """The key-up code ryll is sent for make code ``code``.

    One-byte set-1 codes get the break bit (make|0x80), which ryll 0.3.0
    accepts for ``up``. Extended (0xE0NN) codes are sent as the make code:
    ryll sets the break bit itself, and the 0xE0NN|0x80 form is unverified.
    """
    if code <= 0x7f:
        return code | 0x80
    return code


def check_scancode(code):
    """`code` if it is an int scancode ryll accepts (0..65535)."""
    if isinstance(code, bool) or not isinstance(code, int):
        raise TypeError('key must be an int scancode or a key name, got %r'
                        % (code,))
    if not 0 <= code <= 0xffff:
        raise ValueError('scancode %r is outside 0..65535' % code)
    return code


class ControlClient(reader.ReaderLoop):
    """Client for one ryll control socket.

    Typical use::

        with ControlClient(path) as c:
            c.connect(timeout=10)          # retries `busy`, sends hello
            c.subscribe(['surface_drawn'])
            c.send_key('Return')
            c.paste('echo hi\\n')
            shot = c.screenshot()

    ``connect()`` sends ``hello`` itself (it has to: a refused connection
    is only visible once something is read, and hello must come first).
    """

    def __init__(self, path, client_name='kerbside-tempest-plugin',
                 default_timeout=10.0, max_line=DEFAULT_MAX_LINE,
                 event_queue_size=DEFAULT_EVENT_QUEUE, key_gap=0.04,
                 resolve_key=None):
        self.path = str(path)
        # Key names are the guest's business (sextant.keys, above this
        # package): a caller that sends names passes the resolver, e.g.
        # resolve_key=sextant.keys.resolve. Without one, ints only.
        self.resolve_key = resolve_key
        self.client_name = client_name
        self.default_timeout = default_timeout
        self.max_line = max_line
        self.event_queue_size = event_queue_size
        self.key_gap = key_gap
        self._write_lock = threading.Lock()
        self._lock = threading.Lock()
        self._listeners = []
        self._paste_lock = threading.Lock()
        self._sock = None
        self._reader = None
        self._reset()

    # -- state

    def _reset(self):
        self._next_id = 1
        self._pending = collections.OrderedDict()
        self._waiters = []
        self._events = collections.deque()
        self._event_seq = 0
        self._close_info = None       # (cls, message, kwargs) once closed
        self._closing = False
        self._refusal = None          # id-less error seen with nothing open
        self.connected_at = None
        self.event_counts = collections.Counter()
        self.dropped_total = 0        # sum of ryll's `dropped` counts
        self.dropped_reports = 0      # number of `dropped` events
        self.local_dropped_total = 0  # evicted from our own bounded queue
        self.malformed_total = 0
        self.malformed_lines = collections.deque(maxlen=20)
        self.orphan_replies = 0
        self.listener_errors = 0
        self.last_status = None
        self.last_status_at = None
        self.server_name = None
        self.protocol_version = None
        self.supported_methods = ()
        self.supported_events = ()
        self.hello_result = None
        self._subscribed = set()
        self.rejected_events = set()
        self._unfinished_paste = None

    @property
    def dropped(self):
        """Events ryll reported dropped; reports can arrive late (§0.10)."""
        return self.dropped_total

    @property
    def closed(self):
        return self._close_info is not None

    @property
    def close_reason(self):
        return self._close_info[1] if self._close_info else None

    @property
    def subscribed(self):
        return frozenset(self._subscribed)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = ('closed: %s' % self.close_reason if self.closed else
                 'open' if self._sock is not None else 'not connected')
        return '<ControlClient %s %s>' % (self.path, state)

    # -- connecting

    def connect(self, timeout=10.0, hello=True, abort=None):
        """Open the socket and (by default) say hello, within ``timeout``.

        ``abort`` (optional) is asked between attempts; a true answer (a
        reason, e.g. "ryll exited with status 1") ends the wait at once
        with RyllConnectionClosed instead of retrying to the deadline.

        ryll answers a second client with one id-less ``busy`` line and
        closes it, and a reconnect straight after a close loses that race
        about 40% of the time; so ``busy``, EOF before the hello reply, and
        a missing socket file are all retried with back-off until the
        deadline.
        """
        deadline = time.monotonic() + timeout
        start = time.monotonic()
        tries = collections.Counter()
        last = None
        delay = 0.02
        while True:
            remaining = deadline - time.monotonic()
            try:
                self._open(max(remaining, 0.01))
                if hello:
                    self.hello(timeout=max(deadline - time.monotonic(),
                                           0.01))
                return self
            except RyllBusy as e:
                tries['busy'] += 1
                last = e
            except RyllConnectionClosed as e:
                tries['closed before hello reply'] += 1
                last = e
            except (FileNotFoundError, ConnectionRefusedError) as e:
                tries['no listener (%s)' % errno.errorcode.get(
                    e.errno, e.errno)] += 1
                last = e
            except RyllTimeout as e:
                tries['hello timed out'] += 1
                last = e
            except BaseException:
                self.close()
                raise
            self.close()
            reason = abort() if abort else None
            if reason:
                raise RyllConnectionClosed(
                    'gave up connecting to ryll control socket %s after '
                    '%.1f s (%d attempts: %s): %s; last error: %s' % (
                        self.path, time.monotonic() - start,
                        sum(tries.values()), ', '.join(
                            '%s x%d' % kv for kv in sorted(tries.items())),
                        reason, last), reason=reason)
            if time.monotonic() + delay >= deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
        raise RyllTimeout(
            'could not connect to ryll control socket %s within %.1f s '
            '(%d attempts: %s); last error: %s' % (
                self.path, time.monotonic() - start, sum(tries.values()),
                ', '.join('%s x%d' % kv for kv in sorted(tries.items())),
                last),
            waited_for='connection', elapsed=time.monotonic() - start,
            seen=dict(tries))

    def _open(self, timeout):
        self.close()
        self._reset()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(self.path)
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self.connected_at = time.monotonic()
        self._reader = threading.Thread(
            target=self._read_loop, args=(sock,),
            name='ryll-control-reader', daemon=True)
        self._reader.start()

    def hello(self, timeout=None):
        """Send ``hello`` (protocol 1.5) and record the capabilities.

        Any server with major version 1 is accepted; the minor version is
        recorded, never asserted. Check ``supported_methods`` and
        ``supported_events`` instead.
        """
        result = self.call('hello', {'client_name': self.client_name,
                                     'protocol_version': PROTOCOL_VERSION},
                           timeout=timeout)
        if not isinstance(result, dict):
            raise RyllProtocolError('hello result is not an object: %s'
                                    % _excerpt(result))
        version = str(result.get('protocol_version', ''))
        try:
            major = int(version.split('.')[0])
        except ValueError:
            major = None
        if major != PROTOCOL_MAJOR:
            self.close()
            raise RyllProtocolError(
                'ryll speaks protocol %r; this client needs major version %d'
                % (version, PROTOCOL_MAJOR))
        self.hello_result = result
        self.server_name = result.get('server_name')
        self.protocol_version = version
        self.supported_methods = tuple(result.get('supported_methods') or ())
        self.supported_events = tuple(result.get('supported_events') or ())
        return result

    def close(self):
        """Shut the socket down and free ryll's single client slot.

        ``shutdown(SHUT_RDWR)`` comes first: that is what ryll sees as the
        client going away (§0.8; this module never uses ``makefile()``).
        Pending and later calls raise RyllConnectionClosed.
        """
        with self._lock:
            sock = self._sock
            self._closing = True
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(5.0)
        # A writer blocked in sendall was woken by the shutdown; let it
        # leave before the descriptor goes away.
        got_write_lock = self._write_lock.acquire(timeout=2.0)
        try:
            sock.close()
        except OSError:
            pass
        finally:
            if got_write_lock:
                self._write_lock.release()
        with self._lock:
            self._sock = None
        self._mark_closed(RyllConnectionClosed,
                          'control connection closed by this client',
                          reason='closed by client')

    # -- requests

    def _alloc_id(self):
        with self._lock:
            request_id = self._next_id
            self._next_id += 1
        return request_id

    def _closed_error(self):
        cls, message, kwargs = self._close_info
        return cls(message, **kwargs) if cls is not RyllBusy else RyllBusy(
            kwargs.get('code', 'busy'), message)

    def _send(self, method, params, request_id=None):
        if request_id is None:
            request_id = self._alloc_id()
        line = json.dumps({'id': request_id, 'method': method,
                           'params': {} if params is None else params},
                          separators=(',', ':'), ensure_ascii=False)
        data = line.encode('utf-8') + b'\n'
        pending = _Pending(request_id, method)
        with self._write_lock:
            with self._lock:
                if self._close_info is not None:
                    raise self._closed_error()
                if self._sock is None:
                    raise RyllConnectionClosed('not connected: call connect()'
                                               ' first', reason='not open')
                sock = self._sock
                self._pending[request_id] = pending
            try:
                sock.sendall(data)
            except OSError as e:
                # The reader usually knows why (a `busy` line, EOF): let it
                # finish so the caller gets that rather than EPIPE.
                reader = self._reader
                if reader is not None:
                    reader.join(1.0)
                with self._lock:
                    self._pending.pop(request_id, None)
                if self._close_info is not None:
                    raise self._closed_error()
                raise RyllConnectionClosed(
                    'writing %s to ryll failed: %s' % (method, e),
                    reason=str(e))
        return pending

    def _wait_reply(self, pending, timeout, snap):
        timeout = self.default_timeout if timeout is None else timeout
        if not pending.done.wait(timeout):
            with self._lock:
                if not pending.done.is_set():
                    # Keep it in the table: ryll answers in order, so an
                    # id-less error must still line up with the right line.
                    pending.abandoned = True
                    if pending.request_id in self._pending:
                        self._trim_abandoned()
            if not pending.done.is_set():
                raise self._timeout(
                    'no reply to %s (id %s)' % (pending.method,
                                                pending.request_id),
                    snap)
        if pending.error is not None:
            raise pending.error
        return pending.result

    def _trim_abandoned(self):
        abandoned = [k for k, p in self._pending.items() if p.abandoned]
        for k in abandoned[:-1000]:
            del self._pending[k]

    def call(self, method, params=None, timeout=None):
        """Send one request and return its ``result`` (or raise)."""
        snap = self._snapshot()
        return self._wait_reply(self._send(method, params), timeout, snap)

    def require_method(self, method):
        if self.hello_result is not None and \
                method not in self.supported_methods:
            raise RyllUnsupported(
                'ryll (protocol %s) does not offer %r; it offers %s' % (
                    self.protocol_version, method,
                    ', '.join(self.supported_methods)))

    def status(self, timeout=None):
        """``status``: spice_connected, agent_connected, surfaces."""
        result = self.call('status', {}, timeout=timeout)
        with self._lock:
            self.last_status = result
            self.last_status_at = time.monotonic()
        return result

    def stats(self, timeout=None):
        self.require_method('stats')
        return self.call('stats', {}, timeout=timeout)

    def subscribe(self, names, strict=False, timeout=None):
        """Subscribe; returns the accepted names (``.dropped``: ignored).

        ryll silently leaves out names it does not know (``digest_updated``
        on the PyPI build); those are logged, kept in ``rejected_events``,
        and raise RyllUnsupported when ``strict``.
        """
        names = [names] if isinstance(names, str) else list(names)
        result = self.call('subscribe', {'events': names}, timeout=timeout)
        accepted = list(result.get('subscribed') or ())
        dropped = [n for n in names if n not in accepted]
        with self._lock:
            self._subscribed.update(accepted)
            self.rejected_events.update(dropped)
        if dropped:
            LOG.warning('ryll ignored subscription to %s (it offers %s)',
                        ', '.join(dropped), ', '.join(self.supported_events))
            if strict:
                raise RyllUnsupported('ryll ignored subscription to %s'
                                      % ', '.join(dropped))
        return SubscribeResult(accepted, dropped)

    def unsubscribe(self, names, timeout=None):
        names = [names] if isinstance(names, str) else list(names)
        result = self.call('unsubscribe', {'events': names}, timeout=timeout)
        removed = list(result.get('unsubscribed') or ())
        with self._lock:
            self._subscribed.difference_update(names)
        return removed

    def _ensure_subscribed(self, names, why):
        missing = [n for n in names if n not in self._subscribed]
        if missing:
            result = self.subscribe(missing)
            if result.dropped:
                raise RyllUnsupported('%s needs events %s, which ryll does '
                                      'not offer' % (why, result.dropped))

    def send_key(self, key, state=None, gap=None, timeout=None):
        """Send a key by AT set-1 scancode, or by name or character when
        the client has a ``resolve_key`` (sextant.keys.resolve).

        With ``state=None`` (the default) this sends an explicit ``down``,
        waits ``gap`` seconds (default ``key_gap``, 40 ms), then ``up`` with
        the release code. ``state`` may also be ``down``, ``up`` or
        ``press`` (sent as given, with the make code). Returns the
        ``time.monotonic()`` just before the first write, for latency work.
        """
        if isinstance(key, str) and key:
            if self.resolve_key is None:
                raise RyllError(
                    'key name %r needs a resolver: ControlClient(..., '
                    'resolve_key=sextant.keys.resolve), or pass an int '
                    'scancode' % key)
            key = self.resolve_key(key)
        code = check_scancode(key)
        gap = self.key_gap if gap is None else gap
        started = time.monotonic()
        if state is None:
            self.call('send_key', {'scancode': code, 'state': 'down'},
                      timeout=timeout)
            try:
                if gap:
                    time.sleep(gap)
            finally:   # never leave a key held down
                self.call('send_key', {'scancode': release_code(code),
                                       'state': 'up'}, timeout=timeout)
        else:
            if state not in ('down', 'up', 'press'):
                raise ValueError('state must be down, up, press or None')
            self.call('send_key', {'scancode': code, 'state': state},
                      timeout=timeout)
        return started

    def paste(self, text, char_delay_ms=PASTE_CHAR_DELAY_MS, timeout=None):
        """Type ``text`` as keystrokes; return ``chars_sent`` once done.

        Waits for the ``paste_completed`` whose ``request_id`` is this
        request's id, or raises RyllPasteFailed on the matching
        ``paste_failed``. ryll answers ``ok`` at once and would silently
        ignore the paste if it ran without --enable-paste-as-keystrokes or
        while another paste is typing, so the wait always has a deadline
        (default: generous for the text length). Pastes from this client
        are serialised. Text over 4096 characters is refused here, since
        ryll would cut it silently.
        """
        if len(text) > PASTE_MAX_CHARS:
            raise ValueError('paste of %d characters: ryll silently cuts '
                             'pastes to %d; split the text'
                             % (len(text), PASTE_MAX_CHARS))
        if char_delay_ms is not None and (
                not isinstance(char_delay_ms, int) or char_delay_ms < 0):
            raise ValueError('char_delay_ms must be a non-negative int')
        if timeout is None:
            per_char = ((char_delay_ms if char_delay_ms is not None else 10)
                        + 3) / 1000.0
            timeout = 5.0 + 2 * len(text) * per_char
        self._ensure_subscribed(('paste_completed', 'paste_failed'), 'paste')
        deadline = time.monotonic() + timeout
        with self._paste_lock:
            request_id = self._alloc_id()

            def is_ours(ev):
                return (ev.name in ('paste_completed', 'paste_failed')
                        and ev.data.get('request_id') == request_id)

            waiter = self._add_waiter(is_ours)
            snap = self._snapshot()
            try:
                params = {'text': text}
                if char_delay_ms is not None:
                    params['char_delay_ms'] = char_delay_ms
                self._wait_reply(self._send('paste', params, request_id),
                                 max(deadline - time.monotonic(), 0.01),
                                 snap)
                earlier = self._unfinished_paste
                hint = (
                    'ryll answers ok but silently ignores a paste when it '
                    'was started without --enable-paste-as-keystrokes, or '
                    'while another paste is still typing')
                if earlier is not None:
                    hint += ('; an earlier paste from this client (id %s) '
                             'never completed and may still be typing'
                             % earlier)
                try:
                    event = self._wait_waiter(
                        waiter, deadline, snap,
                        'paste_completed/paste_failed for paste id %s '
                        '(%d chars, char_delay_ms=%s; %s)' % (
                            request_id, len(text), char_delay_ms, hint))
                except RyllTimeout:
                    self._unfinished_paste = request_id
                    raise
            finally:
                self._remove_waiter(waiter)
        self._unfinished_paste = None
        if event.name == 'paste_failed':
            raise RyllPasteFailed(event.data.get('reason'), request_id)
        return event.data.get('chars_sent')

    def screenshot(self, fmt='png', surface_id=None, timeout=30.0):
        """Take a screenshot from ryll's own copy of the screen."""
        params = {'format': fmt}
        if surface_id is not None:
            params['surface_id'] = surface_id
        started = time.monotonic()
        result = self.call('screenshot', params, timeout=timeout)
        try:
            data = base64.b64decode(result['data_base64'], validate=True)
            width = int(result['width'])
            height = int(result['height'])
            got_fmt = result.get('format', fmt)
        except (KeyError, TypeError, ValueError) as e:
            raise RyllProtocolError('bad screenshot result (%s): %s'
                                    % (e, _excerpt(result)))
        if got_fmt == 'png' and not data.startswith(PNG_MAGIC):
            raise RyllProtocolError('screenshot claims png but starts %r'
                                    % data[:8])
        if got_fmt == 'rgba' and len(data) != width * height * 4:
            raise RyllProtocolError(
                'rgba screenshot is %d bytes, expected %dx%dx4'
                % (len(data), width, height))
        return Screenshot(width, height, got_fmt, data,
                          time.monotonic() - started)

    def clipboard_set(self, text, timeout=None):
        self.require_method('clipboard_set')
        return self.call('clipboard_set', {'text': text}, timeout=timeout)

    def clipboard_get(self, timeout=None):
        self.require_method('clipboard_get')
        return self.call('clipboard_get', {}, timeout=timeout).get('text')

    def resize(self, width, height, timeout=None):
        self.require_method('resize')
        return self.call('resize', {'width': width, 'height': height},
                         timeout=timeout)

    # -- events

    def add_listener(self, fn):
        """Call ``fn(event)`` for every event, from the reader thread.

        Listeners must be quick and must not call back into this client
        synchronously (the reader would wait on itself). An exception from
        a listener is logged and counted (``listener_errors``) and never
        stops the reader.
        """
        with self._lock:
            self._listeners.append(fn)

    def remove_listener(self, fn):
        with self._lock:
            try:
                self._listeners.remove(fn)
            except ValueError:
                pass

    def _add_waiter(self, predicate):
        waiter = _Waiter(predicate)
        with self._lock:
            self._waiters.append(waiter)
        return waiter

    def _remove_waiter(self, waiter):
        with self._lock:
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass

    def _wait_waiter(self, waiter, deadline, snap, what):
        remaining = deadline - time.monotonic()
        if not waiter.done.wait(max(remaining, 0)):
            self._remove_waiter(waiter)
            if not waiter.done.is_set():
                raise self._timeout(what, snap)
        if waiter.error is not None:
            raise waiter.error
        return waiter.event

    def wait_for_event(self, predicate, timeout, what=None):
        """Return (and take from the queue) the first matching event.

        ``predicate`` is an event name, a collection of names, or a
        callable taking an Event. Queued events are scanned first, oldest
        first; then the call waits for new ones until ``timeout``. An EOF
        while waiting raises RyllConnectionClosed at once.
        """
        pred, default_what = _as_predicate(predicate)
        what = what or default_what
        snap = self._snapshot()
        deadline = time.monotonic() + timeout
        with self._lock:
            for ev in self._events:
                if pred(ev):
                    self._events.remove(ev)
                    return ev
            if self._close_info is not None:
                raise self._closed_error()
            waiter = _Waiter(pred)
            self._waiters.append(waiter)
        try:
            return self._wait_waiter(waiter, deadline, snap, what)
        finally:
            self._remove_waiter(waiter)

    def drain_events(self, predicate=None):
        """Take and return every queued event (matching ``predicate``)."""
        pred = _as_predicate(predicate)[0] if predicate is not None else None
        with self._lock:
            if pred is None:
                taken = list(self._events)
                self._events.clear()
            else:
                taken = [ev for ev in self._events if pred(ev)]
                keep = [ev for ev in self._events if not pred(ev)]
                self._events = collections.deque(keep)
        return taken

    def pending_events(self):
        with self._lock:
            return list(self._events)

    # -- diagnostics

    def _snapshot(self):
        with self._lock:
            return {'at': time.monotonic(),
                    'counts': collections.Counter(self.event_counts),
                    'dropped': self.dropped_total,
                    'local_dropped': self.local_dropped_total,
                    'malformed': self.malformed_total}

    def _timeout(self, what, snap):
        with self._lock:
            seen = self.event_counts - snap['counts']
            dropped = self.dropped_total - snap['dropped']
            local = self.local_dropped_total - snap['local_dropped']
            malformed = self.malformed_total - snap['malformed']
            status = self.last_status
            status_age = (time.monotonic() - self.last_status_at
                          if self.last_status_at else None)
            in_flight = sum(1 for p in self._pending.values()
                            if not p.abandoned)
            state = ('closed: %s' % self._close_info[1]
                     if self._close_info else 'open')
        elapsed = time.monotonic() - snap['at']
        parts = ['timed out after %.2f s waiting for %s' % (elapsed, what)]
        if seen:
            parts.append('events seen while waiting: %s' % ', '.join(
                '%s=%d' % kv for kv in sorted(seen.items())))
        else:
            parts.append('no events seen while waiting (subscribed: %s)'
                         % (', '.join(sorted(self._subscribed)) or 'none'))
        if dropped:
            parts.append('ryll reported %d dropped events' % dropped)
        elif self.dropped_total:
            parts.append('ryll reported %d dropped events earlier (reports '
                         'can arrive late)' % self.dropped_total)
        if local:
            parts.append('%d events evicted from the local queue' % local)
        if malformed:
            parts.append('%d malformed lines (last: %s)' % (
                malformed, self.malformed_lines[-1]
                if self.malformed_lines else '?'))
        if status is not None:
            parts.append('last status (%.1f s ago): %s' % (
                status_age, json.dumps(status, sort_keys=True)))
        else:
            parts.append('no status fetched yet')
        parts.append('%d requests in flight' % in_flight)
        parts.append('connection %s' % state)
        return RyllTimeout('; '.join(parts), waited_for=what,
                           elapsed=elapsed, seen=dict(seen))

    def diagnostics(self):
        """A dict of counters for reports and timeout messages."""
        with self._lock:
            return {
                'path': self.path,
                'state': self.close_reason or ('open' if self._sock
                                               else 'not connected'),
                'protocol_version': self.protocol_version,
                'event_counts': dict(self.event_counts),
                'queued_events': len(self._events),
                'dropped_total': self.dropped_total,
                'dropped_reports': self.dropped_reports,
                'local_dropped_total': self.local_dropped_total,
                'malformed_total': self.malformed_total,
                'malformed_lines': list(self.malformed_lines),
                'orphan_replies': self.orphan_replies,
                'listener_errors': self.listener_errors,
                'last_status': self.last_status,
            }

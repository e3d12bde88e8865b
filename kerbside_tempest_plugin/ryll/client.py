"""A client for ryll's control socket (protocol 1.x, NDJSON over Unix).

Standard library only, usable without tempest. The facts this is written
against are in ../shared/spec/ryll-control-socket.md (ryll 0.3.0 from PyPI,
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
from dataclasses import dataclass, field

from kerbside_tempest_plugin.common import errors

LOG = logging.getLogger(__name__)

PROTOCOL_VERSION = '1.5'
PROTOCOL_MAJOR = 1
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
# ryll cuts a socket paste to this many characters without an error.
PASTE_MAX_CHARS = 4096
# A 1280x800 RGBA screenshot is ~5.5 MB of base64; leave lots of room.
DEFAULT_MAX_LINE = 64 * 1024 * 1024
DEFAULT_EVENT_QUEUE = 10000
_RECV_CHUNK = 256 * 1024
_EXCERPT = 200


# ---------------------------------------------------------------- errors


class RyllError(errors.HarnessError):
    """Base class for everything this module raises."""


class RyllRpcError(RyllError):
    """ryll answered a request with ``ok: false``.

    ``code`` is ryll's stable error code (unknown codes are kept as they
    are); ``message`` is ryll's human text, which is not a stable API.
    """

    def __init__(self, code, message, method=None, request_id=None):
        self.code = code
        self.message = message
        self.method = method
        self.request_id = request_id
        where = ' to %s (id %s)' % (method, request_id) if method else ''
        super().__init__('ryll error%s: %s: %s' % (where, code, message))


class RyllBusy(RyllRpcError):
    """ryll refused the connection: another client holds the socket."""


class RyllTimeout(RyllError, errors.HarnessTimeout):
    """A wait ran past its deadline; the message says what was seen."""

    def __init__(self, message, waited_for=None, elapsed=None, seen=None):
        self.waited_for = waited_for
        self.elapsed = elapsed
        self.seen = seen or {}
        super().__init__(message)


class RyllConnectionClosed(RyllError):
    """The control connection is gone (EOF, reset, or closed by us)."""

    def __init__(self, message, reason=None):
        self.reason = reason
        super().__init__(message)


class RyllProtocolError(RyllError):
    """ryll sent something this client cannot make sense of."""

    def __init__(self, message, line=None):
        self.line = line
        super().__init__(message)


class RyllPasteFailed(RyllError):
    """ryll reported ``paste_failed`` for our paste."""

    def __init__(self, reason, request_id=None):
        self.reason = reason
        self.request_id = request_id
        super().__init__('paste (id %s) failed: %s' % (request_id, reason))


class RyllUnsupported(RyllError):
    """The server does not offer a method or event we need."""


# ---------------------------------------------------------------- values


@dataclass(eq=False)
class Event:
    """One event from ryll, stamped when the reader thread received it.

    ``received`` is ``time.monotonic()`` and ``received_wall_us`` the Unix
    time in microseconds at receipt; ``wallclock_us`` is ryll's own stamp
    (present on ``latency`` and ``surface_drawn``), so ``delay_us`` is the
    socket delivery delay.
    """

    name: str
    data: dict
    received: float
    received_wall_us: int
    seq: int = 0

    @property
    def wallclock_us(self):
        value = self.data.get('wallclock_us')
        return value if isinstance(value, int) else None

    @property
    def delay_us(self):
        if self.wallclock_us is None:
            return None
        return self.received_wall_us - self.wallclock_us


@dataclass
class Screenshot:
    width: int
    height: int
    format: str
    data: bytes = field(repr=False)
    elapsed: float = 0.0

    @property
    def png(self):
        if self.format != 'png':
            raise ValueError('screenshot is %s, not png' % self.format)
        return self.data

    def save(self, path):
        with open(path, 'wb') as f:
            f.write(self.data)
        return path


class SubscribeResult(list):
    """The names ryll accepted; ``dropped`` lists the ones it ignored."""

    def __init__(self, accepted, dropped):
        super().__init__(accepted)
        self.dropped = list(dropped)


class _Pending:
    __slots__ = ('request_id', 'method', 'sent_at', 'done', 'result',
                 'error', 'abandoned')

    def __init__(self, request_id, method):
        self.request_id = request_id
        self.method = method
        self.sent_at = time.monotonic()
        self.done = threading.Event()
        self.result = None
        self.error = None
        self.abandoned = False


class _Waiter:
    __slots__ = ('predicate', 'done', 'event', 'error')

    def __init__(self, predicate):
        self.predicate = predicate
        self.done = threading.Event()
        self.event = None
        self.error = None


def _excerpt(data):
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data[:_EXCERPT]).decode('utf-8', 'replace')
    text = str(data)
    return text if len(text) <= _EXCERPT else text[:_EXCERPT] + '...'


def _as_predicate(predicate):
    if callable(predicate):
        return predicate, getattr(predicate, '__name__', 'predicate')
    if isinstance(predicate, str):
        return (lambda ev: ev.name == predicate), 'event %r' % predicate
    names = frozenset(predicate)
    return (lambda ev: ev.name in names), 'one of %s' % sorted(names)


def release_code(code):
    """The key-up code ryll is sent for make code ``code``.

    One-byte set-1 codes get the break bit (make|0x80), which ryll 0.3.0
    accepts for ``up``. Extended (0xE0NN) codes are sent as the make code:
    ryll sets the break bit itself, and the 0xE0NN|0x80 form is unverified.
    """
    if code <= 0x7f:
        return code | 0x80
    return code


def resolve_key(key):
    """Turn a key (int scancode, key name or single character) into a code.

    Names and characters are mapped by ``sextant.keys.scancode``, the one
    place in the project that knows key names; it is imported only when a
    name is used, so this module stays stdlib-only.
    """
    if isinstance(key, bool):
        raise TypeError('key must be an int scancode or a key name')
    if isinstance(key, int):
        if not 0 <= key <= 0xffff:
            raise ValueError('scancode %r is outside 0..65535' % key)
        return key
    if not isinstance(key, str) or not key:
        raise TypeError('key must be an int scancode or a key name, got %r'
                        % (key,))
    try:
        from kerbside_tempest_plugin.sextant import keys
    except ImportError as e:
        raise RyllError(
            'key name %r needs kerbside_tempest_plugin.sextant.keys, which '
            'could not be imported (%s); pass an int scancode' % (key, e))
    needs_shift = getattr(keys, 'needs_shift', None)
    if needs_shift is not None and needs_shift(key):
        raise ValueError(
            '%r needs Shift held: send_key(\'shift\', \'down\') around '
            'it, or use paste()' % key)
    return int(keys.scancode(key))


# ---------------------------------------------------------------- client


class ControlClient:
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
                 event_queue_size=DEFAULT_EVENT_QUEUE, key_gap=0.04):
        self.path = str(path)
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

    def connect(self, timeout=10.0, hello=True):
        """Open the socket and (by default) say hello, within ``timeout``.

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
        """Send a key by name, character or AT set-1 scancode.

        With ``state=None`` (the default) this sends an explicit ``down``,
        waits ``gap`` seconds (default ``key_gap``, 40 ms), then ``up`` with
        the release code. ``state`` may also be ``down``, ``up`` or
        ``press`` (sent as given, with the make code). Returns the
        ``time.monotonic()`` just before the first write, for latency work.
        """
        code = resolve_key(key)
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

    def paste(self, text, char_delay_ms=20, timeout=None):
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

    # -- reader thread

    def _read_loop(self, sock):
        buf = bytearray()
        scan_from = 0
        reason = None
        try:
            while True:
                try:
                    chunk = sock.recv(_RECV_CHUNK)
                except OSError as e:
                    reason = 'read failed: %s' % e
                    break
                if not chunk:
                    if buf.strip():
                        self._malformed(buf, 'partial line at EOF')
                    break
                buf += chunk
                while True:
                    nl = buf.find(b'\n', scan_from)
                    if nl < 0:
                        scan_from = len(buf)
                        if len(buf) > self.max_line:
                            self._fatal(RyllProtocolError(
                                'ryll sent a line longer than %d bytes '
                                '(max_line); giving up on the connection'
                                % self.max_line, line=_excerpt(buf)))
                            return
                        break
                    line = bytes(buf[:nl])
                    del buf[:nl + 1]
                    scan_from = 0
                    if len(line) > self.max_line:
                        self._fatal(RyllProtocolError(
                            'ryll sent a line longer than %d bytes '
                            '(max_line; it was %d); giving up on the '
                            'connection' % (self.max_line, len(line)),
                            line=_excerpt(line)))
                        return
                    self._handle_line(line)
        except Exception as e:  # never let the reader die silently
            LOG.exception('ryll control reader crashed')
            self._fatal(RyllProtocolError('reader thread crashed: %r' % e))
            return
        if self._closing:
            self._mark_closed(RyllConnectionClosed,
                              'control connection closed by this client',
                              reason='closed by client')
        elif self._refusal is not None:
            code, message = self._refusal
            self._mark_closed(RyllBusy, 'ryll refused the connection: %s'
                              % message, code=code)
        else:
            elapsed = time.monotonic() - (self.connected_at or 0)
            self._mark_closed(
                RyllConnectionClosed,
                'ryll closed the control connection (%s) after %.2f s; ryll '
                'sends no event when the SPICE session ends, it just closes '
                'and exits 0' % (reason or 'EOF', elapsed),
                reason=reason or 'eof')

    def _fatal(self, error):
        with self._lock:
            pending = list(self._pending.values())
            self._pending.clear()
        for p in pending:
            p.error = RyllProtocolError(str(error), line=error.line)
            p.done.set()
        self._mark_closed(RyllProtocolError, str(error), line=error.line)
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _mark_closed(self, cls, message, **kwargs):
        with self._lock:
            if self._close_info is not None:
                return
            self._close_info = (cls, message, kwargs)
            pending = list(self._pending.values())
            self._pending.clear()
            waiters = list(self._waiters)
            self._waiters.clear()
        for p in pending:
            p.error = self._closed_error()
            p.done.set()
        for w in waiters:
            w.error = self._closed_error()
            w.done.set()

    def _malformed(self, line, why):
        """Count a line we cannot use and fail the oldest request.

        ryll answers strictly in order, so a garbled line that arrives
        while requests are in flight is most likely the oldest one's
        reply; failing that request loudly beats letting it time out.
        """
        text = _excerpt(line)
        LOG.warning('malformed line from ryll (%s): %s', why, text)
        with self._lock:
            self.malformed_total += 1
            self.malformed_lines.append('%s: %s' % (why, text))
            pending = self._pop_oldest()
        if pending is not None and not pending.abandoned:
            pending.error = RyllProtocolError(
                'malformed reply line (%s) while %s (id %s) was the oldest '
                'request in flight: %s' % (why, pending.method,
                                           pending.request_id, text),
                line=text)
            pending.done.set()

    def _pop_oldest(self):
        if not self._pending:
            return None
        return self._pending.popitem(last=False)[1]

    def _handle_line(self, raw):
        line = raw.rstrip(b'\r')
        if not line.strip():
            return
        try:
            msg = json.loads(line.decode('utf-8'))
        except (UnicodeDecodeError, ValueError) as e:
            self._malformed(line, 'not JSON: %s' % e)
            return
        if not isinstance(msg, dict):
            self._malformed(line, 'not a JSON object')
            return
        if 'event' in msg:
            self._handle_event(msg, line)
        elif 'ok' in msg:
            self._handle_reply(msg, line)
        else:
            self._malformed(line, 'neither a reply nor an event')

    def _handle_reply(self, msg, line):
        ok = msg.get('ok')
        error = msg.get('error')
        if ok is False:
            if not isinstance(error, dict):
                error = {'code': 'malformed_error',
                         'message': _excerpt(error)}
            code = str(error.get('code', 'unknown'))
            message = str(error.get('message', ''))
        if 'id' not in msg:
            if ok is not False:
                self._malformed(line, 'reply without an id')
                return
            self._idless_error(code, message)
            return
        with self._lock:
            rid = msg['id']
            pending = self._pending.pop(rid, None) if isinstance(
                rid, (int, str)) and not isinstance(rid, bool) else None
        if pending is None:
            # Timed-out requests stay in the table, so an unknown id means
            # ryll echoed an id we never sent (or the line is corrupt).
            self.orphan_replies += 1
            self._malformed(line, 'reply for unknown id %r'
                            % (msg.get('id'),))
            return
        if pending.abandoned:
            return
        if ok is True:
            pending.result = msg.get('result', {})
        elif ok is False:
            pending.error = RyllRpcError(code, message, pending.method,
                                         pending.request_id)
        else:
            pending.error = RyllProtocolError(
                'reply to %s (id %s) has ok=%r' % (
                    pending.method, pending.request_id, ok),
                line=_excerpt(line))
        pending.done.set()

    def _idless_error(self, code, message):
        """An error without an id: `busy`, or a line ryll could not parse.

        `busy` comes at accept time, before we send anything that matters:
        every pending call gets RyllBusy and the connection is about to
        close. Anything else answers the oldest request in flight (ryll
        handles requests one at a time, in order).
        """
        if code == 'busy':
            with self._lock:
                self._refusal = (code, message)
                pending = list(self._pending.values())
                self._pending.clear()
            for p in pending:
                p.error = RyllBusy(code, message, p.method, p.request_id)
                p.done.set()
            return
        with self._lock:
            pending = self._pop_oldest()
            if pending is None:
                self.malformed_lines.append(
                    'id-less error with nothing in flight: %s: %s'
                    % (code, _excerpt(message)))
        if pending is None:
            LOG.warning('id-less error from ryll with nothing in flight: '
                        '%s: %s', code, message)
            return
        if not pending.abandoned:
            pending.error = RyllRpcError(code, message, pending.method,
                                         pending.request_id)
            pending.done.set()

    def _handle_event(self, msg, line):
        name = msg.get('event')
        data = msg.get('data')
        if not isinstance(name, str):
            self._malformed(line, 'event name is not a string')
            return
        if not isinstance(data, dict):
            data = {'value': data} if data is not None else {}
        event = Event(name, data, time.monotonic(), time.time_ns() // 1000)
        with self._lock:
            self._event_seq += 1
            event.seq = self._event_seq
            self.event_counts[name] += 1
            if name == 'dropped':
                count = data.get('count')
                self.dropped_reports += 1
                if isinstance(count, int):
                    self.dropped_total += count
            listeners = list(self._listeners)
        if name == 'dropped':
            LOG.warning('ryll dropped %s events (client read too slowly; '
                        'this report can arrive late)', data.get('count'))
        # Listeners first, so a thread woken by this event knows every
        # listener has already seen it.
        for fn in listeners:
            try:
                fn(event)
            except Exception:
                self.listener_errors += 1
                LOG.exception('ryll event listener %r failed', fn)
        with self._lock:
            for w in list(self._waiters):
                try:
                    match = w.predicate(event)
                except Exception as e:
                    self._waiters.remove(w)
                    w.error = e
                    w.done.set()
                    continue
                if match:
                    self._waiters.remove(w)
                    w.event = event
                    w.done.set()
                    return
            if len(self._events) >= self.event_queue_size:
                self._events.popleft()
                self.local_dropped_total += 1
            self._events.append(event)

"""The reader side of ControlClient: one thread per connection reads the
socket in chunks, splits on ``\\n`` and routes each line. Replies go to
the waiting request (matched by id); events go to whoever waits for them,
else to a bounded queue, and to every registered listener. A malformed
line is counted and kept (an excerpt), never fatal unless it is a reply
that cannot be matched.
"""

import json
import logging
import socket
import threading
import time

from kerbside_tempest_plugin.ryll import errors as ryll_errors
from kerbside_tempest_plugin.ryll import values

LOG = logging.getLogger('kerbside_tempest_plugin.ryll.client')

RyllBusy = ryll_errors.RyllBusy
RyllConnectionClosed = ryll_errors.RyllConnectionClosed
RyllProtocolError = ryll_errors.RyllProtocolError
RyllRpcError = ryll_errors.RyllRpcError

_RECV_CHUNK = 256 * 1024
_EXCERPT = 200


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


class ReaderLoop:
    """The reader thread and line routing; ControlClient's state (the
    pending requests, waiters, event queue and counters) is set up by
    ControlClient._reset().
    """

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
        event = values.Event(name, data, time.monotonic(),
                             time.time_ns() // 1000)
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

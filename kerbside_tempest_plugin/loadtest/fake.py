"""An instant-answer fake of ryll's control socket.

It speaks just enough of protocol 1.5 for the latency loop: ``hello``,
``subscribe``, ``unsubscribe``, ``status`` and ``send_key``. Every request
is answered at once; a ``send_key`` with state ``down`` (or ``press``) is
answered and then followed by a ``surface_drawn`` event stamped with the
current ``wallclock_us``, as if a guest had drawn in no time at all.
Running the latency loop against it measures the floor: what the client,
the socket and this process cost, with no SPICE, proxy or guest in the way.

Knobs for tests: `draw_delay_s` (stamp and send the draw later, on a
timer), `draws_per_key`, `silent_keys` (1-based key numbers that draw
nothing), `close_after_keys` (drop the connection after that many keys),
`latency_every_keys` (emit a ``latency`` event every N keys) and
`surface_drawn` (False: do not advertise the event at all).
"""

import json
import os
import socket
import tempfile
import threading
import time

METHODS = ['hello', 'status', 'send_key', 'subscribe', 'unsubscribe']
EVENTS = ['latency', 'dropped', 'surface_drawn']


class FakeRyll:
    """A Unix-socket NDJSON server; one client at a time, like ryll."""

    def __init__(self, path=None, draw_delay_s=0.0, draws_per_key=1,
                 silent_keys=(), close_after_keys=None,
                 latency_every_keys=None, surface_drawn=True):
        self._tmpdir = None
        if path is None:
            self._tmpdir = tempfile.mkdtemp(prefix='ktp-fake-ryll-')
            path = os.path.join(self._tmpdir, 'control.sock')
        self.path = path
        self.draw_delay_s = draw_delay_s
        self.draws_per_key = draws_per_key
        self.silent_keys = set(silent_keys)
        self.close_after_keys = close_after_keys
        self.latency_every_keys = latency_every_keys
        self.events = list(EVENTS) if surface_drawn else [
            e for e in EVENTS if e != 'surface_drawn']
        self.keys_down = 0
        self.requests = []
        self._sock = None
        self._thread = None
        self._conn = None
        self._lock = threading.Lock()
        self._timers = []
        self._stopping = False

    # -- lifecycle

    def start(self):
        if os.path.exists(self.path):
            os.unlink(self.path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        os.chmod(self.path, 0o600)
        self._sock.listen(2)
        self._thread = threading.Thread(target=self._accept_loop,
                                        name='fake-ryll', daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stopping = True
        for t in list(self._timers):
            t.cancel()
        conn = self._conn
        if conn is not None:
            _shut(conn)
        if self._sock is not None:
            _shut(self._sock)
            self._sock = None
        if self._thread is not None:
            self._thread.join(5)
        try:
            os.unlink(self.path)
        except OSError:
            pass
        if self._tmpdir:
            try:
                os.rmdir(self._tmpdir)
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- serving

    def _accept_loop(self):
        while not self._stopping:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            if self._conn is not None:
                self._write(conn, {'ok': False, 'error': {
                    'code': 'busy', 'message': 'another client is '
                    'connected'}})
                _shut(conn)
                continue
            self._conn = conn
            try:
                self._serve(conn)
            finally:
                _shut(conn)
                self._conn = None

    def _serve(self, conn):
        subscribed = set()
        buf = b''
        while not self._stopping:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b'\n' in buf:
                line, buf = buf.split(b'\n', 1)
                if not line.strip():
                    continue
                if not self._handle(conn, line, subscribed):
                    return

    def _handle(self, conn, line, subscribed):
        try:
            req = json.loads(line)
            rid, method = req['id'], req['method']
            params = req.get('params') or {}
        except (ValueError, KeyError, TypeError):
            self._write(conn, {'ok': False, 'error': {
                'code': 'bad_params', 'message': 'cannot parse request'}})
            return True
        self.requests.append(method)
        if method == 'hello':
            self._reply(conn, rid, {
                'server_name': 'ryll', 'protocol_version': '1.5',
                'supported_methods': METHODS,
                'supported_events': self.events})
        elif method == 'subscribe':
            names = [n for n in params.get('events', ())
                     if n in self.events]
            subscribed.update(names)
            self._reply(conn, rid, {'subscribed': names})
        elif method == 'unsubscribe':
            names = [n for n in params.get('events', ()) if n in subscribed]
            subscribed.difference_update(names)
            self._reply(conn, rid, {'unsubscribed': names})
        elif method == 'status':
            self._reply(conn, rid, {'spice_connected': True,
                                    'agent_connected': False,
                                    'surfaces': []})
        elif method == 'send_key':
            self._reply(conn, rid, {})
            if params.get('state') in ('down', 'press'):
                return self._key(conn, subscribed)
        else:
            self._write(conn, {'id': rid, 'ok': False, 'error': {
                'code': 'unknown_method', 'message': method}})
        return True

    def _key(self, conn, subscribed):
        self.keys_down += 1
        n = self.keys_down
        if (self.latency_every_keys and n % self.latency_every_keys == 0
                and 'latency' in subscribed):
            self._write(conn, {'event': 'latency', 'data': {
                'sample_ms': 15000.0, 'wallclock_us': time.time_ns() // 1000}})
        if n not in self.silent_keys and 'surface_drawn' in subscribed:
            if self.draw_delay_s:
                t = threading.Timer(self.draw_delay_s, self._draw,
                                    (conn, n))
                t.daemon = True
                self._timers.append(t)
                t.start()
            else:
                self._draw(conn, n)
        if self.close_after_keys is not None and n >= self.close_after_keys:
            return False
        return True

    def _draw(self, conn, n):
        for _ in range(self.draws_per_key):
            self._write(conn, {'event': 'surface_drawn', 'data': {
                'display_channel_id': 0, 'surface_id': 0,
                'produced_at_secs': time.monotonic(),
                'wallclock_us': time.time_ns() // 1000}})

    def _reply(self, conn, rid, result):
        self._write(conn, {'id': rid, 'ok': True, 'result': result})

    def _write(self, conn, msg):
        data = json.dumps(msg, separators=(',', ':')).encode() + b'\n'
        with self._lock:
            try:
                conn.sendall(data)
            except OSError:
                pass


def _shut(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass

"""The one scriptable fake of ryll's control socket (a real Unix-socket
NDJSON server), for unit tests and for the latency floor (loadtest.fake).

It behaves like ryll 0.3.0 (protocol 1.5) where the spec is clear: NDJSON,
one client at a time (others get one id-less ``busy`` line and are closed),
``hello`` first, requests handled one at a time in order, id-less
``bad_params`` for lines it cannot parse, events only for subscribed names,
``paste`` completing with an event only when paste is enabled.

Tests script it by replacing entries in ``handlers`` (method name ->
``fn(conn, req)``); a handler answers with ``conn.reply(req, result)`` /
``conn.error(req, code, message)``, or says nothing at all, or sends raw
bytes, events, or closes the connection.
"""

import base64
import json
import os
import socket
import struct
import tempfile
import threading
import time
import zlib

METHODS = ['hello', 'status', 'send_key', 'paste', 'screenshot',
           'subscribe', 'unsubscribe', 'clipboard_set', 'clipboard_get',
           'resize', 'stats']
EVENTS = ['latency', 'agent_connected', 'paste_completed', 'paste_failed',
          'dropped', 'surface_drawn', 'clipboard_changed', 'input_rtt']


def tiny_png(width=4, height=2, rgba=(0, 0, 0, 255)):
    """A valid RGBA PNG, built by hand with zlib."""
    def chunk(kind, body):
        return (struct.pack('>I', len(body)) + kind + body
                + struct.pack('>I', zlib.crc32(kind + body) & 0xffffffff))
    row = b'\x00' + bytes(rgba) * width
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 6, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr)
            + chunk(b'IDAT', zlib.compress(row * height))
            + chunk(b'IEND', b''))


class FakeConn:
    def __init__(self, server, sock, number):
        self.server = server
        self.sock = sock
        self.number = number
        self.lock = threading.Lock()
        self.subscriptions = set()
        self.said_hello = False
        self.pasting = False
        self.closed = False
        self.held = []   # requests a handler chose to answer later

    def send_raw(self, data):
        with self.lock:
            try:
                self.sock.sendall(data)
            except OSError:
                pass

    def send(self, obj):
        self.send_raw(json.dumps(obj, separators=(',', ':')).encode()
                      + b'\n')

    def reply(self, req, result=None):
        self.send({'id': req['id'], 'ok': True,
                   'result': {} if result is None else result})

    def error(self, req, code, message='error'):
        msg = {'ok': False, 'error': {'code': code, 'message': message}}
        if req is not None and 'id' in req:
            msg = dict(id=req['id'], **msg)
        self.send(msg)

    def event(self, name, data=None, force=False):
        if force or name in self.subscriptions:
            self.send({'event': name, 'data': {} if data is None else data})

    def close(self):
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class FakeRyll:
    """One client at a time, like ryll. `path=None`: a socket in a fresh
    private temporary directory (removed by stop()).
    """

    def __init__(self, path=None, paste_enabled=True, protocol_version='1.5',
                 methods=None, events=None):
        self._tmpdir = None
        if path is None:
            self._tmpdir = tempfile.mkdtemp(prefix='ktp-fake-ryll-')
            path = os.path.join(self._tmpdir, 'control.sock')
        self.path = str(path)
        self.paste_enabled = paste_enabled
        self.protocol_version = protocol_version
        self.methods = list(METHODS if methods is None else methods)
        self.events = list(EVENTS if events is None else events)
        self.handlers = {}
        self.on_connect = None
        self.busy_next = 0       # refuse this many more connections
        self.requests = []       # (connection number, request dict)
        self.lines = []          # raw lines received
        self.connections = 0
        self.refused = 0
        self.active = None
        self.slot_freed = threading.Event()
        self.status_result = {
            'agent_connected': False, 'spice_connected': True,
            'surfaces': [{'channel_id': 0, 'surface_id': 0,
                          'width': 1280, 'height': 800}]}
        self.png = tiny_png()
        self._lock = threading.Lock()
        self._listener = None
        self._threads = []
        self._stopping = False

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        if os.path.exists(self.path):
            os.unlink(self.path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        os.chmod(self.path, 0o600)
        self._listener.listen(8)
        t = threading.Thread(target=self._accept_loop, daemon=True,
                             name='fake-ryll-accept')
        t.start()
        self._threads.append(t)
        return self

    def stop(self):
        self._stopping = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        if self.active is not None:
            self.active.close()
        for t in self._threads:
            t.join(2)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        if self._tmpdir:
            try:
                os.rmdir(self._tmpdir)
            except OSError:
                pass

    def requests_for(self, method):
        with self._lock:
            return [r for _, r in self.requests if r.get('method') == method]

    # -- internals

    def _accept_loop(self):
        while not self._stopping:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refuse = self.active is not None or self.busy_next > 0
                if refuse:
                    if self.active is None:
                        self.busy_next -= 1
                    self.refused += 1
                else:
                    self.connections += 1
                    conn = FakeConn(self, sock, self.connections)
                    self.active = conn
                    self.slot_freed.clear()
            if refuse:
                sock.sendall(b'{"ok":false,"error":{"code":"busy",'
                             b'"message":"another client is connected"}}\n')
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
                continue
            t = threading.Thread(target=self._serve, args=(conn,),
                                 daemon=True, name='fake-ryll-conn')
            t.start()
            self._threads.append(t)

    def _serve(self, conn):
        if self.on_connect is not None:
            self.on_connect(conn)
        buf = b''
        try:
            while not conn.closed:
                try:
                    chunk = conn.sock.recv(65536)
                except OSError:
                    break
                if not chunk:
                    break
                buf += chunk
                while b'\n' in buf and not conn.closed:
                    line, buf = buf.split(b'\n', 1)
                    self._line(conn, line)
        finally:
            conn.closed = True
            conn.sock.close()
            with self._lock:
                if self.active is conn:
                    self.active = None
            self.slot_freed.set()

    def _line(self, conn, line):
        self.lines.append(line)
        if not line.strip():
            return
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or 'id' not in req or \
                    'method' not in req or 'params' not in req:
                raise ValueError('missing field')
        except ValueError as e:
            conn.error(None, 'bad_params', 'failed to parse request: %s' % e)
            return
        with self._lock:
            self.requests.append((conn.number, req))
        method = req['method']
        if method != 'hello' and not conn.said_hello:
            conn.error(req, 'no_hello_yet', 'first request must be hello')
            return
        handler = self.handlers.get(method) or getattr(
            self, '_do_' + str(method), None)
        if handler is None:
            conn.error(req, 'unknown_method', 'unknown method "%s"' % method)
            return
        handler(conn, req)

    def _do_hello(self, conn, req):
        version = str(req['params'].get('protocol_version', ''))
        if version.split('.')[0] != '1':
            conn.error(req, 'protocol_version_mismatch',
                       'server speaks major version 1')
            conn.close()
            return
        conn.said_hello = True
        conn.reply(req, {'protocol_version': self.protocol_version,
                         'server_name': 'ryll',
                         'supported_methods': self.methods,
                         'supported_events': self.events})

    def _do_status(self, conn, req):
        conn.reply(req, self.status_result)

    def _do_stats(self, conn, req):
        conn.reply(req, {'display': {'channel_id': 0, 'bytes_in': 1}})

    def _do_subscribe(self, conn, req):
        names = [n for n in req['params']['events'] if n in self.events]
        conn.subscriptions.update(names)
        conn.reply(req, {'subscribed': names})

    def _do_unsubscribe(self, conn, req):
        names = [n for n in req['params']['events']
                 if n in conn.subscriptions]
        conn.subscriptions.difference_update(names)
        conn.reply(req, {'unsubscribed': names})

    def _do_send_key(self, conn, req):
        params = req['params']
        if not isinstance(params.get('scancode'), int):
            conn.error(req, 'bad_params', 'expected u16')
        elif params.get('state') not in ('down', 'up', 'press'):
            conn.error(req, 'bad_state', 'unrecognised state value')
        else:
            conn.reply(req)

    def _do_screenshot(self, conn, req):
        conn.reply(req, {'width': 4, 'height': 2, 'format': 'png',
                         'data_base64': base64.b64encode(
                             self.png).decode()})

    def _do_paste(self, conn, req):
        conn.reply(req)
        if not self.paste_enabled or conn.pasting:
            return   # ryll: ok, then silence
        text = req['params']['text']
        bad = [c for c in text if ord(c) > 126]
        if bad:
            conn.event('paste_failed', {
                'request_id': req['id'],
                'reason': 'cannot paste: %d unrepresentable character(s)'
                          % len(bad)})
            return
        delay = req['params'].get('char_delay_ms') or 10
        conn.pasting = True

        def typing():
            time.sleep(len(text) * delay / 1000.0)
            conn.pasting = False
            if not conn.closed:
                conn.event('paste_completed', {'request_id': req['id'],
                                               'chars_sent': len(text)})
        threading.Thread(target=typing, daemon=True).start()

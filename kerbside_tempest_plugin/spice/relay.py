"""A SPICE-aware TCP relay that injects faults (spec: spice.faults).

It sits on a plain SPICE leg (the hypervisor leg: Kerbside, or ryll on
the direct route, dials the relay; the relay dials qemu). Each accepted
connection is one channel; both directions are cut into units by
spice.wire and forwarded one by one, so a fault can act on one message
of one channel: the 3rd key_down, the 40th draw_copy, the display
channel after 8 s.

Every injection, and every channel linked or closed, is one JSON line in
the relay's log (`log_path`): wall time `t`, seconds since the first link
`t_rel`, `event` (`inject`, `release`, `link`, `close`), the fault's
spec, channel, channel id, direction, message type and name, which
matching message it was, its size, the rectangle a draw paints, and how
many keys had crossed. Every key message the client sends on the inputs
channel and the relay forwards is a compact `key` record (time,
connection, `key` down or up, `code` the scancode), and a key message a
fault acts on names its `code` too: scenario.keyhops puts each key on its
hop with them. Bytes are never logged: the ticket crosses here.

A control socket (unix, one JSON object per line) arms and clears faults
while the relay runs: {"op": "arm", "spec": "..."}, {"op": "clear"},
{"op": "status"}; the answer is one JSON line with "ok". A line that is
not such an object gets {"ok": false, "error": ...}, never a hang.

Run as a process by the lane (`python -m kerbside_tempest_plugin.spice.relay
--listen PORT --target HOST:PORT [--fault SPEC] --log F --control S`); it
prints `ready PORT` once it listens and ends on SIGTERM or SIGINT.
"""

import argparse
import json
import os
import signal
import socket
import struct
import sys
import threading
import time

from kerbside_tempest_plugin.spice import faults as spice_faults
from kerbside_tempest_plugin.spice import wire

TICK_S = 0.2            # how often an idle pump looks at held messages
CONNECT_TIMEOUT_S = 5.0
CONTROL_LINE_MAX = 65536


def _reset(sock):
    """Close `sock` with a TCP reset (what a crashed peer looks like)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                        struct.pack('ii', 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Conn:
    """One relayed channel: the client's socket, qemu's, two pumps."""

    def __init__(self, relay, number, client, server):
        self.relay = relay
        self.number = number
        self.sock = {wire.C2S: client, wire.S2C: server}
        self.neg = wire.Negotiation()
        self.framer = {d: wire.Framer(d, self.neg) for d in wire.DIRECTIONS}
        self.closed = threading.Event()
        self.close_reason = None
        self.dup_block = {d: [] for d in wire.DIRECTIONS}
        self.held = {d: [] for d in wire.DIRECTIONS}   # reorder: (fault,
        self._close_lock = threading.Lock()            # unit, until)

    @property
    def channel(self):
        return self.neg.channel

    @property
    def channel_id(self):
        return self.neg.mess.channel_id if self.neg.mess else None

    def start(self):
        for d in wire.DIRECTIONS:
            threading.Thread(target=self._pump, args=(d,), daemon=True,
                             name='relay-%d-%s' % (self.number, d)).start()

    def close(self, reason, reset=False):
        with self._close_lock:
            if self.closed.is_set():
                return
            self.close_reason = reason
            self.closed.set()
        for s in self.sock.values():
            if reset:
                _reset(s)
            else:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        self.relay.event('close', channel=self.channel,
                         channel_id=self.channel_id, conn=self.number,
                         reason=reason)

    def _dst(self, direction):
        return self.sock[wire.S2C if direction == wire.C2S else wire.C2S]

    def _send(self, direction, data, size=None):
        dst = self._dst(direction)
        if not size:
            dst.sendall(data)
            return
        for i in range(0, len(data), size):
            dst.sendall(data[i:i + size])

    def _pump(self, direction):
        src = self.sock[direction]
        src.settimeout(TICK_S)
        who = 'client' if direction == wire.C2S else 'hypervisor'
        try:
            while not self.closed.is_set():
                try:
                    data = src.recv(65536)
                except socket.timeout:
                    data = None
                if data == b'':
                    self.close('%s closed its end (%s)' % (who, direction))
                    return
                units = self.framer[direction].feed(data or b'')
                for unit in units:
                    self._forward(direction, unit)
                    if self.closed.is_set():
                        return
                if direction == wire.C2S and self.neg.settled:
                    self._timed_cut()
                    if self.closed.is_set():
                        return
                self._release_expired(direction)
        except wire.WireError as e:
            self.close('not SPICE: %s' % e)
        except OSError as e:
            if not self.closed.is_set():
                self.close('%s leg error: %s' % (who, e), reset=True)

    def _forward(self, direction, unit):
        relay = self.relay
        if unit.kind != 'message':
            self._send(direction, unit.raw)
            if unit.kind == 'link' and direction == wire.C2S:
                relay.linked(self)
            # Bytes the other side could not cut before this link are cut
            # by its own pump at its next tick (TICK_S): one thread per
            # framer.
            return
        rect = spice_faults.draw_rect(unit.type, unit.body) \
            if self.channel == 'display' else None
        fault, keys = relay.decide(self.channel, direction, unit.type, rect)
        code = key_code(self.channel, direction, unit)
        if unit.type == wire.INPUTS_KEY_DOWN and self.channel == 'inputs' \
                and direction == wire.C2S:
            relay.key_crossed()
        held = self.held[direction]
        if fault is None:
            self._send(direction, unit.raw)
            if code is not None:
                relay.key_event(self.number, unit, code)
            self._after_match(direction, unit, held)
            return
        record = dict(fault=fault.spec, action=fault.action,
                      channel=self.channel, channel_id=self.channel_id,
                      conn=self.number, direction=direction, type=unit.type,
                      name=unit.name, index=fault.matched,
                      size=len(unit.raw), keys=keys, rect=rect, code=code)
        action = fault.action
        if code is not None and action not in ('drop', 'cut', 'corrupt',
                                               'duplicate', 'reorder'):
            # it crosses late or in pieces: its record now; a duplicated
            # or reordered key's when (and as often as) it is sent
            relay.key_event(self.number, unit, code)
        if action == 'drop':
            relay.event('inject', **record)
        elif action == 'duplicate':
            block = self.dup_block[direction]
            block.append(unit)
            if len(block) >= fault.span:
                relay.event('inject', span=len(block), **record)
                self._send(direction, b''.join(u.raw for u in block) * 2)
                for u in block * 2:
                    self._key_sent(direction, u)
                del block[:]
        elif action == 'corrupt':
            body, off, n = fault.corrupt(unit.body)
            relay.event('inject', bytes_at=off, bytes=n, **record)
            if code is not None and len(body) >= 4:
                relay.key_event(self.number, unit,
                                struct.unpack_from('<I', body)[0])
            self._send(direction, unit.raw[:unit.header_len] + body)
        elif action == 'delay':
            relay.event('inject', ms=fault.delay_ms, **record)
            time.sleep(fault.delay_ms / 1000.0)
            self._send(direction, unit.raw)
        elif action == 'stall':
            relay.event('inject', duration_s=fault.duration_s, **record)
            self.closed.wait(fault.duration_s)
            relay.event('release', fault=fault.spec, channel=self.channel,
                        channel_id=self.channel_id, conn=self.number,
                        direction=direction)
            self._send(direction, unit.raw)
        elif action == 'fragment':
            relay.event('inject', write_size=fault.size, **record)
            self._send(direction, unit.raw, size=fault.size)
        elif action == 'reorder':
            relay.event('inject', **record)
            held.append((fault, unit, time.monotonic() + fault.hold_s))
        elif action == 'cut':
            relay.event('inject', **record)
            self.close('fault %s cut the %s channel' % (fault.spec,
                                                        self.channel),
                       reset=True)

    def _timed_cut(self):
        """A cut without a message type fires once its trigger holds,
        even on a channel that sends nothing then (main is quiet for
        seconds): looked at on every pump tick.
        """
        fault, keys = self.relay.due_cut(self.channel)
        if fault is None:
            return
        self.relay.event('inject', fault=fault.spec, action='cut',
                         channel=self.channel, channel_id=self.channel_id,
                         conn=self.number, keys=keys, index=fault.fired)
        self.close('fault %s cut the %s channel' % (fault.spec,
                                                    self.channel),
                   reset=True)

    def _after_match(self, direction, unit, held):
        """A reorder fault's held message goes out after the next one of
        its kind.
        """
        for item in list(held):
            fault = item[0]
            if fault.matches(self.channel, direction, unit.type):
                held.remove(item)
                self._send(direction, item[1].raw)
                self._key_sent(direction, item[1])

    def _key_sent(self, direction, unit):
        code = key_code(self.channel, direction, unit)
        if code is not None:
            self.relay.key_event(self.number, unit, code)

    def _release_expired(self, direction):
        held = self.held[direction]
        now = time.monotonic()
        for item in list(held):
            if now >= item[2]:
                held.remove(item)
                self.relay.event('release', fault=item[0].spec,
                                 channel=self.channel, conn=self.number,
                                 direction=direction,
                                 note='no second message came in %.1f s; '
                                 'sent alone' % item[0].hold_s)
                self._send(direction, item[1].raw)
                self._key_sent(direction, item[1])


def key_code(channel, direction, unit):
    """The scancode of a key_down or key_up the client sends on the
    inputs channel (SpiceMsgcKeyDown/Up: u32 code), else None.
    """
    if channel != 'inputs' or direction != wire.C2S or unit.type not in (
            wire.INPUTS_KEY_DOWN, wire.INPUTS_KEY_UP) or len(unit.body) < 4:
        return None
    return struct.unpack_from('<I', unit.body)[0]


class Relay:
    """The relay in this process: `start()`, `stop()`, `arm(spec)`."""

    def __init__(self, target_port, listen_port=0, target_host='127.0.0.1',
                 listen_host='127.0.0.1', fault=None, log_path=None,
                 control_path=None):
        self.target = (target_host, int(target_port))
        self.listen_addr = (listen_host, int(listen_port))
        self.log_path = log_path
        self.control_path = control_path
        self.faults = spice_faults.parse(fault)
        self._lock = threading.Lock()
        self._log_lock = threading.Lock()
        self.keys = 0
        self.t0 = None
        self.conns = []
        self.injections = 0
        self._listener = None
        self._control = None
        self._stopped = threading.Event()
        self.port = None

    # -- bookkeeping shared by the connections ---------------------------
    def elapsed(self):
        return 0.0 if self.t0 is None else time.monotonic() - self.t0

    def linked(self, conn):
        now = time.monotonic()
        with self._lock:
            if self.t0 is None:
                self.t0 = now
            for f in self.faults:
                f.linked(now)
        self.event('link', channel=conn.channel, channel_id=conn.channel_id,
                   conn=conn.number)

    def key_crossed(self):
        with self._lock:
            self.keys += 1

    def key_event(self, conn, unit, code):
        """One compact record per key message forwarded on the inputs
        channel (scenario.keyhops): when, which connection, down or up,
        the scancode. No bytes.
        """
        self.event('key', channel='inputs', conn=conn, code=code,
                   key='down' if unit.type == wire.INPUTS_KEY_DOWN else 'up')

    def decide(self, channel, direction, msg_type, rect=None):
        """The first armed fault that takes this message, and the keys
        that had crossed before it.
        """
        with self._lock:
            now = time.monotonic()
            for f in self.faults:
                if f.take(channel, direction, msg_type, self.keys, now,
                          rect):
                    self.injections += 1
                    return f, self.keys
            return None, self.keys

    def due_cut(self, channel):
        """A type-less cut fault on `channel` whose trigger holds now
        (counted as fired), and the keys crossed; (None, keys) else.
        """
        with self._lock:
            now = time.monotonic()
            for f in self.faults:
                if f.action != 'cut' or f.msg_type is not None or \
                        f.exhausted or f.nth is not None:
                    continue
                if f.channel not in ('*', channel):
                    continue
                if f.armed(self.keys, now):
                    f.fired += 1
                    self.injections += 1
                    return f, self.keys
            return None, self.keys

    def event(self, kind, **fields):
        record = {'t': round(time.time(), 6),
                  't_rel': round(self.elapsed(), 6), 'event': kind}
        record.update({k: v for k, v in fields.items() if v is not None})
        if self.log_path:
            line = json.dumps(record, sort_keys=True) + '\n'
            with self._log_lock:
                with open(self.log_path, 'a') as f:
                    f.write(line)
        return record

    # -- control ---------------------------------------------------------
    def arm(self, spec):
        """Arm `spec`'s faults; their triggers count from now (the clock
        from the next link when no channel is open).
        """
        new = spice_faults.parse(spec)
        with self._lock:
            open_now = any(not c.closed.is_set() and c.neg.mess is not None
                           for c in self.conns)
            for f in new:
                f.arm(self.keys, time.monotonic() if open_now else None)
            self.faults.extend(new)
        for f in new:
            self.event('arm', fault=f.spec)
        return [f.spec for f in new]

    def clear(self):
        with self._lock:
            gone, self.faults = self.faults, []
        self.event('clear', faults=[f.spec for f in gone])
        return len(gone)

    def status(self):
        with self._lock:
            return {
                'port': self.port, 'target': '%s:%d' % self.target,
                'keys': self.keys, 'injections': self.injections,
                't_rel': round(self.elapsed(), 3),
                'faults': [{'spec': f.spec, 'matched': f.matched,
                            'fired': f.fired} for f in self.faults],
                'connections': [
                    {'conn': c.number, 'channel': c.channel,
                     'channel_id': c.channel_id,
                     'closed': c.close_reason} for c in self.conns]}

    def handle_command(self, line):
        """One control line in, one answer (a dict) out."""
        try:
            cmd = json.loads(line)
        except ValueError as e:
            return {'ok': False, 'error': 'not JSON: %s' % e}
        if not isinstance(cmd, dict) or not isinstance(cmd.get('op'), str):
            return {'ok': False, 'error': 'a command is a JSON object with '
                    'an "op" (arm, clear, status)'}
        op = cmd['op']
        try:
            if op == 'arm':
                if not isinstance(cmd.get('spec'), str):
                    return {'ok': False, 'error': 'arm needs a "spec" string'}
                return {'ok': True, 'armed': self.arm(cmd['spec'])}
            if op == 'clear':
                return {'ok': True, 'cleared': self.clear()}
            if op == 'status':
                return dict(ok=True, **self.status())
        except spice_faults.FaultSpecError as e:
            return {'ok': False, 'error': str(e)}
        return {'ok': False, 'error': 'unknown op %r (arm, clear, status)'
                % op}

    # -- sockets ---------------------------------------------------------
    def start(self):
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(self.listen_addr)
        ls.listen(16)
        self._listener = ls
        self.port = ls.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True,
                         name='relay-accept').start()
        if self.control_path:
            if os.path.exists(self.control_path):
                os.unlink(self.control_path)
            cs = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            cs.bind(self.control_path)
            os.chmod(self.control_path, 0o600)
            cs.listen(4)
            self._control = cs
            threading.Thread(target=self._serve_control, daemon=True,
                             name='relay-control').start()
        for f in self.faults:
            self.event('arm', fault=f.spec)
        return self

    def _accept(self):
        n = 0
        while not self._stopped.is_set():
            try:
                client, _addr = self._listener.accept()
            except OSError:
                return
            n += 1
            try:
                server = socket.create_connection(self.target,
                                                  CONNECT_TIMEOUT_S)
            except OSError as e:
                self.event('close', conn=n, reason='could not reach the '
                           'hypervisor at %s:%d: %s' % (self.target + (e,)))
                _reset(client)
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(self, n, client, server)
            with self._lock:
                self.conns.append(conn)
            conn.start()

    def _serve_control(self):
        while not self._stopped.is_set():
            try:
                sock, _ = self._control.accept()
            except OSError:
                return
            threading.Thread(target=self._control_client, args=(sock,),
                             daemon=True).start()

    def _control_client(self, sock):
        sock.settimeout(30)
        buf = b''
        try:
            while True:
                data = sock.recv(4096)
                if not data:
                    return
                buf += data
                if len(buf) > CONTROL_LINE_MAX and b'\n' not in buf:
                    sock.sendall(json.dumps({'ok': False, 'error':
                                             'line over %d bytes' %
                                             CONTROL_LINE_MAX}).encode() +
                                 b'\n')
                    return
                while b'\n' in buf:
                    line, buf = buf.split(b'\n', 1)
                    if line.strip():
                        answer = self.handle_command(
                            line.decode('utf-8', 'replace'))
                        sock.sendall(json.dumps(answer).encode() + b'\n')
        except OSError:
            return
        finally:
            sock.close()

    def stop(self):
        self._stopped.set()
        for s in (self._listener, self._control):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        if self.control_path and os.path.exists(self.control_path):
            try:
                os.unlink(self.control_path)
            except OSError:
                pass
        for c in list(self.conns):
            c.close('relay stopped')


def control(path, op, spec=None, timeout=5.0):
    """Send one command to a running relay's control socket; its answer.
    Raises RelayControlError when the relay cannot be reached or answers
    garbage.
    """
    from kerbside_tempest_plugin.common import errors
    cmd = {'op': op}
    if spec is not None:
        cmd['spec'] = spec
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(json.dumps(cmd).encode() + b'\n')
        buf = b''
        deadline = time.monotonic() + timeout
        while b'\n' not in buf:
            if time.monotonic() > deadline:
                raise errors.HarnessTimeout(
                    'the relay at %s did not answer %s within %.0f s (got '
                    '%d bytes)' % (path, op, timeout, len(buf)))
            data = s.recv(65536)
            if not data:
                raise errors.HarnessError(
                    'the relay at %s closed without answering %s' % (path,
                                                                     op))
            buf += data
        try:
            return json.loads(buf.split(b'\n', 1)[0])
        except ValueError:
            raise errors.HarnessError('the relay at %s answered %s with '
                                      'garbage' % (path, op))
    except OSError as e:
        raise errors.HarnessError('cannot reach the fault relay at %s: %s'
                                  % (path, e))
    finally:
        s.close()


def main(argv=None):
    p = argparse.ArgumentParser(
        prog='python -m kerbside_tempest_plugin.spice.relay',
        description='A SPICE-aware fault relay (see spice.faults).')
    p.add_argument('--listen', type=int, required=True,
                   help='port to listen on (127.0.0.1)')
    p.add_argument('--target', required=True, help='HOST:PORT of qemu')
    p.add_argument('--fault', action='append', default=[],
                   help='a fault spec (repeatable)')
    p.add_argument('--log', help='the JSON-lines injection log')
    p.add_argument('--control', help='the control socket path')
    args = p.parse_args(argv)
    host, _, port = args.target.rpartition(':')
    try:
        relay = Relay(int(port), listen_port=args.listen,
                      target_host=host or '127.0.0.1',
                      fault=';'.join(args.fault), log_path=args.log,
                      control_path=args.control)
    except spice_faults.FaultSpecError as e:
        print('relay: %s' % e, file=sys.stderr)
        return 2
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    relay.start()
    print('ready %d' % relay.port, flush=True)
    while not done.wait(1.0):
        pass
    relay.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""Loopback ports: allocate free ones, see which are listening.

Nothing assumes a fixed port (no 5900, no 13002): every port a lane uses is
allocated here, and teardown checks each one is free again.

Two races are closed here rather than left to a failed bind:

- The ports come from below the kernel's ephemeral range
  (`net.ipv4.ip_local_port_range`). The kernel gives outgoing connections
  ports from that range, and a lane makes hundreds of them while its
  services start (MariaDB, RabbitMQ, Keystone), so a port allocated from
  it could be taken by a client socket before its server binds.
- Every port handed out is written to a reservation file shared by all
  harness processes on the machine (under a lock), and no other allocation
  gets it for `RESERVATION_TTL` seconds, so two lanes brought up at once
  (tempest workers, `benchmarks/load.py`) never receive the same port.
"""

import errno
import fcntl
import json
import logging
import os
import random
import socket
import stat
import tempfile
import time

from kerbside_tempest_plugin.common import errors

LOG = logging.getLogger(__name__)

LOOPBACK = '127.0.0.1'
_TCP_LISTEN = '0A'
# Long enough for the slowest lane to bind everything it was given.
RESERVATION_TTL = 900.0
# The lowest port handed out; below it are well-known and registered
# services a developer's box may start at any time.
LOW_PORT = 10000
_MIN_SPAN = 2000


def ephemeral_range(path='/proc/sys/net/ipv4/ip_local_port_range'):
    """(low, high) of the kernel's ports for outgoing connections."""
    try:
        with open(path) as f:
            low, high = (int(x) for x in f.read().split()[:2])
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def allocation_range(ephemeral=None):
    """(low, high), inclusive, that allocations draw from: below the
    ephemeral range, or above it, when either leaves room; otherwise every
    unprivileged port (the bind check alone then guards it).
    """
    lo, hi = ephemeral or ephemeral_range()
    if lo - 1 - LOW_PORT >= _MIN_SPAN:
        return LOW_PORT, lo - 1
    if 65535 - (hi + 1) >= _MIN_SPAN:
        return hi + 1, 65535
    return 1024, 65535


def reservation_file():
    """The reservation file: $KTP_PORT_RESERVATIONS, else one in a
    directory of this user's own under the temporary directory (0700, so
    no other user can plant a link where it is written).
    """
    path = os.environ.get('KTP_PORT_RESERVATIONS')
    if path:
        return path
    d = os.path.join(tempfile.gettempdir(), 'ktp-ports-%d' % os.getuid())
    os.makedirs(d, mode=0o700, exist_ok=True)
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or \
            st.st_mode & 0o077:
        raise OSError(errno.EPERM, '%s is not a private directory of '
                      'this user' % d)
    return os.path.join(d, 'reservations.json')


class _Reservations:
    """The shared reservation file, read and written under an exclusive
    lock. Unusable (a read-only /tmp, say): allocation goes on without it,
    with a warning, because the bind check still holds for one lane.
    """

    def __init__(self, path=None, ttl=RESERVATION_TTL, clock=time.time):
        self.path = path
        self.ttl = ttl
        self.clock = clock
        self.held = {}
        self._lock = None

    def __enter__(self):
        try:
            self.path = self.path or reservation_file()
            self._lock = open(self.path + '.lock', 'a')
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        except OSError as e:
            LOG.warning('port reservations unavailable (%s): %s',
                        self.path, e)
            self._close()
            return self
        now = self.clock()
        try:
            with open(self.path) as f:
                data = json.load(f)
            self.held = {int(k): float(v) for k, v in data.items()
                         if float(v) > now}
        except (OSError, ValueError, AttributeError, TypeError):
            self.held = {}
        return self

    def taken(self, port):
        return port in self.held

    def reserve(self, ports):
        expiry = self.clock() + self.ttl
        for p in ports:
            self.held[p] = expiry

    def __exit__(self, *exc):
        if self._lock is not None and exc[0] is None:
            tmp = '%s.%d.tmp' % (self.path, os.getpid())
            try:
                with open(tmp, 'w') as f:
                    json.dump({str(k): v for k, v in self.held.items()}, f)
                os.replace(tmp, self.path)
            except OSError as e:
                LOG.warning('could not record port reservations in %s: %s',
                            self.path, e)
        self._close()
        return False

    def _close(self):
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _bindable(ports, host):
    """True when every port in `ports` binds on `host` right now."""
    socks = []
    try:
        for p in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((host, p))
        return True
    except OSError as e:
        if e.errno not in (errno.EADDRINUSE, errno.EACCES,
                           errno.EADDRNOTAVAIL):
            raise
        return False
    finally:
        for s in socks:
            s.close()


def free_window(count, low=None, high=None, host=LOOPBACK, rng=random,
                tries=200, reservations=None):
    """(first, last) of `count` consecutive ports that bind now, that
    nothing listens on and that no other allocation holds; reserved before
    return. `low`/`high` default to `allocation_range()`.
    """
    if low is None or high is None:
        dlow, dhigh = allocation_range()
        low = dlow if low is None else low
        high = dhigh if high is None else high
    with reservations or _Reservations() as held:
        listening = listening_ports()
        for _ in range(tries):
            start = rng.randrange(low, high - count + 2)
            window = range(start, start + count)
            if any(p in listening or held.taken(p) for p in window):
                continue
            if not _bindable(window, host):
                continue
            held.reserve(window)
            return start, start + count - 1
    raise errors.HarnessError(
        'no %d consecutive free ports found between %d and %d in %d tries '
        '(busy, listening or reserved by another lane in %s)'
        % (count, low, high, tries, held.path))


def free_ports(count, host=LOOPBACK, rng=random, reservations=None):
    """`count` distinct TCP ports, each free a moment ago and reserved for
    this caller (see the module's docstring for the races that closes).
    """
    low, high = allocation_range()
    got = []
    with reservations or _Reservations() as held:
        listening = listening_ports()
        for _ in range(count * 50):
            if len(got) == count:
                break
            p = rng.randrange(low, high + 1)
            if p in got or p in listening or held.taken(p) or \
                    not _bindable([p], host):
                continue
            got.append(p)
        if len(got) < count:
            raise errors.HarnessError(
                'only %d of %d free ports found between %d and %d' %
                (len(got), count, low, high))
        held.reserve(got)
    return got


def free_port(host=LOOPBACK):
    return free_ports(1, host)[0]


def _parse_proc_net(path):
    ports = set()
    try:
        with open(path) as f:
            next(f, None)
            for line in f:
                fields = line.split()
                if len(fields) < 4 or fields[3] != _TCP_LISTEN:
                    continue
                ports.add(int(fields[1].rsplit(':', 1)[1], 16))
    except OSError:
        pass
    return ports


def listening_ports():
    """Every TCP port in LISTEN state on this host (IPv4 and IPv6)."""
    return _parse_proc_net('/proc/net/tcp') | _parse_proc_net('/proc/net/tcp6')


def is_listening(port):
    return port in listening_ports()


def busy_ports(ports):
    """The subset of `ports` that something is listening on."""
    listening = listening_ports()
    return sorted(p for p in ports if p and p in listening)

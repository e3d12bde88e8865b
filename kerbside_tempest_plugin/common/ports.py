"""Loopback ports: allocate free ones, see which are listening.

Nothing assumes a fixed port (no 5900, no 13002): every port a lane uses is
allocated here, and teardown checks each one is free again.
"""

import socket

LOOPBACK = '127.0.0.1'
_TCP_LISTEN = '0A'


def free_ports(count, host=LOOPBACK):
    """`count` distinct TCP ports that were free a moment ago.

    All sockets are held open together so the ports differ, then closed.
    A race with another program is still possible; callers that bind fail
    loudly and a new lane allocates again.
    """
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


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

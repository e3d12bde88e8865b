"""Evidence that Kerbside's proxy reached a hypervisor over TLS
(docs/contracts/kerbside.md §15), for any lane whose proxy log and
hypervisor ports a test can see: the direct-qemu lane, or a libvirt guest
behind Nova (`host`/`port`/`tls_port` from the console auth token).

    with Capture(pcap_path, [plain_port, tls_port]) as cap:
        ... a ryll session through the proxy ...
    assert_tls_leg(proxy_log_text, cap, plain_port, tls_port)
"""

import collections
import os
import signal
import subprocess

from kerbside_tempest_plugin.common import tools
from kerbside_tempest_plugin.common import waiting

RETRY_LINE = ('hypervisor requires TLS; retrying backend connection over '
              'the secure port')
SUCCESS_LINE = 'hypervisor connection successful; handing off to relay'
FAILED_LINE = 'hypervisor connection failed'
CHANNELS = ('main', 'display', 'cursor', 'inputs')


class Capture:
    """dumpcap on loopback for some TCP ports, into a pcap file."""

    def __init__(self, path, ports):
        self.path = path
        self.ports = ports
        self.err = path + '.stderr'
        self.proc = None

    def __enter__(self):
        with open(self.err, 'wb') as err:
            self.proc = subprocess.Popen(
                [tools.find('dumpcap'), '-q', '-i', 'lo', '-f', ' or '.join(
                    'tcp port %d' % p for p in self.ports), '-w', self.path],
                stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True)

        def started():
            if self.proc.poll() is not None:
                raise AssertionError('dumpcap exited with %s: %s' % (
                    self.proc.returncode, self._stderr()))
            return 'Capturing on' in self._stderr()

        waiting.wait_until(started, 15, 'dumpcap to start capturing on lo',
                           seen=self._stderr)
        return self

    def _stderr(self):
        with open(self.err) as f:
            return f.read()[-500:]

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def per_port(self, tls_port):
        """{qemu port: {'conns', 'bytes', 'client_hellos',
        'server_hellos', 'app_records', 'redq'}} (TCP payload bytes both
        ways; TLS fields decoded on `tls_port`).
        """
        proc = subprocess.run(
            [tools.find('tshark'), '-r', self.path, '-d',
             'tcp.port==%d,tls' % tls_port, '-T', 'fields', '-E',
             'separator=;', '-e', 'tcp.srcport', '-e', 'tcp.dstport', '-e',
             'tcp.flags.syn', '-e', 'tcp.flags.ack', '-e', 'tcp.len', '-e',
             'tls.handshake.type', '-e', 'tls.record.content_type', '-e',
             'tls.record.opaque_type', '-e', 'tcp.payload'],
            capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-800:]
        out = {p: collections.Counter() for p in self.ports}
        for line in proc.stdout.splitlines():
            src, dst, syn, ack, length, hs, ctype, otype, payload = \
                line.split(';')
            port = int(dst) if int(dst) in out else int(src)
            c = out[port]
            if syn in ('1', 'True') and ack in ('0', 'False') and \
                    int(dst) == port:
                c['conns'] += 1
            c['bytes'] += int(length or 0)
            types = hs.split(',') if hs else []
            c['client_hellos'] += types.count('1')
            c['server_hellos'] += types.count('2')
            # Application data: content type 23 (TLS 1.3 records are all
            # opaque type 23 once the handshake is encrypted).
            c['app_records'] += ','.join((ctype, otype)).split(',').count(
                '23')
            if payload.startswith('52454451'):  # 'REDQ', a SPICE link
                c['redq'] += 1
        return out


def proxy_log(lane):
    with open(os.path.join(lane.log_dir, 'kerbside-daemon.out'),
              errors='replace') as f:
        return f.read()


def assert_tls_leg(log, cap, plain, tls, host='127.0.0.1',
                   channels=CHANNELS):
    """`log`: the proxy's output (kerbside-daemon.out); `cap`: a finished
    Capture of the hypervisor's `plain` and `tls` ports.
    """
    # The proxy's words: every channel tried plain, was refused, went TLS.
    assert FAILED_LINE not in log
    retries = [ln for ln in log.splitlines() if RETRY_LINE in ln]
    for channel in channels:
        assert any('channel_type="%s"' % channel in ln
                   for ln in retries), retries
    assert log.count(RETRY_LINE) == log.count(SUCCESS_LINE) >= len(channels)
    assert 'Connecting to %s:%d (TLS: true)' % (host, tls) in log

    # The wire's words, independent of Kerbside.
    seen = cap.per_port(tls)
    p, t = seen[plain], seen[tls]
    assert t['conns'] == p['conns'] >= len(channels), seen
    assert t['client_hellos'] == t['server_hellos'] == t['conns'], seen
    assert t['redq'] == 0, seen           # no cleartext SPICE link on TLS
    assert t['app_records'] > 0 and t['bytes'] > 100000, seen
    # The plain port: one link message and its NEED_SECURED reply per
    # channel, nothing else.
    assert p['redq'] == 2 * p['conns'] and p['app_records'] == 0, seen
    assert p['bytes'] < 400 * p['conns'], seen   # 236 each, measured

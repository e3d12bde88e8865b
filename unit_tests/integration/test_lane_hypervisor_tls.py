"""The Kerbside route's hypervisor leg over TLS (docs/contracts/kerbside.md
§15).

The lane's qemu refuses plain channels and offers a TLS port with a
certificate from the lane CA; the static source lists it as `secure_port`
with that CA and qemu's subject. A whole canonical walk through the proxy
must pass its oracles, while a loopback capture of qemu's two ports (the
proof that does not rely on Kerbside's own words) shows the plain port
carrying only the refused link handshakes and the TLS port carrying
the handshakes and the console; the proxy's log and /metrics say the same.
With a CA that did not sign qemu's certificate the console fails, and
each side says why.
"""

import collections
import os
import signal
import subprocess

import pytest

from kerbside_tempest_plugin.common import tls as common_tls
from kerbside_tempest_plugin.common import tools
from kerbside_tempest_plugin.common import waiting
from kerbside_tempest_plugin.lane import lane as lane_mod
from kerbside_tempest_plugin.ryll import errors as ryll_errors
from unit_tests.conftest import require_tools

pytestmark = pytest.mark.integration

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


def test_kerbside_route_hypervisor_leg_is_tls(tmp_path):
    require_tools('qemu-system-x86_64', 'qemu-img', 'openssl', 'ryll',
                  'mariadbd', 'tshark', 'dumpcap')
    from kerbside_tempest_plugin import guest_images
    from kerbside_tempest_plugin.scenario import runner
    image = guest_images.sextant_image()
    lane = lane_mod.Lane(str(tmp_path / 'w'), route='kerbside')
    try:
        lane.up()
        plain, tls = lane.ports['guest_spice'], lane.ports['guest_spice_tls']
        with open(lane.kerbside.sources_path) as f:
            sources = f.read()
        assert 'secure_port: %d' % tls in sources
        assert 'host_subject: "CN=qemu-hv"' in sources
        assert '  ca_cert: |\n    -----BEGIN CERTIFICATE-----' in sources
        cap = Capture(str(tmp_path / 'qemu-ports.pcap'), [plain, tls])
        with cap:
            result = runner.run_scenario(
                lane, 'canonical', 'kerbside', image,
                str(tmp_path / 'art'), log=lambda m: None)
        assert result.passed, result.failure_message()
        # Pixels crossed the TLS leg bit-exactly: the quiescent screens
        # matched early (a capture may straddle a redraw, checks.py).
        assert result.verdicts()['framebuffer_hash'] is True
        assert result.stats['fb_matched'] > 0
        argv = ' '.join(lane.guest.argv)
        assert 'tls-port=%d' % tls in argv and 'tls-channel=default' in argv

        metrics = lane.kerbside.metrics()
        assert metrics['kerbside_proxy_authorized_total'] >= len(CHANNELS)
        log = proxy_log(lane)
    finally:
        report = lane.down()
    assert report['leftover_pids'] == [] and report['busy_ports'] == []

    # The proxy's words: every channel tried plain, was refused, went TLS.
    assert FAILED_LINE not in log
    retries = [ln for ln in log.splitlines() if RETRY_LINE in ln]
    for channel in CHANNELS:
        assert any('channel_type="%s"' % channel in ln
                   for ln in retries), retries
    assert log.count(RETRY_LINE) == log.count(SUCCESS_LINE) >= len(CHANNELS)
    assert 'Connecting to 127.0.0.1:%d (TLS: true)' % tls in log

    # The wire's words, independent of Kerbside.
    seen = cap.per_port(tls)
    p, t = seen[plain], seen[tls]
    assert t['conns'] == p['conns'] >= len(CHANNELS), seen
    assert t['client_hellos'] == t['server_hellos'] == t['conns'], seen
    assert t['redq'] == 0, seen           # no cleartext SPICE link on TLS
    assert t['app_records'] > 0 and t['bytes'] > 100000, seen
    # The plain port: one link message and its NEED_SECURED reply per
    # channel, nothing else.
    assert p['redq'] == 2 * p['conns'] and p['app_records'] == 0, seen
    assert p['bytes'] < 400 * p['conns'], seen   # 236 each, measured


def test_wrong_hypervisor_ca_fails_readably(tmp_path):
    """Kerbside trusts a CA that did not sign qemu's certificate: the
    proxy refuses qemu (UnknownIssuer), ryll sees its main channel closed
    right after authenticating and exits 1, and the harness says so at
    once with ryll's log.
    """
    require_tools('qemu-system-x86_64', 'qemu-img', 'openssl', 'ryll',
                  'mariadbd')
    from kerbside_tempest_plugin import guest_images
    image = guest_images.sextant_image()
    other = common_tls.make_self_contained_x509(str(tmp_path / 'other-ca'))
    lane = lane_mod.Lane(str(tmp_path / 'w'), route='kerbside',
                         hypervisor_ca=os.path.join(other, 'ca-cert.pem'))
    try:
        lane.up()
        lane.boot_guest(image, banner=lane_mod.SEXTANT_BANNER
                        if image else 'Shell> ')
        rp = lane.start_ryll()
        with pytest.raises(ryll_errors.RyllConnectionClosed) as raised:
            with rp.connect(timeout=20) as client:
                rp.wait_ready(client, timeout=30)
        message = str(raised.value)
        assert 'exited with status 1' in message
        assert 'main channel dropped before SessionInitialized' in message
        log = proxy_log(lane)
    finally:
        report = lane.down()
    assert report['leftover_pids'] == [] and report['busy_ports'] == []
    assert RETRY_LINE in log and SUCCESS_LINE not in log
    failed = [ln for ln in log.splitlines() if FAILED_LINE in ln]
    assert failed, log[-2000:]
    assert 'invalid peer certificate: UnknownIssuer' in failed[0]

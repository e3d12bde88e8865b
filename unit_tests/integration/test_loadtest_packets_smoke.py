"""kerbside-latency --packets on real lanes: both legs of the kerbside route
captured, every measured key's KEY_DOWN/KEY_UP and draws paired, figures in
microseconds, the kept capture sanitised, nothing left running.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from kerbside_tempest_plugin.loadtest import packets
from unit_tests.integration import test_loadtest_smoke as smoke

pytestmark = pytest.mark.integration
latency_image = smoke.latency_image


def test_packets_smoke(tmp_path, latency_image):
    smoke._require_lane()
    if shutil.which('dumpcap') is None or os.geteuid() != 0:
        pytest.fail('--packets needs dumpcap and root (capture on lo)')
    out = tmp_path / 'latency'
    samples = 3
    argv = [sys.executable, '-m', 'kerbside_tempest_plugin.cmd.latency',
            '--packets', '--samples', str(samples), '--floor-samples', '0',
            '--gap', '0.1', '--no-plot', '--image', str(latency_image),
            '--output-dir', str(out)]
    if os.environ.get('KTP_ACCEL'):
        argv += ['--accel', os.environ['KTP_ACCEL']]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                          cwd=str(tmp_path))
    detail = 'stdout:\n%s\nstderr tail:\n%s' % (proc.stdout,
                                                proc.stderr[-3000:])
    assert proc.returncode == 0, detail
    summary = json.loads((out / 'summary.json').read_text())
    pk = summary['packets']
    assert 'error' not in pk, detail
    assert pk['capture']['dropped'] == 0, pk['capture']
    assert pk['timestamp_resolution_ns'] == 1
    keys = summary['routes']['kerbside']['samples']
    assert keys == samples, detail
    assert pk['upstream']['samples'] == 2 * keys, pk['upstream']
    assert pk['downstream']['samples'] >= keys, pk['downstream']
    assert pk['per_key']['keys'] == keys, pk['per_key']
    for d in ('upstream', 'downstream'):
        r = pk[d]
        assert 0 < r['p50_us'] <= r['p95_us'] <= r['p99_us'], r
    for c in pk['channels']:
        if c['channel'] in ('inputs', 'display'):
            assert c['unpaired'] == 0, c
    assert pk['end_to_end_ms']['p50_ms'] == \
        summary['routes']['kerbside']['p50_ms']
    assert any(line.startswith('LOADTEST packets upstream')
               for line in proc.stdout.splitlines()), detail
    # Only the sanitised capture is kept, and its tickets are blank.
    kept = pathlib.Path(pk['capture']['file'])
    assert kept.name == 'kerbside-legs.pcapng.gz' and kept.exists()
    assert not (out / 'packets' / 'kerbside-legs.pcapng').exists()
    assert pk['tickets_blanked'] >= 4
    ports = pk['capture']['ports']
    for c in packets.tcp_connections(packets.read_packets(str(kept))):
        if c.server[1] == ports['qemu'] and c.up.data:
            lo, hi = packets.parse_spice(c).ticket
            assert bytes(c.up.data[lo:hi]) == bytes(hi - lo)
    for route, rep in summary['teardown'].items():
        assert not rep.get('leftover_pids'), (route, rep)
        assert not rep.get('busy_ports'), (route, rep)

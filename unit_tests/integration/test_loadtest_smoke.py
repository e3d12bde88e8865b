"""Smoke tests of the latency loadtest with real parts (CI runs these).

- The latency guest boots under qemu (TCG), prints its banner, repaints its
  box on every key (checked with QMP send-key and screendumps) and draws
  nothing while no key comes.
- kerbside-latency with a few samples: both routes (via Kerbside and
  direct) produce samples, every one positive and finite, the outputs are
  where the summary says, and teardown leaves nothing running.

The loadtest's figures never gate CI; only these smoke checks do.
"""

import csv
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import time

from PIL import Image
import pytest

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin import guest_images
from unit_tests.conftest import require_tools

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
READY = r'ready: waiting for keys'
BANNER = 'Hello from the kerbside latency guest'

pytestmark = pytest.mark.integration


@pytest.fixture(scope='module')
def latency_image():
    """KTP_LATENCY_IMAGE, or the bundled latency guest (guest_images),
    built when missing.
    """
    try:
        return pathlib.Path(guest_images.latency_image())
    except errors.HarnessError as e:
        pytest.fail('no latency guest: %s' % e)


def _box_colour(path):
    img = Image.open(path).convert('RGB')
    w, h = img.size
    return (w, h), img.getpixel((w // 2, h // 2)), img.getpixel((4, 4))


def _wait_colour_change(guest, before, timeout=10):
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        _, colour, _ = _box_colour(guest.screendump())
        seen.append(colour)
        if colour != before:
            return colour
        if time.monotonic() >= deadline:
            raise AssertionError(
                'the box did not change colour within %.0f s of the key '
                '(still %s; %d screendumps); serial tail:\n%s'
                % (timeout, before, len(seen), guest.serial_tail()))
        time.sleep(0.2)


def test_latency_guest_repaints_on_every_key(qemu_guest, latency_image):
    guest = qemu_guest(latency_image, name='latency')
    guest.wait_serial(READY, 120, 'the latency guest to be ready')
    assert BANNER in guest.serial_text()
    size, first, corner = _box_colour(guest.screendump())
    assert size == (1024, 768)
    assert first != corner, 'no box painted at the centre'
    # Nothing redraws while no key comes.
    time.sleep(1.0)
    assert _box_colour(guest.screendump())[1] == first
    colours = [first]
    for n in range(1, 4):
        guest.send_key('space')
        colours.append(_wait_colour_change(guest, colours[-1]))
        guest.wait_serial(r'key %d ' % n, 10, 'key %d on serial' % n)
    # Two colours, alternating, for as many keys as come.
    assert colours[0] == colours[2] and colours[1] == colours[3]
    assert guest.alive


def _require_lane():
    require_tools('qemu-system-x86_64', 'qemu-img', 'ryll')
    venv = os.environ.get('KTP_KERBSIDE_VENV') or os.path.expanduser(
        '~/.cache/kerbside-tempest-plugin/kerbside-venv')
    if not os.path.exists(os.path.join(venv, 'bin', 'kerbside')):
        msg = ('no Kerbside venv at %s (run `kerbside-harness setup` or '
               'tools/setup.sh)' % venv)
        if os.environ.get('KTP_ALLOW_SKIP') == '1':
            pytest.skip(msg)
        pytest.fail(msg)


def test_loadtest_smoke_both_routes(tmp_path, latency_image):
    _require_lane()
    out = tmp_path / 'latency'
    argv = [sys.executable, '-m', 'kerbside_tempest_plugin.cmd.latency',
            '--samples', '3', '--floor-samples', '20', '--gap', '0.1',
            '--image', str(latency_image), '--output-dir', str(out)]
    if os.environ.get('KTP_ACCEL'):
        argv += ['--accel', os.environ['KTP_ACCEL']]
    before = set(p for p in os.listdir('/tmp') if p.startswith(
        'ktp-latency-'))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                          cwd=str(tmp_path))
    detail = 'stdout:\n%s\nstderr tail:\n%s' % (proc.stdout,
                                                proc.stderr[-3000:])
    assert proc.returncode == 0, detail
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == str(out / 'summary.json'), detail
    summary = json.loads((out / 'summary.json').read_text())
    assert 'error' not in summary, detail

    for route in ('kerbside', 'direct'):
        r = summary['routes'][route]
        assert r['samples'] >= 1, 'no samples on %s: %s' % (route, detail)
        assert r['ended'] == 'completed', detail
        for key in ('min_ms', 'p50_ms', 'p95_ms', 'p99_ms', 'max_ms',
                    'mean_ms'):
            assert math.isfinite(r[key]) and r[key] > 0, (route, key, r)
    with open(out / 'samples.csv') as f:
        rows = list(csv.DictReader(f))
    for route in ('kerbside', 'direct'):
        got = [r for r in rows if r['route'] == route]
        assert got, 'no CSV rows for %s' % route
        for row in got:
            if row['timeout'] == '1':
                continue
            value = float(row['latency_ms'])
            assert math.isfinite(value) and value > 0, row
    assert summary['ratio']['p50'] > 0 and summary['ratio']['p95'] > 0
    assert summary['floor']['samples'] == 20
    assert (out / 'latency.png').read_bytes()[:4] == b'\x89PNG'

    # Teardown freed everything and kept no secret.
    for route, rep in summary['teardown'].items():
        assert not rep.get('leftover_pids'), (route, rep)
        assert not rep.get('busy_ports'), (route, rep)
    after = set(p for p in os.listdir('/tmp') if p.startswith(
        'ktp-latency-'))
    assert after <= before, 'lane workdirs left behind: %s' % (
        after - before)
    secret_line = re.compile(rb'^\s*password\s*=\s*(?!<redacted>)\S',
                             re.MULTILINE)
    for path in out.rglob('*'):
        assert path.name != 'secrets' and not path.name.endswith('.vv'), \
            path
        if path.is_file():
            assert not secret_line.search(path.read_bytes()), path
    serial = (out / 'lanes' / 'direct' / 'guests' / 'latency-direct' /
              'serial.log').read_text(errors='replace')
    assert BANNER in serial

"""Unit tests for kerbside-latency's outputs, run end to end on fake
sockets (--fake): CSV, JSON summary, PNG, stdout."""

import csv
import io
import json
import math
import os

import pytest

from kerbside_tempest_plugin.cmd import latency
from kerbside_tempest_plugin.loadtest import report
from kerbside_tempest_plugin.loadtest import sampler

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _run(argv):
    out = io.StringIO()
    rc = latency.main(argv, stdout=out)
    return rc, out.getvalue().splitlines()


def test_fake_run_writes_every_output(tmp_path):
    rc, lines = _run(['--fake', '--samples', '4', '--gap', '0',
                      '--quiet', '0.01', '--hold', '0',
                      '--floor-samples', '10', '--output-dir',
                      str(tmp_path)])
    assert rc == 0
    # The last stdout line is the path of the JSON summary.
    assert lines[-1] == str(tmp_path / 'summary.json')
    summary = json.loads((tmp_path / 'summary.json').read_text())
    for route in ('kerbside', 'direct'):
        r = summary['routes'][route]
        for key in ('samples', 'timeouts', 'min_ms', 'p50_ms', 'p95_ms',
                    'p99_ms', 'max_ms', 'mean_ms'):
            assert key in r
        assert r['samples'] == 4 and r['timeouts'] == 0
        assert all(math.isfinite(r[k]) and r[k] > 0
                   for k in ('min_ms', 'p50_ms', 'p95_ms', 'max_ms'))
    assert set(summary['ratio']) >= {'p50', 'p95'}
    assert summary['ratio']['p50'] > 0
    assert 'nearest-rank' in summary['percentile_method']
    assert summary['floor']['samples'] == 10
    assert 'not a round-trip' in summary['latency_events_note']
    assert any(line.startswith('LOADTEST route=kerbside') for line in lines)
    assert any(line.startswith('LOADTEST ratio kerbside/direct')
               for line in lines)
    assert any(line.startswith('LOADTEST floor') for line in lines)

    with open(tmp_path / 'samples.csv') as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(sampler.Sample.CSV_FIELDS)
    assert [(r['route'], r['index']) for r in rows[:4]] == [
        ('kerbside', '0'), ('direct', '0'), ('kerbside', '1'),
        ('direct', '1')]
    assert len(rows) == 8
    assert all(float(r['latency_ms']) > 0 and r['timeout'] == '0'
               for r in rows)
    png = (tmp_path / 'latency.png').read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10000
    assert summary['plot'] == str(tmp_path / 'latency.png')
    assert os.path.exists(tmp_path / 'ping_intervals.csv')


def test_floor_only(tmp_path):
    rc, lines = _run(['--floor-only', '--floor-samples', '5',
                      '--output-dir', str(tmp_path)])
    assert rc == 0
    summary = json.loads(open(lines[-1]).read())
    assert summary['floor']['samples'] == 5
    assert summary['routes'] == {}
    assert not (tmp_path / 'samples.csv').exists()


def test_failed_bring_up_still_ends_with_the_summary_path(tmp_path):
    rc, lines = _run(['--image', str(tmp_path / 'missing.qcow2'),
                      '--floor-samples', '0', '--output-dir',
                      str(tmp_path)])
    assert rc == 1
    assert lines[-1] == str(tmp_path / 'summary.json')
    assert any('LOADTEST error' in line and 'missing.qcow2' in line
               for line in lines)
    summary = json.loads((tmp_path / 'summary.json').read_text())
    assert 'missing.qcow2' in summary['error']


@pytest.mark.parametrize('argv', [
    ['--routes', 'kerbside,bogus'],
    ['--routes', 'direct,direct'],
    ['--samples', '0'],
])
def test_bad_arguments(argv):
    with pytest.raises(SystemExit) as e:
        latency.parse_args(argv)
    assert e.value.code == 2


def test_text_lines_report_an_ended_route():
    routes = {
        'kerbside': {'samples': 0, 'timeouts': 0, 'p50_ms': None,
                     'p95_ms': None, 'p99_ms': None, 'min_ms': None,
                     'max_ms': None, 'mean_ms': None,
                     'ended': 'control connection closed: EOF'},
        'direct': {'samples': 2, 'timeouts': 1, 'p50_ms': 30.0,
                   'p95_ms': 40.0, 'p99_ms': 40.0, 'min_ms': 30.0,
                   'max_ms': 40.0, 'mean_ms': 35.0, 'ended': 'completed'}}
    summary = {'routes': routes, 'ratio': {'p50': None, 'p95': None}}
    lines = report.text_lines(summary)
    assert 'ENDED EARLY: control connection closed: EOF' in lines[0]
    assert 'samples=2 timeouts=1 p50=30.0 p95=40.0' in lines[1]


def test_plot_handles_one_empty_route(tmp_path):
    path = report.plot(str(tmp_path / 'p.png'),
                       {'kerbside': [], 'direct': [1.0, 2.0, 3.0]},
                       'title', floor_ms=0.1)
    assert open(path, 'rb').read(8) == PNG_MAGIC


def test_rig_down_closes_every_client_and_lane_even_when_one_fails(tmp_path):
    from kerbside_tempest_plugin.loadtest import rig as rig_mod
    events = []

    class Part:
        def __init__(self, name, fail=False):
            self.name, self.fail = name, fail

        def detach(self):
            events.append('detach ' + self.name)

        def close(self):
            events.append('close ' + self.name)
            if self.fail:
                raise OSError('control socket gone')

        def down(self):
            events.append('down ' + self.name)
            return {'leftover_pids': []}

    r = rig_mod.Rig(['kerbside', 'direct'], image=None,
                    out_dir=str(tmp_path))
    for route in r.routes:
        route.session = route.client = route.lane = Part(
            route.name, fail=(route.name == 'direct'))
    load = rig_mod.Route('load1')
    load.session = load.client = Part('load1', fail=True)
    r.load = [load]
    reports = r.down()
    assert events == ['detach load1', 'close load1',
                      'detach direct', 'close direct', 'down direct',
                      'detach kerbside', 'close kerbside', 'down kerbside']
    assert set(reports) == {'kerbside', 'direct'}


def test_benchmark_out_dir_and_loadavg(tmp_path):
    given = report.stamped_dir(str(tmp_path / 'mine'), '/nowhere', 'x')
    assert given == str(tmp_path / 'mine') and os.path.isdir(given)
    stamped = report.stamped_dir(None, str(tmp_path), 'load')
    assert os.path.dirname(stamped) == str(tmp_path / 'artifacts')
    assert os.path.basename(stamped).startswith('bench-load-2')
    assert os.path.basename(stamped).endswith('Z') and os.path.isdir(stamped)
    assert len(report.loadavg().split()) == 5

"""benchmarks/load.py's own logic: the knee, what saturated, the proxy's
metric deltas, and the /proc sampler on a real busy process.
"""

import importlib.util
import pathlib
import subprocess
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load():
    path = REPO_ROOT / 'benchmarks' / 'load.py'
    spec = importlib.util.spec_from_file_location('bench_load', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


load = _load()


def _usage(busy=0.5, **cores):
    u = {'wall_s': 10.0, 'ncpu': 2, 'machine_busy': busy}
    for c in load.CATEGORIES:
        u[c] = {'cpu_s': 10 * cores.get(c, 0.0), 'cores': cores.get(c, 0.0),
                'processes': 1, 'rss_peak_mb': 1.0, 'rss_total_peak_mb': 1.0}
    return u


def _point(n, passed, walk, **usage):
    return {'route': 'kerbside', 'n': n, 'passed': passed,
            'walk_p50_s': walk, 'usage': _usage(**usage)}


def test_knee_is_the_first_failure_or_slowdown():
    pts = [_point(1, 1, 8.0), _point(2, 2, 8.5), _point(4, 4, 12.5),
           _point(8, 5, 30.0)]
    knee, why = load.find_knee(pts)
    assert knee['n'] == 4 and '12.50 s > 1.5 x 8.00 s' in why
    pts[1]['passed'] = 1
    knee, why = load.find_knee(pts)
    assert knee['n'] == 2 and '1 of 2 walks failed' in why
    assert load.find_knee([_point(1, 1, 8.0), _point(2, 2, 11.9)]) == (
        None, None)
    assert load.find_knee([]) == (None, None)


def test_saturation_names_the_component():
    what, why = load.saturation(_point(4, 4, 20, busy=0.97, qemu=1.7,
                                       harness=0.2))
    assert what == 'qemu (TCG)' and 'qemu 1.70' in why
    what, _ = load.saturation(_point(4, 4, 20, busy=0.97, qemu=0.9,
                                     harness=0.95))
    assert what == 'harness'
    what, _ = load.saturation(_point(4, 4, 20, busy=0.6,
                                     **{'kerbside-proxy': 1.0}))
    assert what == 'proxy'
    what, _ = load.saturation(_point(4, 4, 20, busy=0.4, qemu=0.6))
    assert what == 'none'


def test_metrics_delta_counts_new_counters_from_zero():
    before = {'kerbside_proxy_connections_total': 4.0,
              'kerbside_proxy_active_connections': 0.0,
              'python_gc': 1.0}
    after = {'kerbside_proxy_connections_total': 12.0,
             'kerbside_proxy_active_connections': 0.0,
             'kerbside_proxy_bytes_relayed_total{direction="up"}': 10.0,
             'kerbside_proxy_bytes_relayed_total{direction="down"}': 90.0}
    d = load.metrics_delta(before, after)
    assert d['kerbside_proxy_connections_total'] == 8.0
    assert 'python_gc' not in d
    assert load.metric_sum(d, 'kerbside_proxy_bytes_relayed_total') == 100
    assert load.metric_sum(d, 'kerbside_proxy_denied_total') == 0


def test_sampler_sees_a_busy_child_born_during_the_run():
    procs = {'qemu': []}
    sampler = load.Sampler(lambda: procs, interval=0.05).start()
    # It burns 1 s of CPU, then idles a moment, so that a sample lands
    # after the burn even when the machine is loaded.
    child = subprocess.Popen([sys.executable, '-c',
                              'import time\n'
                              'while time.process_time() < 1.0: pass\n'
                              'time.sleep(0.5)'])
    procs['qemu'] = [child.pid]
    try:
        child.wait(60)
    finally:
        time.sleep(0.1)
        usage = sampler.stop()
    assert usage['qemu']['processes'] == 1
    # born during the run: counted from zero (its 1 s of CPU)
    assert usage['qemu']['cpu_s'] >= 0.7
    assert usage['qemu']['rss_peak_mb'] > 1
    assert 0 <= usage['machine_busy'] <= 1
    assert load.proc_cpu_rss(child.pid) is None

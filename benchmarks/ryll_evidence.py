#!/usr/bin/env python3
"""What ryll's evidence costs: walks with --capture/--pedantic and without,
side by side in one run.

One lane (with Kerbside) is brought up; for each route N walks run with
ryll's evidence on and N with it off, alternating (on, off, on, off...)
so drift in the machine's load falls on both. Printed per route and
mode: passes, walk and total seconds (median and range), ryll's CPU
seconds over its life (user + system, from the rusage of the reaped
ryll), capture fidelity, the bytes of ryll's evidence kept and of the
whole artifact directory, and the seconds the secret scan and the HTML
report took at the end of the run.

    python3 benchmarks/ryll_evidence.py [--runs 3] [--routes kerbside direct]
        [--image PATH] [--out DIR]
"""

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import scenario as scenario_bench  # noqa: E402

from kerbside_tempest_plugin.scenario import evidence  # noqa: E402
from kerbside_tempest_plugin.scenario import runner  # noqa: E402

MODES = (('on', evidence.EvidenceOptions()), ('off', evidence.OFF))


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f))
               for d, _, fs in os.walk(path) for f in fs)


def proc_cpu(pid):
    """utime + stime of `pid` in seconds from /proc (also for a zombie,
    which keeps its times until it is reaped), or None.
    """
    try:
        with open('/proc/%d/stat' % pid) as f:
            fields = f.read().rsplit(')', 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def measure_ryll_cpu(lane, sink):
    """Wrap lane.stop_ryll: the CPU seconds of the ryll it stops, from
    /proc just before the stop, else from the rusage of the reaped child.
    """
    real = lane.stop_ryll

    def stop_ryll():
        rp = lane.ryll
        seen = proc_cpu(rp.pid) if rp is not None and rp.pid else None
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        real()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        reaped = (after.ru_utime - before.ru_utime) + \
            (after.ru_stime - before.ru_stime)
        if rp is not None:
            sink.append(max(seen or 0.0, reaped))
    lane.stop_ryll = stop_ryll


def measure_finish(sink):
    """Time ArtifactDir.finish (the secret scans) per run."""
    from kerbside_tempest_plugin.scenario import artifacts
    real = artifacts.ArtifactDir.finish

    def finish(self):
        t = time.monotonic()
        try:
            return real(self)
        finally:
            sink.append(time.monotonic() - t)
    artifacts.ArtifactDir.finish = finish


def run(args, out):
    from kerbside_tempest_plugin.lane import lane as lane_mod
    workdir = tempfile.mkdtemp(prefix='lane-', dir=out)
    lane = lane_mod.Lane(workdir, route='kerbside', kerbside=True)
    cpu, finish = [], []
    measure_ryll_cpu(lane, cpu)
    measure_finish(finish)
    rows = {}
    try:
        lane.up()
        for route in args.routes:
            for i in range(args.runs):
                for mode, options in MODES:
                    n_cpu = len(cpu)
                    r = runner.run_scenario(
                        lane, 'canonical', route, args.image,
                        os.path.join(out, route, mode),
                        name='bench-evidence-%s-%s-%02d' % (route, mode,
                                                            i + 1),
                        log=lambda m: None, evidence=options)
                    rows.setdefault((route, mode), []).append({
                        'result': r,
                        'ryll_cpu_s': cpu[-1] if len(cpu) > n_cpu
                        else None,
                        'finish_s': finish[-1] if finish else None,
                        'evidence_bytes': dir_bytes(os.path.join(
                            r.artifact_dir, evidence.EVIDENCE_DIR))
                        if os.path.isdir(os.path.join(
                            r.artifact_dir, evidence.EVIDENCE_DIR)) else 0,
                        'artifact_bytes': dir_bytes(r.artifact_dir)})
                    print('  %s/%s %d: %s' % (route, mode, i + 1,
                                              r.summary_line()), flush=True)
    finally:
        lane.down()
        shutil.rmtree(os.path.join(workdir, 'secrets'), ignore_errors=True)
    return rows


def table(rows, args):
    cols = [(route, mode) for route in args.routes for mode, _ in MODES]
    spread = scenario_bench.spread

    def col(key, fn):
        return [fn(rows.get(c, [])) for c in cols]

    def field(name):
        return lambda rs: spread([x[name] for x in rs])

    def phase(name):
        return lambda rs: spread([x['result'].phases.get(name)
                                  for x in rs])

    def kib(name):
        return lambda rs: spread([x[name] / 1024.0 for x in rs])
    lines = [
        ('passed', col('passed', lambda rs: '%d / %d' % (
            sum(x['result'].passed for x in rs), len(rs)))),
        ('walk (s)', col('walk', phase('walk'))),
        ('ryll to surface (s)', col('rs', phase('ryll_to_surface'))),
        ('total per walk (s)', col('total', phase('total'))),
        ('ryll CPU (s)', col('cpu', field('ryll_cpu_s'))),
        ('capture fidelity', col('fid', lambda rs: spread(
            [x['result'].stats.get('fidelity') for x in rs]))),
        ('ryll evidence (KiB)', col('ev', kib('evidence_bytes'))),
        ('artifact dir (KiB)', col('art', kib('artifact_bytes'))),
        ('secret scan at finish (s)', col('fin', field('finish_s'))),
    ]
    head = ['metric'] + ['%s, evidence %s' % c for c in cols]
    body = [[label] + values for label, values in lines]
    widths = [max(len(str(r[i])) for r in [head] + body)
              for i in range(len(head))]
    fmt = '  '.join('%%-%ds' % w for w in widths)
    return '\n'.join([fmt % tuple(head), fmt % tuple('-' * w for w in
                                                     widths)] +
                     [fmt % tuple(r) for r in body])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--runs', type=int, default=3,
                   help='walks per route and mode')
    p.add_argument('--routes', nargs='+', default=['kerbside', 'direct'],
                   choices=['kerbside', 'direct'])
    p.add_argument('--image', default=os.environ.get('SEXTANT_IMAGE') or
                   os.path.join(REPO, 'images', 'out', 'sextant.qcow2'))
    p.add_argument('--out', default=None)
    args = p.parse_args()
    out = os.path.abspath(args.out or os.path.join(
        REPO, 'artifacts', 'bench-ryll-evidence-%s' % time.strftime(
            '%Y%m%dT%H%M%SZ', time.gmtime())))
    os.makedirs(out, exist_ok=True)
    print('%d canonical walk(s) per route and mode, routes %s; artifacts '
          'in %s' % (args.runs, ' '.join(args.routes), out), flush=True)
    rows = run(args, out)
    text = table(rows, args)
    print()
    print(text)
    with open(os.path.join(out, 'summary.txt'), 'w') as f:
        f.write(text + '\n')
    failed = [x for rs in rows.values() for x in rs
              if not x['result'].passed]
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())

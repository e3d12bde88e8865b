"""kerbside-latency: keypress-to-screen latency, via Kerbside and direct.

Boots the latency guest (--image, else $KTP_LATENCY_IMAGE, else the bundled
guest, built when missing: guest_images) once per route, starts
ryll on each (through the Kerbside proxy, and straight to qemu), and for N
samples per route presses space over ryll's control socket and times it to
the first ``surface_drawn`` stamped after the send, alternating the routes
sample by sample. Then measures the floor (the same loop against an
instant fake socket) and writes samples.csv, ping_intervals.csv,
summary.json and latency.png into the output directory.

With --packets the kerbside route's lane runs the proxy's leg to qemu in
plain SPICE, dumpcap captures both of its legs on loopback while the keys
are pressed, and the summary gains "packets": what kerbside-proxy itself
added per direction (p50/p95/p99 in microseconds, paired message by
message: loadtest.packets) beside the keypress-to-screen figures; the
pairs go to packets.csv and the capture (tickets blanked) is kept gzipped.

stdout: a short summary; its last line is the path of summary.json (also
when the run failed, in which case the summary holds "error"). Progress
goes to stderr. Exit status: 0 when at least one route produced samples
(timeouts and a route that died are reported, not failures), 1 otherwise,
2 on bad arguments. The loadtest never gates CI.
"""

import argparse
import datetime
import logging
import os
import signal
import sys
import threading
import time

from kerbside_tempest_plugin import guest_images
from kerbside_tempest_plugin.loadtest import floor as floor_mod
from kerbside_tempest_plugin.loadtest import packets as packets_mod
from kerbside_tempest_plugin.loadtest import report
from kerbside_tempest_plugin.loadtest import rig as rig_mod
from kerbside_tempest_plugin.loadtest import sampler

LOG = logging.getLogger('kerbside-latency')
ROUTES = ('kerbside', 'direct')


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog='kerbside-latency',
        description='Keypress-to-screen latency over ryll\'s control '
                    'socket, via Kerbside and direct, side by side.')
    p.add_argument('--samples', type=int, default=60,
                   help='keys per route (default 60)')
    p.add_argument('--routes', default='kerbside,direct',
                   help='comma-separated routes, measured in this order '
                        'each round (default kerbside,direct)')
    p.add_argument('--deadline', type=float, default=5.0,
                   help='seconds a key may take to draw before it is a '
                        'timeout sample (default 5)')
    p.add_argument('--gap', type=float, default=0.25,
                   help='pause after each sample, seconds (default 0.25)')
    p.add_argument('--quiet', type=float, default=0.15,
                   help='the screen must have been quiet this long before '
                        'a key, seconds (default 0.15)')
    p.add_argument('--hold', type=float, default=0.05,
                   help='time between key down and key up (default 0.05)')
    p.add_argument('--max-seconds', type=float, default=600,
                   help='budget for the sampling loop (default 600)')
    p.add_argument('--max-consecutive-timeouts', type=int, default=5,
                   help='end a route after this many timeouts in a row')
    p.add_argument('--floor-samples', type=int, default=200,
                   help='keys against the instant fake socket (0: skip)')
    p.add_argument('--floor-only', action='store_true',
                   help='measure only the floor; no lane is started')
    p.add_argument('--fake', action='store_true',
                   help='run the routes against instant fake sockets '
                        'instead of lanes (a dry run of the pipeline)')
    p.add_argument('--image', default=None,
                   help='the latency guest (default $KTP_LATENCY_IMAGE, '
                        'else the bundled guest, built when missing)')
    p.add_argument('--output-dir', default=None,
                   help='where the results go (default ./artifacts/'
                        'latency-<UTC time>)')
    p.add_argument('--accel', default='auto', choices=['auto', 'kvm', 'tcg'],
                   help='qemu accelerator (default auto: probes KVM)')
    p.add_argument('--boot-timeout', type=float, default=120,
                   help='deadline for each guest to be ready, seconds')
    p.add_argument('--ryll-binary', default=os.environ.get('RYLL_BINARY',
                                                           'ryll'))
    p.add_argument('--kerbside-venv', default=None)
    p.add_argument('--keep-workdir', action='store_true',
                   help='keep the lane workdirs (they hold secrets/)')
    p.add_argument('--packets', action='store_true',
                   help='also measure what the proxy adds per message, '
                        'from a capture of both of its legs (needs the '
                        'kerbside route and dumpcap; the proxy talks '
                        'plain SPICE to qemu)')
    p.add_argument('--load-consoles', type=int, default=0,
                   help='N more latency guests through the kerbside '
                        'route\'s one proxy (one lane, consoles=1+N), each '
                        'pressed every --load-gap s while the routes are '
                        'measured (default 0: idle)')
    p.add_argument('--load-gap', type=float, default=0.1,
                   help='pause between keys on a load console (0.1)')
    p.add_argument('--label', default='',
                   help='free text recorded in the summary (for example '
                        '"idle" or "loaded: 3 other consoles")')
    p.add_argument('--no-plot', action='store_true')
    p.add_argument('-v', '--verbose', action='store_true')
    args = p.parse_args(argv)
    args.route_list = [r.strip() for r in args.routes.split(',')
                       if r.strip()]
    bad = [r for r in args.route_list if r not in ROUTES]
    if bad or not args.route_list or \
            len(set(args.route_list)) != len(args.route_list):
        p.error('--routes takes distinct names from %s' % (ROUTES,))
    if args.samples < 1:
        p.error('--samples must be at least 1')
    if args.packets and ('kerbside' not in args.route_list or args.fake
                         or args.floor_only):
        p.error('--packets needs the kerbside route on real lanes (not '
                '--fake or --floor-only)')
    if args.load_consoles < 0 or (args.load_consoles and (
            'kerbside' not in args.route_list or args.fake or
            args.floor_only)):
        p.error('--load-consoles takes N >= 0 and needs the kerbside route '
                'on real lanes')
    return args


def settings_of(args):
    return {
        'samples_per_route': args.samples, 'routes': args.route_list,
        'order': 'alternating, one sample per route per round (%s)'
                 % ' '.join(args.route_list),
        'key': 'space (AT set-1 0x39), send_key down, hold, up',
        'hold_ms': args.hold * 1000, 'deadline_s': args.deadline,
        'gap_s': args.gap, 'quiet_ms': args.quiet * 1000,
        'max_seconds': args.max_seconds,
        'max_consecutive_timeouts': args.max_consecutive_timeouts,
        'fake': bool(args.fake),
        'packets': bool(args.packets),
        'load_consoles': args.load_consoles,
        'load_gap_s': args.load_gap if args.load_consoles else None,
        'label': args.label,
    }


class _Terminate(BaseException):
    pass


def main(argv=None, stdout=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    stdout = stdout or sys.stdout
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format='%(asctime)s %(levelname)s %(name)s: %(message)s')

    def say(text):
        sys.stderr.write('[kerbside-latency %s] %s\n' % (
            time.strftime('%H:%M:%S'), text))
        sys.stderr.flush()

    out_dir = os.path.abspath(args.output_dir or os.path.join(
        'artifacts', 'latency-%s' % datetime.datetime.now(
            datetime.timezone.utc).strftime('%Y%m%d-%H%M%S')))
    os.makedirs(out_dir, exist_ok=True)
    summary_path = os.path.join(out_dir, 'summary.json')
    csv_path = os.path.join(out_dir, 'samples.csv')

    stop = threading.Event()
    old_term = None
    if threading.current_thread() is threading.main_thread():
        def on_term(signum, frame):
            stop.set()
            raise _Terminate()
        old_term = signal.signal(signal.SIGTERM, on_term)

    summary = {}
    error = None
    rig = None
    sessions = []
    sink = None
    extra = {'output_dir': out_dir, 'started_utc': datetime.datetime.now(
        datetime.timezone.utc).isoformat(timespec='seconds')}
    try:
        if not args.floor_only:
            sink = report.SampleCsv(csv_path, sampler.Sample.CSV_FIELDS)
            extra['csv'] = csv_path
            if args.fake:
                rig = rig_mod.FakeRig(args.route_list, say=say,
                                      delays={'kerbside': 0.002,
                                              'direct': 0.001})
            else:
                image = guest_images.latency_image(
                    args.image, log_dir=out_dir)
                extra['image'] = image
                rig = rig_mod.Rig(args.route_list, image, out_dir,
                                  accel=args.accel,
                                  boot_timeout=args.boot_timeout,
                                  ryll_binary=args.ryll_binary,
                                  kerbside_venv=args.kerbside_venv,
                                  keep_workdir=args.keep_workdir, say=say,
                                  hypervisor_tls=not args.packets,
                                  capture_dir=os.path.join(
                                      out_dir, 'packets')
                                  if args.packets else None,
                                  load_consoles=args.load_consoles,
                                  load_gap=args.load_gap)
            t = time.monotonic()
            rig.up()
            extra['bring_up_s'] = round(time.monotonic() - t, 3)
            sessions = rig.sessions()
            if args.load_consoles:
                rig.start_load()
            say('sampling: %d keys per route, routes %s alternating'
                % (args.samples, ' '.join(args.route_list)))
            t = time.monotonic()
            ended = sampler.run_alternating(
                sessions, args.samples, deadline_s=args.deadline,
                gap_s=args.gap, hold_s=args.hold, quiet_s=args.quiet,
                max_seconds=args.max_seconds,
                max_consecutive_timeouts=args.max_consecutive_timeouts,
                on_sample=_progress(sink, say, args.samples), stop=stop,
                say=say)
            extra['sampling_s'] = round(time.monotonic() - t, 3)
            extra['loop_ended'] = ended
            extra['rig'] = rig.info()
            if args.load_consoles:
                rig.stop_load()
                extra['load'] = rig.load_summary()
            if args.packets:
                rig.stop_capture()
    except (KeyboardInterrupt, _Terminate):
        error = 'interrupted'
        say('interrupted: tearing down and writing what was measured')
    except Exception as e:
        error = '%s: %s' % (type(e).__name__, e)
        LOG.debug('run failed', exc_info=True)
        say('run failed: %s' % error)
    finally:
        if sink is not None:
            sink.close()
        if rig is not None:
            say('tearing down')
            reports = rig.down()
            extra['teardown'] = {
                k: {kk: v.get(kk) for kk in ('leftover_pids', 'busy_ports',
                                             'seconds', 'error')
                    if kk in v} for k, v in reports.items()}
            if getattr(rig, 'scrubbed', None):
                extra['redacted_in_copied_logs'] = rig.scrubbed
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)

    floor = None
    if args.floor_samples > 0 and error != 'interrupted':
        say('measuring the floor: %d keys against an instant fake socket'
            % args.floor_samples)
        try:
            floor, _ = floor_mod.measure_floor(args.floor_samples)
        except Exception as e:
            floor = {'error': '%s: %s' % (type(e).__name__, e)}
    if sessions:
        pings = os.path.join(out_dir, 'ping_intervals.csv')
        report.write_pings(pings, sessions)
        extra['ping_intervals_csv'] = pings
    if error:
        extra['error'] = error
    if args.packets and rig is not None and rig.capture is not None:
        say('pairing the messages of both legs')
        extra['packets'] = packets_mod.measure(rig, out_dir)
    summary = report.build_summary(sessions, settings=settings_of(args),
                                   floor=floor, extra=extra)
    if 'packets' in summary:
        packets_mod.beside_end_to_end(summary['packets'],
                                      summary['routes'].get('kerbside'))
    if sessions and not args.no_plot:
        series = {s.name: s.latencies_ms for s in sessions}
        ratio = summary['ratio']
        title = 'keypress to first surface_drawn, latency guest, %s' % (
            'fake sockets' if args.fake else 'TCG lane')
        if ratio.get('p50') is not None:
            title += ' - kerbside/direct p50 %.2fx, p95 %.2fx' % (
                ratio['p50'], ratio['p95'])
        try:
            summary['plot'] = report.plot(
                os.path.join(out_dir, 'latency.png'), series, title,
                summary['routes'],
                floor_ms=(floor or {}).get('p50_ms'))
        except Exception as e:
            summary['plot_error'] = '%s: %s' % (type(e).__name__, e)
    report.write_json(summary_path, summary)

    for line in report.text_lines(summary):
        stdout.write(line + '\n')
    if 'packets' in summary:
        for line in packets_mod.text_lines(summary['packets']):
            stdout.write(line + '\n')
    if error:
        stdout.write('LOADTEST error: %s\n' % error)
    stdout.write(summary_path + '\n')
    stdout.flush()
    measured = any(r['samples'] for r in summary['routes'].values())
    if args.floor_only:
        return 0 if floor and floor.get('samples') else 1
    return 0 if measured else 1


def _progress(sink, say, total):
    def on_sample(sample):
        sink.write(sample)
        if sample.index == 0 or (sample.index + 1) % 10 == 0 or \
                sample.index + 1 == total:
            say('%s sample %d/%d: %s' % (
                sample.route, sample.index + 1, total,
                'timeout' if sample.timeout else '%.1f ms (%d draws)' % (
                    sample.latency_ms, sample.draws)))
    return on_sample


if __name__ == '__main__':
    sys.exit(main())

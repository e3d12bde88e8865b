"""One scenario run: a fresh guest on a lane, a walk, both oracles judged.

`run_scenario(lane, walk, route, ...)` boots a fresh guest on an up Lane
(lane.Lane), starts ryll on the route, captures the digest stream while
the walk's beats run, reads the serial drain after the power-off, tears
the guest and ryll down (always), copies the logs, judges every check,
and writes the artifacts and report.md. It returns a RunResult and raises
only for programming errors: a failed beat or check is in the result,
so a caller can report every verdict before failing. A failure names one
cause (RunResult.cause(): the failed beat, else the error): a walk that
stopped before the power-off left no drain, so the checks that needed it
are NOT RUN, saying where the walk stopped, and are not counted as
failures. `lane` may also be
one console of a lane with several (lane.base.ConsoleSlot): N walks then
run at once on N threads, each with its own guest and ryll
(benchmarks/load.py).

`judge(...)` is the checks part alone (used by the unit tests with a fake
guest, and by the benchmark).
"""

import dataclasses
import json
import logging
import os
import re
import time
import traceback
import typing

from kerbside_tempest_plugin.scenario import artifacts as art_mod
from kerbside_tempest_plugin.scenario import capture as cap
from kerbside_tempest_plugin.scenario import checks
from kerbside_tempest_plugin.scenario import evidence as evidence_mod
from kerbside_tempest_plugin.scenario import frames as frames_mod
from kerbside_tempest_plugin.scenario import html_report
from kerbside_tempest_plugin.scenario import keyhops as keyhops_mod
from kerbside_tempest_plugin.scenario import liveness as liveness_mod
from kerbside_tempest_plugin.scenario import report as report_mod
from kerbside_tempest_plugin.scenario import walk as walk_mod
from kerbside_tempest_plugin.sextant import contract
from kerbside_tempest_plugin.sextant import keys

LOG = logging.getLogger(__name__)

EVENTS = ('surface_drawn', 'paste_completed', 'paste_failed')


@dataclasses.dataclass
class RunResult:
    name: str
    walk: str
    route: str
    artifact_dir: str
    passed: bool = False
    results: typing.List[checks.CheckResult] = dataclasses.field(
        default_factory=list)
    beats: list = dataclasses.field(default_factory=list)
    phases: dict = dataclasses.field(default_factory=dict)
    error: str = None
    error_type: str = None
    stats: dict = dataclasses.field(default_factory=dict)
    # Why the walk stopped before the power-off (stop_reason), or None
    # when it completed: the checks it left without input are NOT RUN.
    stopped: str = None
    # Where the first lost key of a failed walk was lost (keyhops.json).
    keys_lost: str = None

    def verdicts(self):
        """{check: True (pass), False (fail) or None (not run)}."""
        return {r.name: r.passed for r in self.results}

    def _failed_beat(self):
        return next((b for b in self.beats if not b.get('ok')), None)

    def cause(self):
        """The one cause of a failed run, as one line, or None: the failed
        beat, else the error, else the first failed check.
        """
        if self.passed:
            return None
        beat = self._failed_beat()
        where = ' | %s' % self.keys_lost if self.keys_lost else ''
        if beat is not None:
            return 'beat %s: %s%s' % (beat.get('name'),
                                      _first_line(beat.get('error')), where)
        if self.error:
            return _first_line(self.error) + where
        failed = [r for r in self.results if r.failed]
        if failed:
            return '%s: %s' % (failed[0].name, failed[0].summary)
        return None

    def failure_message(self):
        """One cause first (the failed beat, or the error, or the first
        failed check), then any other check that failed on its own input,
        then the checks that could not run, as not run.
        """
        beat = self._failed_beat()
        lines = ['%s (%s route) FAILED%s; artifacts: %s' % (
            self.walk, self.route, ' at beat %s' % beat['name']
            if beat else '', self.artifact_dir)]
        failed = [r for r in self.results if r.failed]
        if beat is not None:
            # The error is the beat's own failure (plus the state of
            # ryll and the guest) unless something else went wrong.
            error = beat.get('error') or ''
            if self.error and error and error in self.error:
                lines.append('beat %s failed: %s' % (beat.get('name'),
                                                     self.error))
            else:
                lines.append('beat %s failed: %s' % (beat.get('name'),
                                                     error))
                if self.error:
                    lines.append('error: %s' % self.error)
            failed = [r for r in failed if r.name != 'beats']
        elif self.error:
            lines.append('error: %s' % self.error)
        if self.keys_lost and (beat is not None or self.error):
            lines.append('where the key went: %s' % self.keys_lost)
        if failed:
            if len(lines) > 1:
                lines.append('also failed:')
            lines += [r.message() for r in failed]
        groups = {}
        for r in self.results:
            if not r.ran:
                summary = r.summary
                if self.stopped:
                    # the reason was given in full just above
                    summary = summary.replace(self.stopped, '%s, above' % (
                        self.stopped.split(': ', 1)[0]))
                groups.setdefault(summary, []).append(r.name)
        for summary, names in groups.items():
            lines.append('%s: %s' % (', '.join(names), summary))
        return '\n'.join(lines)

    def summary_line(self):
        beat = self._failed_beat()
        return '%s %s/%s%s: %s; %s; report %s' % (
            'PASS' if self.passed else 'FAIL', self.walk, self.route,
            ' (stopped at beat %s)' % beat['name'] if beat else '',
            ', '.join('%s=%s' % (r.name, r.verdict) for r in self.results),
            ', '.join('%s=%.1fs' % (k, v) for k, v in self.phases.items()
                      if v is not None),
            os.path.join(self.artifact_dir, 'report.md'))

    def to_json(self):
        out = dataclasses.asdict(self)
        out['results'] = [r.to_json() for r in self.results]
        out['cause'] = self.cause()
        return out


def _first_line(text, limit=200):
    line = (text or '').strip().splitlines()[0] if (text or '').strip() \
        else ''
    return line if len(line) <= limit else line[:limit - 3] + '...'


def stop_reason(walker, error=None):
    """Why the walk stopped before the power-off, or None when it
    completed (the power-off key was sent): 'walk stopped at beat NAME:
    <first line of its error>', or 'walk stopped before the power-off:
    <first line of the error>'.
    """
    if walker is None or walker.powered_off:
        return None
    beat = next((b for b in walker.beats if not b.ok), None)
    if beat is not None:
        return 'walk stopped at beat %s: %s' % (beat.name,
                                                _first_line(beat.error))
    return 'walk stopped before the power-off: %s' % (
        _first_line(error) or 'no error was recorded')


# The checks whose input is the serial drain, which the guest writes only
# after the power-off key (contract section 4.1).
def _slowest_refresh_ms(drain):
    """The guest's own slowest refresh in ms (refresh_stats max_us), or
    None without a complete drain or with its TSC uncalibrated (0).
    """
    if drain is None or drain.refresh_stats is None:
        return None
    try:
        us = int(drain.refresh_stats.fields.get('max_us') or 0)
    except (TypeError, ValueError):
        return None
    return us / 1000.0 if us > 0 else None


DRAIN_CHECKS = ('drain_sequence', 'drain_t_monotonic', 'refresh_stats',
                'chains')


def judge(walk_name, walker, stream, drain, error=None, drain_error=None):
    """Every check of a run, in report order.

    A walk that stopped before the power-off (a failed beat, or `error`)
    left no drain: the drain checks and capture_fidelity (the refresh
    count is in the drain) are NOT RUN, saying where the walk stopped;
    the checks on what was captured (beats, framebuffer_hash,
    frame_counters) still run and count, unless nothing was captured.
    A walk that completed judges its drain as it is: a missing,
    unparsable (`drain_error`) or incomplete drain fails.
    """
    stopped = stop_reason(walker, error)
    digests = stream.snapshot()
    captures = list(stream.captures)
    results = [checks.check_beats(walker.beats, stopped=stopped)]
    if stopped:
        results += [checks.CheckResult.not_run(n, stopped)
                    for n in DRAIN_CHECKS]
    elif drain is None:
        results += [
            checks.CheckResult(
                'drain', False, 'no serial drain was read%s' % (
                    ': %s' % drain_error if drain_error else
                    ' (see the error and serial.log)')),
            checks.CheckResult.not_run(
                'chains', 'no serial drain to replay: see drain'),
        ]
    else:
        results += [
            checks.check_drain_sequence(drain, walk_mod.expected(walk_name)),
            checks.check_t_monotonic(drain),
            checks.check_refresh_stats(drain),
            checks.check_chains(drain.to_events(), digests),
        ]
    checked = [c for c in captures if c.framebuffer_hash_ok is not None]
    if stopped and not checked:
        results.append(checks.CheckResult.not_run(
            'framebuffer_hash', 'no capture was checked: %s' % stopped))
    else:
        results.append(checks.check_framebuffer_hash(
            captures, walker.quiet_windows))
    if stopped and not digests:
        results.append(checks.CheckResult.not_run(
            'frame_counters', 'no digest was captured: %s' % stopped))
    else:
        results.append(checks.check_frame_counters(digests))
    distinct = len({cd.frame_counter for cd in digests})
    count = None
    if drain is not None and drain.refresh_stats is not None:
        count = drain.refresh_stats.fields.get('count')
    if stopped:
        results.append(checks.CheckResult.not_run(
            'capture_fidelity', stopped, data={'distinct': distinct}))
    elif count is None:
        results.append(checks.CheckResult.not_run(
            'capture_fidelity', 'no refresh_stats count to compare %d '
            'distinct frames with: see %s' % (
                distinct, 'drain' if drain is None else 'refresh_stats'),
            data={'distinct': distinct}))
    else:
        results.append(checks.capture_fidelity(digests, count))
    return results


def guest_pacing(drain, first_key_unicode=None):
    """Seconds of the guest's own stalls between the first and the last
    keypress of the drain (its `t` clock), or None.
    """
    if drain is None:
        return None
    keys = [r for r in drain.records if r.type == 'keypress']
    if len(keys) < 2:
        return None
    return (keys[-1].t - keys[0].t) / 1000.0


def _path_waited(walker):
    """The walk's PathClock.waited when it measured anything, else None
    (the frame check then judges every timing finding).
    """
    path = walker.liveness.path if walker.liveness is not None else None
    return path.waited if path is not None and path.available else None


def path_pids(lane, guest, rp):
    """A callable giving {role: [pid]} of the console's path: the guest's
    qemu (where the lane runs it here), the lane's kerbside-proxy, ryll
    and this harness, for liveness's CPU-available clock
    (scenario.starvation).
    """
    def pids():
        out = {'harness': [os.getpid()]}
        qemu = getattr(guest, 'pid', None)
        out['qemu'] = [qemu] if isinstance(qemu, int) else []
        ryll = getattr(rp, 'pid', None)
        out['ryll'] = [ryll] if isinstance(ryll, int) else []
        kerbside = getattr(lane, 'kerbside', None) or getattr(
            getattr(lane, 'lane', None), 'kerbside', None)   # a slot's
        try:
            out['kerbside-proxy'] = list(kerbside.proxy_pids()) \
                if kerbside is not None else []
        except Exception:
            out['kerbside-proxy'] = []
        return out
    return pids


def run_scenario(lane, walk_name, route, image, artifact_root,
                 step_timeout=90, boot_timeout=120, drain_timeout=60,
                 paste_secret=walk_mod.PASTE_SECRET,
                 char_delay_ms=contract.PASTE_CHAR_DELAY_MS,
                 name=None, log=None, evidence=None,
                 key_bound_s=liveness_mod.DEFAULT_BOUND_S):
    """Run walk `walk_name` on a fresh guest of `lane` over `route`.
    `key_bound_s` bounds each key's first redraw and registration
    (scenario.liveness; 0 turns the judge off).
    """
    log = log or LOG.info
    name = name or 'sextant-%s-%s' % (walk_name.replace('_', '-'), route)
    art = art_mod.ArtifactDir(artifact_root, name,
                              redactor=lane.redactor)
    log('artifacts for %s: %s' % (name, art.path))
    result = RunResult(name, walk_name, route, art.path)
    guest = rp = client = stream = walker = drain = ev = None
    drain_text = None
    t_start = time.monotonic()
    t_wall = time.time()
    phases = result.phases
    try:
        t = time.monotonic()
        guest = lane.boot_guest(image, name=_guest_name(name),
                                banner=re.escape(contract.BANNER),
                                timeout=boot_timeout)
        phases['boot_to_banner'] = guest.boot_seconds or \
            time.monotonic() - t
        t = time.monotonic()
        # ryll's own evidence (evidence.EvidenceOptions; default: pcaps
        # and pedantic reports) goes to scratch first, then through the
        # secret scan into the artifacts once ryll has stopped.
        ev = evidence_mod.RyllEvidence(
            evidence, scratch_parent=os.path.join(lane.workdir, 'ryll'))
        rp = lane.start_ryll(guest, route=route, timeout=30,
                             extra_args=ev.argv() + frames_mod.ryll_args(
                                 ev.options))
        client, stream = attach(rp, art)
        phases['ryll_to_surface'] = time.monotonic() - t
        walker = walk_mod.Walker(
            client, stream, art, step_timeout=step_timeout,
            paste_secret=paste_secret, char_delay_ms=char_delay_ms, log=log,
            key_bound_s=key_bound_s, ryll_log=getattr(rp, 'stdout_path',
                                                      None),
            probe=liveness_mod.screendump_probe(
                guest, os.path.join(art.path, 'liveness-screendump.png')),
            path_pids=path_pids(lane, guest, rp),
            ps2_trace=getattr(guest, 'trace_path', None)
            if walk_mod.pacing_on() else None)
        t = time.monotonic()
        walk_mod.run_walk(walk_name, walker)
        phases['walk'] = time.monotonic() - t
        t = time.monotonic()
        guest.serial.wait_for(walk_mod.DRAIN_END_RE, drain_timeout)
        drain_text = guest.serial.read()
        phases['drain'] = time.monotonic() - t
        try:
            guest.wait_stopped(30)
        except Exception as e:
            result.stats['power_off'] = 'guest still running: %s' % e
    except BaseException as e:
        result.error = '%s: %s' % (type(e).__name__, e)
        result.error_type = type(e).__name__
        state = _state_at_failure(rp, guest)
        if state:
            result.error += ' [at failure: %s]' % '; '.join(
                line.splitlines()[0] for line in state)
        art.write_text('error.txt', traceback.format_exc() + '\n' +
                       '\n\n'.join(state))
        log('%s: %s' % (name, result.error))
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            _teardown(lane, guest, client, stream, art, result, ev)
            raise
    _teardown(lane, guest, client, stream, art, result, ev)
    phases['total'] = time.monotonic() - t_start

    # The drain, whether or not the walk finished: whatever serial holds.
    serial_path = guest.serial_path if guest else None
    if drain_text is None and serial_path and os.path.exists(serial_path):
        with open(serial_path, 'rb') as f:
            drain_text = f.read().decode('utf-8', 'replace')
    drain_error = None
    if drain_text:
        from kerbside_tempest_plugin.sextant import drain as drain_mod
        try:
            drain = drain_mod.parse(drain_text)
        except drain_mod.SerialParseError as e:
            drain_error = 'serial drain unparsable: %s' % e
            result.error = (result.error + '; ' if result.error else '') + \
                drain_error
    faults = _fault_log(lane, t_wall)
    if walker is not None:
        _key_hops(art, result, walker, stream, faults, drain)
    if walker is not None and stream is not None:
        result.stopped = stop_reason(walker, result.error)
        result.results = judge(walk_name, walker, stream, drain,
                               error=result.error, drain_error=drain_error)
        # Every frame state that reached ryll, from its display capture
        # (none without ryll's --capture: then there is no such check).
        capture = os.path.join(art.path, frames_mod.CAPTURE)
        if frames_mod.kept(capture):
            t = time.monotonic()
            result.results.append(frames_mod.check_capture(
                capture, beats=walker.beats, seen=[
                    (cd.frame_counter, cd.at) for cd in stream.snapshot()],
                slowest_refresh_ms=_slowest_refresh_ms(drain),
                drained=drain is not None and drain.complete,
                path_waited=_path_waited(walker)))
            result.stats['frame_check_s'] = round(time.monotonic() - t, 3)
        if faults is not None:
            art.write_text('fault-relay.jsonl', ''.join(
                json.dumps(e, sort_keys=True) + '\n' for e in faults))
            result.stats['faults_injected'] = fault_summary(faults)
        if walker.liveness is not None:
            live = walker.liveness.evidence()
            live['paste_pacing'] = walker.pacing
            art.write_json('liveness.json', live)
            if live.get('path'):
                result.stats['path_starved_share'] = live['path']['share']
            reg = [k['registered_s'] for k in live['keys']
                   if k['registered_s'] is not None]
            if reg:
                result.stats['key_registered_max_s'] = round(max(reg), 3)
        result.beats = [b.to_json() for b in walker.beats]
        pacing = guest_pacing(drain)
        if pacing is not None and walker.keys:
            wall = walker.beats[-1].ended - walker.keys[0][0] \
                if walker.beats and walker.beats[-1].ended else None
            result.stats['guest_pacing_s'] = pacing
            if wall is not None:
                result.stats['keys_wall_s'] = wall
                result.stats['overhead_s'] = wall - pacing
        fb = stream.fb_stats()
        result.stats.update({
            'fb_matched': fb['matched'], 'fb_checked': fb['checked'],
            'captures': len(stream.captures),
            'digests': len(stream.digests),
            'decode_failures': stream.decode_failures,
            'surface_drawn': stream.draws,
        })
        for r in result.results:
            if r.name == 'capture_fidelity' and 'fidelity' in r.data:
                result.stats['fidelity'] = r.data['fidelity']
    result.passed = (result.error is None and bool(result.results) and
                     all(r.passed or frames_mod.advisory(r)
                         for r in result.results))
    build = kerbside_build(lane) if route == 'kerbside' else None
    if build:
        result.stats['kerbside_build'] = build
    _write(art, result, walker, stream, drain, drain_text, route, image,
           guest)
    log(result.summary_line())
    return result


def attach(rp, art, ready_timeout=60, digests_file='digests.jsonl'):
    """Connect to a started ryll's control socket, subscribe to EVENTS,
    wait for a SPICE surface and start the digest capture (each digest
    appended to `digests_file` in `art`). Returns (client, stream).
    """
    client = rp.connect(timeout=30, resolve_key=keys.resolve)
    accepted = client.subscribe(list(EVENTS))
    missing = [e for e in EVENTS if e not in accepted]
    if missing:
        raise AssertionError(
            'ryll %s does not offer event(s) %s (supported: %s); the '
            'digest capture needs surface_drawn and the paste needs '
            'paste_completed' % (client.protocol_version, missing,
                                 list(client.supported_events)))
    rp.wait_ready(client, timeout=ready_timeout)
    stream = cap.DigestStream(
        client, on_digest=lambda cd: art.append_jsonl(
            digests_file, cd.to_json())).start()
    return client, stream


def kerbside_build(lane):
    """Which Kerbside the lane ran (lane.kerbside_build(): versions, the
    proxy binary's path and sha256), or None; never raises.
    """
    fn = getattr(lane, 'kerbside_build', None)
    if fn is None:
        fn = getattr(getattr(lane, 'lane', None), 'kerbside_build', None)
    if fn is None:
        return None
    try:
        return fn()
    except Exception as e:
        return {'error': 'unknown: %s' % e}


def build_line(build):
    """One line naming a Kerbside build, for reports and the summary."""
    if not build:
        return 'unknown'
    if build.get('error'):
        return build['error']
    return 'kerbside %s (%s), kerbside-proxy %s at %s, sha256 %s' % (
        build.get('kerbside_version'), build.get('source') or '?',
        build.get('kerbside_proxy_version'), build.get('proxy_bin'),
        build.get('proxy_sha256'))


def _state_at_failure(rp, guest):
    """What ryll and the guest were doing when the run failed (the first
    line of each is short: alive or exit status; then log tails).
    """
    out = []
    for label, obj in (('ryll', rp), ('guest', guest)):
        if obj is None:
            continue
        try:
            out.append('%s: %s' % (label, obj.describe()))
        except Exception as e:
            out.append('%s: <cannot describe: %r>' % (label, e))
    return out


def _guest_name(name):
    return re.sub(r'[^a-z0-9-]', '-', name.lower())[-40:].strip('-')


def _teardown(lane, guest, client, stream, art, result, ev=None):
    """Stop capture, close the client, stop ryll, tear the guest down and
    copy the logs. Never raises over the original failure.
    """
    steps = [
        ('stop the capture', lambda: stream and stream.stop()),
        ('close the control client', lambda: client and client.close()),
        ('stop ryll', lane.stop_ryll),
        ('collect ryll\'s evidence', lambda: ev and result.stats.update(
            ryll_evidence_bytes=ev.collect(art).get('bytes', 0))),
        ('tear the guest down', lambda: guest and guest.teardown()),
        ('copy the logs', lambda: _copy_logs(lane, guest, art)),
    ]
    for what, fn in steps:
        try:
            fn()
        except Exception as e:
            LOG.exception('teardown: could not %s', what)
            result.stats.setdefault('teardown_errors', []).append(
                '%s: %r' % (what, e))


def _copy_logs(lane, guest, art):
    if guest is not None:
        art.copy_logs(guest.artifact_dir, prefix='guest__')
    rp = lane.last_ryll
    if rp is not None:
        for p, n in ((rp.stdout_path, 'ryll.stdout.log'),
                     (rp.stderr_path, 'ryll.stderr.log')):
            art.copy_file(p, n)
    art.copy_logs(lane.log_dir, prefix='lane__')


def _write(art, result, walker, stream, drain, drain_text, route, image,
           guest):
    try:
        if stream is not None:
            for c in stream.captures:
                art.append_jsonl('captures.jsonl', c.to_json())
        if drain_text is not None:
            art.write_text('serial.log', drain_text)
        art.write_json('result.json', result.to_json())
        meta = {'walk': result.walk, 'route': route,
                'image': image or '(provider default)',
                'artifact dir': art.path}
        if guest is not None:
            meta.update(guest.facts())
        build = result.stats.get('kerbside_build')
        if build:
            meta['kerbside under test'] = build_line(build)
        if 'faults_injected' in result.stats:
            meta['faults injected (relay)'] = result.stats['faults_injected']
        if result.stats.get('keyhops'):
            meta['keys, hop by hop'] = result.stats['keyhops']
        if walker is not None and walker.liveness is not None:
            meta['key to registration (s)'] = key_response_line(
                walker.liveness.evidence())
        phases = dict(result.phases)
        for k in ('guest_pacing_s', 'overhead_s'):
            if k in result.stats:
                phases[k.replace('_s', '')] = result.stats[k]
        events = drain.to_events() if drain is not None else []
        text = report_mod.render(
            '%s: %s' % (result.name, 'PASS' if result.passed else 'FAIL'),
            meta, result.results, walker, stream, events,
            drain_text=_drain_only(drain), phases=phases,
            files=list(art.files) + ['report.md', 'report.html'],
            error=result.error, cause=result.cause())
        art.write_text('report.md', text)
        html_report.write(art, result, walker, stream, events,
                          drain_text=_drain_only(drain), phases=phases,
                          meta=meta)
    except Exception:
        LOG.exception('writing the report failed')
        art.write_text('report-error.txt', traceback.format_exc())
    finally:
        art.finish()


def _key_hops(art, result, walker, stream, faults, drain):
    """keyhops.json: every key of the walk on the last hop it reached
    (scenario.keyhops); a failed walk names where its first lost key was
    lost. Evidence, never a failure by itself; never raises.
    """
    t = time.monotonic()
    try:
        relay = None if faults is None else [
            e for e in faults if e.get('channel') in (None, 'inputs')]
        hops, data = keyhops_mod.for_walk(
            art.path, relay_events=relay, drain=drain,
            digests=stream.snapshot() if stream is not None else (),
            sent=[k for _, k in walker.keys], load=keyhops_mod.loadavg())
        art.write_json(keyhops_mod.NAME, data)
        result.stats['keyhops'] = data.get('headline')
        stopped = any(not b.ok for b in walker.beats) or result.error
        if hops is not None and stopped:
            result.keys_lost = hops.first_lost_line()
    except Exception as e:
        LOG.exception('key hops')
        result.stats['keyhops'] = 'not run: %r' % e
    result.stats['keyhops_s'] = round(time.monotonic() - t, 3)


def _fault_log(lane, since):
    """The lane's fault relay log since wall time `since` (None for a
    lane without a relay).
    """
    if not getattr(lane, 'relays', None):
        return None
    try:
        return lane.fault_log(since=since)
    except Exception as e:      # the log is evidence, never a failure
        return [{'event': 'unreadable', 'error': str(e)}]


def fault_summary(events):
    """One line: how many injections, and the first (when, where)."""
    inj = [e for e in events if e.get('event') == 'inject']
    if not inj:
        return 'none (a relay on the hypervisor leg, nothing injected)'
    e = inj[0]
    return '%d: first %s on %s %s %s at %.2f s since the first link%s' % (
        len(inj), e.get('action'), e.get('channel'), e.get('direction'),
        e.get('name') or '', e.get('t_rel', 0),
        ', rect %s' % (e['rect'],) if e.get('rect') else '')


def key_response_line(evidence):
    """Per beat: keys, median and max seconds from key to registration."""
    parts = ['%s %d key(s) median %.2f max %.2f' % (
        beat, v['n'], v['median_s'], v['max_s'])
        for beat, v in evidence['per_beat'].items()]
    return '; '.join(parts) + ' (bound %.1f s)' % evidence['bound_s'] \
        if parts else 'no key registered (bound %.1f s)' % \
        evidence['bound_s']


def _drain_only(drain):
    if drain is None:
        return None
    return '\n'.join(r.text for r in drain.all_records())


def dump_results(results, path):
    with open(path, 'w') as f:
        json.dump([r.to_json() for r in results], f, indent=1, default=str)

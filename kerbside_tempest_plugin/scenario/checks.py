"""The cross-checks a scenario run is judged by, beyond its beats.

Each check returns a CheckResult (name, passed, summary line, details);
nothing here raises on a failed check, so a run can report every verdict
before it fails. A check has three verdicts: PASS, FAIL, and NOT RUN
(`passed` is None) for a check whose input does not exist, such as the
drain checks of a walk that stopped before the power-off: it says why
(`CheckResult.not_run(name, why)`), and it is neither a pass nor a
failure, so one cause is never counted twice (docs/plans/
sextant-scenario.md, "One cause per failure"). `assert_all(results)` turns
failures into one AssertionError that names each failed check and lists
the checks not run.

The two oracles are the QR digests captured during the walk
(capture.CapturedDigest) and the serial drain written at power-off
(sextant.drain.Drain; its records become digest events with
`to_events()`). The checks:

- drain_sequence: the drain holds the walk's ordered (not necessarily
  adjacent) sequence (sextant.expect items); the failure names the first
  missing item and dumps the drain.
- drain_t_monotonic: the drain's `t` values never decrease.
- refresh_stats: the drain is complete (its terminator is present).
- chains: the eight CRC32C channel chains replayed from the drain equal the
  hashes in the last digest captured, once the drain events after that
  digest are left out (the matching prefix is searched for). Every other
  captured digest must match some prefix too, in order.
- framebuffer_hash: the trailer hash recomputed on the host, matched over
  checked captures; a quiescent screen (Awaiting, Parked) must match
  within a few captures (a capture can straddle a cursor blink and the QR
  redraw, contract §7).
- frame_counters: the kept frame counters strictly increase.
- capture_fidelity: distinct frame counters seen / refresh_stats count
  (reported, and failed only below a floor).
"""

import dataclasses
import typing

from kerbside_tempest_plugin.scenario import capture as cap


PASS = 'PASS'
FAIL = 'FAIL'
NOT_RUN = 'NOT RUN'


@dataclasses.dataclass
class CheckResult:
    name: str
    passed: typing.Optional[bool]   # None: not run (its input is missing)
    summary: str
    details: typing.List[str] = dataclasses.field(default_factory=list)
    data: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def not_run(cls, name, why, data=None):
        """A check that could not run, and why (`why` is short: the
        summary reads "not run (<why>)").
        """
        return cls(name, None, 'not run (%s)' % why, data=dict(data or {}))

    @property
    def failed(self):
        return self.passed is False

    @property
    def ran(self):
        return self.passed is not None

    @property
    def verdict(self):
        if self.passed is None:
            return NOT_RUN
        return PASS if self.passed else FAIL

    def message(self):
        text = '%s: %s: %s' % (self.name, self.verdict, self.summary)
        if self.details and self.failed:
            text += '\n    ' + '\n    '.join(self.details)
        return text

    def to_json(self):
        return {'name': self.name, 'passed': self.passed,
                'verdict': self.verdict, 'summary': self.summary,
                'details': list(self.details), 'data': self.data}


def verdict_of(result):
    """The verdict of a check result or of its JSON form (a result.json
    written before NOT RUN existed has only `passed`).
    """
    if isinstance(result, CheckResult):
        return result.verdict
    if result.get('verdict'):
        return result['verdict']
    if result.get('passed') is None and 'passed' in result:
        return NOT_RUN
    return PASS if result.get('passed') else FAIL


def assert_all(results):
    """Raise one AssertionError naming every failed check (and listing
    the checks not run); nothing is raised when every check passed.
    """
    failed = [r for r in results if r.failed]
    not_run = [r for r in results if not r.ran]
    if failed or not_run:
        lines = [r.message() for r in failed] + \
            [r.message() for r in not_run]
        raise AssertionError(
            '%d of %d check(s) failed%s:\n%s' % (
                len(failed), len(results),
                ', %d not run' % len(not_run) if not_run else '',
                '\n'.join(lines)))


# --------------------------------------------------------------- drain


def _drain_text(drain, limit=400):
    lines = [r.describe() for r in drain.all_records()]
    if len(lines) > limit:
        lines = lines[:limit // 2] + ['...'] + lines[-limit // 2:]
    return lines or ['(no drain records)']


def check_drain_sequence(drain, expected, name='drain_sequence'):
    """`expected` (sextant.expect items) in order in the drain."""
    from kerbside_tempest_plugin.sextant import expect
    try:
        ends = expect.match_ordered(drain, expected)
    except expect.ExpectationError as e:
        first, _, rest = str(e).partition('\n')
        return CheckResult(name, False, first,
                           details=rest.splitlines() + ['full drain:'] +
                           _drain_text(drain),
                           data={'missing': str(e.item)})
    return CheckResult(
        name, True, 'all %d expected items found in order among %d drain '
        'records' % (len(expected), len(drain.all_records())),
        data={'ends': ends})


def check_t_monotonic(drain, name='drain_t_monotonic'):
    from kerbside_tempest_plugin.sextant import expect
    try:
        expect.check_timestamps(drain)
    except expect.ExpectationError as e:
        return CheckResult(name, False, str(e))
    ts = [r.t for r in drain.records if r.t is not None]
    return CheckResult(name, True, 't never decreases over %d records%s' % (
        len(ts), ' (t=%d..%d)' % (ts[0], ts[-1]) if ts else ''))


def check_refresh_stats(drain, name='refresh_stats'):
    rs = drain.refresh_stats
    if rs is None:
        tail = drain.records[-3:]
        return CheckResult(name, False, 'no type=refresh_stats line: the '
                           'drain is incomplete after %d record(s)%s' % (
                               len(drain.records), '; last: ' + '; '.join(
                                   r.text for r in tail) if tail else ''))
    return CheckResult(name, True, 'present: %s' % rs.text,
                       data=dict(rs.fields))


# --------------------------------------------------------------- chains


def prefix_hashes(events):
    """The channel hashes after each prefix of `events` (0..len)."""
    from kerbside_tempest_plugin.digest import chains
    cc = chains.ChannelChains()
    out = [cc.hashes]
    for event in events:
        cc.update(event)
        out.append(cc.hashes)
    return out


def _events_text(events, limit=40):
    lines = ['%3d %s' % (i, cap.describe_event(e))
             for i, e in enumerate(events)]
    return lines[:limit] + (['...'] if len(lines) > limit else [])


def _hex(hashes):
    return ', '.join('%s=0x%08x' % kv for kv in hashes.items())


def check_chains(events, digests, name='chains', ring_size=256):
    """Replay the drain through the CRC32C chains against the digests."""
    if not digests:
        return CheckResult(name, False, 'no digest was captured, so there '
                           'are no channel hashes to compare')
    if len(events) >= ring_size:
        return CheckResult(
            name, False, 'the drain holds %d events, the size of the '
            "guest's ring: older events were evicted, so the chains cannot "
            'be replayed from it' % len(events))
    prefixes = prefix_hashes(events)
    index = {}
    for k, hashes in enumerate(prefixes):
        index.setdefault(tuple(sorted(hashes.items())), k)
    last = digests[-1]
    key = tuple(sorted(last.hashes.items()))
    k = index.get(key)
    matched = []
    unmatched = []
    for cd in digests:
        kk = index.get(tuple(sorted(cd.hashes.items())))
        if kk is None:
            unmatched.append(cd)
        else:
            matched.append((cd.frame_counter, kk))
    backwards = [(a, b) for a, b in zip(matched, matched[1:])
                 if b[1] < a[1]]
    data = {'last_frame': last.frame_counter, 'prefix': k,
            'drain_events': len(events),
            'digests_matched': len(matched), 'digests': len(digests)}
    if k is None:
        # Closest prefix, channel by channel, to say where it diverges.
        best = max(range(len(prefixes)), key=lambda j: sum(
            prefixes[j][c] == v for c, v in last.hashes.items()))
        diff = ['%s: digest 0x%08x, drain prefix 0x%08x' % (
            c, v, prefixes[best][c]) for c, v in last.hashes.items()
            if prefixes[best][c] != v]
        return CheckResult(
            name, False, 'the hashes of the last digest (frame %d) equal '
            'no prefix of the %d drain events; closest is the first %d '
            'events, differing in %s' % (
                last.frame_counter, len(events), best,
                ', '.join(d.split(':')[0] for d in diff)),
            details=['digest: ' + _hex(last.hashes)] + diff +
            ['drain tail after the closest prefix:'] +
            ['%d %s' % (best + i, t) for i, t in enumerate(
                _events_text(events[best:best + 20]))], data=data)
    after = events[k:]
    details = ['events after the last digest: %s' % (
        '; '.join(cap.describe_event(e) for e in after) or 'none')]
    if unmatched or backwards:
        details += ['digest frame %d matches no drain prefix (%s)' % (
            cd.frame_counter, _hex(cd.hashes)) for cd in unmatched[:5]]
        details += ['frame %d matches prefix %d but the earlier frame %d '
                    'matched prefix %d' % (b[0], b[1], a[0], a[1])
                    for a, b in backwards[:5]]
        return CheckResult(
            name, False, 'the last digest (frame %d) equals the chains of '
            'the first %d of %d drain events, but %d other digest(s) match '
            'no prefix and %d go backwards' % (
                last.frame_counter, k, len(events), len(unmatched),
                len(backwards)), details=details, data=data)
    return CheckResult(
        name, True, 'the last digest (frame %d) equals the chains replayed '
        'from the first %d of %d drain events (%d after it); all %d '
        'digests match a drain prefix, in order' % (
            last.frame_counter, k, len(events), len(after), len(digests)),
        details=details, data=data)


# --------------------------------------------------------------- frames


def check_frame_counters(digests, name='frame_counters'):
    counters = [cd.frame_counter for cd in digests]
    bad = [(a, b) for a, b in zip(counters, counters[1:]) if b <= a]
    if not counters:
        return CheckResult(name, False, 'no digest was captured')
    if bad:
        return CheckResult(
            name, False, 'frame counters do not strictly increase: %s' %
            ', '.join('%d then %d' % ab for ab in bad[:10]),
            details=['sequence: %s' % counters])
    return CheckResult(name, True, '%d distinct frame counters, strictly '
                       'increasing from %d to %d' % (
                           len(counters), counters[0], counters[-1]))


def capture_fidelity(digests, refresh_count, floor=0.05,
                     name='capture_fidelity'):
    """Distinct frame counters seen / frames the guest drew."""
    distinct = len({cd.frame_counter for cd in digests})
    if not refresh_count:
        return CheckResult(name, False, 'no refresh_stats count to compare '
                           '%d distinct frames with' % distinct,
                           data={'distinct': distinct})
    ratio = distinct / refresh_count
    data = {'distinct': distinct, 'refresh_count': refresh_count,
            'fidelity': round(ratio, 4)}
    passed = floor <= ratio <= 1.0
    if ratio > 1.0:
        summary = ('%d distinct frames but the guest reports only %d '
                   'refreshes: impossible, frame counters are wrong'
                   % (distinct, refresh_count))
    else:
        summary = '%d of %d frames captured (%.1f%%)%s' % (
            distinct, refresh_count, 100 * ratio,
            '' if passed else '; below the floor of %.0f%%' % (100 * floor))
    return CheckResult(name, passed, summary, data=data)


@dataclasses.dataclass(frozen=True)
class QuietWindow:
    """A quiescent screen to judge the framebuffer hash on: the captures
    from `start` (a capture index) to `end` (exclusive; None = to the
    end), of which one of the first `within` checked must match.
    """
    label: str
    start: int
    end: typing.Optional[int] = None
    within: int = 5


def check_framebuffer_hash(captures, windows=(), name='framebuffer_hash'):
    """matched / checked over all captures; each window must match early."""
    checked = [c for c in captures if c.framebuffer_hash_ok is not None]
    matched = [c for c in checked if c.framebuffer_hash_ok]
    data = {'checked': len(checked), 'matched': len(matched),
            'distinct_frames_matched': len({c.frame_counter
                                            for c in matched})}
    details = []
    failed = []
    for w in windows:
        inside = [c for c in checked if c.index >= w.start and
                  (w.end is None or c.index < w.end)]
        head = inside[:w.within]
        hit = next((i for i, c in enumerate(head) if c.framebuffer_hash_ok),
                   None)
        if hit is None:
            failed.append(w.label)
            details.append(
                '%s: no match in the first %d checked capture(s) of %d '
                '(frames %s)' % (w.label, len(head), len(inside),
                                 [c.frame_counter for c in head]))
        else:
            details.append('%s: matched at checked capture %d of %d '
                           '(frame %d)' % (w.label, hit + 1, len(inside),
                                           head[hit].frame_counter))
        data['window_' + w.label] = None if hit is None else hit + 1
    if not checked:
        return CheckResult(name, False, 'no capture could be checked (no '
                           'decoded digest at its guest position)',
                           details=details, data=data)
    summary = 'matched %d of %d checked captures' % (
        len(matched), len(checked))
    if failed:
        return CheckResult(name, False, summary + '; no early match on '
                           'the quiescent screen(s): %s' % ', '.join(failed),
                           details=details, data=data)
    if not matched:
        return CheckResult(name, False, summary + ': the pixels never '
                           'matched the guest framebuffer', details=details,
                           data=data)
    return CheckResult(name, True, summary + ' (%d distinct frames)' %
                       data['distinct_frames_matched'], details=details,
                       data=data)


# --------------------------------------------------------------- beats


def check_beats(beats, name='beats', stopped=None):
    """Every beat seen in time. `stopped`: why the walk stopped before the
    power-off when no beat failed (an error between beats), or None; the
    beats that ran are still judged.
    """
    done = [b for b in beats if b.ok]
    bad = [b for b in beats if not b.ok]
    if bad:
        return CheckResult(name, False, '%d of %d beats failed: %s' % (
            len(bad), len(beats), ', '.join(b.name for b in bad)),
            details=[b.describe() for b in bad])
    inferred = [b.name for b in done if b.inferred]
    return CheckResult(name, True, 'all %d beats %sseen in time%s%s' % (
        len(beats), 'that ran ' if stopped else '', '' if not inferred else
        ' (%s inferred from channel hashes: the record left the raw '
        'window between captures)' % ', '.join(inferred),
        '; the walk stopped before the rest (%s)' % stopped
        if stopped else ''))

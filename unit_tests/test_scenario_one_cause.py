"""One cause per failure (issue 18 section 2).

A walk that stops at a beat fails once, at that beat: the checks whose
input is the serial drain (written only after the power-off) are NOT RUN,
saying where the walk stopped, and every report shows them apart from the
failures. A fail_on beat names the record the guest showed, not the list
of what would have ended the wait; a timeout says what it waited for and
what the guest last showed. A walk that completed judges its drain as it
is: a bad drain still fails.
"""

import json
import os
import types

from kerbside_tempest_plugin.cmd import summary as summary_cmd
from kerbside_tempest_plugin.digest import events as ev
from kerbside_tempest_plugin.scenario import capture as cap
from kerbside_tempest_plugin.scenario import runner
from kerbside_tempest_plugin.scenario import summary as summary_mod
from kerbside_tempest_plugin.scenario import walk
from unit_tests import scenario_fakes as fakes
from unit_tests.test_scenario_checks import canonical_history
from unit_tests.test_scenario_checks import captured
from unit_tests.test_scenario_checks import drain_of

DRAIN_CHECKS = ['drain_sequence', 'drain_t_monotonic', 'refresh_stats',
                'chains', 'capture_fidelity']


class SerialFileLane(fakes.FakeLane):
    """A fake lane whose guests have a serial log on disk, as qemu's do:
    the banner and the GOP modes, and no drain until the power-off.
    """

    def boot_guest(self, *args, **kwargs):
        g = super().boot_guest(*args, **kwargs)
        g.serial_path = os.path.join(g.artifact_dir, 'serial.log')
        with open(g.serial_path, 'w') as f:
            f.write('Hello from Uncalibrated Sextant\r\n'
                    'available GOP modes: 640x480 1024x768\r\n')
        return g


def drop_p(fake):
    """A pasted P is lost on the way: the guest rejects the paste."""
    real = fake.handle

    def handle(c):
        if fake.state == 'paste' and c == 'P':
            return
        real(c)
    fake.handle = handle


def run(tmp_path, lane_cls=fakes.FakeLane, **kw):
    lane = lane_cls(str(tmp_path / 'lane'), **kw)
    return runner.run_scenario(lane, 'canonical', 'direct', None,
                               str(tmp_path / 'artifacts'), step_timeout=15,
                               drain_timeout=10, log=lambda m: None)


def test_a_walk_stopped_at_a_beat_fails_once(tmp_path):
    result = run(tmp_path, SerialFileLane, guest_hook=drop_p)
    assert not result.passed
    verdicts = {r.name: r.verdict for r in result.results}
    # Exactly one failure, the beat; the checks on what was captured ran.
    assert [n for n, v in verdicts.items() if v == 'FAIL'] == ['beats']
    assert verdicts['framebuffer_hash'] == 'PASS'
    assert verdicts['frame_counters'] == 'PASS'
    assert [n for n, v in verdicts.items() if v == 'NOT RUN'] == \
        DRAIN_CHECKS
    for r in result.results:
        if not r.ran:
            assert r.passed is None and not r.failed
            assert r.summary.startswith(
                'not run (walk stopped at beat paste-accepted: waiting '
                'for paste_received correct=true len=23, the guest '
                'showed paste_received@'), r.summary
    assert result.stopped.startswith('walk stopped at beat paste-accepted')
    assert result.cause().startswith('beat paste-accepted: waiting for')

    # The message names one cause first, then the checks not run.
    lines = result.failure_message().splitlines()
    assert 'FAILED at beat paste-accepted' in lines[0]
    assert lines[1].startswith('beat paste-accepted failed: ')
    assert 'len=22 correct=false instead' in lines[1]
    assert lines[2] == (
        'drain_sequence, drain_t_monotonic, refresh_stats, chains, '
        'capture_fidelity: not run (walk stopped at beat paste-accepted, '
        'above)')
    assert len(lines) == 3
    assert ': FAIL' not in result.failure_message()

    line = result.summary_line()
    assert line.startswith('FAIL canonical/direct (stopped at beat '
                           'paste-accepted): beats=FAIL, ')
    assert 'drain_sequence=NOT RUN' in line and 'chains=NOT RUN' in line

    # result.json, report.md, report.html and the summary say NOT RUN.
    d = result.artifact_dir
    with open(os.path.join(d, 'result.json')) as f:
        saved = json.load(f)
    by_name = {r['name']: r for r in saved['results']}
    assert by_name['chains']['verdict'] == 'NOT RUN'
    assert by_name['chains']['passed'] is None
    assert by_name['beats']['verdict'] == 'FAIL'
    assert saved['cause'] == result.cause()
    assert saved['stopped'] == result.stopped
    md = open(os.path.join(d, 'report.md')).read()
    assert '**Verdict: FAIL**' in md
    assert 'Cause: `beat paste-accepted: waiting for' in md
    assert '| chains | NOT RUN | not run (walk stopped at beat ' \
        'paste-accepted' in md
    assert '| beats | FAIL |' in md
    assert 'Not run (their input does not exist; not counted as ' \
        'failures): drain_sequence, drain_t_monotonic, refresh_stats, ' \
        'chains, capture_fidelity.' in md
    page = open(os.path.join(d, 'report.html')).read()
    assert '<tr class="notrun" id="check-chains"><td>chains</td><td>NOT ' \
        'RUN</td>' in page
    assert '<tr class="fail" id="check-beats">' in page
    assert 'id="failed-drain_sequence"' in page     # its anchor in the box
    assert '<b>chains: FAIL' not in page
    root = os.path.dirname(d)
    out = summary_mod.line(dict(saved, _path=d))
    assert 'beats=FAIL' in out and 'chains=not_run' in out
    assert 'cause: beat paste-accepted: ' in out
    assert summary_cmd.main([root]) == 1
    index = open(os.path.join(root, 'index.html')).read()
    assert 'beats, (5 not run)' in index


# ------------------------------------------------------------- fail_on


def digest_showing(*records, fc=54):
    cd = captured(fc, [], 1)
    cd.analysis.digest.events = tuple(records)
    return cd


def paste_fail_on():
    """The paste-accepted beat's fail_on (walk.paste_and_submit)."""
    return walk._any(
        walk._shows('paste_received', correct=False),
        walk._shows('paste_received', len=lambda n: n != 23),
        walk._shows('bootloader_timeout'))


def test_held_names_only_the_record_that_matched():
    wrong = digest_showing(ev.PasteReceived(6850, 22, False),
                           ev.LineRendered(6850, 25))
    # Two alternatives hold on the same record: it is named once.
    assert walk.held(paste_fail_on(), wrong) == [
        'paste_received@t=6850 len=22 correct=false']
    timeout = digest_showing(ev.BootloaderTimeout(9000))
    assert walk.held(paste_fail_on(), timeout) == ['bootloader_timeout@t=9000']
    assert walk.held(paste_fail_on(), digest_showing(
        ev.LineRendered(1, 2))) == []
    # A plain predicate is named by its name.
    plain = walk._any(cap.shows('paste_received', correct=True))
    assert walk.held(plain, digest_showing(
        ev.PasteReceived(1, 23, True))) == [
        'paste_received correct=True']


class OneDigestStream:
    """A DigestStream whose wait returns one digest, or times out."""

    def __init__(self, cd=None, summary=None, closed=False):
        self.cd = cd
        self.summary = summary
        self.closed = closed
        self.captures = []
        self.last_png = None

    def mark(self):
        return 0

    def now(self):
        return 1.0

    def snapshot(self):
        return [self.cd] if self.cd else []

    def wait_for(self, predicate, timeout, what, since=0, health=None):
        if self.cd is not None and predicate(self.cd):
            return self.cd
        cls = cap.StreamClosed if self.closed else cap.CaptureTimeout
        raise cls('the long describe() message', what=what,
                  summary=self.summary)


def beat_error(stream, **kw):
    w = walk.Walker(None, stream, log=lambda m: None)
    try:
        w.beat('paste-accepted', 'paste_received correct=true len=23',
               cap.shows('paste_received', correct=True, len=23), **kw)
    except AssertionError as e:
        assert w.beats[-1].error == str(e)
        return e
    raise AssertionError('the beat passed')


def test_a_fail_on_beat_names_what_the_guest_showed():
    cd = digest_showing(ev.PasteReceived(6850, 22, False),
                        ev.LineRendered(6850, 25))
    e = beat_error(OneDigestStream(cd), fail_on=paste_fail_on())
    assert str(e) == (
        'waiting for paste_received correct=true len=23, the guest showed '
        'paste_received@t=6850 len=22 correct=false instead (frame 54 at '
        '1.00 s: paste_received@t=6850 len=22 correct=false; '
        'line_rendered@t=6850 row=25)')


def summary(digests=3, captures=12, last=True, **kw):
    s = {'digests': digests, 'captures': captures, 'decode_failures': 0,
         'screenshot_failures': 0, 'last_error': None,
         'closed_reason': None}
    if last:
        s['last'] = {'frame_counter': 53, 'age_s': 3.9,
                     'frame_size': [1024, 768],
                     'records': ['keypress@t=5350 unicode=125 scancode=0',
                                 'line_rendered@t=5300 row=25']}
    s.update(kw)
    return s


def test_a_timeout_says_what_it_waited_for_and_what_the_guest_showed():
    e = beat_error(OneDigestStream(summary=summary()), timeout=0)
    assert isinstance(e, cap.CaptureTimeout)
    assert e.summary['captures'] == 12
    text = str(e)
    assert text.startswith('timed out after 0.0 s waiting for '
                           'paste_received correct=true len=23; the guest '
                           'last showed frame 53, 3.9 s old: keypress@')
    assert text.endswith('(3 new digest(s) in 12 capture(s))')
    assert 'the long describe() message' not in text
    e = beat_error(OneDigestStream(summary=summary(
        digests=0, decode_failures=2, last_error='decode: QrNotFound')),
        timeout=0)
    assert '; no new digest in 12 capture(s) (2 undecodable, last error: ' \
        'decode: QrNotFound); the guest last showed (before the beat ' \
        'began) frame 53' in str(e)
    e = beat_error(OneDigestStream(summary=summary(digests=0, last=False)),
                   timeout=0)
    assert str(e).endswith('; no digest decoded in 12 capture(s)')
    e = beat_error(OneDigestStream(summary=summary(
        closed_reason='EOF from ryll'), closed=True), timeout=0)
    assert isinstance(e, cap.StreamClosed)
    assert str(e).startswith('the capture stopped (EOF from ryll) after ')


# ------------------------------------------------ judge, on fake inputs


class Stream:
    def __init__(self, digests, captures=()):
        self.digests = digests
        self.captures = list(captures)

    def snapshot(self):
        return list(self.digests)


def walker(powered_off=True, failed_beat=None):
    beats = [walk.Beat(0, 'awaiting', 'x', 0.0, 0.1, ok=True,
                       frame_counter=1)]
    if failed_beat:
        beats.append(walk.Beat(1, failed_beat, 'y', 0.2, 1.0,
                               error='timed out after 1.0 s waiting for y'))
    return types.SimpleNamespace(beats=beats, quiet_windows=[],
                                 powered_off=powered_off)


def canonical_inputs():
    h = canonical_history()
    digests = [captured(i + 1, h[:k], i) for i, k in
               enumerate([0, 2, 10, 30, len(h) - 2])]
    captures = [cap.Capture(i, 0.0, 0.0, frame_counter=i + 1,
                            framebuffer_hash_ok=True) for i in range(5)]
    return h, Stream(digests, captures)


def test_judge_a_complete_walk_with_a_good_drain_passes():
    h, stream = canonical_inputs()
    results = runner.judge('canonical', walker(), stream, drain_of(h))
    assert [r.verdict for r in results] == ['PASS'] * 8, [
        r.message() for r in results]


def test_a_complete_walk_with_a_bad_drain_still_fails_the_drain_checks():
    h, stream = canonical_inputs()
    lossy = [e for e in h if e.kind != 'paste_received']
    v = {r.name: r.verdict for r in runner.judge(
        'canonical', walker(), stream, drain_of(lossy))}
    assert v['drain_sequence'] == 'FAIL' and v['chains'] == 'FAIL'
    assert 'NOT RUN' not in v.values()
    # incomplete (no refresh_stats): the drain checks fail; the fidelity
    # has no count to divide by and says so
    results = runner.judge('canonical', walker(), stream,
                           drain_of(h, terminator=False))
    v = {r.name: r for r in results}
    assert v['refresh_stats'].verdict == 'FAIL'
    assert v['drain_sequence'].verdict == 'FAIL'
    assert v['capture_fidelity'].verdict == 'NOT RUN'
    assert 'see refresh_stats' in v['capture_fidelity'].summary
    # no drain at all (unparsable): a drain failure, named with its cause
    results = runner.judge('canonical', walker(), stream, None,
                           drain_error='serial drain unparsable: line 3')
    v = {r.name: r for r in results}
    assert v['drain'].verdict == 'FAIL'
    assert v['drain'].summary == ('no serial drain was read: serial drain '
                                  'unparsable: line 3')
    assert v['chains'].verdict == 'NOT RUN'
    assert v['capture_fidelity'].verdict == 'NOT RUN'


def test_an_error_between_beats_stops_the_walk_with_the_error_as_cause():
    h, stream = canonical_inputs()
    error = 'RyllConnectionClosed: EOF from ryll\nmore'
    results = runner.judge('canonical', walker(powered_off=False), stream,
                           None, error=error)
    v = {r.name: r for r in results}
    assert v['beats'].verdict == 'PASS'
    assert 'all 1 beats that ran seen in time; the walk stopped' in \
        v['beats'].summary
    for name in DRAIN_CHECKS:
        assert v[name].summary == ('not run (walk stopped before the '
                                   'power-off: RyllConnectionClosed: EOF '
                                   'from ryll)'), name
    r = runner.RunResult('n', 'canonical', 'direct', '/a', results=results,
                         error=error.splitlines()[0],
                         stopped=runner.stop_reason(
                             walker(powered_off=False), error))
    lines = r.failure_message().splitlines()
    assert lines[1] == 'error: RyllConnectionClosed: EOF from ryll'
    assert lines[2].endswith('not run (walk stopped before the power-off, '
                             'above)')
    assert r.cause() == 'RyllConnectionClosed: EOF from ryll'


def test_nothing_captured_is_not_counted_twice():
    results = runner.judge('canonical', walker(False, 'booting'),
                           Stream([], [cap.Capture(0, 0.0, 0.0,
                                                   error='decode: x')]),
                           None)
    v = {r.name: r.verdict for r in results}
    assert [n for n, x in v.items() if x == 'FAIL'] == ['beats']
    assert v['framebuffer_hash'] == v['frame_counters'] == 'NOT RUN'

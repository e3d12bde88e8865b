"""The cross-checks on synthetic drains and digests."""

import dataclasses

from kerbside_tempest_plugin.digest import chains
from kerbside_tempest_plugin.digest import events as ev
from kerbside_tempest_plugin.scenario import capture as cap
from kerbside_tempest_plugin.scenario import checks
from kerbside_tempest_plugin.scenario import walk
from kerbside_tempest_plugin.sextant import drain as drain_mod
from unit_tests import scenario_fakes as fakes


def canonical_history():
    h = [ev.Keypress(2000, 13, 0),
         ev.SceneTransition(2000, 'awaiting', 'booting')]
    t = 2000
    for row in range(22):
        h.append(ev.LineRendered(t, row))
        t += 200
    h += [ev.Keypress(t, ord('i'), 0),
          ev.BootloaderDecision(t, 'ignore', 1)]
    h += [ev.LineRendered(t, r) for r in (21, 23, 25)]
    for c in fakes.SECRET + '\r':
        t += 50
        h.append(ev.Keypress(t, ord(c), 0))
    h += [ev.PasteReceived(t, 23, True), ev.LineRendered(t, 21),
          ev.LineRendered(t + 600, 22),
          ev.SceneTransition(t + 800, 'booting', 'parked'),
          ev.Keypress(t + 2000, 13, 0),
          ev.SceneTransition(t + 2000, 'parked', 'parked')]
    return h


def drain_of(history, count=66, terminator=True):
    lines = ['Hello from Uncalibrated Sextant']
    lines += [fakes.serial_line(e) for e in history]
    if terminator:
        lines.append('type=refresh_stats count=%d total_ms=396 mean_us=6012 '
                     'max_us=9871 p99_us=9310' % count)
    return drain_mod.parse('\r\n'.join(lines) + '\r\n')


@dataclasses.dataclass
class FakeAnalysis:
    digest: object
    framebuffer_hash_ok: bool = True
    frame_size: tuple = (1024, 768)
    origin: tuple = (828, 556)

    def to_json(self):
        return {}


@dataclasses.dataclass
class FakeDigest:
    frame_counter: int
    hashes: dict
    events: tuple = ()


def captured(fc, history_prefix, index=0):
    d = FakeDigest(fc, chains.ChannelChains.replay(history_prefix).hashes)
    return cap.CapturedDigest(index, index, float(index), 0.0,
                              FakeAnalysis(d))


def test_canonical_drain_passes_sequence_t_and_stats():
    d = drain_of(canonical_history())
    results = [checks.check_drain_sequence(d, walk.expected('canonical')),
               checks.check_t_monotonic(d), checks.check_refresh_stats(d)]
    assert all(r.passed for r in results), [r.message() for r in results]
    assert results[2].data['count'] == 66


def test_missing_paste_is_named():
    h = [e for e in canonical_history() if e.kind != 'paste_received']
    r = checks.check_drain_sequence(drain_of(h), walk.expected('canonical'))
    assert not r.passed
    assert 'type=paste len=23 correct=true' in r.summary
    assert any('full drain' in d for d in r.details)


def test_wrong_paste_walk_needs_both_pastes():
    h = canonical_history()
    r = checks.check_drain_sequence(drain_of(h),
                                    walk.expected('wrong_paste'))
    assert not r.passed and 'correct=false' in r.summary
    i = next(i for i, e in enumerate(h) if e.kind == 'paste_received')
    h.insert(i, ev.PasteReceived(h[i].timestamp_ms,
                                 len(walk.WRONG_PASTE), False))
    r = checks.check_drain_sequence(drain_of(h),
                                    walk.expected('wrong_paste'))
    assert r.passed, r.message()


def test_t_going_backwards_fails():
    h = canonical_history()
    h[10] = ev.LineRendered(1, h[10].row)
    r = checks.check_t_monotonic(drain_of(h))
    assert not r.passed and 'decrease' in r.summary


def test_missing_refresh_stats_fails():
    r = checks.check_refresh_stats(drain_of(canonical_history(),
                                            terminator=False))
    assert not r.passed and 'incomplete' in r.summary


def test_chains_match_the_last_digest_less_the_tail():
    h = canonical_history()
    d = drain_of(h)
    digests = [captured(i + 1, h[:k], i) for i, k in
               enumerate([0, 2, 10, 30, len(h) - 2])]
    r = checks.check_chains(d.to_events(), digests)
    assert r.passed, r.message()
    assert r.data['prefix'] == len(h) - 2
    assert '2 after it' in r.summary
    assert 'keypress' in r.details[0] and 'parked' in r.details[0]


def test_chains_fail_when_an_event_is_lost_in_the_drain():
    h = canonical_history()
    digests = [captured(1, h[:-2])]
    lossy = h[:20] + h[21:]                 # one boot line never drained
    r = checks.check_chains(drain_of(lossy).to_events(), digests)
    assert not r.passed
    assert 'equal no prefix' in r.summary
    assert 'line_rendered' in r.summary


def test_chains_fail_when_a_digest_goes_backwards():
    h = canonical_history()
    digests = [captured(1, h[:30], 0), captured(2, h[:10], 1),
               captured(3, h[:-2], 2)]
    r = checks.check_chains(drain_of(h).to_events(), digests)
    assert not r.passed and 'go backwards' in r.summary


def test_chains_without_digests_fail():
    r = checks.check_chains([], [])
    assert not r.passed


def test_frame_counters_strictly_increase():
    h = canonical_history()
    ok = [captured(fc, h[:1]) for fc in (1, 3, 9)]
    assert checks.check_frame_counters(ok).passed
    bad = [captured(fc, h[:1]) for fc in (1, 9, 3)]
    r = checks.check_frame_counters(bad)
    assert not r.passed and '9 then 3' in r.summary


def test_capture_fidelity():
    h = canonical_history()
    digests = [captured(fc, h[:1]) for fc in range(1, 34)]
    r = checks.capture_fidelity(digests, 66)
    assert r.passed and r.data['fidelity'] == 0.5
    assert not checks.capture_fidelity(digests, 10).passed   # impossible
    assert not checks.capture_fidelity(digests[:1], 66).passed  # floor
    assert not checks.capture_fidelity(digests, None).passed


def caps(verdicts, start=0):
    return [cap.Capture(start + i, 0.0, 0.0, frame_counter=start + i,
                        framebuffer_hash_ok=v)
            for i, v in enumerate(verdicts)]


def test_framebuffer_hash_judges_quiet_windows_within_a_few():
    c = caps([True, None, False, False, True, False])
    w = checks.QuietWindow('parked', 2, None, within=5)
    r = checks.check_framebuffer_hash(c, [w])
    assert r.passed, r.message()
    assert r.data['checked'] == 5 and r.data['matched'] == 2
    assert r.data['window_parked'] == 3
    late = caps([False] * 5 + [True])
    r = checks.check_framebuffer_hash(late, [checks.QuietWindow('parked',
                                                                0)])
    assert not r.passed and 'parked' in r.summary


def test_framebuffer_hash_never_checked_fails():
    r = checks.check_framebuffer_hash(caps([None, None]))
    assert not r.passed and 'no capture could be checked' in r.summary


def test_assert_all_names_every_failure():
    rs = [checks.CheckResult('a', True, 'fine'),
          checks.CheckResult('b', False, 'bad', ['detail']),
          checks.CheckResult('c', False, 'worse')]
    try:
        checks.assert_all(rs)
    except AssertionError as e:
        text = str(e)
    assert '2 of 3 check(s) failed' in text
    assert 'b: FAIL: bad' in text and 'detail' in text and 'c: FAIL' in text


def test_a_check_not_run_is_neither_a_pass_nor_a_failure():
    r = checks.CheckResult.not_run('chains', 'walk stopped at beat x: y',
                                   data={'distinct': 3})
    assert r.passed is None and not r.failed and not r.ran
    assert r.verdict == 'NOT RUN'
    assert r.summary == 'not run (walk stopped at beat x: y)'
    assert r.message() == 'chains: NOT RUN: not run (walk stopped at beat ' \
        'x: y)'
    out = r.to_json()
    assert out['passed'] is None and out['verdict'] == 'NOT RUN'
    assert out['data'] == {'distinct': 3}
    ok = checks.CheckResult('a', True, 'fine')
    bad = checks.CheckResult('b', False, 'bad')
    assert (ok.verdict, ok.failed, bad.verdict, bad.failed) == (
        'PASS', False, 'FAIL', True)
    # the JSON forms, including a result.json from before NOT RUN existed
    assert [checks.verdict_of(x) for x in (
        out, ok.to_json(), {'name': 'old', 'passed': True},
        {'name': 'old', 'passed': False}, r)] == [
        'NOT RUN', 'PASS', 'PASS', 'FAIL', 'NOT RUN']


def test_assert_all_counts_a_check_not_run_apart():
    rs = [checks.CheckResult('beats', False, 'stopped'),
          checks.CheckResult.not_run('chains', 'walk stopped')]
    try:
        checks.assert_all(rs)
    except AssertionError as e:
        text = str(e)
    assert text.startswith('1 of 2 check(s) failed, 1 not run:')
    assert 'chains: NOT RUN: not run (walk stopped)' in text
    checks.assert_all([checks.CheckResult('a', True, 'fine')])

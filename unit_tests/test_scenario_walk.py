"""The walks against a fake guest, end to end through run_scenario."""

import json
import os

import pytest

from kerbside_tempest_plugin.scenario import runner
from kerbside_tempest_plugin.scenario import walk
from unit_tests import scenario_fakes as fakes


def run(tmp_path, walk_name, **kw):
    lane = fakes.FakeLane(str(tmp_path / 'lane'), **kw)
    result = runner.run_scenario(lane, walk_name, 'direct', None,
                                 str(tmp_path / 'artifacts'),
                                 step_timeout=15, drain_timeout=10,
                                 log=lambda m: None)
    return lane, result


@pytest.mark.parametrize('walk_name', sorted(walk.WALKS))
def test_every_walk_passes_on_a_well_behaved_guest(tmp_path, walk_name):
    lane, result = run(tmp_path, walk_name)
    assert result.passed, result.failure_message()
    names = [r.name for r in result.results]
    assert names == ['beats', 'drain_sequence', 'drain_t_monotonic',
                     'refresh_stats', 'chains', 'framebuffer_hash',
                     'frame_counters', 'capture_fidelity']
    assert lane.guests[0].torn_down and lane.stopped_ryll
    assert result.stats['fb_matched'] >= 1
    assert 0 < result.stats['fidelity'] <= 1
    assert result.beats[-1]['name'] == 'power-off'
    assert result.beats[-1]['ok']


def test_artifacts_and_report(tmp_path):
    lane, result = run(tmp_path, 'canonical')
    d = result.artifact_dir
    files = set(os.listdir(d))
    for f in ('report.md', 'digests.jsonl', 'captures.jsonl', 'serial.log',
              'result.json', 'ryll.stdout.log', 'lane__kerbside.log',
              '00-awaiting.png', '01-booting.png'):
        assert f in files, (f, sorted(files))
    assert any(f.endswith('-parked.png') for f in files)
    with open(os.path.join(d, 'digests.jsonl')) as f:
        rows = [json.loads(line) for line in f]
    assert rows and all('captured_at_s' in r and 'frame_counter' in r
                        for r in rows)
    report = open(os.path.join(d, 'report.md')).read()
    assert '**Verdict: PASS**' in report
    assert '| chains | PASS |' in report
    assert '![booting](01-booting.png)' in report
    assert 'drain #0 keypress' in report
    assert 'type=refresh_stats' in report
    # No secret in anything kept: the registered ticket and the JWT.
    assert 'report.html' in files and 'timeline.json' in files
    for name in (os.path.relpath(os.path.join(p, f), d)
                 for p, _, fs in os.walk(d) for f in fs):
        data = open(os.path.join(d, name), 'rb').read()
        assert lane.secret.encode() not in data, name
        assert b'eyJhbGciOiJIUzI1NiJ9' not in data, name


def test_a_guest_that_ignores_the_paste_fails_with_a_clear_beat(tmp_path):
    def deaf(fake):
        real = fake.handle

        def handle(c):
            if fake.state == 'paste' and c in '\r\n':
                return          # the Enter after the paste is lost
            real(c)
        fake.handle = handle
    lane, result = run(tmp_path, 'canonical', guest_hook=deaf)
    assert not result.passed
    assert result.error_type == 'CaptureTimeout'
    assert 'waiting for paste_received correct=true len=23;' in result.error
    # what the guest last showed: the last digest's frame and records
    assert 'the guest last showed frame ' in result.error
    assert 'keypress@t=' in result.error and 'capture(s)' in result.error
    beats = {b['name']: b for b in result.beats}
    assert not beats['paste-accepted']['ok']
    assert beats['paste-accepted']['screenshot'].endswith('TIMEOUT.png')
    assert os.path.exists(os.path.join(result.artifact_dir,
                                       beats['paste-accepted']['screenshot']))
    # One failure (the beat); what needed the drain did not run.
    verdicts = result.verdicts()
    assert [n for n, v in verdicts.items() if v is False] == ['beats']
    assert verdicts['drain_sequence'] is None
    assert verdicts['capture_fidelity'] is None
    # teardown still ran and the report still says why
    assert lane.guests[0].torn_down
    report = open(os.path.join(result.artifact_dir, 'report.md')).read()
    assert '**Verdict: FAIL**' in report and 'paste-accepted' in report


def test_a_lost_paste_character_fails_the_beat_at_once(tmp_path):
    def drop_p(fake):
        real = fake.handle

        def handle(c):
            if fake.state == 'paste' and c == 'P':
                return          # lost on the way (a full PS/2 queue)
            real(c)
        fake.handle = handle
    lane, result = run(tmp_path, 'canonical', guest_hook=drop_p)
    assert not result.passed
    beats = {b['name']: b for b in result.beats}
    b = beats['paste-accepted']
    assert not b['ok'] and b['elapsed'] < 10      # not the 15 s deadline
    # only what the guest showed, not the list of what would end the wait
    assert 'the guest showed paste_received@t=' in b['error']
    assert 'len=22 correct=false instead' in b['error']
    assert 'bootloader_timeout' not in b['error']
    assert ' or ' not in b['error']
    assert [n for n, v in result.verdicts().items() if v is False] == [
        'beats']


def test_lost_keypress_in_the_drain_fails_the_chains(tmp_path):
    def lossy(fake):
        real = fake.drain_text

        def drain_text():
            lines = real().split('\r\n')
            i = next(i for i, l in enumerate(lines) if 'type=line row=5' in l)
            del lines[i]
            return '\r\n'.join(lines)
        fake.drain_text = drain_text
    lane, result = run(tmp_path, 'canonical', guest_hook=lossy)
    v = result.verdicts()
    assert v['chains'] is False and v['drain_sequence'] is True
    assert not result.passed


def test_inferred_beats_when_records_scroll_out(tmp_path):
    # Zero stalls: boot lines arrive faster than captures, so the
    # transition leaves the raw window before any capture sees it.
    lane, result = run(tmp_path, 'canonical', scale=0.0)
    assert result.passed, result.failure_message()


class Snap:
    def __init__(self, digests):
        self.digests = digests

    def snapshot(self):
        return list(self.digests)


def test_hash_proof_accepts_only_the_exact_event():
    from kerbside_tempest_plugin.digest import events as ev
    from unit_tests.test_scenario_checks import captured
    h = [ev.Keypress(100, 13, 0), ev.LineRendered(100, 25)]
    before = captured(1, h, 0)
    after_events = h + [ev.Keypress(700, 13, 0),
                        ev.PasteReceived(700, 23, True),
                        ev.LineRendered(700, 21), ev.LineRendered(1300, 22),
                        ev.SceneTransition(1500, 'booting', 'parked')]
    after = captured(2, after_events, 1)
    # the raw window holds only the last three records, not the paste
    after.analysis.digest.events = tuple(after_events[-3:])
    w = type('W', (), {'stream': Snap([before, after])})()
    good = walk._proven(w, 1, 'paste_received',
                        lambda t: ev.PasteReceived(t, 23, True))
    wrong = walk._proven(w, 1, 'paste_received',
                         lambda t: ev.PasteReceived(t, 23, False))
    short = walk._proven(w, 1, 'paste_received',
                         lambda t: ev.PasteReceived(t, 22, True))
    assert good(after)
    assert not wrong(after) and not short(after)
    assert not good(before)
    # no digest before the beat: nothing to chain from, no proof
    assert not walk._proven(w, 0, 'paste_received',
                            lambda t: ev.PasteReceived(t, 23, True))(after)

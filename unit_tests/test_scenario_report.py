"""report.md, the timeline and the artifact directory's redaction."""

import os

from kerbside_tempest_plugin.digest import events as ev
from kerbside_tempest_plugin.scenario import artifacts
from kerbside_tempest_plugin.scenario import checks
from kerbside_tempest_plugin.scenario import report
from unit_tests.test_scenario_checks import canonical_history
from unit_tests.test_scenario_checks import captured


def test_drain_events_are_placed_at_the_digest_that_proves_them():
    h = canonical_history()
    digests = [captured(1, h[:2], 0), captured(2, h[:10], 1),
               captured(3, h[:10], 2), captured(4, h[:-2], 3)]
    where = report.drain_visibility(h, digests)
    assert [d.frame_counter for d in where[:2]] == [1, 1]
    assert {d.frame_counter for d in where[2:10]} == {2}
    assert {d.frame_counter for d in where[10:-2]} == {4}
    assert where[-2:] == [None, None]


def test_timeline_orders_digests_and_drain_events():
    class Stream:
        def snapshot(self):
            return digests
    h = canonical_history()
    digests = [captured(1, h[:2], 0), captured(2, h[:-2], 5)]
    rows = report.timeline(None, Stream(), h)
    texts = [t for _, _, t in rows]
    first = texts.index(next(t for t in texts if t.startswith('frame 1')))
    assert texts[first - 1].startswith('drain #1 ')
    assert 'after the last digest' in texts[-1]
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)


def test_render_lists_every_check_and_the_verdict():
    results = [checks.CheckResult('chains', True, 'fine'),
               checks.CheckResult('frame_counters', False, 'went back',
                                  ['sequence: [1, 3, 2]'])]
    text = report.render('t', {'route': 'direct'}, results,
                         drain_events=[ev.Keypress(1, 13, 0)],
                         phases={'walk': 8.5, 'drain': None},
                         files=['a.png'], error='boom')
    assert '**Verdict: FAIL**' in text
    assert '| chains | PASS | fine |' in text
    assert '| frame_counters | FAIL | went back |' in text
    assert 'sequence: [1, 3, 2]' in text
    assert '| walk | 8.50 |' in text and '| drain | - |' in text
    assert '## Error' in text and 'boom' in text
    assert 'drain #0 keypress' in text
    assert '[a.png](a.png)' in text


def test_render_shows_a_check_not_run_apart_from_the_failures():
    results = [checks.CheckResult('beats', False, '1 of 5 beats failed'),
               checks.CheckResult.not_run('chains', 'walk stopped at beat '
                                          'x: timed out'),
               checks.CheckResult('frame_counters', True, 'fine')]
    text = report.render('t', {}, results, cause='beat x: timed out')
    assert '**Verdict: FAIL**' in text
    assert 'Cause: `beat x: timed out`' in text
    assert '| chains | NOT RUN | not run (walk stopped at beat x: timed ' \
        'out) |' in text
    assert 'Not run (their input does not exist; not counted as ' \
        'failures): chains.' in text
    # a passing report is as it was: no cause, no not-run line
    text = report.render('t', {}, results[2:], cause='ignored')
    assert '**Verdict: PASS**' in text
    assert 'Cause' not in text and 'Not run' not in text


def test_artifact_dir_redacts_registered_and_shaped_secrets(tmp_path):
    a = artifacts.ArtifactDir(str(tmp_path), 'redact me')
    a.add_secret('tick3t-value-123')
    jwt = 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhYmNkZWYifQ.c2lnbmF0dXJlMTIz'
    a.write_text('log.txt', 'ticket tick3t-value-123 jwt %s\n'
                 'password=hunter22\n{"token": "abc123xyz"}\n'
                 'qemu -spice port=5900,password=s3cr3t,addr=x\n' % jwt)
    src = tmp_path / 'src.log'
    src.write_text('Authorization: Bearer %s\n' % jwt)
    a.copy_file(str(src), 'copied.log')
    a.save_png('shot', b'\x89PNG\r\n\x1a\n')
    text = open(a.file('log.txt')).read() + open(a.file('copied.log')).read()
    for secret in ('tick3t-value-123', jwt, 'hunter22', 'abc123xyz',
                   's3cr3t'):
        assert secret not in text, secret
    assert text.count('<redacted>') >= 6
    assert a.find_secrets() == []
    assert os.path.basename(a.path).endswith('-redact-me')
    assert a.files == ['log.txt', 'copied.log', 'shot.png']


def test_artifact_dirs_never_collide(tmp_path):
    one = artifacts.ArtifactDir(str(tmp_path), 'x', stamp='S')
    two = artifacts.ArtifactDir(str(tmp_path), 'x', stamp='S')
    assert one.path != two.path and two.path.endswith('S-x-2')


def test_summary_fails_on_a_failed_or_missing_run(tmp_path, capsys):
    import json

    from kerbside_tempest_plugin.cmd import summary

    def put(name, passed):
        d = tmp_path / name
        d.mkdir()
        (d / 'result.json').write_text(json.dumps({
            'walk': name, 'route': 'direct', 'passed': passed,
            'results': [{'name': 'chains', 'passed': passed}],
            'phases': {'walk': 8.0}, 'stats': {'fidelity': 0.7,
                                               'fb_matched': 9,
                                               'fb_checked': 10},
            'error': None if passed else 'CaptureTimeout: waited'}))
    assert summary.main([str(tmp_path)]) == 1          # nothing found
    put('canonical', True)
    assert summary.main([str(tmp_path)]) == 0
    assert summary.main(['--expect', '4', str(tmp_path)]) == 1  # skipped
    put('retry', False)
    assert summary.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert 'PASS canonical' in out and 'FAIL retry' in out
    assert 'error: CaptureTimeout: waited' in out
    assert 'fidelity=70% fb=9/10' in out
    assert 'expected at least 4' in out
    # a walk stopped at a beat: one cause, the drain checks not run
    d = tmp_path / 'wrong_paste'
    d.mkdir()
    (d / 'result.json').write_text(json.dumps({
        'walk': 'wrong_paste', 'route': 'direct', 'passed': False,
        'results': [{'name': 'beats', 'passed': False, 'verdict': 'FAIL'},
                    {'name': 'chains', 'passed': None,
                     'verdict': 'NOT RUN'}],
        'phases': {}, 'stats': {}, 'error': 'CaptureTimeout: long',
        'cause': 'beat parked: timed out'}))
    assert summary.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert 'beats=FAIL chains=not_run' in out
    assert 'cause: beat parked: timed out' in out
    assert 'error: CaptureTimeout: long' not in out

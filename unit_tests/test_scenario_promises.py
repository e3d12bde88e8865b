"""The promise machinery without a lane: one cause per failure, the
checks that could not run said as such, the artifacts a promise test
leaves (promise.json counted by the summary, no secret in any of them),
the audit and session judgements on Kerbside 0.8.0's real shapes, and
the refusal judgement on ryll's real words.
"""

import json
import os

import pytest

from kerbside_tempest_plugin.common import secrets as common_secrets
from kerbside_tempest_plugin.kerbside_api import client as kapi
from kerbside_tempest_plugin.scenario import promise_stories as st
from kerbside_tempest_plugin.scenario import promises as pr
from kerbside_tempest_plugin.scenario import summary

SECRET = 'consoletoken-' + 'x' * 35


class FakeAPI:
    def __init__(self, audit=(), sessions=None, metrics=None):
        self._audit = list(audit)
        self._sessions = sessions or {}
        self._metrics = [dict(m) for m in (metrics or [{}])]
        self.calls = [kapi.ApiCall('GET', '/session', 200, 0.01, 0.0)]

    def metrics(self):
        return self._metrics.pop(0) if len(self._metrics) > 1 else \
            self._metrics[0]

    def audit(self, source, uuid):
        return self._audit

    def sessions(self):
        return self._sessions

    def call_log(self):
        return [c.to_json() for c in self.calls]


class FakeLane:
    log_dir = None

    def __init__(self):
        self.redactor = common_secrets.Redactor()
        self.redactor.add(SECRET)


def _run(tmp_path, api=None, planned=()):
    return pr.PromiseRun('promise-x', 'kerbside', str(tmp_path), FakeLane(),
                         ['terminate', 'tokens'], planned=planned,
                         api=api or FakeAPI())


def _audit(session, channels=pr.RYLL_CHANNELS, terminated=False,
           drop=None):
    t = [0.0]

    def ev(channel, message):
        t[0] += 0.01
        return {'source': 's', 'uuid': 'u', 'session_id': session,
                'channel': channel, 'node': 'harness' if channel else None,
                'pid': 'ref-%s' % channel if channel else None,
                'timestamp': 1796574790 + t[0], 'message': message}
    out = [ev(None, pr.AUDIT_TOKEN)]
    for ch in channels:
        out.append(ev(ch, pr.AUDIT_CHANNEL))
        if ch != drop:
            out.append(ev(ch, pr.AUDIT_HYPERVISOR))
    if terminated:
        out.append(ev(None, pr.AUDIT_TERMINATED))
    return out


def test_a_failed_check_stops_the_story_and_names_one_cause(tmp_path):
    run = _run(tmp_path, planned=[('terminate', 'api'),
                                  ('terminate', 'cut'),
                                  ('tokens', 'refused')])
    run.check('terminate', 'api', True, 'POST answered 200')
    with pytest.raises(pr.PromiseBroken) as e:
        run.check('terminate', 'cut', False, 'ryll still connected 6 s '
                  'after the POST')
    run.fail(e.value)
    verdicts = [(c.name, c.verdict) for c in run.checks]
    assert verdicts == [('api', 'PASS'), ('cut', 'FAIL'),
                        ('refused', 'NOT RUN')]
    assert run.checks[-1].message.startswith(
        'not run (the story stopped at terminate/cut: ryll still')
    msg = run.failure_message()
    assert 'terminate promise broken: cut: ryll still connected' in msg
    assert msg.count('promise broken') == 1
    assert '1 later check(s) not run' in msg
    assert not run.passed


def test_a_harness_error_is_not_a_broken_promise(tmp_path):
    run = _run(tmp_path, planned=[('tokens', 'refused')])
    try:
        raise TimeoutError('qemu never printed its banner')
    except TimeoutError as e:
        run.fail(e)
    msg = run.failure_message()
    assert 'promise broken' not in msg
    assert 'error (no promise judged broken): TimeoutError' in msg
    assert run.checks[0].verdict == 'NOT RUN'


def test_finish_writes_the_artifacts_the_job_counts(tmp_path):
    api = FakeAPI(audit=_audit('S1') + _audit('OTHER'),
                  metrics=[{'kerbside_proxy_denied_total': 1},
                           {'kerbside_proxy_denied_total': 2}])
    run = _run(tmp_path, api=api)
    run.console = ('s', 'u')
    run.sessions.append('S1')
    run.note('said', 'ryll said the token %s was refused' % SECRET)
    run.note('finding', 'warn mode refuses a channel as enforce does')
    run.check('tokens', 'refused', True, 'refused %s' % SECRET)
    assert run.finish({'kerbside_version': '0.8.0', 'proxy_sha256': 'ab',
                       'proxy_bin': '/x/kerbside-proxy'})
    files = set(os.listdir(run.art.path))
    assert {'promise.json', 'api-calls.jsonl', 'audit.json',
            'metrics-delta.json', 'report.md', 'report.html'} <= files
    out = json.load(open(os.path.join(run.art.path, 'promise.json')))
    assert out['kind'] == 'promise' and out['passed']
    assert out['metrics_delta'] == {'kerbside_proxy_denied_total': 1}
    audit = json.load(open(os.path.join(run.art.path, 'audit.json')))
    assert {e['session_id'] for e in audit} == {'S1'}
    for name in files:
        with open(os.path.join(run.art.path, name)) as f:
            assert SECRET not in f.read(), name
    for name in ('report.md', 'report.html'):
        with open(os.path.join(run.art.path, name)) as f:
            text = f.read()
        assert 'Findings about Kerbside' in text
        assert 'warn mode refuses a channel as enforce does' in text
    runs = summary.load([str(tmp_path)])
    assert len(runs) == 1
    line = summary.line(runs[0])
    assert line.startswith('PASS promise-x') and 'pass=1' in line
    assert summary.builds(runs) and '0.8.0' in summary.builds(runs)[0]


def test_summary_line_of_a_failed_promise_names_the_promise(tmp_path):
    run = _run(tmp_path, planned=[('tokens', 'later')])
    with pytest.raises(pr.PromiseBroken) as e:
        run.check('terminate', 'cut', False, 'still connected')
    run.fail(e.value)
    run.finish()
    line = summary.line(summary.load([str(tmp_path)])[0])
    assert line.startswith('FAIL')
    assert 'terminate promise broken: cut: still connected' in line
    assert 'not_run=1' in line


def test_audit_in_order_passes_and_a_missing_entry_names_its_channel(
        tmp_path):
    run = _run(tmp_path)
    pr.check_audit_session(run, _audit('S1'), 'S1')
    assert all(c.verdict == 'PASS' for c in run.checks)
    run = _run(tmp_path)
    with pytest.raises(pr.PromiseBroken) as e:
        pr.check_audit_session(run, _audit('S1', drop='inputs'), 'S1')
    assert (e.value.promise, e.value.check) == ('audit', 'channel_inputs')


def test_audit_termination_entry_expected_only_after_a_terminate(tmp_path):
    run = _run(tmp_path)
    pr.check_audit_session(run, _audit('S1', terminated=True), 'S1',
                           terminated=True)
    run = _run(tmp_path)
    with pytest.raises(pr.PromiseBroken) as e:
        pr.check_audit_session(run, _audit('S1'), 'S1', terminated=True)
    assert e.value.check == 'termination_entry'
    run = _run(tmp_path)
    with pytest.raises(pr.PromiseBroken) as e:
        pr.check_audit_session(run, _audit('S1', terminated=True), 'S1')
    assert e.value.check == 'no_termination_entry'
    run = _run(tmp_path)
    with pytest.raises(pr.PromiseBroken) as e:
        pr.check_audit_session(run, [], 'S1')
    assert e.value.check == 'token_entry'
    assert 'no entry at all' in e.value.detail


def test_session_listed_with_console_client_and_channels(tmp_path):
    chans = [{'channel_type': c, 'client_ip': '127.0.0.1',
              'client_port': 40000 + i} for i, c in
             enumerate(pr.RYLL_CHANNELS)]
    api = FakeAPI(sessions={'S1': {'source': 's', 'uuid': 'u',
                                   'name': 'n', 'channels': chans}})
    run = _run(tmp_path, api=api)
    pr.check_session_listed(run, 'S1', 's', 'u', deadline=0)
    assert [c.verdict for c in run.checks] == ['PASS'] * 3
    run = _run(tmp_path, api=FakeAPI(sessions={}))
    with pytest.raises(pr.PromiseBroken) as e:
        pr.check_session_listed(run, 'S1', 's', 'u', deadline=0)
    assert (e.value.promise, e.value.check) == ('sessions', 'listed')
    run = _run(tmp_path, api=FakeAPI(sessions={'S1': {}}))
    with pytest.raises(pr.PromiseBroken):
        pr.check_session_gone(run, 'S1', deadline=0)


class FakeRyll:
    def __init__(self, tmp_path, rc, stderr):
        self.stderr_path = str(tmp_path / 'ryll.err')
        self.stdout_path = str(tmp_path / 'ryll.out')
        open(self.stderr_path, 'w').write(stderr)
        open(self.stdout_path, 'w').write('')
        self.returncode = rc
        self.alive = rc is None
        self.socket_path = str(tmp_path / 'none.sock')


class FakeHolder:
    def __init__(self, rp):
        self.last_ryll = rp
        self.stopped = False

    def start_ryll(self, guest, route=None, timeout=30, vv=None):
        return self.last_ryll

    def stop_ryll(self):
        self.stopped = True


def test_refusal_judged_on_ryll_exit_words_and_the_denied_counter(
        tmp_path):
    words = ('Error: headless SPICE connection failed\nCaused by: '
             'Authentication failed: PermissionDenied\n')
    api = FakeAPI(metrics=[{}, {}, {'kerbside_proxy_denied_total': 1}])
    run = _run(tmp_path, api=api)
    facts = pr.attempt_refused(run, FakeHolder(FakeRyll(tmp_path, 1, words)),
                               None, 'vv', 'tokens', 'expired', 'a token')
    assert facts['exit_status'] == 1
    assert 'PermissionDenied' in facts['ryll_said']
    assert [c.verdict for c in run.checks] == ['PASS', 'PASS']
    # exit 1 for another reason is not a refusal
    run = _run(tmp_path, api=FakeAPI(metrics=[{}, {}, {}]))
    with pytest.raises(pr.PromiseBroken) as e:
        pr.attempt_refused(run, FakeHolder(FakeRyll(
            tmp_path, 1, 'Error: UnknownIssuer\n')), None, 'vv', 'tokens',
            'expired', 'a token', timeout=0.1)
    assert e.value.check == 'expired'


def test_an_accepted_token_is_reported_as_accepted(tmp_path):
    holder = FakeHolder(FakeRyll(tmp_path, None, ''))
    run = _run(tmp_path, api=FakeAPI(metrics=[{}, {}, {}]))
    with pytest.raises(pr.PromiseBroken) as e:
        pr.attempt_refused(run, holder, None, 'vv', 'tokens',
                           'terminated_token_refused',
                           'the token of terminated session S1',
                           timeout=0.2)
    assert 'Kerbside accepted the token of terminated session S1' in \
        e.value.detail
    assert holder.stopped


def test_session_id_comes_from_the_vv_title():
    vv = ('[virt-viewer]\ntype=spice\nhost=h\nport=1\npassword=p\n'
          'title=sextant-harness via proxy session ID AbC123xyz789\n')
    assert pr.session_of(vv) == 'AbC123xyz789'
    with pytest.raises(ValueError):
        pr.session_of('[virt-viewer]\ntype=spice\nhost=h\nport=1\n'
                      'title=no session here\n')


class _Rec:
    def __init__(self, type_, **fields):
        self.type = type_
        self.fields = fields


class _Drain:
    def __init__(self, keys):
        self.records = [_Rec('keypress', unicode=ord(k)) for k in keys] + [
            _Rec('refresh_stats', count=3)]


def test_drain_keys_exact_catches_an_extra_or_a_lost_key(tmp_path):
    want = st.canonical_keys('sextant{HELLO_OPERATOR}')
    assert st.drain_keys(_Drain(want)) == want

    class Seq:
        passed, summary = True, 'ok'
    run = _run(tmp_path)
    st.check_drain_exact(run, 'terminate', _Drain(want), Seq(), want)
    run = _run(tmp_path)
    with pytest.raises(pr.PromiseBroken) as e:
        st.check_drain_exact(run, 'terminate', _Drain(want + '\r'), Seq(),
                             want)
    assert e.value.check == 'drain_keys_exact'
    assert '28 keypresses unlike the 27 delivered' in e.value.detail


class _Guest:
    def __init__(self):
        self.torn_down = False

    def teardown(self):
        self.torn_down = True


class _Kerbside:
    api_url = 'http://127.0.0.1:9'
    metrics_port = 9

    @staticmethod
    def token():
        return 'jwt-for-a-fake-lane'


def test_a_story_that_stops_leaves_no_guest_running(tmp_path):
    lane = FakeLane()
    lane.kerbside = _Kerbside()
    old = _Guest()
    lane.guests = [old]
    lane.stop_ryll = lambda: None

    def story(run, lane, image):
        lane.guests.append(_Guest())
        run.planned = [('tokens', 'refused')]
        raise pr.PromiseBroken('tokens', 'expired', 'accepted')
    run = pr.run_story(lane, story, 'promise-y', str(tmp_path), None,
                       ['tokens'])
    assert not run.passed
    assert lane.guests[1].torn_down        # the story's own guest
    assert not old.torn_down               # not an earlier one
    assert run.checks[-1].verdict == 'NOT RUN'


def test_the_termination_reason_is_read_from_the_lanes_database(tmp_path):
    class DB:
        def __init__(self):
            self.asked = []

        def query(self, sql):
            self.asked.append(sql)
            return [['session terminated by request']]
    lane = FakeLane()
    lane.mariadb = DB()
    run = _run(tmp_path)
    assert st.termination_reason(run, lane, 'AbC123xyz789') == \
        'session terminated by request'
    assert "session_id = 'AbC123xyz789'" in lane.mariadb.asked[0]
    assert 'session terminated by request' in run.facts['finding']
    # nothing odd is put into SQL, and a cloud lane has no database here
    assert st.termination_reason(run, lane, "x' OR '1") is None
    assert len(lane.mariadb.asked) == 1
    assert st.termination_reason(run, FakeLane(), 'AbC123xyz789') is None

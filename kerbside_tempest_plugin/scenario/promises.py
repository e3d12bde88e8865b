"""Kerbside's own promises, proven through the guest and Kerbside's API.

What Kerbside adds over a plain SPICE relay: it lists live sessions
(`sessions`), keeps an audit trail (`audit`), cuts a session on request
(`terminate`), enforces a per-channel firewall (`firewall`) and guards
consoles with short-lived tokens (`tokens`). Each promise test
(tests/scenario/test_kerbside_promises.py) runs one story on a real
guest, and judges it twice: by Kerbside's API and metrics, and by the
guest (its digest's keypress chain and its serial drain say whether a key
arrived).

`PromiseRun` is one test's record. A check that fails stops the story
(`PromiseBroken`, naming the promise, the check and what was seen);
every check the story had still to make is then reported as "not run
(stopped at ...)", never as another failure. `finish()` writes
promise.json (what the job's verdict counts), api-calls.jsonl (every
call, tokens redacted), audit.json (the trail of the test's sessions),
metrics-delta.json, report.md and report.html.

`Console` is ryll on one guest over the kerbside route with a `.vv` the
test fetched itself (so it knows the session id and can replay the
token later); the beats are the scenario's own (scenario.walk).

The facts these stories rely on are in docs/contracts/kerbside.md §8
and §16.
"""

import dataclasses
import html
import json
import os
import re
import time
import traceback

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import vv as common_vv
from kerbside_tempest_plugin.kerbside_api import client as kapi
from kerbside_tempest_plugin.scenario import artifacts as art_mod
from kerbside_tempest_plugin.scenario import checks
from kerbside_tempest_plugin.scenario import runner
from kerbside_tempest_plugin.scenario import walk as walk_mod

PROMISES = ('sessions', 'audit', 'terminate', 'firewall', 'tokens')
# The channels ryll 0.3.0 opens on a Sextant console.
RYLL_CHANNELS = ('main', 'display', 'cursor', 'inputs')
SESSION_RE = re.compile(r'via proxy session ID (\S+)\s*$')
# Kerbside 0.8.0's audit messages (docs/contracts/kerbside.md §16.2).
AUDIT_TOKEN = 'Created authentication token for session.'
AUDIT_CHANNEL = 'Channel created'
AUDIT_HYPERVISOR = 'Hypervisor connection successful'
AUDIT_TERMINATED = 'Session terminated by request'
AUDIT_FIREWALL = 'Channel type not permitted by firewall policy'
# ryll 0.3.0's words for a refused link (contracts/kerbside.md §10).
REFUSED = 'PermissionDenied'
# The daemon polls for terminations every 2 s (ProxyControl); the proxy
# then closes the four relays and ryll exits on the EOF. Measured 0.9 to
# 2.6 s from the POST to ryll's control EOF (docs/plans/
# kerbside-promises.md); 6 s is three poll periods.
CUT_BOUND_S = 6.0
METRIC_DENIED = 'kerbside_proxy_denied_total'
METRIC_AUTHORIZED = 'kerbside_proxy_authorized_total'
METRIC_FIREWALL = 'kerbside_proxy_firewall_verdicts_total'


class PromiseBroken(AssertionError):
    """A promise check failed: `promise`, `check`, and what was seen."""

    def __init__(self, promise, check, message):
        super().__init__('%s promise broken: %s: %s' % (promise, check,
                                                        message))
        self.promise = promise
        self.check = check
        self.detail = message


@dataclasses.dataclass
class PromiseCheck:
    promise: str
    name: str
    verdict: str            # PASS, FAIL or NOT RUN
    message: str
    at: float = None        # seconds since the run started

    def to_json(self):
        return dataclasses.asdict(self)


def kerbside_of(lane):
    """The lane's lane.kerbside.Kerbside (direct-qemu or OpenStack)."""
    kb = getattr(lane, 'kerbside', None)
    if kb is None:
        cloud = getattr(lane, 'cloud', None)
        kb = getattr(cloud, 'kerbside', None)
    if kb is None:
        raise errors.HarnessError('this lane runs no Kerbside of its own: '
                                  'the promise tests need its API')
    return kb


def api_for(lane):
    """A recorded KerbsideAPI on the lane's Kerbside."""
    kb = kerbside_of(lane)
    return kapi.KerbsideAPI(
        kb.api_url, token=kb.token, redactor=lane.redactor,
        metrics_url='http://127.0.0.1:%d/metrics' % kb.metrics_port)


def session_of(vv_text):
    """The Kerbside session id in a proxy .vv's title."""
    title = common_vv.parse_vv(vv_text).get('title') or ''
    m = SESSION_RE.search(title)
    if not m:
        raise errors.VVError('the .vv title %r names no proxy session'
                             % title)
    return m.group(1)


def session_events(audit, session_id):
    return [e for e in audit if e.get('session_id') == session_id]


class PromiseRun:
    """One promise test: its checks, API calls, audit and artifacts."""

    def __init__(self, name, route, artifact_root, lane, promises,
                 planned=(), log=None, api=None):
        self.name = name
        self.route = route
        self.lane = lane
        self.promises = list(promises)
        self.planned = list(planned)    # (promise, check) still to come
        self.log = log or (lambda msg: None)
        self.art = art_mod.ArtifactDir(artifact_root, name,
                                       redactor=lane.redactor)
        self.api = api or api_for(lane)
        self.checks = []
        self.sessions = []              # session ids this run opened
        self.console = None             # (source, uuid) of the story
        self.timings = {}
        self.facts = {}
        self.beats = []
        self.error = None
        self.stopped = None
        self.t0 = time.monotonic()
        self.metrics_before = self._scrape()
        self.log('artifacts for %s: %s' % (name, self.art.path))

    def _scrape(self):
        try:
            return self.api.metrics()
        except kapi.KerbsideAPIError as e:
            self.facts['metrics_error'] = str(e)
            return {}

    # -- checks --------------------------------------------------------
    def check(self, promise, name, ok, message):
        """Record one check; a failed one raises PromiseBroken."""
        at = time.monotonic() - self.t0
        self.checks.append(PromiseCheck(promise, name,
                                        'PASS' if ok else 'FAIL',
                                        message, round(at, 3)))
        self.planned = [p for p in self.planned if p != (promise, name)]
        self.log('%s %s/%s: %s' % ('PASS' if ok else 'FAIL', promise, name,
                                   message))
        if not ok:
            raise PromiseBroken(promise, name, message)

    def note(self, key, value):
        self.facts[key] = value

    def metrics_delta(self, since=None):
        return kapi.metric_delta(self.metrics_before if since is None
                                 else since, self._scrape())

    # -- the end ---------------------------------------------------------
    @property
    def passed(self):
        return self.error is None and bool(self.checks) and all(
            c.verdict == 'PASS' for c in self.checks)

    def fail(self, exc):
        """The story stopped on `exc`: a broken promise or a harness
        error. Checks still planned become NOT RUN, with the reason.
        """
        if isinstance(exc, PromiseBroken):
            self.stopped = '%s/%s' % (exc.promise, exc.check)
            reason = exc.detail
        else:
            self.error = '%s: %s' % (type(exc).__name__, exc)
            self.stopped = 'error'
            reason = self.error
            self.art.write_text('error.txt', traceback.format_exc())
        short = reason.splitlines()[0][:200] if reason else ''
        for promise, name in self.planned:
            self.checks.append(PromiseCheck(
                promise, name, 'NOT RUN',
                'not run (the story stopped at %s: %s)' % (self.stopped,
                                                           short)))
        self.planned = []

    def failure_message(self):
        failed = [c for c in self.checks if c.verdict == 'FAIL']
        lines = ['%s FAILED; artifacts: %s' % (self.name, self.art.path)]
        if failed:
            c = failed[0]
            lines.append('%s promise broken: %s: %s' % (c.promise, c.name,
                                                        c.message))
        elif self.error:
            lines.append('error (no promise judged broken): %s'
                         % self.error)
        skipped = [c for c in self.checks if c.verdict == 'NOT RUN']
        if skipped:
            lines.append('%d later check(s) not run' % len(skipped))
        return '\n'.join(lines)

    def summary_line(self):
        counts = {}
        for c in self.checks:
            counts[c.verdict] = counts.get(c.verdict, 0) + 1
        return '%s %s/%s: %s; report %s' % (
            'PASS' if self.passed else 'FAIL', self.name, self.route,
            ', '.join('%d %s' % (n, v) for v, n in sorted(counts.items())),
            os.path.join(self.art.path, 'report.md'))

    def finish(self, build=None):
        """Write every artifact; returns self.passed. Never raises."""
        self.timings['total'] = round(time.monotonic() - self.t0, 3)
        out = {'name': self.name, 'kind': 'promise', 'route': self.route,
               'promises': self.promises, 'passed': self.passed,
               'error': self.error, 'stopped_at': self.stopped,
               'checks': [c.to_json() for c in self.checks],
               'failures': [{'promise': c.promise, 'check': c.name,
                             'message': c.message} for c in self.checks
                            if c.verdict == 'FAIL'],
               'sessions': self.sessions, 'timings': self.timings,
               'facts': self.facts, 'kerbside_build': build}
        try:
            audit = []
            if self.console:
                try:
                    audit = self.api.audit(*self.console)
                except kapi.KerbsideAPIError as e:
                    self.facts['audit_error'] = str(e)
            mine = [e for e in audit if e.get('session_id') in
                    self.sessions]
            delta = self.metrics_delta()
            out['metrics_delta'] = delta
            self.art.write_json('audit.json', mine)
            self.art.write_json('metrics-delta.json', delta)
            for call in self.api.call_log():
                self.art.append_jsonl('api-calls.jsonl', call)
            out['api_calls'] = len(self.api.calls)
            self.art.write_json('promise.json', out)
            self.art.write_text('report.md', render_md(out, self.api.calls,
                                                       mine, self.beats))
            self.art.write_text('report.html', render_html(
                out, self.api.calls, mine, self.beats))
            self.art.copy_logs(self.lane.log_dir, prefix='lane__') \
                if self.lane.log_dir else None
        except Exception:
            self.art.write_text('report-error.txt', traceback.format_exc())
        finally:
            self.art.finish()
        return self.passed


# --------------------------------------------------------------- console


class Console:
    """ryll on `guest` of `holder` (a lane or a console slot) through
    Kerbside, with a .vv fetched here; the digest capture and a Walker
    on top. Several Consoles may follow each other on one guest.
    """

    def __init__(self, run, holder, guest, label, step_timeout=90,
                 paste_secret=walk_mod.PASTE_SECRET, char_delay_ms=None):
        self.run = run
        self.holder = holder
        self.guest = guest
        self.label = label
        self.step_timeout = step_timeout
        self.paste_secret = paste_secret
        self.char_delay_ms = char_delay_ms
        route = run.lane.console_route(guest, 'kerbside')
        self.source, self.uuid = route.source, route.uuid
        run.console = (self.source, self.uuid)
        self.vv = None
        self.session_id = None
        self.rp = self.client = self.stream = self.walker = None

    def fetch_vv(self):
        self.vv = self.run.api.console_vv(self.source, self.uuid)
        self.session_id = session_of(self.vv)
        self.run.sessions.append(self.session_id)
        self.fetched_at = time.time()
        return self.vv

    def open(self, vv=None):
        """Start ryll on a fresh .vv (or `vv`), wait for a surface and
        start the capture. Returns self.
        """
        if vv is None:
            vv = self.fetch_vv()
        t = time.monotonic()
        self.rp = self.holder.start_ryll(self.guest, route='kerbside',
                                         timeout=30, vv=vv)
        self.client, self.stream = runner.attach(
            self.rp, self.run.art,
            digests_file='digests-%s.jsonl' % self.label)
        self.run.timings['%s_ryll_to_surface' % self.label] = round(
            time.monotonic() - t, 3)
        kw = {}
        if self.char_delay_ms is not None:
            kw['char_delay_ms'] = self.char_delay_ms
        self.walker = walk_mod.Walker(
            self.client, self.stream, self.run.art,
            step_timeout=self.step_timeout, paste_secret=self.paste_secret,
            log=self.run.log, **kw)
        return self

    def wait_digest(self, timeout=30):
        """The first digest of this connection."""
        return self.stream.wait_for(lambda cd: True, timeout,
                                    'a digest on the %s connection'
                                    % self.label)

    def close(self):
        """Stop the capture and ryll (the session ends, not terminated)."""
        for fn in (lambda: self.stream and self.stream.stop(),
                   lambda: self.client and self.client.close()):
            try:
                fn()
            except Exception:
                pass
        if self.walker is not None:
            self.run.beats += [b.to_json() for b in self.walker.beats]
            self.walker = None
        if self.rp is not None and self.holder.ryll is self.rp:
            self.holder.stop_ryll()
        elif self.rp is not None:
            self.rp.stop()

    def wait_cut(self, bound):
        """Seconds until ryll's control connection closed (or ryll
        exited), or None if it was still up after `bound` seconds.
        """
        t0 = time.monotonic()
        while time.monotonic() - t0 < bound:
            if self.client.closed or not self.rp.alive:
                return time.monotonic() - t0
            time.sleep(0.02)
        return None


def keypress_hash(cd):
    return cd.hashes.get('keypress', 0)


# --------------------------------------------------------------- stories


def walk_to_parked(w, skip_awaiting=False):
    """The canonical walk up to Parked (the paste accepted): everything
    but the final Enter. Returns the Parked digest. `skip_awaiting`: the
    Awaiting beat was already walked.
    """
    if not skip_awaiting:
        walk_mod.awaiting(w)
    booted = walk_mod.enter_to_booting(w)
    walk_mod.boot_lines_to_prompt(w, booted.index)
    walk_mod.ignore(w)
    accepted = walk_mod.paste_and_submit(w, w.paste_secret, correct=True)
    return walk_mod.parked(w, accepted.index)


def attempt_refused(run, holder, guest, vv, promise, check, what,
                    timeout=15.0):
    """Start ryll with `vv` and expect Kerbside to refuse it: ryll exits
    non-zero saying PermissionDenied, and the proxy's denied_total grows.
    Returns the facts seen (exit status, ryll's words, metric deltas).
    """
    from kerbside_tempest_plugin.ryll import errors as ryll_errors
    before = run._scrape()
    t0 = time.monotonic()
    rp = None
    try:
        rp = holder.start_ryll(guest, route='kerbside', timeout=timeout,
                               vv=vv)
    except (ryll_errors.RyllError, errors.HarnessError):
        pass
    rp = rp or holder.last_ryll
    deadline = time.monotonic() + timeout
    while rp.alive and time.monotonic() < deadline:
        time.sleep(0.05)
    seconds = time.monotonic() - t0
    alive = rp.alive
    words = _refusal_line(rp)
    if alive:
        state = 'still running %.1f s later' % seconds
        try:
            from kerbside_tempest_plugin.ryll import client as ryll_client
            with ryll_client.ControlClient(rp.socket_path) as c:
                c.connect(timeout=5)
                state += ', status %s' % c.status(timeout=5)
        except Exception as e:
            state += ' (status unreadable: %s)' % e
        holder.stop_ryll()
    delta = kapi.metric_delta(before, run._scrape())
    facts = {'exit_status': rp.returncode, 'ryll_said': words,
             'seconds': round(seconds, 3), 'metrics_delta': delta}
    run.note('%s_%s' % (promise, check), facts)
    if alive:
        run.check(promise, check, False, 'Kerbside accepted %s: ryll '
                  'connected and is %s' % (what, state))
    run.check(promise, check, rp.returncode not in (0, None) and
              REFUSED in words,
              'ryll exited %s after %.2f s saying %r (%s)' % (
                  rp.returncode, seconds, words, what))
    denied = kapi.metric_sum(delta, METRIC_DENIED)
    run.check(promise, check + '_counted', denied >= 1,
              '%s grew by %d' % (METRIC_DENIED, denied))
    return facts


def _refusal_line(rp):
    """ryll's line about the refusal (or its last error line)."""
    lines = []
    for path in (rp.stderr_path, rp.stdout_path):
        try:
            with open(path, errors='replace') as f:
                lines += f.read().splitlines()
        except OSError:
            pass
    for ln in lines:
        if 'Authentication failed' in ln or REFUSED in ln:
            return _strip_log(ln)
    errs = [ln for ln in lines if 'rror' in ln or 'failed' in ln]
    return _strip_log(errs[-1]) if errs else '(ryll said nothing)'


def _strip_log(line):
    return re.sub(r'\x1b\[[0-9;]*m', '', line).strip()[:300]


def audit_checks(terminated=False, channels=RYLL_CHANNELS):
    """The (promise, check) names check_audit_session makes, in order."""
    return ([('audit', 'token_entry')] +
            [('audit', 'channel_%s' % c) for c in channels] +
            [('audit', 'fields'), ('audit', 'termination_entry'
                                   if terminated else
                                   'no_termination_entry')])


# The (promise, check) names check_session_listed makes, in order.
LISTED_CHECKS = [('sessions', 'listed'), ('sessions', 'console'),
                 ('sessions', 'channels')]


def refused_checks(promise, check):
    """The (promise, check) names attempt_refused makes."""
    return [(promise, check), (promise, check + '_counted')]


def check_audit_session(run, audit, session_id, channels=RYLL_CHANNELS,
                        terminated=False):
    """The audit trail of one session, against what Kerbside 0.8.0
    writes: the token first, then per channel "Channel created" before
    "Hypervisor connection successful", and "Session terminated by
    request" last exactly when the session was terminated.
    """
    events = session_events(audit, session_id)
    msgs = [(e.get('channel'), e.get('message')) for e in events]
    run.check('audit', 'token_entry', bool(msgs) and
              msgs[0] == (None, AUDIT_TOKEN),
              'first entry of session %s: %s' % (
                  session_id, msgs[0] if msgs else 'no entry at all'))
    for ch in channels:
        try:
            created = msgs.index((ch, AUDIT_CHANNEL))
            ok = msgs.index((ch, AUDIT_HYPERVISOR)) > created
        except ValueError:
            ok = False
        run.check('audit', 'channel_%s' % ch, ok,
                  '%r then %r for the %s channel: %s' % (
                      AUDIT_CHANNEL, AUDIT_HYPERVISOR, ch,
                      'in order' if ok else 'missing or out of order in '
                      '%s' % msgs))
    fields = ('source', 'uuid', 'session_id', 'channel', 'node', 'pid',
              'timestamp', 'message')
    bad = [e for e in events if set(fields) - set(e)]
    stamps = [e.get('timestamp') for e in events]
    run.check('audit', 'fields', not bad and stamps == sorted(stamps),
              'every entry has %s, timestamps in order%s' % (
                  ', '.join(fields), '' if not bad else
                  '; missing in %s' % bad[:2]))
    ends = [m for m in msgs if m[1] == AUDIT_TERMINATED]
    if terminated:
        run.check('audit', 'termination_entry',
                  bool(ends) and msgs[-1] == (None, AUDIT_TERMINATED),
                  '%r is the last entry of session %s (last: %s)' % (
                      AUDIT_TERMINATED, session_id,
                      msgs[-1] if msgs else None))
    else:
        run.check('audit', 'no_termination_entry', not ends,
                  'session %s ended without a terminate and has %d '
                  'termination entries' % (session_id, len(ends)))
    return events


def check_session_listed(run, session_id, source, uuid,
                         channels=RYLL_CHANNELS, deadline=10.0):
    """GET /session lists `session_id` for the console with its client
    and its channels (polled until `deadline`: channels register as ryll
    opens them).
    """
    end = time.monotonic() + deadline
    while True:
        listed = run.api.sessions()
        entry = listed.get(session_id) or {}
        types = sorted(c.get('channel_type') or '?'
                       for c in entry.get('channels') or ())
        if sorted(channels) == types or time.monotonic() >= end:
            break
        time.sleep(0.25)
    run.check('sessions', 'listed', bool(entry),
              'GET /session %s session %s (listed: %s)' % (
                  'lists' if entry else 'does not list', session_id,
                  sorted(listed)))
    run.check('sessions', 'console',
              (entry.get('source'), entry.get('uuid')) == (source, uuid),
              'session %s is for %s/%s' % (session_id, entry.get('source'),
                                           entry.get('uuid')))
    clients = sorted(set('%s:%s' % (c.get('client_ip'), c.get('client_port'))
                         for c in entry.get('channels') or ()))
    run.check('sessions', 'channels', types == sorted(channels) and all(
        c.get('client_ip') and c.get('client_port')
        for c in entry.get('channels') or ()),
        'channels %s (want %s), clients %s' % (
            types, sorted(channels), clients))
    run.note('session_listed', {'session_id': session_id, 'name':
                                entry.get('name'), 'channels': types,
                                'clients': clients})
    return entry


def check_session_gone(run, session_id, deadline=10.0):
    end = time.monotonic() + deadline
    while True:
        listed = run.api.sessions()
        if session_id not in listed or time.monotonic() >= end:
            break
        time.sleep(0.25)
    run.check('sessions', 'gone', session_id not in listed,
              'session %s %s GET /session after it ended' % (
                  session_id, 'left' if session_id not in listed
                  else 'is still in'))


def finish_walk(run, con, expected_walk='canonical', drain_timeout=60):
    """The final Enter in Parked on `con`; read the drain and judge it
    against `expected_walk`'s sequence (nothing more, nothing less: a key
    that crossed when it should not have would show). Returns the drain.
    """
    from kerbside_tempest_plugin.sextant import drain as drain_mod
    con.walker.power_off()
    con.guest.serial.wait_for(walk_mod.DRAIN_END_RE, drain_timeout)
    text = con.guest.serial.read()
    run.art.write_text('serial.log', text)
    drain = drain_mod.parse(text)
    seq = checks.check_drain_sequence(drain, walk_mod.expected(
        expected_walk))
    keys = [r for r in drain.records if r.type == 'keypress']
    run.note('drain_keypresses', len(keys))
    return drain, seq


# Facts a story records as findings about Kerbside (where it does not
# do what its documentation says): shown at the top of the reports.
FINDING_KEYS = ('finding', 'firewall_mode_effect')


def findings(facts):
    out = []
    for key in FINDING_KEYS:
        value = (facts or {}).get(key)
        if value:
            out.append(value if isinstance(value, str) else json.dumps(
                value, sort_keys=True, default=str))
    return out


def render_md(out, calls, audit, beats):
    lines = ['# %s: %s' % (out['name'], 'PASS' if out['passed'] else
                           'FAIL'), '',
             'Promises: %s; route %s.' % (', '.join(out['promises']),
                                          out['route'])]
    if out.get('kerbside_build'):
        lines.append('Kerbside under test: %s'
                     % runner.build_line(out['kerbside_build']))
    if out.get('error'):
        lines += ['', 'Error: %s' % out['error']]
    found = findings(out['facts'])
    if found:
        lines += ['', '## Findings about Kerbside', '']
        lines += ['- %s' % f for f in found]
    lines += ['', '## Checks', '', '| promise | check | verdict | what was '
              'seen |', '|---|---|---|---|']
    for c in out['checks']:
        lines.append('| %s | %s | %s | %s |' % (
            c['promise'], c['name'], c['verdict'],
            c['message'].replace('|', '/').replace('\n', ' ')))
    lines += ['', '## Timings (s)', '']
    lines += ['- %s: %s' % kv for kv in sorted(out['timings'].items())]
    lines += ['', '## Kerbside API calls', '']
    lines += ['- %s' % c.line() for c in calls]
    lines += ['', '## Audit trail of this test\'s sessions', '']
    lines += ['- %s %s %s %s' % (e.get('timestamp'), e.get('session_id'),
                                 e.get('channel') or '-', e.get('message'))
              for e in audit]
    lines += ['', '## Proxy metric deltas', '']
    lines += ['- %s: %+g' % kv for kv in sorted(
        (out.get('metrics_delta') or {}).items())]
    if beats:
        lines += ['', '## Beats', '']
        lines += ['- %s: %s%s' % (b['name'], 'ok' if b['ok'] else 'FAILED',
                                  ' (%s)' % b['error'] if b.get('error')
                                  else '') for b in beats]
    lines += ['', '## Facts', '', '```',
              json.dumps(out['facts'], indent=1, sort_keys=True,
                         default=str), '```', '']
    return '\n'.join(lines)


def render_html(out, calls, audit, beats):
    e = html.escape

    def table(head, rows):
        return '<table><tr>%s</tr>%s</table>' % (
            ''.join('<th>%s</th>' % e(h) for h in head),
            ''.join('<tr>%s</tr>' % ''.join(
                '<td>%s</td>' % e(str(c)) for c in r) for r in rows))
    verdict = 'PASS' if out['passed'] else 'FAIL'
    parts = [
        '<!doctype html><html><head><meta charset="utf-8"><title>%s</title>'
        '<style>body{font-family:sans-serif;margin:1em}table{border-'
        'collapse:collapse;margin:.5em 0}td,th{border:1px solid #999;'
        'padding:2px 6px;font-size:90%%;text-align:left}.PASS{color:#070}'
        '.FAIL{color:#b00}</style></head><body>' % e(out['name']),
        '<h1>%s: <span class="%s">%s</span></h1>' % (
            e(out['name']), verdict, verdict),
        '<p>Promises: %s; route %s.</p>' % (e(', '.join(out['promises'])),
                                            e(out['route']))]
    if out.get('kerbside_build'):
        b = out['kerbside_build']
        parts.append('<h2>Kerbside under test</h2>' + table(
            ('what', 'value'), sorted(b.items())))
    if out.get('error'):
        parts.append('<p class="FAIL">Error: %s</p>' % e(out['error']))
    found = findings(out['facts'])
    if found:
        parts.append('<h2>Findings about Kerbside</h2><ul>%s</ul>' % ''.join(
            '<li>%s</li>' % e(f) for f in found))
    parts.append('<h2>Checks</h2>' + table(
        ('promise', 'check', 'verdict', 'what was seen'),
        [(c['promise'], c['name'], c['verdict'], c['message'])
         for c in out['checks']]))
    parts.append('<h2>Kerbside API calls</h2>' + table(
        ('method', 'path', 'status', 'ms', 'note'),
        [(c.method, c.path, c.status, '%.0f' % (c.seconds * 1000), c.note)
         for c in calls]))
    parts.append('<h2>Audit trail of this test\'s sessions</h2>' + table(
        ('timestamp', 'session', 'channel', 'message'),
        [(a.get('timestamp'), a.get('session_id'), a.get('channel') or '-',
          a.get('message')) for a in audit]))
    parts.append('<h2>Proxy metric deltas</h2>' + table(
        ('series', 'delta'), sorted((out.get('metrics_delta') or {})
                                    .items())))
    parts.append('<h2>Timings (s)</h2>' + table(
        ('phase', 'seconds'), sorted(out['timings'].items())))
    if beats:
        parts.append('<h2>Beats</h2>' + table(
            ('beat', 'ok', 'error'), [(b['name'], b['ok'],
                                       b.get('error') or '')
                                      for b in beats]))
    parts.append('<h2>Facts</h2><pre>%s</pre>' % e(json.dumps(
        out['facts'], indent=1, sort_keys=True, default=str)))
    parts.append('</body></html>')
    return '\n'.join(parts)


def run_story(lane, story, name, artifact_root, image, promises,
              route='kerbside', log=None, **kwargs):
    """Run `story(run, lane, image, **kwargs)` as one promise test;
    returns the finished PromiseRun (never raises for a broken promise
    or a harness error: they are in the run).
    """
    run = PromiseRun(name, route, artifact_root, lane, promises, log=log)
    booted = len(lane.guests)
    try:
        story(run, lane, image, **kwargs)
    except BaseException as e:
        run.fail(e)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            _end_story(lane, booted)
            run.finish(runner.kerbside_build(lane))
            raise
    _end_story(lane, booted)
    run.finish(runner.kerbside_build(lane))
    return run


def _end_story(lane, booted):
    """Stop ryll and every guest the story booted on the lane, whether or
    not it finished: a story that stopped half-way must not leave a guest
    holding the console's port for the next test (one cause per
    failure). Never raises.
    """
    try:
        lane.stop_ryll()
    except Exception:
        pass
    for guest in list(lane.guests[booted:]):
        try:
            guest.teardown()
        except Exception:
            pass

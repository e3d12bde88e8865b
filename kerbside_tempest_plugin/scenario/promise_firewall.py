"""The firewall's message rules, told with a SPICE client of our own.

Kerbside 0.8.0's proxy checks every client message against its firewall
(upstream rust/kerbside-proxy/src/policy.rs): a size cap of 4096 bytes on
inputs and cursor client->server messages (rule `size_cap`, verdict
Terminate, judged on the 6-byte mini header before the body), a
message-type allowlist (`disallowed_type`) and a rate ceiling 0.8.0
cannot switch on. ryll cannot trip any of them (its messages are small),
so this story links main + inputs with `spice.link.Session` and puts on
the wire what no real client sends: a KEY_DOWN that declares (and
carries) more than the cap.

`firewall_message_rules(run, lane, image, mode)`: a fresh guest on its
Awaiting screen; a proxy .vv; main + inputs linked through the proxy
over TLS. Positive control: an Enter (0x1c down, 0x9c up) reaches the
guest (its keypress chain, read by QMP screendump, moves from 0) and
trips no rule. Then one oversized KEY_DOWN on inputs, and per `mode`:

- size_cap_inputs_closed: the inputs channel closed within
  CLOSE_BOUND_S (both modes);
- size_cap_verdict: enforce: action="enforced" +1 and "observed" +0;
  warn: "observed" +1 and "enforced" +0 (rule size_cap, channel inputs,
  client_to_server; no other verdict series moved);
- size_cap_forwarding: bytes_relayed_total client_to_server grew by
  less than the message (enforce) or by at least the message (warn);
- size_cap_audit: the session's trail says `Firewall verdicts this
  connection: size_cap (enforced=1, observed=0)` (enforce) or
  `(enforced=0, observed=1)` (warn) for inputs;
- size_cap_no_key_reached_guest: the keypress chain did not move after
  the control (the oversized KEY_DOWN carries an Enter; both modes).

Who closed inputs is recorded as a fact, not judged: the proxy in
enforce (its log: `policy header check verdict Terminate; ending
relay`), qemu in warn (its log: `inputs:0: error: too large incoming
message`), so warn mode does not keep the channel open, whatever
Kerbside's words for it ("downgrades them to forward-and-log",
kerbside/config.py FIREWALL_MODE) suggest. The notes say what warn
changed against those words.

The decisions are plain functions (`judge_*`, `verdicts`, `closer`,
`mode_effect`) so they are tested without a lane
(unit_tests/test_spice_link.py).
"""

import os
import re
import struct
import time
import typing

from kerbside_tempest_plugin.common import logtext
from kerbside_tempest_plugin.kerbside_api import client as kapi
from kerbside_tempest_plugin.scenario import promise_stories
from kerbside_tempest_plugin.scenario import promises as pr
from kerbside_tempest_plugin.spice import link

PROMISE = 'firewall'
CHECKS = ('control_key_reached_guest', 'control_no_verdict',
          'size_cap_inputs_closed', 'size_cap_verdict',
          'size_cap_forwarding', 'size_cap_audit',
          'size_cap_no_key_reached_guest')
# The audit entry of a verdict is the audit promise's: a Kerbside that
# drops audit writes must be named for that, not for its firewall.
CHECK_PROMISE = {'size_cap_audit': 'audit'}


def promise_of(check):
    return CHECK_PROMISE.get(check, PROMISE)


# FIREWALL_MODE -> the action label its verdicts carry.
ACTIONS = {'enforce': 'enforced', 'warn': 'observed'}
RULE = 'size_cap'
# The proxy's cap on inputs and cursor client->server messages (0.8.0's
# compiled default; Kerbside has no setting for it).
SIZE_CAP = 4096
# What the oversized KEY_DOWN declares and carries (an Enter in its first
# four bytes, zeros after).
OVERSIZE = 5000
ENTER = 0x1c
# Observed 0.11-0.16 s from the send to the client's EOF in both modes.
CLOSE_BOUND_S = 5.0
METRIC_BOUND_S = 5.0
AUDIT_BOUND_S = 10.0
# Enter -> keypress chain in a QMP screendump (the guest polls keys every
# 50 ms; a screendump and its decode take a few hundred ms under load).
KEY_BOUND_S = 20.0
LINK_TIMEOUT_S = 15.0
METRIC_BYTES_C2S = \
    'kerbside_proxy_bytes_relayed_total{direction="client_to_server"}'
AUDIT_VERDICTS = 'Firewall verdicts this connection:'
# Kerbside 0.8.0, kerbside/config.py, FIREWALL_MODE's description.
KERBSIDE_WARN_WORDS = ('"warn" downgrades them [blocking verdicts] to '
                       'forward-and-log so an operator can observe what '
                       'enforcement would trip before enabling it')
PROXY_TERMINATE = 'policy header check verdict Terminate'
PROXY_WARN_ONLY = 'firewall WarnOnly: would have blocked'
QEMU_TOO_LARGE = 'too large incoming message'
DAEMON_LOG = 'kerbside-daemon.out'

_LABELS = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


# ------------------------------------------------------------- decisions


def expected_audit(mode: str, rule: str = RULE) -> str:
    enforced = 1 if mode == 'enforce' else 0
    return '%s %s (enforced=%d, observed=%d)' % (
        AUDIT_VERDICTS, rule, enforced, 1 - enforced)


def verdicts(delta: typing.Dict[str, float]
             ) -> typing.Dict[typing.Tuple[str, str, str, str], float]:
    """The firewall verdict series of a metric delta as
    {(action, channel, direction, rule): n}.
    """
    out = {}
    for key, value in delta.items():
        if not key.startswith(pr.METRIC_FIREWALL + '{'):
            continue
        labels = dict(_LABELS.findall(key[len(pr.METRIC_FIREWALL):]))
        k = (labels.get('action'), labels.get('channel'),
             labels.get('direction'), labels.get('rule'))
        out[k] = out.get(k, 0) + value
    return out


def _series(v):
    return ', '.join('%s/%s/%s/%s %+g' % (k + (n,)) for k, n in
                     sorted(v.items())) or 'none'


def judge_verdict(mode: str, delta: typing.Dict[str, float],
                  channel: str = 'inputs', rule: str = RULE
                  ) -> typing.Tuple[bool, str]:
    """One verdict of `rule` on `channel` client->server with the mode's
    action, none with the other action, and no other firewall series.
    """
    want = ACTIONS[mode]
    other = ACTIONS['warn' if mode == 'enforce' else 'enforce']
    v = verdicts(delta)
    mine = v.get((want, channel, 'client_to_server', rule), 0)
    theirs = v.get((other, channel, 'client_to_server', rule), 0)
    rest = {k: n for k, n in v.items() if k not in (
        (want, channel, 'client_to_server', rule),
        (other, channel, 'client_to_server', rule))}
    ok = mine == 1 and theirs == 0 and not rest
    return ok, ('%s action="%s" rule="%s" on %s client_to_server %+g (want '
                '+1), action="%s" %+g (want 0); all verdict series that '
                'moved: %s' % (pr.METRIC_FIREWALL, want, rule, channel, mine,
                               other, theirs, _series(v)))


def judge_no_verdict(delta: typing.Dict[str, float]
                     ) -> typing.Tuple[bool, str]:
    v = verdicts(delta)
    return not v, 'firewall verdict series that moved: %s' % _series(v)


def judge_forwarding(mode: str, bytes_delta: float, message_len: int
                     ) -> typing.Tuple[bool, str]:
    """warn forwards the whole message; enforce ends the relay at its
    header, so less than the message is relayed (the window also holds
    the session's own small traffic, ACKs and PONGs).
    """
    forwarded = bytes_delta >= message_len
    ok = forwarded if mode == 'warn' else not forwarded
    return ok, ('%s grew by %d bytes while the %d-byte message was sent: '
                '%s (want: %s)' % (
                    METRIC_BYTES_C2S, bytes_delta, message_len,
                    'forwarded' if forwarded else 'not forwarded',
                    'forwarded' if mode == 'warn' else 'not forwarded'))


def judge_closed(seconds: typing.Optional[float], bound: float,
                 reason: str = '') -> typing.Tuple[bool, str]:
    if seconds is None:
        return False, ('the inputs channel was still open %.1f s after the '
                       'oversized message' % bound)
    return seconds <= bound, ('the inputs channel closed %.2f s after the '
                              'oversized message (bound %.1f s): %s' % (
                                  seconds, bound, reason))


def judge_audit(mode: str, events: typing.List[dict], session_id: str,
                channel: str = 'inputs') -> typing.Tuple[bool, str]:
    """The session's audit trail holds the mode's verdict summary for the
    channel, and no other firewall verdict summary.
    """
    want = expected_audit(mode)
    mine = [e for e in events if (e.get('message') or '').startswith(
        AUDIT_VERDICTS)]
    seen = ['%s: %s' % (e.get('channel'), e.get('message')) for e in mine]
    ok = [(e.get('channel'), e.get('message')) for e in mine] == \
        [(channel, want)]
    return ok, ('audit of session %s: want exactly %r on the %s channel; '
                'firewall entries: %s' % (session_id, want, channel,
                                          seen or 'none'))


def judge_no_key(k_control: int, k_after: int) -> typing.Tuple[bool, str]:
    return k_after == k_control, (
        'keypress chain %08x after the control Enter, %08x after the '
        'oversized KEY_DOWN (which carries an Enter)' % (k_control, k_after))


def closer(qemu_lines: typing.List[str], proxy_lines: typing.List[str]
           ) -> str:
    """Who ended the inputs channel, from the logs: qemu (it refused the
    forwarded message), the proxy (its verdict ended the relay) or
    unknown.
    """
    if any(QEMU_TOO_LARGE in ln for ln in qemu_lines):
        return 'qemu'
    if any(PROXY_TERMINATE in ln for ln in proxy_lines):
        return 'proxy'
    return 'unknown'


def mode_effect(mode: str, actions: typing.List[str], closed_by: str,
                bytes_delta: float, message_len: int,
                seconds: typing.Optional[float], main_open: bool) -> dict:
    """What FIREWALL_MODE=`mode` did to the oversized message (as seen:
    the verdict actions counted, the bytes relayed, who closed inputs),
    beside Kerbside's own words for warn mode.
    """
    forwarded = bytes_delta >= message_len
    seen = ('size_cap verdict counted as %s; the %d-byte message %s '
            '(client_to_server %+d bytes); the inputs channel %s, ended by '
            '%s; main %s' % (
                ' and '.join(actions) or 'nothing', message_len,
                'was forwarded to qemu' if forwarded else 'was not forwarded',
                bytes_delta, 'closed after %.2f s' % seconds
                if seconds is not None else 'stayed open', closed_by,
                'stayed open' if main_open else 'closed too'))
    out = {'mode': mode, 'kerbside_says': KERBSIDE_WARN_WORDS,
           'seen': seen}
    if mode != 'warn':
        out['against_the_words'] = (
            'enforce: the blocking verdict applied%s' % (
                ', the proxy ended the inputs relay at the header and '
                'forwarded nothing' if not forwarded and closed_by == 'proxy'
                else ' (not as expected: see seen)'))
        return out
    kept = forwarded and actions == ['observed']
    out['against_the_words'] = (
        '%s; but the client %s its inputs channel: %s' % (
            'forward-and-log held for the proxy (forwarded, counted as '
            'observed)' if kept else 'forward-and-log did not hold (see '
            'seen)',
            'lost' if seconds is not None else 'kept',
            'qemu refused the forwarded message itself ("%s") and dropped '
            'the channel, so warn changed who closes inputs and what '
            'reaches qemu, not whether the session keeps its keyboard'
            % QEMU_TOO_LARGE if closed_by == 'qemu' else
            'closed by %s' % closed_by))
    return out


# ---------------------------------------------------------------- helpers


class _LogMark:
    """Lines a log file gained since the mark (ANSI stripped); a missing
    file has none.
    """

    def __init__(self, path: typing.Optional[str]):
        self.path = path
        try:
            self.offset = os.path.getsize(path) if path else 0
        except OSError:
            self.offset = 0

    def new_lines(self, pattern: typing.Optional[str] = None
                  ) -> typing.List[str]:
        if not self.path:
            return []
        try:
            with open(self.path, 'rb') as f:
                f.seek(self.offset)
                text = f.read().decode('utf-8', 'replace')
        except OSError:
            return []
        lines = [logtext.strip_ansi(ln).strip() for ln in text.splitlines()]
        return [ln for ln in lines if ln and (
            pattern is None or re.search(pattern, ln))]


def _daemon_log(lane) -> typing.Optional[str]:
    try:
        kb = pr.kerbside_of(lane)
    except Exception:
        return None
    log_dir = getattr(kb, 'log_dir', None)
    return os.path.join(log_dir, DAEMON_LOG) if log_dir else None


def _qemu_log(guest) -> typing.Optional[str]:
    d = getattr(guest, 'artifact_dir', None)
    return os.path.join(d, 'qemu.log') if d else None


def _wait_keypress_moved(guest, shot, k0, bound):
    deadline = time.monotonic() + bound
    while True:
        k = promise_stories._screen_keypress(guest, shot)
        if k != k0 or time.monotonic() >= deadline:
            return k
        time.sleep(0.3)


def _scrape_until_verdict(run, before, bound):
    """Scrape /metrics until a firewall verdict series moved since
    `before` (or `bound` s passed); returns the last scrape.
    """
    deadline = time.monotonic() + bound
    while True:
        after = run.api.metrics()
        if verdicts(kapi.metric_delta(before, after)) or \
                time.monotonic() >= deadline:
            return after
        time.sleep(0.2)


def _audit_until_verdict(run, source, uuid, session_id, bound):
    deadline = time.monotonic() + bound
    while True:
        events = pr.session_events(run.api.audit(source, uuid), session_id)
        if any((e.get('message') or '').startswith(AUDIT_VERDICTS)
               for e in events) or time.monotonic() >= deadline:
            return events
        time.sleep(0.5)


# ------------------------------------------------------------------ story


def firewall_message_rules(run, lane, image, mode, boot_timeout=120,
                           close_bound=CLOSE_BOUND_S, oversize=OVERSIZE):
    """The size cap on inputs in FIREWALL_MODE=`mode` ('enforce' or
    'warn'), judged by Kerbside's metrics and audit trail and by the
    guest (see the module docstring).
    """
    if mode not in ACTIONS:
        raise ValueError('mode must be one of %s, not %r'
                         % (', '.join(ACTIONS), mode))
    if oversize <= SIZE_CAP:
        raise ValueError('the oversized message must declare more than the '
                         '%d-byte cap, not %d' % (SIZE_CAP, oversize))
    run.planned = [(promise_of(c), c) for c in CHECKS]
    message_len = link.MINI_HEADER.size + oversize
    run.note('firewall_message', {
        'mode': mode, 'rule': RULE, 'cap_bytes': SIZE_CAP,
        'message': 'inputs KEY_DOWN (%d) declaring and carrying %d bytes, '
                   'an Enter in its first four' % (
                       link.MSGC_INPUTS_KEY_DOWN, oversize)})
    guest = promise_stories._boot(lane, image, 'promise-firewall-message-%s'
                                  % mode, boot_timeout)
    route = lane.console_route(guest, 'kerbside')
    run.console = (route.source, route.uuid)
    shot = os.path.join(run.art.path, 'guest-screendump.png')
    k0 = promise_stories._screen_keypress(guest, shot)
    vv = run.api.console_vv(route.source, route.uuid)
    session_id = pr.session_of(vv)
    run.sessions.append(session_id)
    qemu_log, proxy_log = _qemu_log(guest), _daemon_log(lane)
    t = time.monotonic()
    with link.Session.from_vv(vv, timeout=LINK_TIMEOUT_S) as s:
        run.timings['link_main_inputs'] = round(time.monotonic() - t, 3)
        run.note('spice_session', {
            'session_id': session_id, 'spice_session_id': s.session_id,
            'main_received': s.types_received('main')[:20],
            'inputs_received': s.types_received('inputs')[:20]})

        # Positive control: an Enter through the same inputs channel.
        before = run.api.metrics()
        t = time.monotonic()
        s.key(ENTER)
        k1 = _wait_keypress_moved(guest, shot, k0, KEY_BOUND_S)
        run.timings['control_key_to_chain'] = round(time.monotonic() - t, 3)
        run.note('control', {'keypress_before': '%08x' % k0,
                             'keypress_after': '%08x' % k1})
        run.check(PROMISE, 'control_key_reached_guest', k1 != k0,
                  'an Enter (0x1c, 0x9c) on our inputs channel moved the '
                  'guest\'s keypress chain %08x -> %08x (QMP screendump)'
                  % (k0, k1) if k1 != k0 else
                  'the guest\'s keypress chain stayed %08x %.0f s after an '
                  'Enter on our inputs channel' % (k0, KEY_BOUND_S))
        ok, msg = judge_no_verdict(kapi.metric_delta(before,
                                                     run.api.metrics()))
        run.check(PROMISE, 'control_no_verdict', ok,
                  'the control Enter: %s' % msg)

        # The oversized message.
        qemu_mark, proxy_mark = _LogMark(qemu_log), _LogMark(proxy_log)
        before = run.api.metrics()
        payload = struct.pack('<I', ENTER) + b'\0' * (oversize - 4)
        t_send = time.monotonic()
        try:
            s.send('inputs', link.MSGC_INPUTS_KEY_DOWN, payload)
            sent = 'sent %d bytes' % message_len
        except link.SpiceLinkError as e:
            sent = 'the send failed: %s' % e
        end = s.wait_ended('inputs', close_bound)
        seconds = None if end is None else end.at - t_send
        after = _scrape_until_verdict(run, before, METRIC_BOUND_S)
        main_open = s.ended('main') is None

    run.timings['oversized_to_inputs_closed'] = None if seconds is None \
        else round(seconds, 3)
    delta = kapi.metric_delta(before, after)
    bytes_delta = delta.get(METRIC_BYTES_C2S, 0)
    actions = sorted(set(k[0] for k in verdicts(delta) if k[3] == RULE))
    qemu_lines = qemu_mark.new_lines(r'inputs|' + QEMU_TOO_LARGE)
    proxy_lines = proxy_mark.new_lines(
        '|'.join((PROXY_TERMINATE, PROXY_WARN_ONLY, 'relay ended')))
    closed_by = closer(qemu_lines, proxy_lines)
    run.note('size_cap_metrics_delta', delta)
    run.note('size_cap_close', {
        'seconds': run.timings['oversized_to_inputs_closed'],
        'closed_by': closed_by, 'client_saw': end.reason if end else None,
        'main_open_after': main_open, 'qemu_log': qemu_lines[-5:],
        'proxy_log': [_short(ln) for ln in proxy_lines[-5:]]})
    run.note('firewall_mode_effect', mode_effect(
        mode, actions, closed_by, bytes_delta, message_len, seconds,
        main_open))

    # Everything is observed before the first judgement, so a failed
    # check's report still holds the audit entries and the guest's chain.
    events = _audit_until_verdict(run, route.source, route.uuid, session_id,
                                  AUDIT_BOUND_S)
    run.note('size_cap_audit_entries', [
        '%s: %s' % (e.get('channel'), e.get('message')) for e in events
        if (e.get('message') or '').startswith(AUDIT_VERDICTS)])
    k2 = promise_stories._screen_keypress(guest, shot)
    run.note('keypress_after_oversized', '%08x' % k2)

    ok, msg = judge_closed(seconds, close_bound, end.reason if end else '')
    run.check(PROMISE, 'size_cap_inputs_closed', ok, '%s (%s)' % (msg, sent))
    ok, msg = judge_verdict(mode, delta)
    run.check(PROMISE, 'size_cap_verdict', ok, msg)
    ok, msg = judge_forwarding(mode, bytes_delta, message_len)
    run.check(PROMISE, 'size_cap_forwarding', ok, msg)
    ok, msg = judge_audit(mode, events, session_id)
    run.check(promise_of('size_cap_audit'), 'size_cap_audit', ok, msg)
    ok, msg = judge_no_key(k1, k2)
    run.check(PROMISE, 'size_cap_no_key_reached_guest', ok, msg)


def _short(line, limit=300):
    return line if len(line) <= limit else line[:limit] + '...'

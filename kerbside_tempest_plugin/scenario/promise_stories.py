"""The stories the promise tests tell, one per function.

Each takes a PromiseRun (scenario.promises), the lane and the guest
image, drives a real guest through Kerbside and records its checks; a
broken promise raises promises.PromiseBroken. The guest is the witness
of every story: its digest's keypress chain and its serial drain show
whether a key arrived (exactly the keys delivered, in order), so a
promise that Kerbside's API claims but the proxy does not keep is still
caught.

- session_and_audit: a canonical walk; GET /session lists the live
  session with its console, client and channels; afterwards the session
  is gone and the audit trail holds its entries in order, with no
  termination entry.
- terminate: the walk up to Parked, then POST /session/<id>/terminate
  (or /console/<s>/<u>/terminate): the connection is cut within
  CUT_BOUND_S, keys sent after the cut reach nothing, the terminated
  session's token is refused, a fresh .vv connects and its first digest
  carries the keypress chain of the cut, the walk ends on the new session
  and the drain holds exactly the keys delivered; the audit shows the
  termination.
- token_expiry: a session lives on past its token's expiry, but the
  token is refused once expired.
- token_scoped: with two consoles and a session on each, a console's
  token drives only its own guest, and terminating console 1 cuts its
  session and not console 2's.
- firewall_refusal: with a channel of ryll's left out of the permitted
  channels the proxy refuses that link and ryll's session ends; no key
  reaches the guest (promise_firewall has the message-level rules).
"""

import os
import re
import time

from kerbside_tempest_plugin.kerbside_api import client as kapi
from kerbside_tempest_plugin.scenario import checks
from kerbside_tempest_plugin.scenario import promises as pr
from kerbside_tempest_plugin.scenario import walk as walk_mod
from kerbside_tempest_plugin.sextant import contract

BANNER = re.escape(contract.BANNER)


def canonical_keys(paste_secret):
    """The characters the canonical walk types, as the drain records
    them (unicode): Enter, i, the paste and its Enter, the final Enter.
    """
    return '\r' + 'i' + paste_secret + '\r' + '\r'


def drain_keys(drain):
    out = ''
    for r in drain.records:
        if r.type == 'keypress':
            out += chr(int(r.fields.get('unicode') or 0))
    return out


def _boot(holder, image, name, boot_timeout):
    return holder.boot_guest(image, name=name, banner=BANNER,
                             timeout=boot_timeout)


def drain_checks(promise):
    """The (promise, check) names check_drain_exact makes, in order."""
    return [(promise, 'drain_sequence'), (promise, 'drain_keys_exact'),
            (promise, 'drain_chains')]


# The (promise, check) names terminate_and_probe makes, in order.
CUT_CHECKS = [('terminate', 'api'), ('terminate', 'cut'),
              ('terminate', 'keys_after_cut_refused')]


def check_drain_exact(run, promise, drain, seq, want, streams=()):
    """The drain holds the walk's sequence and exactly the keys `want`,
    in order; the chains replayed from it match the last digest seen.
    """
    got = drain_keys(drain)
    run.check(promise, 'drain_sequence', seq.passed, seq.summary)
    run.check(promise, 'drain_keys_exact', got == want,
              'the drain holds %d keypresses %s the %d delivered%s' % (
                  len(got), 'equal to' if got == want else 'unlike',
                  len(want), '' if got == want else ': %r, want %r' % (
                      got, want)))
    digests = [d for s in streams for d in s.snapshot()]
    if digests:
        chains = checks.check_chains(drain.to_events(), digests[-1:])
        run.check(promise, 'drain_chains', chains.passed, chains.summary)


def resume_and_finish(run, promise, check, open_console, before, what,
                      streams=()):
    """The walk ends on a fresh connection: `open_console()` returns an
    opened promises.Console on the same guest, whose first digest must
    carry the keypress chain of `before` (the last digest of the previous
    connection: nothing crossed in between), then the final Enter, and
    the drain must hold exactly the canonical keys (check_drain_exact,
    over `streams` and the new one). `what` names the gap in messages.
    """
    con = open_console()
    try:
        first = con.wait_digest()
        k_before, k_new = pr.keypress_hash(before), pr.keypress_hash(first)
        run.check(promise, check, k_new == k_before and
                  first.frame_counter >= before.frame_counter,
                  'keypress chain %08x %s (frame %d), %08x on the new '
                  'connection (frame %d)' % (
                      k_before, what, before.frame_counter, k_new,
                      first.frame_counter))
        con.walker.quiet('parked')
        drain, seq = pr.finish_walk(run, con)
        check_drain_exact(run, promise, drain, seq,
                          canonical_keys(con.paste_secret),
                          list(streams) + [con.stream])
    finally:
        con.close()
    return con


# ---------------------------------------------------------------- stories


def session_and_audit(run, lane, image, boot_timeout=120, **console_kw):
    run.planned = (pr.LISTED_CHECKS + drain_checks('sessions') +
                   [('sessions', 'gone')] + pr.audit_checks())
    guest = _boot(lane, image, 'promise-session', boot_timeout)
    con = pr.Console(run, lane, guest, 's1', **console_kw).open()
    try:
        walk_mod.awaiting(con.walker)
        pr.check_session_listed(run, con.session_id, con.source, con.uuid)
        pr.walk_to_parked(con.walker, skip_awaiting=True)
        drain, seq = pr.finish_walk(run, con)
        check_drain_exact(run, 'sessions', drain, seq,
                          canonical_keys(con.paste_secret), [con.stream])
    finally:
        con.close()
    pr.check_session_gone(run, con.session_id)
    audit = run.api.audit(con.source, con.uuid)
    pr.check_audit_session(run, audit, con.session_id)


def terminate_and_probe(run, con, how, cut_bound):
    """Terminate `con`'s session (`how`: 'session', POST
    /session/<id>/terminate; 'console', POST /console/<s>/<u>/terminate)
    and judge it: the API answer, the cut within `cut_bound` seconds, and
    a key sent after the cut refused. Returns the last digest before the
    cut (what the next connection's first digest must still show).
    """
    from kerbside_tempest_plugin.ryll import errors as ryll_errors
    cut_digest = con.stream.last
    k_cut = pr.keypress_hash(cut_digest)
    run.note('at_cut', {'frame_counter': cut_digest.frame_counter,
                        'keypress_hash': '%08x' % k_cut})
    t0 = time.monotonic()
    if how == 'session':
        path = '/session/%s/terminate' % con.session_id
        resp = run.api.terminate_session(con.session_id, expect=None)
    else:
        path = '/console/%s/%s/terminate' % (con.source, con.uuid)
        resp = run.api.terminate_console(con.source, con.uuid, expect=None)
    body = _json_or_text(resp)
    ok = resp.status == 200 and isinstance(body, dict) and \
        body.get('result') == 'ok'
    detail = 'POST %s answered %d %s' % (path, resp.status, _shown(body))
    if ok and how == 'console':
        n = len(body.get('tokens') or ())
        ok = n >= 1
        detail += ' (%d token(s) of the console expired)' % n
    run.check('terminate', 'api', ok, detail)
    cut = con.wait_cut(cut_bound)
    run.timings['terminate_to_cut'] = None if cut is None else \
        round(cut, 3)
    run.check('terminate', 'cut', cut is not None,
              'ryll\'s connection closed %.2f s after the POST '
              '(bound %.0f s)' % (cut, cut_bound) if cut is not None
              else 'ryll was still connected %.0f s after the POST '
              '(%s)' % (time.monotonic() - t0, con.rp.describe()))
    try:
        con.client.send_key('enter')
        sent, why = True, 'ryll accepted the key'
    except ryll_errors.RyllError as e:
        sent, why = False, str(e).splitlines()[0]
    deadline = time.monotonic() + 5
    while con.rp.alive and time.monotonic() < deadline:
        time.sleep(0.05)
    run.note('ryll_after_cut', con.rp.describe())
    run.check('terminate', 'keys_after_cut_refused', not sent,
              'a key sent after the cut: %s; %s' % (why, con.rp.describe()))
    return cut_digest


def terminate(run, lane, image, how='session', boot_timeout=120,
              cut_bound=pr.CUT_BOUND_S, **console_kw):
    """Terminate mid-walk, through POST /session/<id>/terminate
    (`how='session'`) or POST /console/<s>/<u>/terminate ('console').
    """
    run.planned = (pr.LISTED_CHECKS + CUT_CHECKS + [('sessions', 'gone')] +
                   pr.refused_checks('tokens', 'terminated_token_refused') +
                   [('terminate', 'no_key_after_cut')] +
                   drain_checks('terminate') +
                   pr.audit_checks(terminated=True))
    guest = _boot(lane, image, 'promise-terminate-%s' % how, boot_timeout)
    con1 = pr.Console(run, lane, guest, 's1', **console_kw).open()
    try:
        pr.walk_to_parked(con1.walker)
        pr.check_session_listed(run, con1.session_id, con1.source,
                                con1.uuid)
        cut_digest = terminate_and_probe(run, con1, how, cut_bound)
    finally:
        con1.close()
    pr.check_session_gone(run, con1.session_id)
    pr.attempt_refused(run, lane, guest, con1.vv, 'tokens',
                       'terminated_token_refused',
                       'the token of terminated session %s'
                       % con1.session_id)
    resume_and_finish(
        run, 'terminate', 'no_key_after_cut',
        lambda: pr.Console(run, lane, guest, 's2', **console_kw).open(),
        cut_digest, 'at the cut', [con1.stream])
    audit = run.api.audit(con1.source, con1.uuid)
    pr.check_audit_session(run, audit, con1.session_id, terminated=True)
    termination_reason(run, lane, con1.session_id)


def termination_reason(run, lane, session_id):
    """Where Kerbside 0.8.0 keeps a terminate's reason: not in the audit
    trail (its entry is the same for both endpoints) but in the
    session_terminations table, which no API returns. Read from the
    lane's own MariaDB when it has one, and recorded as the finding it
    is (docs/contracts/kerbside.md §16.2).
    """
    db = getattr(lane, 'mariadb', None)
    if db is None or not re.match(r'^[A-Za-z0-9]+$', session_id or ''):
        return None
    try:
        rows = db.query("SELECT reason FROM kerbside.session_terminations "
                        "WHERE session_id = '%s'" % session_id)
    except Exception as e:
        run.note('termination_reason_error', str(e)[:200])
        return None
    reason = rows[0][0] if rows and rows[0] else None
    run.note('termination_reason', reason)
    run.note('finding', 'the audit trail records the termination as %r '
             'whichever endpoint was called; the reason (%r) is stored '
             'only in the session_terminations table, which no API '
             'returns' % (pr.AUDIT_TERMINATED, reason))
    return reason


def token_expiry(run, lane, image, duration_min=1, boot_timeout=120,
                 **console_kw):
    run.planned = ([('tokens', 'session_survives_expiry')] +
                   pr.refused_checks('tokens', 'expired_token_refused') +
                   [('tokens', 'no_key_while_refused')] +
                   drain_checks('tokens'))
    guest = _boot(lane, image, 'promise-token-expiry', boot_timeout)
    con1 = pr.Console(run, lane, guest, 's1', **console_kw)
    vv1 = con1.fetch_vv()
    expires = int(con1.fetched_at) + 60 * duration_min
    con1.open(vv1)
    try:
        w = con1.walker
        walk_mod.awaiting(w)
        booted = walk_mod.enter_to_booting(w)
        walk_mod.boot_lines_to_prompt(w, booted.index)
        # The bootloader prompt waits with no timeout (contract §5.3).
        wait = expires + 1.5 - time.time()
        run.timings['waited_for_expiry'] = round(max(wait, 0), 1)
        if wait > 0:
            run.log('waiting %.0f s at the prompt for the console token '
                    'to expire' % wait)
            time.sleep(wait)
        try:
            walk_mod.ignore(w)
            ok, why = True, 'the `i` sent %.1f s after the token expired ' \
                'reached the guest' % (time.time() - expires)
        except AssertionError as e:
            ok, why = False, 'after the token expired the established ' \
                'session no longer carries keys: %s' % (
                    str(e).splitlines()[0])
        run.check('tokens', 'session_survives_expiry', ok, why)
        accepted = walk_mod.paste_and_submit(w, w.paste_secret,
                                             correct=True)
        walk_mod.parked(w, accepted.index)
        last = con1.stream.last
    finally:
        con1.close()
    pr.attempt_refused(run, lane, guest, vv1, 'tokens',
                       'expired_token_refused',
                       'a console token %.0f s past its expiry' % (
                           time.time() - expires))
    resume_and_finish(
        run, 'tokens', 'no_key_while_refused',
        lambda: pr.Console(run, lane, guest, 's2', **console_kw).open(),
        last, 'before the refused connection', [con1.stream])


def token_scoped(run, lane, image, boot_timeout=120, cut_bound=None,
                 **console_kw):
    """Two consoles, a session on each: console 2's token drives guest B
    only; terminating console 1 cuts console 1's session and leaves
    console 2's alone.
    """
    run.planned = [('sessions', 'lists_each_console'),
                   ('tokens', 'key_reached_own_guest'),
                   ('tokens', 'other_guest_untouched'),
                   ('terminate', 'console_1_cut'),
                   ('terminate', 'console_2_untouched')]
    slots = lane.console_slots()
    if len(slots) < 2:
        raise ValueError('token_scoped needs a lane with two consoles')
    s1, s2 = slots[0], slots[1]
    cut_bound = cut_bound or pr.CUT_BOUND_S
    con_a = con_b = None
    try:
        ga = _boot(s1, image, 'promise-scope-a', boot_timeout)
        gb = _boot(s2, image, 'promise-scope-b', boot_timeout)
        con_a = pr.Console(run, s1, ga, 'c1', **console_kw).open()
        con_b = pr.Console(run, s2, gb, 'c2', **console_kw).open()
        listed = run.api.sessions()
        where = {c.session_id: (listed.get(c.session_id) or {}).get('uuid')
                 for c in (con_a, con_b)}
        run.check('sessions', 'lists_each_console',
                  where == {con_a.session_id: con_a.uuid,
                            con_b.session_id: con_b.uuid},
                  'GET /session puts session %s on %s (console 1 is %s) '
                  'and session %s on %s (console 2 is %s)' % (
                      con_a.session_id, where[con_a.session_id], con_a.uuid,
                      con_b.session_id, where[con_b.session_id],
                      con_b.uuid))
        w = con_b.walker
        walk_mod.awaiting(w)
        try:
            walk_mod.enter_to_booting(w)
            ok, why = True, 'Enter on console 2 took guest B to booting'
        except AssertionError as e:
            ok, why = False, str(e).splitlines()[0]
        run.check('tokens', 'key_reached_own_guest', ok, why)
        ka = pr.keypress_hash(con_a.wait_digest())
        shot = os.path.join(run.art.path, 'guest-a-screendump.png')
        ka_qmp = _screen_keypress(ga, shot)
        run.check('tokens', 'other_guest_untouched', ka == 0 and ka_qmp == 0,
                  'guest A (console 1) keypress chain %08x over its own '
                  'session, %08x by QMP screendump, after the Enter on '
                  'console 2 (0: no key ever)' % (ka, ka_qmp))
        t0 = time.monotonic()
        run.api.terminate_console(con_a.source, con_a.uuid)
        cut = con_a.wait_cut(cut_bound)
        run.check('terminate', 'console_1_cut', cut is not None,
                  'console 1\'s session %s' % (
                      'was cut %.2f s after POST /console/<source>/%s/'
                      'terminate' % (cut, con_a.uuid) if cut is not None
                      else 'was still up %.0f s after POST /console/'
                      '<source>/%s/terminate' % (time.monotonic() - t0,
                                                 con_a.uuid)))
        # Give a wrongly scoped cut a full poll period more to land.
        late = con_b.wait_cut(max(cut_bound - (time.monotonic() - t0), 2.5))
        run.check('terminate', 'console_2_untouched', late is None,
                  'console 2\'s session %s %.1f s after console 1 was '
                  'terminated' % ('still up' if late is None else
                                  'was cut too, after %.2f s of' % late,
                                  time.monotonic() - t0))
    finally:
        for con in (con_a, con_b):
            if con is not None:
                con.close()
        for s in (s1, s2):
            if s.guest is not None:
                s.guest.teardown()


def firewall_refusal(run, lane, image, mode, permitted, boot_timeout=120):
    """With one of ryll's channels left out of `permitted`, Kerbside
    refuses that channel's link (in `mode`), which ends ryll's session:
    what 0.8.0 really does in enforce and in warn mode (see
    docs/contracts/kerbside.md §16.4).
    """
    left_out = [c for c in pr.RYLL_CHANNELS if c not in permitted]
    if not left_out:
        raise ValueError('firewall_refusal needs a channel of ryll\'s '
                         '(%s) left out of %s' % (pr.RYLL_CHANNELS,
                                                  permitted))
    run.planned = pr.refused_checks('firewall', 'channel_refused') + [
        ('audit', 'firewall_refusal_audited'),
        ('firewall', 'no_key_reached_guest'),
        ('firewall', 'no_keypress_on_serial')]
    run.note('firewall', {'mode': mode, 'permitted': list(permitted),
                          'left_out': left_out})
    if mode == 'warn':
        run.note('finding', 'Kerbside says warn "downgrades [blocking '
                 'verdicts] to forward-and-log"; 0.8.0 refuses a channel '
                 'left out of FIREWALL_PERMITTED_CHANNELS in warn mode '
                 'exactly as in enforce mode, and counts it in '
                 'denied_total, never in firewall_verdicts_total '
                 '(docs/contracts/kerbside.md §16.4)')
    guest = _boot(lane, image, 'promise-firewall-%s' % mode, boot_timeout)
    con = pr.Console(run, lane, guest, 's1')
    vv = con.fetch_vv()
    facts = pr.attempt_refused(
        run, lane, guest, vv, 'firewall', 'channel_refused',
        'the %s channel(s), which FIREWALL_PERMITTED_CHANNELS=%s leaves '
        'out (mode %s)' % (','.join(left_out), ','.join(permitted), mode))
    delta = facts['metrics_delta']
    run.note('firewall_verdict_series', sorted(
        k for k in delta if k.startswith(pr.METRIC_FIREWALL)))
    run.note('authorized_links', kapi.metric_sum(delta,
                                                 pr.METRIC_AUTHORIZED))
    audit = pr.session_events(run.api.audit(con.source, con.uuid),
                              con.session_id)
    refusals = [e for e in audit if (e.get('message') or '').startswith(
        pr.AUDIT_FIREWALL)]
    run.check('audit', 'firewall_refusal_audited',
              any(e.get('channel') in left_out for e in refusals),
              'audit entries of session %s: %s' % (
                  con.session_id, ['[%s] %s' % (e.get('channel') or '-',
                                                e.get('message'))
                                   for e in audit]))
    shot = os.path.join(run.art.path, 'guest-screendump.png')
    k = _screen_keypress(guest, shot)
    run.check('firewall', 'no_key_reached_guest', k == 0,
              'the guest\'s keypress chain is %08x (read by QMP '
              'screendump, no SPICE; 0: no key ever)' % k)
    guest.quit()
    text = guest.serial.read()
    run.art.write_text('serial.log', text)
    keys = [ln for ln in text.splitlines() if 'type=keypress' in ln]
    run.check('firewall', 'no_keypress_on_serial', not keys,
              'after a QMP power-off the serial log holds %d keypress '
              'record(s) (no drain: Sextant drains only after the final '
              'key in Parked)' % len(keys))


def _screen_keypress(guest, path):
    """The keypress chain of the guest's digest, read with a QMP
    screendump (no SPICE involved). Retries a few times: a screendump
    can catch the QR mid-repaint.
    """
    from kerbside_tempest_plugin.digest import errors as digest_errors
    from kerbside_tempest_plugin.digest import frame
    last = None
    for _ in range(10):
        guest.screendump(path)
        try:
            return frame.analyse(path).digest.hashes.get('keypress', 0)
        except digest_errors.DigestError as e:
            last = e
            time.sleep(0.3)
    raise AssertionError('no digest in 10 QMP screendumps of %s: %s'
                         % (guest.name, last))


def _json_or_text(resp):
    try:
        return resp.json()
    except kapi.KerbsideAPIError:
        return resp.text[:200]


def _shown(body):
    """An answer for a message: a terminate's token list (secrets) is
    shown as its length only.
    """
    import json
    if isinstance(body, dict) and 'tokens' in body:
        body = dict(body, tokens='<%d token(s)>' % len(body['tokens'] or ()))
    return json.dumps(body, sort_keys=True) if isinstance(
        body, (dict, list)) else repr(body)

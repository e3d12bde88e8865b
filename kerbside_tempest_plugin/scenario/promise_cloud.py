"""Kerbside's promises on a cloud, through Nova's console flow.

The direct-qemu stories (scenario.promise_stories) fetch their .vv from
Kerbside's own API (`/console/proxy/<source>/<uuid>/console.vv`). A cloud
user never does: Nova hands out a spice-direct URL (`POST
/servers/{id}/remote-consoles` at microversion 2.99) that points at
Kerbside's `GET /nova-console.vv?token=<Nova console token>`, and
Kerbside asks Nova what the token opens. The story here opens the console
that way and proves terminate and audit on it, and asks what a Nova
console token is worth once the session it opened was terminated:

- terminate_nova_console: a Nova server booted from the Sextant image;
  its console opened through Nova (spice-direct, then
  /nova-console.vv); GET /session lists the session under the cloud's
  `openstack` source and the instance uuid; the canonical walk up to
  Parked; POST /session/<id>/terminate; the cut within CUT_BOUND_S; a
  key after the cut refused; **the same Nova console token reused** at
  /nova-console.vv (status and body recorded and judged: Kerbside 0.8.0
  hands out a fresh .vv, a finding, docs/contracts/kerbside.md §16.7),
  and ryll on that .vv; the session gone from GET /session; the
  terminated session's *Kerbside* console token refused; a fresh Nova
  console connects with the keypress chain of the cut; the walk ends
  there with a drain of exactly the keys delivered; the console's audit
  trail holds the session's entries and the termination. The server is
  deleted at the end, whatever happened.

Kerbside's API wants a JWT; on a cloud the only way to get one is the
login a deployer's operators use, `POST /auth` with a Keystone user
(`cloud_api`, lane.openstack.kerbside.api_login; §16.6). The runner logs
in before the story opens any console, as an operator would: Kerbside
0.8.0 cannot log anyone in on an API worker that has already served
/nova-console.vv (a bug, §16.6), so a test class shares one login
(`ApiLogin`) between its tests.

The lane is any lane.base.Lane whose guests are Nova servers
(providers.nova.NovaGuest): the tempest classes' ProviderLane or the
OpenStack lane. `NovaRouteLane` gives it what promises.Console asks of a
lane (the console's source and uuid in Kerbside).
"""

import json
import time
import urllib.parse

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import secrets as common_secrets
from kerbside_tempest_plugin.common import vv as common_vv
from kerbside_tempest_plugin.kerbside_api import client as kapi
from kerbside_tempest_plugin.lane.openstack import kerbside as os_kerbside
from kerbside_tempest_plugin.providers import base as providers_base
from kerbside_tempest_plugin.scenario import promise_stories as st
from kerbside_tempest_plugin.scenario import promises as pr
from kerbside_tempest_plugin.scenario import runner
from kerbside_tempest_plugin.scenario import walk as walk_mod

# A JWT this close to its expiry is replaced by a fresh login.
LOGIN_MARGIN_S = 120
FINDING_REF = 'docs/contracts/kerbside.md §16.7'


# ------------------------------------------------------------------- API


class ApiLogin:
    """The bearer token of a KerbsideAPI on a cloud: POST /auth as a
    Keystone user, once, then again near the JWT's expiry. Each login is
    recorded in the client's call log (never the password or the token).
    """

    def __init__(self, api_url, username, password, redactor):
        self.api_url = api_url
        self.username = username
        self._password = password
        self.redactor = redactor
        redactor.add(password)
        self.api = None                 # the KerbsideAPI to record into
        self._token = None
        self._expires = None
        self.logins = []                # what each login answered

    def __call__(self):
        if self._token and (self._expires is None or
                            self._expires - time.time() > LOGIN_MARGIN_S):
            return self._token
        at, t0 = time.time(), time.monotonic()
        try:
            info = os_kerbside.api_login(self.api_url, self.username,
                                         self._password,
                                         redactor=self.redactor)
        except os_kerbside.LoginError as e:
            self._record(e.status, time.monotonic() - t0, at,
                         'login as %s refused: %s' % (self.username,
                                                      e.body[:120]))
            raise
        self._record(info['status'], info['seconds'], at,
                     'login as %s: %s token, expires_in %s' % (
                         self.username, info['token_type'],
                         info['expires_in']))
        self.logins.append({k: info[k] for k in ('status', 'token_type',
                                                 'expires_in', 'seconds')})
        self._token = info['access_token']
        exp = os_kerbside.jwt_claims(self._token).get('exp')
        self._expires = exp if isinstance(exp, (int, float)) else None
        return self._token

    def _record(self, status, seconds, at, note):
        if self.api is not None:
            self.api.calls.append(kapi.ApiCall('POST', '/auth', status,
                                               seconds, at, note))


def cloud_api(api_url, username, password, redactor, metrics_url=None,
              login=None):
    """A recorded KerbsideAPI on a cloud's Kerbside, logged in as a
    Keystone user in Kerbside's access group; `login` (an ApiLogin) is
    shared with earlier clients (its token is kept, and its next login
    is recorded here).
    """
    login = login or ApiLogin(api_url, username, password, redactor)
    api = kapi.KerbsideAPI(api_url, token=login, redactor=redactor,
                           metrics_url=metrics_url)
    login.api = api
    api.login = login
    return api


# ------------------------------------------------------------ the route


class NovaRouteLane:
    """A lane whose guests are Nova servers, as promises.Console and
    PromiseRun want it: everything is the lane's, plus console_route(),
    the console's place in Kerbside (`source`: the cloud's `openstack`
    source; uuid: the server's, which Nova's token resolves to).
    """

    def __init__(self, lane, source):
        self._lane = lane
        self.source = source

    def __getattr__(self, name):
        return getattr(self._lane, name)

    def console_route(self, guest, route=None):
        return providers_base.ConsoleRoute(
            kind='kerbside', host=None, port=None, source=self.source,
            uuid=guest.ref)


def nova_token_of(url):
    """The Nova console token in a spice-direct URL (`?token=`)."""
    token = urllib.parse.parse_qs(urllib.parse.urlparse(url).query).get(
        'token', [None])[0]
    if not token:
        raise errors.ProviderError('the spice-direct URL %s has no token'
                                   % url.split('?', 1)[0])
    return token


class NovaConsole(pr.Console):
    """promises.Console opened the way a cloud user opens it: a fresh
    spice-direct URL from Nova, then Kerbside's /nova-console.vv. Keeps
    the Nova token (`nova_token`, known to the redactor) so a story can
    replay it.
    """

    nova_token = None
    minted_at = None                    # time.monotonic() of the mint

    def mint(self):
        """A fresh Nova console token for the guest (spice-direct at the
        provider's microversion: providers.nova.NovaGuest).
        """
        # NovaGuest._mint is the provider's one call of remote-consoles,
        # with its errors; the URL points at Kerbside's Nova route.
        url = self.guest._mint()
        token = nova_token_of(url)
        self.run.lane.redactor.add(token)
        self.nova_token, self.minted_at = token, time.monotonic()
        return token

    def adopt(self, vv):
        """Use `vv` (a proxy .vv) as this console's: its session."""
        self.vv = vv
        self.session_id = pr.session_of(vv)
        self.run.sessions.append(self.session_id)
        self.fetched_at = time.time()
        return vv

    def fetch_vv(self):
        token = self.mint()
        return self.adopt(self.run.api.nova_console_vv(token).text)


# -------------------------------------------------------------- judging


def judge_nova_token_reuse(status, text, terminated, terminated_password,
                           age_s, redact=lambda t: t):
    """What Kerbside answered a Nova console token reused after the
    session it opened was terminated: (ok, message, facts).

    Kerbside 0.8.0 asks Nova, which still honours the token, and answers
    200 with a fresh proxy .vv (a new session and console token): `ok`
    when that is what happened (the finding, asserted as 0.8.0 behaves);
    not ok for anything else, saying what came instead.
    """
    facts = {'status': status, 'token_age_s': round(age_s, 1)}
    if status == 200:
        try:
            fields = common_vv.parse_vv(text)
            sid = pr.session_of(text)
        except errors.HarnessError as e:
            facts['body'] = redact(text)[:300]
            return False, ('GET /nova-console.vv with the reused Nova token '
                           'answered 200 with no proxy .vv (%s): %r' % (
                               e, facts['body'][:120])), facts
        facts.update(vv=common_vv.summary(text), session_id=sid)
        if sid == terminated or fields.get('password') == \
                terminated_password:
            return False, ('GET /nova-console.vv with the reused Nova token '
                           'answered 200 with the terminated session\'s '
                           'own %s (session %s)' % (
                               'console token' if fields.get('password') ==
                               terminated_password else 'session id', sid)
                           ), facts
        return True, (
            'FINDING (%s): the Nova console token of terminated session '
            '%s, reused %.1f s after Nova minted it, got 200 and a fresh '
            'proxy .vv (new session %s, a new console token): Kerbside\'s '
            'terminate leaves the Nova token good, so whoever holds the '
            'spice-direct URL opens the console again until Nova expires '
            'the token ([consoleauth] token_ttl)' % (
                FINDING_REF, terminated, age_s, sid)), facts
    body = redact(text or '')
    try:
        facts['body'] = json.loads(body)
    except ValueError:
        facts['body'] = body[:300]
    shown = ' '.join(body.split())[:200]
    # A refusal keeps the promise this check is about (the terminated
    # session does not come back); whether Kerbside revoked the token or
    # Nova expired it, the message says, and the finding does not hold.
    return True, (
        'GET /nova-console.vv with the terminated session\'s Nova token, '
        '%.1f s old, answered %s %s: the terminated session did not come '
        'back. Kerbside 0.8.0 was seen to hand such a token a fresh .vv '
        '(%s); a refusal means Kerbside now revokes it at the terminate, '
        'or Nova expired it ([consoleauth] token_ttl: 30 s on the lane\'s '
        'cloud)' % (age_s, status, shown, FINDING_REF)), facts


# --------------------------------------------------------------- story


def terminate_nova_console(run, lane, image, boot_timeout=120,
                           cut_bound=pr.CUT_BOUND_S, **console_kw):
    """Terminate a console opened through Nova mid-walk, then replay its
    Nova token (see the module's docstring). `lane` is a NovaRouteLane.
    """
    from kerbside_tempest_plugin.ryll import errors as ryll_errors
    run.planned = (pr.LISTED_CHECKS + st.CUT_CHECKS +
                   [('tokens', 'nova_token_reuse'), ('sessions', 'gone')] +
                   pr.refused_checks('tokens', 'terminated_token_refused') +
                   [('terminate', 'no_key_after_cut')] +
                   st.drain_checks('terminate') +
                   pr.audit_checks(terminated=True))
    guest = lane.boot_guest(image, name='promise-nova-terminate',
                            banner=st.BANNER, timeout=boot_timeout)
    try:
        run.note('server', {'id': guest.ref, 'kerbside_console': '%s/%s' % (
            lane.source, guest.ref)})
        _terminate_nova_console(run, lane, guest, cut_bound, console_kw,
                                ryll_errors)
    finally:
        lane.stop_ryll()
        guest.teardown()


def _terminate_nova_console(run, lane, guest, cut_bound, console_kw,
                            ryll_errors):
    con1 = NovaConsole(run, lane, guest, 's1', **console_kw).open()
    run.note('nova_console', {'session_id': con1.session_id,
                              'vv': common_vv.summary(con1.vv)})
    try:
        walk_mod.awaiting(con1.walker)
        pr.check_session_listed(run, con1.session_id, con1.source,
                                con1.uuid)
        pr.walk_to_parked(con1.walker, skip_awaiting=True)
        cut_digest = st.terminate_and_probe(run, con1, 'session', cut_bound)
        k_cut = pr.keypress_hash(cut_digest)
    finally:
        con1.close()

    # The same Nova console token, after the terminate.
    age = time.monotonic() - con1.minted_at
    resp = run.api.nova_console_vv(con1.nova_token, expect=None)
    ok, message, facts = judge_nova_token_reuse(
        resp.status, resp.text, con1.session_id,
        common_vv.parse_vv(con1.vv).get('password'), age,
        redact=lambda t: common_secrets.redact_patterns(
            run.lane.redactor.redact(t)))
    run.note('nova_token_reuse', facts)
    run.check('tokens', 'nova_token_reuse', ok, message)
    pr.check_session_gone(run, con1.session_id)
    if resp.status == 200:
        _try_reused_vv(run, lane, guest, resp.text, age, facts, con1,
                       k_cut, console_kw)
    return _after_reuse(run, lane, guest, con1, cut_digest, console_kw)


def _try_reused_vv(run, lane, guest, vv_text, age, facts, con1, k_cut,
                   console_kw):
    """What the fresh .vv a reused Nova token got is worth: ryll on it.
    Recorded as the finding it is (docs/contracts/kerbside.md §16.7), not
    judged: a Kerbside that refused it there would be keeping its
    promise better, not breaking it.
    """
    from kerbside_tempest_plugin.ryll import errors as ryll_errors
    finding = (
        'Terminating a session does not revoke the Nova console token '
        'that opened it: GET /nova-console.vv with the same token, %.1f s '
        'after Nova minted it, answered 200 with a fresh .vv (session %s '
        'after terminated %s)' % (age, facts.get('session_id'),
                                  con1.session_id))
    con_r = NovaConsole(run, lane, guest, 'reuse', **console_kw)
    con_r.adopt(vv_text)
    try:
        con_r.open(con_r.vv)
        first = con_r.wait_digest()
        finding += (', and ryll on it reached the guest (frame %d, keypress '
                    'chain %08x; %08x at the cut): whoever holds the '
                    'spice-direct URL opens the console again until Nova '
                    'expires the token ([consoleauth] token_ttl, 600 s by '
                    'default)' % (first.frame_counter,
                                  pr.keypress_hash(first), k_cut))
        run.note('nova_token_reuse_screen', {
            'frame_counter': first.frame_counter,
            'keypress_hash': '%08x' % pr.keypress_hash(first)})
    except (AssertionError, errors.HarnessError,
            ryll_errors.RyllError) as e:
        finding += ', but ryll on it did not reach the guest: %s' % (
            str(e).splitlines()[0])
    finally:
        con_r.close()
    run.note('finding', '%s (%s)' % (finding, FINDING_REF))


def _after_reuse(run, lane, guest, con1, cut_digest, console_kw):
    """The end of the story, after the Nova token's reuse: the terminated
    session's own console token is refused, a fresh Nova console carries
    the keypress chain of the cut and ends the walk, and the audit trail
    ends with the termination.
    """
    pr.attempt_refused(run, lane, guest, con1.vv, 'tokens',
                       'terminated_token_refused',
                       'the Kerbside console token of terminated session '
                       '%s, %.0f s old' % (con1.session_id,
                                           time.time() - con1.fetched_at))
    st.resume_and_finish(
        run, 'terminate', 'no_key_after_cut',
        lambda: NovaConsole(run, lane, guest, 's2', **console_kw).open(),
        cut_digest, 'at the cut', [con1.stream])
    audit = run.api.audit(con1.source, con1.uuid)
    pr.check_audit_session(run, audit, con1.session_id, terminated=True)


# --------------------------------------------------------------- runner


def run_cloud_story(lane, story, name, artifact_root, image, promises,
                    source, api=None, route='kerbside', log=None,
                    **kwargs):
    """Run `story(run, NovaRouteLane(lane, source), image, **kwargs)` as
    one promise test on a cloud; `api` a KerbsideAPI (cloud_api), or None
    for the lane's own Kerbside (an OpenStack lane's cloud). Returns the
    finished PromiseRun; never raises for a broken promise or a harness
    error (they are in the run).
    """
    nlane = NovaRouteLane(lane, source)
    run = pr.PromiseRun(name, route, artifact_root, nlane, promises,
                        log=log, api=api)
    login = getattr(run.api, 'login', None)
    try:
        if login is not None:
            # Before the story's first /nova-console.vv (§16.6).
            login()
        story(run, nlane, image, **kwargs)
    except BaseException as e:
        run.fail(e)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            run.finish(runner.kerbside_build(lane))
            raise
    if login is not None and login.logins:
        run.note('api_logins', login.logins)
    run.finish(runner.kerbside_build(lane))
    return run

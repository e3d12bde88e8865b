"""Kerbside's own promises, proven through the Sextant guest.

What Kerbside adds over a plain SPICE relay, each shown on a real guest
and judged twice, by Kerbside's API and metrics and by the guest itself
(its digest's keypress chain and its serial drain say which keys
arrived):

- sessions: GET /session lists the live session (console, client,
  channels) and drops it when it ends;
- audit: the console's audit trail holds each session's entries in
  order (docs/contracts/kerbside.md §16.2);
- terminate: POST /session/<id>/terminate and POST
  /console/<source>/<uuid>/terminate cut a session mid-walk; no key
  crosses after the cut; the walk ends on a fresh session;
- tokens: a console token is refused once expired and once its session
  was terminated, and opens only its own console;
- firewall: a channel left out of FIREWALL_PERMITTED_CHANNELS is refused
  (enforce mode, and what warn mode really does).

They run on the kerbside route only: on the direct route there is no
Kerbside, and each test skips saying so. Every test writes promise.json
(the job's verdicts count it), api-calls.jsonl, audit.json,
metrics-delta.json, report.md and report.html into its artifact
directory. The stories live in kerbside_tempest_plugin.scenario
(promise_stories); this module wires lanes and verdicts.

The classes' names contain "Sextant", so `tempest run --regex sextant`
runs them with the scenario; `--regex promises` runs them alone.
"""

from oslo_log import log as logging
from tempest import config
from tempest.lib import decorators

from kerbside_tempest_plugin.tests.scenario import test_sextant_scenario

CONF = config.CONF
LOG = logging.getLogger(__name__)
ALL_CHANNELS = ('main', 'display', 'cursor', 'inputs')
WITHOUT_INPUTS = ('main', 'display', 'cursor')
WITHOUT_CURSOR = ('main', 'display', 'inputs')


class SextantKerbsidePromisesBase(test_sextant_scenario.SextantScenarioBase):
    """A promise test class: Kerbside's settings for its lane in
    `lane_options` (set as a deployer would, in Kerbside's environment).
    """

    lane_options = {}

    @classmethod
    def skip_checks(cls):
        super().skip_checks()
        if CONF.kerbside.route != 'kerbside':
            raise cls.skipException(
                'Kerbside\'s promises (sessions, audit, terminate, the '
                'channel firewall, console tokens) are the proxy\'s own: '
                'the %s route has no Kerbside; run with [kerbside] route '
                '= kerbside' % CONF.kerbside.route)
        if CONF.kerbside.provider != 'direct_qemu':
            raise cls.skipException(
                'these promise tests need a lane whose Kerbside settings '
                'the harness sets ([kerbside] provider = direct_qemu); '
                'the cloud lanes run SextantKerbsideCloudPromisesTest')

    @classmethod
    def _lane_kwargs(cls):
        return dict(cls.lane_options)

    def _story(self, story, name, promises, **kwargs):
        from kerbside_tempest_plugin.scenario import promises as pr
        run = pr.run_story(
            self.lane, story, name, self.artifact_root, self.image,
            promises, route=self.route, log=LOG.info, **kwargs)
        print('artifacts: %s\n%s' % (run.art.path, run.summary_line()))
        self.addDetail('sextant-artifacts', test_sextant_scenario._text(
            '%s\n%s' % (run.art.path, run.summary_line())))
        if not run.passed:
            self.fail(run.failure_message())
        return run

    def _console_kw(self):
        return dict(step_timeout=CONF.kerbside.step_timeout,
                    paste_secret=CONF.sextant.paste_secret,
                    char_delay_ms=CONF.sextant.paste_char_delay_ms)


class SextantKerbsidePromisesTest(SextantKerbsidePromisesBase):
    """Sessions, audit, terminate and console tokens, on a lane with two
    consoles whose firewall enforces and permits all four of ryll's
    channels (so the canonical walks here also show a permitting
    firewall passes them), and one-minute console tokens.
    """

    lane_options = dict(consoles=2, firewall_mode='enforce',
                        firewall_permitted_channels=ALL_CHANNELS,
                        console_token_duration=1)

    @decorators.idempotent_id('e1947061-3b51-4571-9d62-bf2b29f0ab30')
    def test_sextant_promise_session_and_audit(self):
        """A canonical walk; GET /session lists it; the audit trail."""
        from kerbside_tempest_plugin.scenario import promise_stories as st
        self._story(st.session_and_audit, 'promise-session-and-audit',
                    ['sessions', 'audit'],
                    boot_timeout=CONF.kerbside.boot_timeout,
                    **self._console_kw())

    @decorators.idempotent_id('2393aa73-c39c-47c7-beb1-9140c30733b0')
    def test_sextant_promise_terminate_session(self):
        """POST /session/<id>/terminate mid-walk."""
        from kerbside_tempest_plugin.scenario import promise_stories as st
        self._story(st.terminate, 'promise-terminate-session',
                    ['terminate', 'tokens', 'sessions', 'audit'],
                    how='session', boot_timeout=CONF.kerbside.boot_timeout,
                    **self._console_kw())

    @decorators.idempotent_id('ec0d0f17-6b23-4325-88f5-c7f2ffa84d0b')
    def test_sextant_promise_terminate_console(self):
        """POST /console/<source>/<uuid>/terminate mid-walk."""
        from kerbside_tempest_plugin.scenario import promise_stories as st
        self._story(st.terminate, 'promise-terminate-console',
                    ['terminate', 'tokens', 'sessions', 'audit'],
                    how='console', boot_timeout=CONF.kerbside.boot_timeout,
                    **self._console_kw())

    @decorators.idempotent_id('85c05e10-e6b8-4aaa-b74d-58f293a282de')
    def test_sextant_promise_token_expiry(self):
        """A session outlives its token; the expired token is refused."""
        from kerbside_tempest_plugin.scenario import promise_stories as st
        self._story(st.token_expiry, 'promise-token-expiry', ['tokens'],
                    duration_min=self.lane_options['console_token_duration'],
                    boot_timeout=CONF.kerbside.boot_timeout,
                    **self._console_kw())

    @decorators.idempotent_id('f483d939-c7d9-49ce-86a3-cf7023dfa021')
    def test_sextant_promise_token_scope(self):
        """A console's token drives only its own guest."""
        from kerbside_tempest_plugin.scenario import promise_stories as st
        self._story(st.token_scoped, 'promise-token-scope',
                    ['tokens', 'terminate', 'sessions'],
                    boot_timeout=CONF.kerbside.boot_timeout,
                    **self._console_kw())

    @decorators.idempotent_id('7ce9ca34-39d5-4bc9-9a3e-2e038d252948')
    def test_sextant_promise_firewall_message_enforce(self):
        """An oversized inputs message (size_cap) on a permitting lane in
        enforce mode: the proxy ends the inputs relay, nothing reaches
        qemu, the verdict is counted as enforced and audited.
        """
        from kerbside_tempest_plugin.scenario import promise_firewall as pf
        self._story(pf.firewall_message_rules,
                    'promise-firewall-message-enforce', ['firewall', 'audit'],
                    mode='enforce', boot_timeout=CONF.kerbside.boot_timeout)


class SextantKerbsideFirewallEnforceTest(SextantKerbsidePromisesBase):
    """FIREWALL_MODE=enforce without `inputs` in the permitted channels."""

    lane_options = dict(firewall_mode='enforce',
                        firewall_permitted_channels=WITHOUT_INPUTS)

    @decorators.idempotent_id('49069f2f-b47d-43dd-a2fb-26940f4149da')
    def test_sextant_promise_firewall_enforce(self):
        """The inputs link is refused; no key reaches the guest."""
        from kerbside_tempest_plugin.scenario import promise_stories as st
        self._story(st.firewall_refusal, 'promise-firewall-enforce',
                    ['firewall', 'audit'], mode='enforce',
                    permitted=WITHOUT_INPUTS,
                    boot_timeout=CONF.kerbside.boot_timeout)


class SextantKerbsideFirewallWarnTest(SextantKerbsidePromisesBase):
    """FIREWALL_MODE=warn, `cursor` left out of the permitted channels.

    Kerbside describes warn as downgrading blocking verdicts to
    forward-and-log. 0.8.0 refuses a channel left out of the list in warn
    mode exactly as in enforce mode, and it forwards (and logs) a message
    that trips a message-level rule, which qemu then refuses itself
    (docs/contracts/kerbside.md §16.4). The tests assert what it really
    does and report the difference. The list keeps main and inputs, the
    two channels the message test's own SPICE client opens; ryll, which
    also opens cursor, is refused.
    """

    lane_options = dict(firewall_mode='warn',
                        firewall_permitted_channels=WITHOUT_CURSOR)

    @decorators.idempotent_id('e0fb7159-f31a-4861-876f-6ae363264821')
    def test_sextant_promise_firewall_message_warn(self):
        """An oversized inputs message (size_cap) in warn mode: forwarded
        and counted as observed; qemu drops the inputs channel itself.
        """
        from kerbside_tempest_plugin.scenario import promise_firewall as pf
        self._story(pf.firewall_message_rules,
                    'promise-firewall-message-warn', ['firewall', 'audit'],
                    mode='warn', boot_timeout=CONF.kerbside.boot_timeout)

    @decorators.idempotent_id('2de4be50-94e6-4f99-a30c-eb52b0461f5c')
    def test_sextant_promise_firewall_warn(self):
        """Warn mode refuses a channel left out of the list (cursor)."""
        from kerbside_tempest_plugin.scenario import promise_stories as st
        self._story(st.firewall_refusal, 'promise-firewall-warn',
                    ['firewall', 'audit'], mode='warn',
                    permitted=WITHOUT_CURSOR,
                    boot_timeout=CONF.kerbside.boot_timeout)


class SextantKerbsideCloudPromisesTest(
        test_sextant_scenario.SextantScenarioBase):
    """Kerbside's promises on a cloud, through Nova's console flow.

    The console is opened the way a cloud user opens it: a spice-direct
    console from Nova (microversion 2.99), whose URL is Kerbside's
    /nova-console.vv?token=<Nova console token>. Kerbside's own API
    (sessions, audit, terminate) is reached with a JWT from POST /auth as
    [kerbside] api_username, a Keystone user in Kerbside's access group
    (docs/contracts/kerbside.md §16.6). Needs [kerbside] provider = nova,
    route = kerbside, api_url, metrics_url, openstack_source,
    api_username and api_password (`kerbside-openstack tempest-conf`
    writes them for the lane's cloud). The direct_qemu lane runs
    SextantKerbsidePromisesTest and its siblings instead.
    """

    @classmethod
    def skip_checks(cls):
        super().skip_checks()
        if CONF.kerbside.provider != 'nova':
            raise cls.skipException(
                'these promise tests open the console through Nova\'s '
                'spice-direct flow and Kerbside\'s /nova-console.vv '
                '([kerbside] provider = nova); provider %s runs '
                'SextantKerbsidePromisesTest and its siblings (direct_qemu) '
                'or none' % CONF.kerbside.provider)
        if CONF.kerbside.route != 'kerbside':
            raise cls.skipException(
                'Kerbside\'s promises (sessions, audit, terminate, console '
                'tokens) are the proxy\'s own: the %s route has no '
                'Kerbside; run with [kerbside] route = kerbside'
                % CONF.kerbside.route)
        missing = [name for name in ('api_url', 'metrics_url',
                                     'openstack_source', 'api_username',
                                     'api_password')
                   if not getattr(CONF.kerbside, name)]
        if missing:
            raise cls.skipException(
                'the cloud promise tests read Kerbside\'s own API (a JWT '
                'from POST /auth as a Keystone user in its access group) '
                'and the proxy\'s metrics: set [kerbside] %s'
                % ', '.join(missing))

    # One login (POST /auth) for the class, made before its first
    # console: Kerbside 0.8.0 cannot log anyone in on an API worker that
    # already served /nova-console.vv (docs/contracts/kerbside.md §16.6).
    kerbside_login = None

    def _cloud_story(self, story, name, promises, **kwargs):
        from kerbside_tempest_plugin.scenario import promise_cloud as pc
        kb = CONF.kerbside
        cls = type(self)
        if cls.kerbside_login is None:
            cls.kerbside_login = pc.ApiLogin(kb.api_url, kb.api_username,
                                             kb.api_password,
                                             self.lane.redactor)
        api = pc.cloud_api(kb.api_url, kb.api_username, kb.api_password,
                           self.lane.redactor, metrics_url=kb.metrics_url,
                           login=cls.kerbside_login)
        run = pc.run_cloud_story(
            self.lane, story, name, self.artifact_root, self.image,
            promises, kb.openstack_source, api=api, route=self.route,
            log=LOG.info, **kwargs)
        print('artifacts: %s\n%s' % (run.art.path, run.summary_line()))
        self.addDetail('sextant-artifacts', test_sextant_scenario._text(
            '%s\n%s' % (run.art.path, run.summary_line())))
        if not run.passed:
            self.fail(run.failure_message())
        return run

    @decorators.idempotent_id('fb9eba9e-6169-4e87-9fc1-3c0b940c32da')
    def test_sextant_cloud_promise_terminate_nova_console(self):
        """Terminate and audit on a console opened through Nova; its Nova
        console token reused after the terminate.

        The canonical walk up to Parked on a Nova server's console
        (spice-direct, then /nova-console.vv); GET /session lists the
        session under the cloud's source and the instance uuid; POST
        /session/<id>/terminate cuts it within 6 s and a key after the
        cut is refused; the same Nova token at /nova-console.vv again
        (what Kerbside 0.8.0 answers is recorded and judged, §16.7); the
        terminated session's Kerbside console token is refused; a fresh
        Nova console shows the keypress chain of the cut and ends the
        walk, the drain holding exactly the keys delivered; the audit
        trail ends with the termination.
        """
        from kerbside_tempest_plugin.scenario import promise_cloud as pc
        self._cloud_story(
            pc.terminate_nova_console,
            'promise-cloud-terminate-nova-console',
            ['terminate', 'tokens', 'sessions', 'audit'],
            boot_timeout=CONF.kerbside.boot_timeout,
            step_timeout=CONF.kerbside.step_timeout,
            paste_secret=CONF.sextant.paste_secret,
            char_delay_ms=CONF.sextant.paste_char_delay_ms)

"""What the cloud providers (Nova, Shaken Fist) share.

- `fetch_console_vv()`: mint a console URL, GET it, retry what may heal
  (Kerbside has not scraped the console yet: 404; 5xx; connection errors)
  until a deadline, and fail at once on what will not (401/403: a used,
  expired or foreign token). Only the standard library: the URL carries its
  own capability, so no cloud credentials go with it.
- `PolledSerialSource`: a SerialSource over an API that returns the tail
  of the console log. Snapshots are merged into one growing text (so the
  offsets `wait_for(start=...)` relies on stay valid), fetched at most once
  per interval, mirrored to `serial.log` in the artifact directory.
- `redact()` and `install_log_redaction()`: console tokens ride in URLs
  (`?token=`) and in Nova's `os-console-auth-tokens/<token>` path, and the
  client libraries log response bodies at DEBUG. Neither may reach a log.

Imports only the standard library, common and providers.base.
"""

import json
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from kerbside_tempest_plugin.common import atomic
from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import secrets as common_secrets
from kerbside_tempest_plugin.common import vv as common_vv
from kerbside_tempest_plugin.common import waiting
from kerbside_tempest_plugin.providers import base

LOG = logging.getLogger(__name__)

RETRYABLE_STATUSES = (404, 500, 502, 503, 504)


class ConsoleTokenRejected(errors.ProviderError):
    """Kerbside refused a console token (used, expired, foreign, bad)."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


def redact(text):
    """`text` with console tokens, JWTs, keys and passwords masked."""
    return common_secrets.redact_patterns('%s' % (text,))


def redact_url(url):
    """scheme://host/path with the query's token masked."""
    return redact(url)


class _RedactingFilter(logging.Filter):
    def filter(self, record):
        try:
            message = record.getMessage()
        except Exception:
            return True
        clean = redact(message)
        if clean != message:
            record.msg = clean
            record.args = None
        return True


_FILTER = _RedactingFilter()
_INSTALLED = set()
_INSTALL_LOCK = threading.Lock()


def install_log_redaction(*logger_names):
    """Mask console tokens in what the named loggers emit (idempotent).

    The tempest rest client and shakenfist_client log full request and
    response bodies at DEBUG; a remote-consoles or vdiconsoleproxy body holds
    a live console token.
    """
    with _INSTALL_LOCK:
        for name in logger_names:
            if name in _INSTALLED:
                continue
            logging.getLogger(name).addFilter(_FILTER)
            _INSTALLED.add(name)


def ssl_context(ca_file=None, verify=True):
    """The SSL context for fetching a .vv over https (None: defaults)."""
    if not verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if ca_file:
        return ssl.create_default_context(cafile=ca_file)
    return None


def http_get(url, timeout=30, context=None):
    """(status, text) of a plain GET; no credentials are added.

    Connection failures return status None and the reason as text.
    """
    req = urllib.request.Request(url, headers={
        'Accept': 'application/x-virt-viewer, text/plain, */*',
        'User-Agent': 'kerbside-tempest-plugin'})
    try:
        with urllib.request.urlopen(req, timeout=timeout,
                                    context=context) as resp:
            return resp.status, resp.read().decode('utf-8', 'replace')
    except urllib.error.HTTPError as e:
        try:
            body = e.read().decode('utf-8', 'replace')
        except Exception:
            body = ''
        return e.code, body
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, 'reason', e)
        return None, 'connection failed: %s' % (reason,)


def check_vv(text, what):
    """Raise ProviderError unless `text` is a SPICE .vv with a password."""
    try:
        fields = common_vv.parse_vv(text)
    except common_vv.VVError as e:
        raise errors.ProviderError('%s is not a .vv file (%s); first line: %r'
                                   % (what, e, redact(
                                     (text or '').strip()[:80]))) from None
    if not fields.get('password'):
        raise errors.ProviderError('%s has no password (%s)' % (
            what, common_vv.summary(text)))
    return fields


def _short(text, limit=200):
    text = ' '.join((text or '').split())
    return redact(text[:limit]) or '<empty body>'


def fetch_console_vv(mint, what, timeout, interval=5.0, context=None,
                     request_timeout=30, clock=time.monotonic,
                     sleep=time.sleep):
    """A fresh .vv from Kerbside; call it right before ryll starts.

    `mint()` returns a console URL (a new token each call: retries never
    replay a token). 404 (console not scraped yet; the token is not used
    up), 5xx and connection failures are retried every `interval` s until
    `timeout`; 401/403 and other 4xx raise ConsoleTokenRejected at once.
    """
    start = clock()
    attempts = 0
    last = None
    while True:
        attempts += 1
        url = mint()
        status, body = http_get(url, timeout=request_timeout,
                                context=context)
        where = redact_url(url.split('?', 1)[0])
        if status == 200:
            check_vv(body, 'the console .vv from %s' % where)
            LOG.info('fetched the console .vv for %s from %s after %d '
                     'attempt(s) in %.1f s', what, where, attempts,
                     clock() - start)
            return body
        last = '%s from %s: %s' % (
            'HTTP %s' % status if status else 'no response', where,
            _short(body))
        if status is not None and status not in RETRYABLE_STATUSES:
            raise ConsoleTokenRejected(
                'Kerbside refused the console token for %s: %s' % (
                    what, last), status=status)
        elapsed = clock() - start
        if elapsed + interval > timeout:
            raise errors.HarnessTimeout(
                'timed out after %.1f s waiting for Kerbside to serve the '
                'console .vv for %s; seen: %d attempt(s), last %s '
                '(404 means Kerbside does not know the console yet: it '
                'scrapes its sources every 60 s)' % (
                    elapsed, what, attempts, last))
        LOG.debug('console .vv for %s not ready (%s); retrying in %.1f s',
                  what, last, interval)
        sleep(interval)


def merge_tail(cache, snapshot):
    """Merge a console-log tail `snapshot` into the accumulated `cache`.

    Returns (text, gap): `gap` is True when the snapshot shares nothing
    with the cache although both are non-empty (output was lost between
    two polls, or the log was cleared). The overlap is the longest prefix
    of `snapshot` that is a suffix of `cache` (KMP over snapshot + cache).
    """
    if not cache:
        return snapshot, False
    if snapshot.startswith(cache):
        return snapshot, False
    if not snapshot or cache.endswith(snapshot):
        return cache, False
    # Prefix function over snapshot + sep + cache-tail.
    window = cache[-len(snapshot):]
    s = list(snapshot) + [None] + list(window)  # None matches no char
    pi = [0] * len(s)
    k = 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = pi[k - 1]
        if s[i] == s[k]:
            k += 1
        pi[i] = k
    overlap = pi[-1]
    if overlap == 0:
        return cache + snapshot, True
    return cache + snapshot[overlap:], False


class PolledSerialSource(base.SerialSource):
    """Serial output read through a cloud API that returns the log's tail.

    `fetch()` returns the current text (a tail window or the whole log);
    `running()` says whether the guest can still write (it is asked at most
    once per interval as well). Failures of `fetch()` keep the cached text
    and show up in `describe()`.
    """

    def __init__(self, fetch, running, what, interval=2.0, log_path=None,
                 clock=time.monotonic):
        self._fetch = fetch
        self._running = running
        self.what = what
        self.interval = interval
        self.log_path = log_path
        self._clock = clock
        self._lock = threading.Lock()
        self._text = ''
        self._last_fetch = None
        self._last_state = None
        self._state = True
        self._stopped_fetched = False
        self.fetches = 0
        self.gaps = 0
        self.last_error = None

    def refresh(self):
        """Fetch now, whatever the interval; return the whole text."""
        with self._lock:
            return self._refresh_locked()

    def _refresh_locked(self):
        self._last_fetch = self._clock()
        try:
            snapshot = self._fetch()
        except Exception as e:
            self.last_error = redact('%s: %s' % (type(e).__name__, e))[:300]
            LOG.debug('reading %s failed: %s', self.what, self.last_error)
            return self._text
        self.fetches += 1
        self.last_error = None
        if isinstance(snapshot, bytes):
            snapshot = snapshot.decode('utf-8', 'replace')
        text, gap = merge_tail(self._text, snapshot or '')
        if gap:
            self.gaps += 1
            LOG.warning('%s: output was lost between two polls (gap %d); '
                        'poll more often or fetch a longer tail', self.what,
                        self.gaps)
        if text != self._text:
            self._text = text
            self._mirror()
        return self._text

    def _mirror(self):
        if not self.log_path:
            return
        try:
            atomic.write_text(self.log_path, self._text)
        except OSError as e:
            LOG.debug('cannot mirror %s to %s: %s', self.what,
                      self.log_path, e)

    def read(self):
        with self._lock:
            now = self._clock()
            stale = (self._last_fetch is None or
                     now - self._last_fetch >= self.interval)
            # Once the guest is seen stopped, one more fetch picks up the
            # output written just before it stopped.
            final = not self._state and not self._stopped_fetched
            if final:
                self._stopped_fetched = True
            if stale or final:
                return self._refresh_locked()
            return self._text

    def guest_running(self):
        with self._lock:
            now = self._clock()
            if (self._last_state is None or
                    now - self._last_state >= self.interval):
                self._last_state = now
                try:
                    self._state = bool(self._running())
                except Exception as e:
                    LOG.debug('state of %s unknown: %s', self.what, e)
            return self._state

    def describe(self):
        extra = []
        if self.gaps:
            extra.append('%d gap(s)' % self.gaps)
        if self.last_error:
            extra.append('last fetch failed: %s' % self.last_error)
        return '%s (%d fetch(es)%s)' % (
            self.what, self.fetches,
            '; ' + '; '.join(extra) if extra else '')


def route_from_vv(text, kind, source, uuid):
    """The ConsoleRoute a .vv sends a client to (no secret in it)."""
    fields = common_vv.parse_vv(text)
    return base.ConsoleRoute(
        kind=kind, host=fields.get('host'),
        port=int(fields['port']) if fields.get('port') else None,
        tls_port=int(fields['tls-port']) if fields.get('tls-port') else None,
        source=source, uuid=uuid)


class CloudGuest(base.Guest):
    """What a guest on a cloud API shares, whatever the cloud.

    A subclass sets `label` (e.g. 'Nova server'), `source` and
    `record_name`, and implements `show()` (the API's view of the guest,
    None once it is gone; a transient failure raises one of
    `transient_errors`), `describe_state(view)`, `is_running()` and
    `_delete()` (False when the guest was already gone). The provider
    gives `poll_interval`, `serial_interval`, `delete_timeout`,
    `console_timeout`, `console_retry_interval`, `console_ca_file` and
    `console_verify`.
    """

    label = 'cloud guest'
    source = None
    record_name = 'guest.json'
    transient_errors = ()

    def __init__(self, provider, name, artifact_dir, ref, read_serial,
                 serial_what):
        self.provider = provider
        self.name = name
        self.artifact_dir = artifact_dir
        self.ref = ref
        self.last = None
        self.console_fetches = 0
        self._route = None
        self._torn_down = False
        self.serial = PolledSerialSource(
            read_serial, self.is_running,
            '%s of %s (%s)' % (serial_what, name, ref),
            interval=provider.serial_interval,
            log_path=os.path.join(artifact_dir, 'serial.log'))

    @property
    def title(self):
        return '%s %s (%s)' % (self.label, self.name, self.ref)

    def show(self):
        raise NotImplementedError

    def describe_state(self, view):
        raise NotImplementedError

    def _delete(self):
        raise NotImplementedError

    def _gone(self, view):
        return view is None

    def describe(self):
        return '%s: %s' % (self.title, self.describe_state(self.last))

    def _seen(self):
        return self.describe_state(self.last)

    def wait_for_state(self, what, ready, failed, timeout):
        """Poll show() until `ready(view)`; `failed(view)` returning a word
        (e.g. 'ERROR') raises ProviderError with the state; vanishing too.
        """
        def check():
            try:
                view = self.show()
            except self.transient_errors as e:
                LOG.debug('reading %s failed while waiting: %s', self.title,
                          e)
                return None
            if view is None:
                raise errors.ProviderError(
                    '%s vanished while waiting to %s; last seen: %s' % (
                        self.title, what, self._seen()))
            state = failed(view)
            if state:
                raise errors.ProviderError(
                    '%s went to %s while waiting to %s: %s' % (
                        self.title, state, what, self.describe_state(view)))
            return view if ready(view) else None

        return waiting.wait_until(check, timeout, '%s to %s' % (
            self.title, what), seen=self._seen,
            interval=self.provider.poll_interval)

    def wait_stopped(self, timeout):
        waiting.wait_until(lambda: not self.is_running(), timeout,
                           '%s to stop' % self.title, seen=self._seen,
                           interval=self.provider.poll_interval)

    # -- console -----------------------------------------------------------
    def kerbside_vv(self, mint):
        """A fresh .vv from Kerbside through URLs from `mint()`."""
        p = self.provider
        text = fetch_console_vv(
            mint, self.title, timeout=p.console_timeout,
            interval=p.console_retry_interval,
            context=ssl_context(p.console_ca_file, p.console_verify))
        self._route = route_from_vv(text, 'kerbside', self.source, self.ref)
        return text

    def kerbside_route(self):
        if self._route is None:
            raise errors.ProviderError(
                'the Kerbside route of %s is known only after console_vv() '
                '(the cloud names the proxy only in the .vv)' % self.title)
        return self._route

    # -- lifecycle ---------------------------------------------------------
    def record(self):
        """What is written to `record_name` in the artifact dir."""
        return {'provider': self.provider.name, 'name': self.name,
                'ref': self.ref, 'last_seen': self._seen(),
                'console_fetches': self.console_fetches,
                'serial': self.serial.describe()}

    def teardown(self, wait=None):
        """Keep the last serial output and a record and delete the guest;
        with `wait` (default: the provider's `wait_for_delete`, True when
        it has none) also wait until it is gone, else the provider's
        cleanup() does (wait_deleted()). Idempotent; logs instead of
        raising.
        """
        if self._torn_down:
            return
        self._torn_down = True
        try:
            self.serial.refresh()
        except Exception:
            pass
        try:
            with open(os.path.join(self.artifact_dir, self.record_name),
                      'w') as f:
                json.dump(self.record(), f, indent=2)
        except (OSError, TypeError, ValueError) as e:
            LOG.debug('cannot write %s: %s', self.record_name, e)
        if wait is None:
            wait = getattr(self.provider, 'wait_for_delete', True)
        try:
            if not self._delete():
                self.gone = True
                return
            self.delete_requested = time.monotonic()
            if wait:
                self.wait_deleted()
        except Exception:
            LOG.exception('teardown of %s failed', self.title)

    # Set by teardown(): the monotonic time of the delete request, and
    # True once the guest is seen gone.
    delete_requested = None
    gone = False

    def wait_deleted(self, timeout=None):
        """Wait until the deleted guest is gone (the API says so); raises
        HarnessTimeout naming what it last saw.
        """
        if self.gone:
            return

        def gone():
            return self._gone(self.show())

        waiting.wait_until(gone, timeout or self.provider.delete_timeout,
                           '%s to be deleted' % self.title, seen=self._seen,
                           interval=self.provider.poll_interval)
        self.gone = True


def wait_all_deleted(guests, timeout, clock=time.monotonic):
    """Delete every guest not torn down yet and wait, under one deadline
    of `timeout` s, until each one deleted is gone. Raises ProviderError
    naming each guest still there and what was last seen of it.
    """
    left = []
    for guest in guests:
        if not guest._torn_down:
            guest.teardown(wait=False)
        if guest.gone or guest.delete_requested is not None:
            continue
        # The delete itself failed (teardown logged why): once more.
        try:
            if guest._delete():
                guest.delete_requested = clock()
            else:
                guest.gone = True
        except Exception as e:
            left.append('%s: delete refused: %s' % (
                guest.title, redact(str(e)).splitlines()[0][:300]))
    deadline = clock() + timeout
    for guest in guests:
        if guest.gone or guest.delete_requested is None:
            continue
        try:
            guest.wait_deleted(max(0.1, deadline - clock()))
        except Exception as e:
            left.append('%s: %s' % (guest.title, str(e).splitlines()[0]))
    if left:
        raise errors.ProviderError(
            '%d of %d guest(s) not gone %.0f s after their delete: %s' % (
                len(left), len(guests), timeout, '; '.join(left)))

"""Kerbside 0.8.0's REST API and the proxy's Prometheus metrics, recorded.

`KerbsideAPI(base_url, token=...)` speaks JSON to the API (every console
endpoint wants a bearer JWT; `/nova-console.vv` wants none) and keeps a
record of every call: method, path, status, seconds and a short note, with
every token redacted, for a test's artifacts and report. Console tokens
that come back (a `.vv` password, the token list of a console terminate)
are added to the redactor before anything is recorded.

What each endpoint answers is in docs/contracts/kerbside.md §8 and §16.
A status the caller did not expect raises KerbsideAPIError with the
status and the (redacted) body a user would see.
"""

import dataclasses
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import secrets as common_secrets
from kerbside_tempest_plugin.common import vv as common_vv

# Query parameters whose value is a credential.
_SECRET_QUERY = ('token', 'password')


class KerbsideAPIError(errors.HarnessError):
    """Kerbside answered a call with a status the caller did not expect,
    or did not answer at all. `status` is None when nothing came back.
    """

    def __init__(self, message, method=None, path=None, status=None,
                 body=''):
        super().__init__(message)
        self.method = method
        self.path = path
        self.status = status
        self.body = body


@dataclasses.dataclass
class ApiCall:
    """One recorded call; nothing in it is a secret."""
    method: str
    path: str
    status: int
    seconds: float
    at: float                       # wall clock (time.time()) of the call
    note: str = ''

    def line(self):
        return '%s %s -> %s (%.0f ms)%s' % (
            self.method, self.path, self.status if self.status is not None
            else 'no answer', self.seconds * 1000,
            ': %s' % self.note if self.note else '')

    def to_json(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ApiResponse:
    status: int
    text: str
    content_type: str = ''

    def json(self):
        try:
            return json.loads(self.text)
        except ValueError as e:
            raise KerbsideAPIError('Kerbside answered %d with a body that '
                                   'is not JSON (%s): %.200s' % (
                                       self.status, e, self.text),
                                   status=self.status,
                                   body=self.text[:500]) from None


def safe_path(path):
    """`path` with the values of token-like query parameters masked."""
    base, sep, query = path.partition('?')
    if not sep:
        return path
    parts = []
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if key.lower() in _SECRET_QUERY:
            value = '<redacted>'
        parts.append('%s=%s' % (key, value))
    return base + '?' + '&'.join(parts)


class KerbsideAPI:
    """A recorded client of one Kerbside API.

    `token` is the bearer JWT or a callable returning it (minted lazily);
    `redactor` a common.secrets.Redactor (the lane's, so that whatever this
    client learns is masked everywhere the lane writes).
    """

    def __init__(self, base_url, token=None, redactor=None, timeout=15.0,
                 metrics_url=None):
        self.base_url = base_url.rstrip('/')
        self._token = token
        self.redactor = redactor or common_secrets.Redactor()
        self.timeout = timeout
        self.metrics_url = metrics_url
        self.calls = []
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}))

    # -- plumbing ----------------------------------------------------------
    def _bearer(self):
        token = self._token() if callable(self._token) else self._token
        if token:
            self.redactor.add(token)
        return token

    def _redact(self, text):
        return common_secrets.redact_patterns(self.redactor.redact(text))

    def request(self, method, path, auth=True, accept='application/json',
                expect=(200,), note=''):
        """One call; returns an ApiResponse. A status outside `expect`
        (None accepts any) raises KerbsideAPIError.
        """
        headers = {'Accept': accept}
        if auth:
            token = self._bearer()
            if not token:
                raise KerbsideAPIError('no API token to call %s %s with'
                                       % (method, safe_path(path)))
            headers['Authorization'] = 'Bearer %s' % token
        req = urllib.request.Request(self.base_url + path, method=method,
                                     headers=headers,
                                     data=b'' if method == 'POST' else None)
        shown = safe_path(path)
        t0, at = time.monotonic(), time.time()
        status, text, ctype = None, '', ''
        try:
            with self._opener.open(req, timeout=self.timeout) as r:
                status = r.status
                ctype = r.headers.get('Content-Type', '')
                text = r.read().decode('utf-8', 'replace')
        except urllib.error.HTTPError as e:
            status = e.code
            ctype = e.headers.get('Content-Type', '') if e.headers else ''
            text = e.read().decode('utf-8', 'replace')
        except OSError as e:
            call = ApiCall(method, shown, None, time.monotonic() - t0, at,
                           note or 'no answer: %s' % e)
            self.calls.append(call)
            raise KerbsideAPIError('%s %s: Kerbside did not answer (%s)' % (
                method, shown, e), method, shown) from None
        resp = ApiResponse(status, text, ctype)
        self._learn_secrets(resp)
        self.calls.append(ApiCall(method, shown, status,
                                  time.monotonic() - t0, at, note))
        if expect is not None and status not in expect:
            body = self._redact(text)[:500]
            raise KerbsideAPIError('%s %s answered %d, not %s: %s' % (
                method, shown, status, '/'.join(str(s) for s in expect),
                body.strip()), method, shown, status, body)
        return resp

    def _learn_secrets(self, resp):
        """Console tokens in an answer go to the redactor at once."""
        if 'virt-viewer' in resp.content_type or \
                resp.text.startswith('[virt-viewer]'):
            try:
                self.redactor.add(common_vv.parse_vv(resp.text).get(
                    'password'))
            except errors.HarnessError:
                pass
        elif 'json' in resp.content_type:
            try:
                body = json.loads(resp.text)
            except ValueError:
                return
            if isinstance(body, dict):
                for token in body.get('tokens') or ():
                    if isinstance(token, str):
                        self.redactor.add(token)

    def call_log(self):
        return [c.to_json() for c in self.calls]

    # -- endpoints -----------------------------------------------------------
    def health(self):
        return self.request('GET', '/', auth=False).json()

    def sessions(self):
        """GET /session: {session_id: {source, uuid, name, channels}}."""
        body = self.request('GET', '/session').json()
        if not isinstance(body, dict):
            raise KerbsideAPIError('GET /session answered %s, not a map of '
                                   'sessions' % type(body).__name__,
                                   'GET', '/session', 200)
        return body

    def terminate_session(self, session_id, expect=(200,)):
        return self.request('POST', '/session/%s/terminate'
                            % urllib.parse.quote(session_id, safe=''),
                            expect=expect)

    def terminate_console(self, source, uuid, expect=(200,)):
        return self.request('POST', '/console/%s/%s/terminate' % (
            source, uuid), expect=expect)

    def audit(self, source, uuid, limit=1000):
        """GET /console/<s>/<u>/audit: the events, oldest first."""
        body = self.request('GET', '/console/%s/%s/audit?limit=%d' % (
            source, uuid, limit)).json()
        if not isinstance(body, dict) or not isinstance(
                body.get('audit'), list):
            raise KerbsideAPIError('the audit answer has no "audit" list: '
                                   '%.200s' % json.dumps(body), 'GET',
                                   '/console/%s/%s/audit' % (source, uuid),
                                   200)
        return body['audit']

    def console(self, source, uuid):
        return self.request('GET', '/console/%s/%s' % (source, uuid)).json()

    def console_vv(self, source, uuid):
        """A fresh proxy .vv (mints a console token)."""
        return self.request('GET', '/console/proxy/%s/%s/console.vv' % (
            source, uuid), accept='*/*').text

    def nova_console_vv(self, token, expect=(200,)):
        """GET /nova-console.vv?token=: no JWT; the Nova token decides."""
        self.redactor.add(token)
        return self.request('GET', '/nova-console.vv?token=%s'
                            % urllib.parse.quote(token, safe=''),
                            auth=False, accept='*/*', expect=expect)

    # -- metrics ---------------------------------------------------------
    def metrics(self):
        """The proxy's /metrics as {'name{labels}': value}."""
        if not self.metrics_url:
            raise KerbsideAPIError('no metrics URL for this Kerbside')
        t0, at = time.monotonic(), time.time()
        try:
            with self._opener.open(self.metrics_url,
                                   timeout=self.timeout) as r:
                text = r.read().decode('utf-8', 'replace')
                status = r.status
        except OSError as e:
            self.calls.append(ApiCall('GET', '/metrics', None,
                                      time.monotonic() - t0, at,
                                      'no answer: %s' % e))
            raise KerbsideAPIError('GET %s: the proxy did not answer (%s)'
                                   % (self.metrics_url, e)) from None
        self.calls.append(ApiCall('GET', '/metrics', status,
                                  time.monotonic() - t0, at))
        return parse_metrics(text)


_SAMPLE = re.compile(r'^([A-Za-z_:][\w:]*(?:\{.*\})?)\s+(\S+)')


def parse_metrics(text):
    """Prometheus text exposition -> {'name{labels}': float}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith('#'):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        try:
            out[m.group(1)] = float(m.group(2))
        except ValueError:
            pass
    return out


def metric_delta(before, after, prefix='kerbside_proxy_'):
    """The series (under `prefix`) that changed between two scrapes, as
    {'name{labels}': after - before}; a series new in `after` counts from
    zero.
    """
    out = {}
    for key, value in after.items():
        if not key.startswith(prefix):
            continue
        d = value - before.get(key, 0.0)
        if d:
            out[key] = d
    return out


def metric_sum(metrics, name):
    """The sum of every series of metric `name` (all label sets)."""
    return sum(v for k, v in metrics.items()
               if k == name or k.startswith(name + '{'))

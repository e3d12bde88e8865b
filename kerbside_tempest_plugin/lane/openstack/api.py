"""A small Keystone-authenticated REST client for the lane's own cloud.

The lane drives its cloud (service users, catalog, flavor, image, servers,
consoles) with this instead of a client library: it runs in the project
venv, where OpenStack's libraries are not installed, and every failure
becomes a `CloudAPIError` naming the method, the path, the status and the
(redacted) body. Tokens and passwords are taught to the redactor before
any message can hold them.
"""

import json
import urllib.error
import urllib.parse
import urllib.request

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.common import secrets as common_secrets

DEFAULT_TIMEOUT = 60.0


class CloudAPIError(errors.HarnessError):
    """An API call failed: status (None when no answer), and the body."""

    def __init__(self, message, status=None, body=None):
        super().__init__(message)
        self.status = status
        self.body = body


def _redact(redactor, text):
    text = common_secrets.redact_patterns(text or '')
    return redactor.redact(text) if redactor is not None else text


class Client:
    """Password-authenticated (project-scoped) calls to one cloud."""

    def __init__(self, auth_url, username, password, project='admin',
                 user_domain='Default', project_domain='Default',
                 redactor=None, timeout=DEFAULT_TIMEOUT):
        self.auth_url = auth_url.rstrip('/')
        self.username = username
        self._password = password
        self.project = project
        self.user_domain = user_domain
        self.project_domain = project_domain
        self.redactor = redactor
        if redactor is not None:
            redactor.add(password)
        self.timeout = timeout
        self._token = None
        self.catalog = []
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}))

    # -- transport -------------------------------------------------------
    def raw(self, method, url, body=None, headers=None, timeout=None):
        """(status, headers, bytes) of one request; raises CloudAPIError
        only when there is no HTTP answer at all.
        """
        data = body
        headers = dict(headers or {})
        if body is not None and not isinstance(body, (bytes, bytearray)) \
                and not hasattr(body, 'read'):
            data = json.dumps(body).encode()
            headers.setdefault('Content-Type', 'application/json')
        headers.setdefault('Accept', 'application/json')
        req = urllib.request.Request(url, data=data, method=method,
                                     headers=headers)
        try:
            with self._opener.open(req, timeout=timeout or self.timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers or {}), e.read()
        except (urllib.error.URLError, OSError) as e:
            raise CloudAPIError('%s %s: no answer (%s)' % (
                method, _redact(self.redactor, url),
                getattr(e, 'reason', e))) from None

    # -- auth --------------------------------------------------------------
    def authenticate(self):
        body = {'auth': {
            'identity': {'methods': ['password'], 'password': {'user': {
                'name': self.username, 'password': self._password,
                'domain': {'name': self.user_domain}}}},
            'scope': {'project': {'name': self.project, 'domain': {
                'name': self.project_domain}}}}}
        status, headers, data = self.raw('POST', self.auth_url +
                                         '/auth/tokens', body)
        if status != 201:
            raise CloudAPIError('Keystone refused a token for %s (HTTP %s): '
                                '%s' % (self.username, status,
                                        _redact(self.redactor,
                                                data.decode(errors='replace')
                                                [:500])),
                                status=status)
        token = headers.get('X-Subject-Token') or headers.get(
            'x-subject-token')
        if self.redactor is not None:
            self.redactor.add(token)
        self._token = token
        self.catalog = json.loads(data)['token'].get('catalog', [])
        return token

    @property
    def token(self):
        if self._token is None:
            self.authenticate()
        return self._token

    def endpoint(self, service_type, interface='public'):
        for service in self.catalog:
            if service.get('type') != service_type:
                continue
            for ep in service.get('endpoints', []):
                if ep.get('interface') == interface:
                    return ep['url'].rstrip('/')
        raise CloudAPIError('no %s endpoint for %r in the catalog' % (
            interface, service_type))

    # -- calls -------------------------------------------------------------
    def call(self, method, service_type, path, body=None, expect=(200,),
             microversion=None, headers=None, timeout=None):
        """JSON (or None) of one call; CloudAPIError on any other status.
        `service_type` is a catalog type or an absolute base URL.
        """
        self.token  # authenticate first: the catalog gives the URL
        base = service_type if '://' in service_type else \
            self.endpoint(service_type)
        url = base + path
        headers = dict(headers or {})
        headers['X-Auth-Token'] = self.token
        if microversion:
            headers['OpenStack-API-Version'] = 'compute %s' % microversion
            headers['X-OpenStack-Nova-API-Version'] = microversion
        status, rheaders, data = self.raw(method, url, body, headers,
                                          timeout)
        if status == 401 and self._token is not None:
            self._token = None  # expired: once more with a fresh token
            headers['X-Auth-Token'] = self.token
            status, rheaders, data = self.raw(method, url, body, headers,
                                              timeout)
        text = data.decode(errors='replace')
        if status not in expect:
            raise CloudAPIError('%s %s answered HTTP %s (expected %s): %s' % (
                method, _redact(self.redactor, path), status,
                '/'.join(str(e) for e in expect),
                _redact(self.redactor, text[:800])),
                status=status, body=_redact(self.redactor, text))
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except ValueError:
            return {'_text': text}

    def find(self, service_type, collection, key, name, path=None):
        """The first element of a listing whose name is `name`, or None."""
        path = path or '/%s?name=%s' % (collection,
                                        urllib.parse.quote(name))
        listing = self.call('GET', service_type, path)
        for item in listing.get(key, []):
            if item.get('name') == name:
                return item
        return None

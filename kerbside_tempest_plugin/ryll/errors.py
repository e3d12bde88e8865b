"""The errors of ryll's control-socket client (all HarnessErrors)."""

from kerbside_tempest_plugin.common import errors


class RyllError(errors.HarnessError):
    """Base class for everything this module raises."""


class RyllRpcError(RyllError):
    """ryll answered a request with ``ok: false``.

    ``code`` is ryll's stable error code (unknown codes are kept as they
    are); ``message`` is ryll's human text, which is not a stable API.
    """

    def __init__(self, code, message, method=None, request_id=None):
        self.code = code
        self.message = message
        self.method = method
        self.request_id = request_id
        where = ' to %s (id %s)' % (method, request_id) if method else ''
        super().__init__('ryll error%s: %s: %s' % (where, code, message))


class RyllBusy(RyllRpcError):
    """ryll refused the connection: another client holds the socket."""


class RyllTimeout(RyllError, errors.HarnessTimeout):
    """A wait ran past its deadline; the message says what was seen."""

    def __init__(self, message, waited_for=None, elapsed=None, seen=None):
        self.waited_for = waited_for
        self.elapsed = elapsed
        self.seen = seen or {}
        super().__init__(message)


class RyllConnectionClosed(RyllError):
    """The control connection is gone (EOF, reset, or closed by us)."""

    def __init__(self, message, reason=None):
        self.reason = reason
        super().__init__(message)


class RyllProtocolError(RyllError):
    """ryll sent something this client cannot make sense of."""

    def __init__(self, message, line=None):
        self.line = line
        super().__init__(message)


class RyllPasteFailed(RyllError):
    """ryll reported ``paste_failed`` for our paste."""

    def __init__(self, reason, request_id=None):
        self.reason = reason
        self.request_id = request_id
        super().__init__('paste (id %s) failed: %s' % (request_id, reason))


class RyllUnsupported(RyllError):
    """The server does not offer a method or event we need."""

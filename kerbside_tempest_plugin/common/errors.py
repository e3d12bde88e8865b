"""The project's one error tree.

Every error the harness raises for a failure of the world (a process that
died, a wait that ran out, a file that is not what it should be, a cloud
API that said no) derives from HarnessError, so a console script can catch
one type and print a readable line. Errors that are also a kind of a
standard exception keep that base too (VVError is a ValueError, TLSError a
RuntimeError), so older callers that catch those still work.
"""


class HarnessError(Exception):
    """Base class of every error the harness raises."""


class HarnessTimeout(HarnessError):
    """A wait ran out. The message says what was awaited and what was seen.

    The one timeout class: ryll's RyllTimeout and the scenario's
    CaptureTimeout derive from it.
    """


class GuestStopped(HarnessError):
    """The guest stopped while something was still waited for."""


class ProviderError(HarnessError):
    """A provider could not do what was asked (boot, console, screendump)."""


class VVError(HarnessError, ValueError):
    """A .vv text that does not parse or lacks what is needed."""


class TLSError(HarnessError, RuntimeError):
    """TLS material could not be made (openssl failed)."""

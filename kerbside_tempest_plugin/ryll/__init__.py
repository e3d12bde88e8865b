"""ryll's control socket: the NDJSON client and the process runner.

Standard library only; usable without tempest. See
docs/plans/ryll-control-client.md.
"""

from kerbside_tempest_plugin.ryll.client import (  # noqa: F401
    ControlClient, Event, Screenshot, SubscribeResult, RyllError,
    RyllRpcError, RyllBusy, RyllTimeout, RyllConnectionClosed,
    RyllProtocolError, RyllPasteFailed, RyllUnsupported, PROTOCOL_VERSION)
from kerbside_tempest_plugin.ryll.process import (  # noqa: F401
    RyllProcess, RyllProcessError, find_ryll)

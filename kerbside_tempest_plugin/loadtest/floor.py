"""The measurement floor: the latency loop against an instant fake socket.

Same client (`ryll.client.ControlClient`), same `RouteSession.measure`,
same clock; the only difference is that the other end of the control
socket (`fake.FakeRyll`) answers every request at once and stamps a
``surface_drawn`` right after the key-down reply. What is left is the cost
of the client and the socket: the smallest figure a real route could show.
"""

from kerbside_tempest_plugin.loadtest import fake
from kerbside_tempest_plugin.loadtest import report
from kerbside_tempest_plugin.loadtest import sampler


def measure_floor(samples=200, hold_s=0.0, gap_s=0.0, quiet_s=0.0,
                  deadline_s=2.0, client_factory=None, fake_kwargs=None):
    """Run `samples` keys against a FakeRyll; return (summary, session).

    The summary has the per-route fields of the loadtest summary plus
    ``what``. `client_factory(path)` builds a connected client (default:
    a ControlClient connected with a 10 s deadline).
    """
    if client_factory is None:
        client_factory = _control_client
    server = fake.FakeRyll(**(fake_kwargs or {})).start()
    client = None
    try:
        client = client_factory(server.path)
        session = sampler.RouteSession('floor', client)
        session.attach()
        sampler.run_alternating(
            [session], samples, deadline_s=deadline_s, gap_s=gap_s,
            hold_s=hold_s, quiet_s=quiet_s, max_consecutive_timeouts=3)
        session.detach()
    finally:
        if client is not None:
            client.close()
        server.stop()
    out = report.route_summary(session)
    out['what'] = ('the same loop against a local fake control socket that '
                   'answers at once: the cost of the client itself')
    out['hold_ms'] = hold_s * 1000.0
    return out, session


def _control_client(path):
    from kerbside_tempest_plugin.ryll import client as ryll_client
    c = ryll_client.ControlClient(path, client_name='kerbside-latency-floor')
    c.connect(timeout=10)
    return c

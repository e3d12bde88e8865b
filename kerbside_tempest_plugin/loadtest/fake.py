"""An instant-answer fake of ryll for the latency floor, built on the one
scriptable fake (ryll.fake.FakeRyll).

It offers what the latency loop uses: ``hello``, ``subscribe``,
``unsubscribe``, ``status`` and ``send_key``. Every request is answered at
once; a ``send_key`` with state ``down`` (or ``press``) is answered and
then followed by a ``surface_drawn`` event stamped with the current
``wallclock_us``, as if a guest had drawn in no time at all. Running the
latency loop against it measures the floor: what the client, the socket
and this process cost, with no SPICE, proxy or guest in the way.

Knobs for tests: `draw_delay_s` (stamp and send the draw later, on a
timer), `draws_per_key`, `silent_keys` (1-based key numbers that draw
nothing), `close_after_keys` (drop the connection after that many keys),
`latency_every_keys` (emit a ``latency`` event every N keys) and
`surface_drawn` (False: do not advertise the event at all).
"""

import threading
import time

from kerbside_tempest_plugin.ryll import fake as ryll_fake

METHODS = ['hello', 'status', 'send_key', 'subscribe', 'unsubscribe']
EVENTS = ['latency', 'dropped', 'surface_drawn']


class FakeRyll(ryll_fake.FakeRyll):
    """ryll.fake.FakeRyll with a send_key that draws at once."""

    def __init__(self, path=None, draw_delay_s=0.0, draws_per_key=1,
                 silent_keys=(), close_after_keys=None,
                 latency_every_keys=None, surface_drawn=True):
        super().__init__(
            path, methods=METHODS,
            events=EVENTS if surface_drawn else [
                e for e in EVENTS if e != 'surface_drawn'])
        self.draw_delay_s = draw_delay_s
        self.draws_per_key = draws_per_key
        self.silent_keys = set(silent_keys)
        self.close_after_keys = close_after_keys
        self.latency_every_keys = latency_every_keys
        self.status_result = {'spice_connected': True,
                              'agent_connected': False, 'surfaces': []}
        self.keys_down = 0
        self._timers = []

    def stop(self):
        for t in list(self._timers):
            t.cancel()
        super().stop()

    def _do_send_key(self, conn, req):
        conn.reply(req)
        if req['params'].get('state') not in ('down', 'press'):
            return
        self.keys_down += 1
        n = self.keys_down
        if self.latency_every_keys and n % self.latency_every_keys == 0:
            conn.event('latency', {'sample_ms': 15000.0,
                                   'wallclock_us': time.time_ns() // 1000})
        if n not in self.silent_keys:
            if self.draw_delay_s:
                t = threading.Timer(self.draw_delay_s, self._draw, (conn,))
                t.daemon = True
                self._timers.append(t)
                t.start()
            else:
                self._draw(conn)
        if self.close_after_keys is not None and n >= self.close_after_keys:
            conn.close()

    def _draw(self, conn):
        for _ in range(self.draws_per_key):
            conn.event('surface_drawn', {
                'display_channel_id': 0, 'surface_id': 0,
                'produced_at_secs': time.monotonic(),
                'wallclock_us': time.time_ns() // 1000})

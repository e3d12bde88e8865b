"""Keypress-to-screen sampling over ryll control clients.

A `RouteSession` wraps one control client (one ryll, one route). It listens
for `surface_drawn`, `latency` and `dropped` events and measures one sample
at a time: wait until the screen has been quiet for a moment, take the send
time ``time.time_ns() // 1000`` (Unix microseconds, the clock ryll stamps
``wallclock_us`` with), send ``send_key`` down, hold, send up, then wait for
the first ``surface_drawn`` stamped at or after the send time. The sample is
that event's ``wallclock_us`` minus the send time. A key with no such draw
within its deadline is a timeout sample: counted, reported, kept.

`run_alternating` drives several sessions sample by sample (A B A B ...),
so slow drift of the machine (other qemus, thermal, noisy neighbours) hits
every route alike. A route that dies (control connection closed, ryll or
the guest gone, too many timeouts in a row) ends its own series with a
message and the others go on.

The client only needs ``send_key(code, state=...)``, ``subscribe(names)``,
``supported_events``, ``add_listener(fn)``/``remove_listener(fn)`` and
``closed``/``close_reason``: `ryll.client.ControlClient` has them all.
"""

import collections
import dataclasses
import logging
import threading
import time

LOG = logging.getLogger(__name__)

SCANCODE_SPACE = 0x39   # AT set-1 make code of the space bar
EVENTS = ('surface_drawn', 'latency', 'dropped')


def wall_us():
    """Unix time in microseconds: the clock of ryll's ``wallclock_us``."""
    return time.time_ns() // 1000


class RouteDead(Exception):
    """A route can measure no more: the message says why."""


@dataclasses.dataclass
class Sample:
    """One key on one route.

    `latency_ms` is ``(drawn_us - sent_us) / 1000`` or None for a timeout.
    `draws` counts the ``surface_drawn`` events this key caused (until the
    screen went quiet again); `delivery_ms` is how long the first one took
    from ryll's stamp to this process (None when the client does not stamp
    receipt). `note` says what went wrong, if anything.
    """
    route: str
    index: int
    sent_us: int
    drawn_us: int = None
    latency_ms: float = None
    timeout: bool = False
    draws: int = 0
    delivery_ms: float = None
    note: str = ''

    CSV_FIELDS = ('route', 'index', 'sent_us', 'drawn_us', 'latency_ms',
                  'timeout', 'draws', 'delivery_ms', 'note')

    def csv_row(self):
        def fmt(v):
            if v is None:
                return ''
            if isinstance(v, bool):
                return '1' if v else '0'
            if isinstance(v, float):
                return '%.3f' % v
            return str(v)
        return [fmt(getattr(self, f)) for f in self.CSV_FIELDS]


class RouteSession:
    """Measures keypress-to-draw on one route through one control client.

    `alive()` (optional) returns None while the route's parts are fine, or
    a reason string once one has gone (ryll exited, the guest stopped).
    `explain()` (optional) returns extra state for a timeout's note (for
    example lane services that have died), or None.
    """

    def __init__(self, name, client, alive=None, scancode=SCANCODE_SPACE,
                 explain=None):
        self.name = name
        self.client = client
        self.scancode = scancode
        self._alive = alive
        self._explain = explain
        self._cond = threading.Condition()
        self._draws = collections.deque(maxlen=100000)
        self.last_draw_mono = None
        self.draw_total = 0
        self.stale_draws = 0
        self.pings = []             # (wallclock_us, sample_ms)
        self.dropped_total = 0
        self.dropped_reports = 0
        self.samples = []
        self.dead = None            # reason string once the route ended
        self.dead_at_index = None
        self.consecutive_timeouts = 0
        self._attached = False

    # -- events (called on the client's reader thread; must be quick)

    def _on_event(self, ev):
        name = getattr(ev, 'name', None)
        data = getattr(ev, 'data', None) or {}
        if name == 'surface_drawn':
            stamp = data.get('wallclock_us')
            received = getattr(ev, 'received_wall_us', None)
            with self._cond:
                self._draws.append((stamp if isinstance(stamp, int)
                                    else None, received))
                self.last_draw_mono = time.monotonic()
                self.draw_total += 1
                self._cond.notify_all()
        elif name == 'latency':
            with self._cond:
                self.pings.append((data.get('wallclock_us'),
                                   data.get('sample_ms')))
        elif name == 'dropped':
            count = data.get('count')
            with self._cond:
                self.dropped_reports += 1
                if isinstance(count, int):
                    self.dropped_total += count
            LOG.warning('route %s: ryll dropped %s events (reports can '
                        'arrive late)', self.name, count)

    def attach(self):
        """Listen and subscribe. Raises RouteDead when ryll cannot report
        draws (no PING/PONG fallback, on purpose: that measures something
        else).
        """
        supported = tuple(getattr(self.client, 'supported_events', ()) or ())
        if supported and 'surface_drawn' not in supported:
            raise RouteDead(
                'route %s: ryll does not offer the surface_drawn event '
                '(it offers %s); keypress-to-screen cannot be measured'
                % (self.name, ', '.join(supported)))
        self.client.add_listener(self._on_event)
        self._attached = True
        accepted = list(self.client.subscribe(list(EVENTS)))
        if 'surface_drawn' not in accepted:
            raise RouteDead('route %s: ryll did not accept a subscription '
                            'to surface_drawn (accepted: %s)'
                            % (self.name, ', '.join(accepted) or 'none'))
        return accepted

    def detach(self):
        if self._attached:
            remove = getattr(self.client, 'remove_listener', None)
            if remove is not None:
                remove(self._on_event)
            self._attached = False

    # -- state

    def check_alive(self):
        """None while the route can measure, else why it cannot."""
        if getattr(self.client, 'closed', False):
            return 'control connection closed: %s' % (
                getattr(self.client, 'close_reason', None) or 'unknown')
        if self._alive is not None:
            try:
                return self._alive()
            except Exception as e:  # a broken probe must not end the run
                LOG.warning('route %s: alive probe failed: %r', self.name, e)
        return None

    def _wait_quiet(self, quiet_s, timeout_s):
        """Wait until no draw arrived for `quiet_s`; False if the screen
        stayed busy for `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                now = time.monotonic()
                last = self.last_draw_mono
                if last is None or now - last >= quiet_s:
                    return True
                if now >= deadline:
                    return False
                self._cond.wait(min(quiet_s - (now - last),
                                    deadline - now, 0.1) + 0.001)

    def _first_draw_since(self, sent_us):
        for stamp, received in self._draws:
            if stamp is not None and stamp >= sent_us:
                return stamp, received
        return None

    def _count_draws_since(self, sent_us):
        return sum(1 for stamp, _ in self._draws
                   if stamp is not None and stamp >= sent_us)

    # -- one sample

    def measure(self, index, deadline_s=5.0, hold_s=0.05, quiet_s=0.15,
                quiet_timeout_s=5.0):
        """Press the key once; return a Sample (possibly a timeout one).

        Raises RouteDead when the route can no longer measure.
        """
        reason = self.check_alive()
        if reason:
            raise RouteDead(reason)
        notes = []
        if not self._wait_quiet(quiet_s, quiet_timeout_s):
            notes.append('screen not quiet for %.0f ms before the key '
                         '(busy for %.1f s)' % (quiet_s * 1000,
                                                quiet_timeout_s))
        with self._cond:
            self._draws.clear()
        sample = Sample(self.name, index, wall_us())
        sent_us = sample.sent_us
        deadline = time.monotonic() + deadline_s
        try:
            self._send(self.scancode, 'down')
            if hold_s:
                time.sleep(hold_s)
            self._send(self.scancode, 'up')
        except RouteDead:
            raise
        except Exception as e:
            # ryll did not answer (or refused) the key: no key, no draw.
            notes.append('send_key failed: %s' % e)
            sample.timeout = True
            sample.note = '; '.join(notes)
            self._after(sample)
            return sample

        found = None
        with self._cond:
            while True:
                found = self._first_draw_since(sent_us)
                if found is not None:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.1))
                if self._cond_check_dead():
                    break
            # Draws stamped before the send but received after it belong
            # to something earlier: never counted as this key's answer.
            self.stale_draws += sum(
                1 for stamp, _ in self._draws
                if stamp is not None and stamp < sent_us)
        if found is None:
            reason = self.check_alive()
            if reason:
                raise RouteDead(reason)
            sample.timeout = True
            notes.append('no surface_drawn within %.1f s of the key (%d '
                         'draws seen on this route so far)'
                         % (deadline_s, self.draw_total))
            extra = self._explain_state()
            if extra:
                notes.append(extra)
        else:
            stamp, received = found
            sample.drawn_us = stamp
            sample.latency_ms = (stamp - sent_us) / 1000.0
            if received is not None:
                sample.delivery_ms = (received - stamp) / 1000.0
            # Let this key's remaining draws arrive, and count them.
            self._wait_quiet(quiet_s, max(deadline - time.monotonic(), 0))
            with self._cond:
                sample.draws = self._count_draws_since(sent_us)
        sample.note = '; '.join(notes)
        self._after(sample)
        return sample

    def _explain_state(self):
        if self._explain is None:
            return None
        try:
            return self._explain()
        except Exception as e:
            return 'could not describe the route: %r' % e

    def _cond_check_dead(self):
        # Called with the condition held; only looks at cheap state.
        return bool(getattr(self.client, 'closed', False))

    def _send(self, code, state):
        try:
            self.client.send_key(code, state=state)
        except Exception as e:
            reason = self.check_alive()
            if reason:
                raise RouteDead('%s (send_key %s failed: %s)'
                                % (reason, state, e)) from e
            raise

    def _after(self, sample):
        self.samples.append(sample)
        if sample.timeout:
            self.consecutive_timeouts += 1
        else:
            self.consecutive_timeouts = 0

    # -- figures

    @property
    def latencies_ms(self):
        return [s.latency_ms for s in self.samples if not s.timeout]

    @property
    def timeouts(self):
        return sum(1 for s in self.samples if s.timeout)


def run_alternating(sessions, samples, deadline_s=5.0, gap_s=0.25,
                    hold_s=0.05, quiet_s=0.15, max_seconds=None,
                    max_consecutive_timeouts=5, on_sample=None, stop=None,
                    say=None):
    """Measure `samples` keys per route, alternating routes each sample.

    `on_sample(sample)` is called after each sample (the CSV is written as
    it goes, so an interrupted run keeps its data). `stop` is an optional
    threading.Event that ends the run early; `max_seconds` bounds the whole
    loop. `say(text)` reports route deaths and the like (default: log).
    Returns the reason the loop ended.
    """
    say = say or LOG.warning
    started = time.monotonic()
    for index in range(samples):
        live = [s for s in sessions if s.dead is None]
        if not live:
            return 'every route ended'
        for session in live:
            if stop is not None and stop.is_set():
                return 'stopped'
            if max_seconds is not None and \
                    time.monotonic() - started >= max_seconds:
                return 'time budget of %.0f s used up' % max_seconds
            try:
                sample = session.measure(index, deadline_s=deadline_s,
                                         hold_s=hold_s, quiet_s=quiet_s)
            except RouteDead as e:
                _end(session, index, str(e), say)
                continue
            if on_sample is not None:
                on_sample(sample)
            if sample.timeout:
                say('route %s sample %d: timeout (%s)'
                    % (session.name, index, sample.note))
            if session.consecutive_timeouts >= max_consecutive_timeouts:
                _end(session, index + 1,
                     '%d timeouts in a row: the key reaches nothing that '
                     'draws' % session.consecutive_timeouts, say)
            if gap_s:
                time.sleep(gap_s)
    return 'done'


def _end(session, index, reason, say):
    session.dead = reason
    session.dead_at_index = index
    say('route %s ended after %d samples: %s; the other routes go on'
        % (session.name, len(session.samples), reason))

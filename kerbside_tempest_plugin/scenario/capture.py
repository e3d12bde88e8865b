"""A continuous stream of decoded visual digests from ryll screenshots.

PyPI ryll has no ``digest_updated`` event, so the harness decodes the QR
digest itself: a listener on ryll's ``surface_drawn`` events wakes a
capture thread, which waits for the burst of draws to settle (the QR is
2025 separate blits), takes a PNG screenshot from ryll's surface mirror,
and analyses it with ``digest.frame.analyse``. A slow periodic capture
runs as a safety net for draws that were missed or coalesced away.

Each *new* frame counter is kept once (screenshots repeat frames), with
its capture time, the PNG, and the framebuffer-hash verdict. Every capture
(new, repeated or failed) is also recorded, lightly, for the statistics.

``wait_for(predicate, timeout, what)`` waits until a kept digest matches;
its timeout error says what it waited for and what it saw. No beat ever
depends on one lucky frame: the stream keeps capturing while a test runs,
and every wait scans every digest kept since the beat began.

Nothing here imports tempest; the heavy imports (numpy, PIL, zxing-cpp)
happen on the capture thread, not at import time.
"""

import collections
import dataclasses
import logging
import threading
import time
import typing

from kerbside_tempest_plugin.common import errors

LOG = logging.getLogger(__name__)


class CaptureTimeout(errors.HarnessTimeout, AssertionError):
    """A wait on the digest stream ran out. Subclasses AssertionError, so
    a test reports it as a failure of what the guest showed (and
    HarnessTimeout, the one timeout class).
    """

    def __init__(self, message, what=None, summary=None):
        self.what = what
        self.summary = summary or {}
        super().__init__(message)


class StreamClosed(CaptureTimeout):
    """The control connection closed while a wait was still open."""


# --------------------------------------------------------------- matching


def record_matches(event, kind, **fields):
    """Whether a digest event is of `kind` with every field matching.

    Field names are those of the event's JSON form (``from``/``to`` for
    transitions, ``len``/``correct`` for pastes, ``row``, ``choice``,
    ``attempt``, ``applied`` ...). Python keywords can be passed with a
    trailing underscore (``from_='awaiting'``). A field value may be a
    callable taking the JSON value and returning a bool.
    """
    try:
        data = event.to_json()
    except Exception:
        return False
    if data.get('kind') != kind:
        return False
    for name, want in fields.items():
        name = name.rstrip('_')
        if name not in data:
            return False
        have = data[name]
        if callable(want):
            try:
                if not want(have):
                    return False
            except Exception:
                return False
        elif isinstance(want, tuple):
            if tuple(have) != want:
                return False
        elif have != want:
            return False
    return True


def describe_event(event):
    """A compact one-line form of a digest event for messages/reports."""
    try:
        data = dict(event.to_json())
    except Exception:
        return repr(event)
    kind = data.pop('kind', '?')
    t = data.pop('timestamp_ms', None)
    parts = ['%s=%s' % (k, _fmt_value(v)) for k, v in data.items()]
    head = kind if t is None else '%s@t=%s' % (kind, t)
    return ' '.join([head] + parts)


def _fmt_value(v):
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return '%sx%s' % tuple(v)
    if isinstance(v, bool):
        return 'true' if v else 'false'
    return str(v)


# --------------------------------------------------------------- values


@dataclasses.dataclass
class Capture:
    """One screenshot and what came of it (kept for every capture)."""
    index: int
    at: float                       # seconds since the stream started
    took: float                     # screenshot + analysis seconds
    frame_size: typing.Optional[typing.Tuple[int, int]] = None
    frame_counter: typing.Optional[int] = None
    new: bool = False               # first time this frame counter was seen
    framebuffer_hash_ok: typing.Optional[bool] = None
    error: typing.Optional[str] = None   # decode or screenshot failure
    draws: int = 0                  # surface_drawn events seen before it

    def to_json(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass(eq=False)
class CapturedDigest:
    """A digest with a frame counter not seen before, as captured."""
    index: int                      # position in DigestStream.digests
    capture_index: int
    at: float                       # seconds since the stream started
    wall: float                     # time.time() at capture
    analysis: typing.Any            # digest.frame.FrameAnalysis
    png: typing.Optional[bytes] = dataclasses.field(default=None,
                                                    repr=False)

    @property
    def digest(self):
        return self.analysis.digest

    @property
    def frame_counter(self):
        return self.analysis.digest.frame_counter

    @property
    def events(self):
        return tuple(self.analysis.digest.events)

    @property
    def hashes(self):
        return dict(self.analysis.digest.hashes)

    @property
    def framebuffer_hash_ok(self):
        return self.analysis.framebuffer_hash_ok

    @property
    def frame_size(self):
        return tuple(self.analysis.frame_size)

    @property
    def origin(self):
        return tuple(self.analysis.origin)

    def shows(self, kind, **fields):
        """The first record of `kind` matching `fields`, or None."""
        for event in self.events:
            if record_matches(event, kind, **fields):
                return event
        return None

    def records_text(self):
        return [describe_event(e) for e in self.events] or ['(no records)']

    def to_json(self):
        out = {'index': self.index, 'capture_index': self.capture_index,
               'captured_at_s': round(self.at, 4),
               'captured_wall': self.wall}
        out.update(self.analysis.to_json())
        return out


def shows(kind, **fields):
    """A predicate over CapturedDigest: it shows a record like this."""
    def predicate(cd):
        return cd.shows(kind, **fields) is not None
    predicate.__name__ = 'shows %s' % ' '.join(
        [kind] + ['%s=%s' % (k.rstrip('_'), '(test)' if callable(v) else v)
                  for k, v in fields.items()])
    return predicate


# --------------------------------------------------------------- stream


def _default_analyse(png):
    from kerbside_tempest_plugin.digest import frame
    return frame.analyse(png)


def _is_connection_closed(exc):
    from kerbside_tempest_plugin.ryll import client as ryll_client
    return isinstance(exc, ryll_client.RyllConnectionClosed)


def _is_not_found(exc):
    from kerbside_tempest_plugin.digest import errors
    return isinstance(exc, errors.QrNotFound)


class DigestStream:
    """Capture and decode the guest's digest continuously.

    `client` needs ``add_listener(fn)``/``remove_listener(fn)`` (events
    with ``.name``) and ``screenshot()`` returning an object with ``.png``
    (or ``.data``); a ``ControlClient`` subscribed to ``surface_drawn``.

    quiet_s: how long draws must pause before a capture (a burst settles);
    max_delay_s: the longest a capture waits for the burst to end;
    periodic_s: capture at least this often even without draws;
    keep_png: keep the PNG of every new digest (for beat screenshots);
    on_digest: called with each new CapturedDigest (on the capture thread).
    """

    def __init__(self, client, quiet_s=0.04, max_delay_s=0.15,
                 periodic_s=1.0, min_interval_s=0.02, keep_png=True,
                 analyse=None, on_digest=None, clock=time.monotonic):
        self._client = client
        self.quiet_s = quiet_s
        self.max_delay_s = max_delay_s
        self.periodic_s = periodic_s
        self.min_interval_s = min_interval_s
        self.keep_png = keep_png
        self._analyse = analyse or _default_analyse
        self._on_digest = on_digest
        self._clock = clock
        self._cond = threading.Condition()
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        self.started_at = None
        self.started_wall = None
        self.digests = []
        self.captures = []
        self._seen = set()
        self.draws = 0
        self._last_draw_at = 0.0
        self.decode_failures = 0
        self.screenshot_failures = 0
        self.repeats = 0
        self.errors = collections.Counter()
        self.last_error = None
        self.last_png = None
        self.last_png_at = None
        self.closed_reason = None
        self._listening = False

    # -- lifecycle

    def start(self):
        if self._thread is not None:
            return self
        self.started_at = self._clock()
        self.started_wall = time.time()
        self._client.add_listener(self._on_event)
        self._listening = True
        self.request_capture()          # a first capture straight away
        self._thread = threading.Thread(target=self._run,
                                        name='digest-capture', daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout=10.0):
        """Stop capturing; never raises. Returns True if the thread ended."""
        self._stop.set()
        self._dirty.set()
        if self._listening:
            try:
                self._client.remove_listener(self._on_event)
            except Exception:
                pass
            self._listening = False
        ended = True
        if self._thread is not None:
            self._thread.join(timeout)
            ended = not self._thread.is_alive()
            if not ended:
                LOG.warning('digest capture thread still running after '
                            '%.1f s (a screenshot call is stuck?)', timeout)
        with self._cond:
            self._cond.notify_all()
        return ended

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    @property
    def running(self):
        return (self._thread is not None and self._thread.is_alive()
                and not self._stop.is_set())

    def now(self):
        """Seconds since the stream started (the timeline's clock)."""
        return self._clock() - (self.started_at or self._clock())

    # -- events

    def _on_event(self, event):
        name = getattr(event, 'name', None)
        if name is None and isinstance(event, dict):
            name = event.get('event')
        if name == 'surface_drawn':
            self.draws += 1
            self._last_draw_at = self._clock()
            self._dirty.set()

    def request_capture(self):
        """Ask for a capture soon, whether or not anything was drawn."""
        self._last_draw_at = self._clock() - self.quiet_s
        self._dirty.set()

    # -- capture thread

    def _run(self):
        last_capture = 0.0
        try:
            while not self._stop.is_set():
                woke = self._dirty.wait(self.periodic_s)
                if self._stop.is_set():
                    break
                if woke:
                    self._settle()
                    if self._stop.is_set():
                        break
                gap = self.min_interval_s - (self._clock() - last_capture)
                if gap > 0:
                    self._stop.wait(gap)
                self._dirty.clear()
                last_capture = self._clock()
                if not self._capture_once():
                    break
                self._discard_queued_draws()
        except Exception as e:  # never die silently
            LOG.exception('digest capture thread failed')
            self.closed_reason = 'capture thread failed: %r' % (e,)
        finally:
            with self._cond:
                if self.closed_reason is None and not self._stop.is_set():
                    self.closed_reason = 'capture thread ended'
                self._cond.notify_all()

    def _settle(self):
        """Wait until draws have paused for quiet_s, at most max_delay_s."""
        first = self._clock()
        while not self._stop.is_set():
            now = self._clock()
            quiet_left = self._last_draw_at + self.quiet_s - now
            budget_left = first + self.max_delay_s - now
            if quiet_left <= 0 or budget_left <= 0:
                return
            self._stop.wait(min(quiet_left, budget_left))

    def _discard_queued_draws(self):
        """surface_drawn events nobody waits for pile up in the client's
        queue; we only need the listener, so drop them from there.
        """
        drain = getattr(self._client, 'drain_events', None)
        if drain is None:
            return
        try:
            drain(lambda ev: getattr(ev, 'name', None) == 'surface_drawn')
        except Exception:
            pass

    def _capture_once(self):
        """One screenshot and its analysis. False when the stream is over."""
        t0 = self._clock()
        draws = self.draws
        index = len(self.captures)
        try:
            shot = self._client.screenshot()
            png = getattr(shot, 'png', None)
            if png is None:
                png = getattr(shot, 'data', shot)
        except Exception as e:
            if _is_connection_closed(e):
                with self._cond:
                    self.closed_reason = 'control connection closed: %s' % e
                    self._cond.notify_all()
                return False
            self.screenshot_failures += 1
            self.errors['screenshot %s' % type(e).__name__] += 1
            self.last_error = 'screenshot failed: %s' % e
            self._record(Capture(index, t0 - self.started_at,
                                 self._clock() - t0,
                                 error=self.last_error, draws=draws))
            self._stop.wait(0.2)
            return True
        at = t0 - self.started_at
        self.last_png = png
        self.last_png_at = at
        try:
            analysis = self._analyse(png)
        except Exception as e:
            self.decode_failures += 1
            kind = 'not found' if _is_not_found(e) else type(e).__name__
            self.errors['decode %s' % kind] += 1
            self.last_error = 'decode failed: %s' % e
            self._record(Capture(index, at, self._clock() - t0,
                                 frame_size=_png_size(png),
                                 error=self.last_error, draws=draws))
            return True
        fc = analysis.digest.frame_counter
        cap = Capture(index, at, self._clock() - t0,
                      frame_size=tuple(analysis.frame_size),
                      frame_counter=fc, new=fc not in self._seen,
                      framebuffer_hash_ok=analysis.framebuffer_hash_ok,
                      draws=draws)
        new = None
        with self._cond:
            self.captures.append(cap)
            if cap.new:
                self._seen.add(fc)
                new = CapturedDigest(len(self.digests), index, at,
                                     self.started_wall + at, analysis,
                                     png if self.keep_png else None)
                self.digests.append(new)
            else:
                self.repeats += 1
            self._cond.notify_all()
        if new is not None and self._on_digest is not None:
            try:
                self._on_digest(new)
            except Exception:
                LOG.exception('on_digest callback failed')
        return True

    def _record(self, cap):
        with self._cond:
            self.captures.append(cap)
            self._cond.notify_all()

    # -- reading

    def mark(self):
        """The index of the next digest; pass as `since` to a wait."""
        with self._cond:
            return len(self.digests)

    @property
    def last(self):
        with self._cond:
            return self.digests[-1] if self.digests else None

    def snapshot(self):
        with self._cond:
            return list(self.digests)

    def wait_for(self, predicate, timeout, what, since=0):
        """Return the first digest (index >= `since`) matching `predicate`.

        Scans what was already captured, then waits for new digests until
        `timeout` seconds have passed. Raises CaptureTimeout saying what it
        waited for and what it saw, or StreamClosed when the connection
        closed first.
        """
        start = self._clock()
        deadline = start + timeout
        start_captures = len(self.captures)
        pos = since
        with self._cond:
            while True:
                while pos < len(self.digests):
                    cd = self.digests[pos]
                    pos += 1
                    try:
                        if predicate(cd):
                            return cd
                    except Exception as e:
                        raise AssertionError(
                            'predicate for %s failed on frame %d: %r'
                            % (what, cd.frame_counter, e)) from e
                remaining = deadline - self._clock()
                stopped = (self.closed_reason is not None
                           or self._stop.is_set())
                if remaining <= 0 or stopped:
                    break
                self._cond.wait(min(remaining, 0.5))
        elapsed = self._clock() - start
        summary = self.summary(since=since, captures_since=start_captures)
        why = ('the capture stopped (%s)' % (self.closed_reason or 'stopped')
               if (self.closed_reason or self._stop.is_set())
               and elapsed < timeout else 'timed out')
        message = '%s after %.1f s waiting for %s; %s' % (
            why, elapsed, what, self.describe(summary))
        cls = StreamClosed if why != 'timed out' else CaptureTimeout
        raise cls(message, what=what, summary=summary)

    def summary(self, since=0, captures_since=0):
        """Counts for messages and reports (from `since` on)."""
        with self._cond:
            digests = self.digests[since:]
            caps = self.captures[captures_since:]
            last = self.digests[-1] if self.digests else None
            total_caps = len(self.captures)
        out = {
            'digests': len(digests),
            'digests_total': len(self.digests),
            'captures': len(caps),
            'captures_total': total_caps,
            'decode_failures': sum(1 for c in caps if c.error and
                                   c.error.startswith('decode')),
            'screenshot_failures': sum(1 for c in caps if c.error and
                                       c.error.startswith('screenshot')),
            'decode_failures_total': self.decode_failures,
            'screenshot_failures_total': self.screenshot_failures,
            'repeats_total': self.repeats,
            'surface_drawn': self.draws,
            'frames': ([digests[0].frame_counter, digests[-1].frame_counter]
                       if digests else None),
            'last_error': self.last_error,
            'closed_reason': self.closed_reason,
            'errors': dict(self.errors),
        }
        if last is not None:
            out['last'] = {
                'frame_counter': last.frame_counter,
                'age_s': round(self.now() - last.at, 2),
                'frame_size': list(last.frame_size),
                'records': last.records_text(),
                'hashes': {k: '0x%08x' % v for k, v in last.hashes.items()
                           if v},
                'framebuffer_hash_ok': last.framebuffer_hash_ok,
            }
        return out

    @staticmethod
    def describe(summary):
        parts = ['saw %d new digest(s)%s from %d capture(s) '
                 '(%d decode failure(s), %d screenshot failure(s)), '
                 '%d surface_drawn event(s) in all' % (
                     summary['digests'],
                     ' (frames %d..%d)' % tuple(summary['frames'])
                     if summary['frames'] else '',
                     summary['captures'], summary['decode_failures'],
                     summary['screenshot_failures'],
                     summary['surface_drawn'])]
        last = summary.get('last')
        if last:
            parts.append('last digest: frame %d, %.1f s old, %dx%d, '
                         'records [%s]' % (
                             last['frame_counter'], last['age_s'],
                             last['frame_size'][0], last['frame_size'][1],
                             '; '.join(last['records'])))
        else:
            parts.append('no digest decoded at all')
        if summary.get('last_error'):
            parts.append('last error: %s' % summary['last_error'])
        if summary.get('closed_reason'):
            parts.append('stream: %s' % summary['closed_reason'])
        return '; '.join(parts)

    # -- statistics

    def fb_stats(self, since_capture=0):
        """Framebuffer-hash verdicts over captures (all, not only new)."""
        with self._cond:
            caps = self.captures[since_capture:]
        checked = [c for c in caps if c.framebuffer_hash_ok is not None]
        return {'checked': len(checked),
                'matched': sum(1 for c in checked if c.framebuffer_hash_ok),
                'unchecked': sum(1 for c in caps if c.frame_counter is not None
                                 and c.framebuffer_hash_ok is None)}


def _png_size(png):
    """(width, height) from a PNG's IHDR, or None."""
    try:
        if png[:8] == b'\x89PNG\r\n\x1a\n' and png[12:16] == b'IHDR':
            return (int.from_bytes(png[16:20], 'big'),
                    int.from_bytes(png[20:24], 'big'))
    except Exception:
        pass
    return None

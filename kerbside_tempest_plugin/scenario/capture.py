"""A continuous stream of decoded visual digests from ryll screenshots.

PyPI ryll has no ``digest_updated`` event, so the harness decodes the QR
digest itself, in two stages that never wait for each other:

- the grabber asks ryll for a screenshot (PNG by default: cheaper end to
  end than raw ``rgba``, see docs/plans/capture-fidelity.md) as fast as
  ryll answers while its ``surface_drawn`` events say the screen is
  changing, once more when the draws have paused for `quiet_s`, and every
  `periodic_s` as a safety net. A draw-driven grab whose bytes equal the
  previous grab's shows nothing new and is only counted (``unchanged``).
- the judge (a second thread) takes the grabs in order from a bounded
  queue: image decode, the QR region decoded first, the frame counter
  deduped, and only then the full-frame hash check (always for a new
  frame; for a repeat only when no grab is waiting) and the full-frame QR
  search (only when no grab is waiting). When the judge falls behind by
  `max_pending` grabs the oldest waiting grab is dropped, and counted, so
  memory stays bounded.

Each *new* frame counter is kept once (screenshots repeat frames), with
its capture time, the PNG, and the framebuffer-hash verdict. Every judged
grab (new, repeated or failed) is also recorded, lightly, as a Capture;
`missed_frames(count)` lists the frame counters never seen, with the gap
between the grabs around each.

``wait_for(predicate, timeout, what)`` waits until a kept digest matches;
its timeout error says what it waited for and what it saw. No beat ever
depends on one lucky frame: the stream keeps capturing while a test runs,
and every wait scans every digest kept since the beat began.

Nothing here imports tempest; the heavy imports (numpy, PIL, zxing-cpp)
happen on the judge thread, not at import time.
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
    """One judged screenshot and what came of it (kept for every one)."""
    index: int                      # position in DigestStream.captures
    at: float                       # seconds since the stream started
    took: float                     # grab + judge seconds
    frame_size: typing.Optional[typing.Tuple[int, int]] = None
    frame_counter: typing.Optional[int] = None
    new: bool = False               # first time this frame counter was seen
    framebuffer_hash_ok: typing.Optional[bool] = None
    error: typing.Optional[str] = None   # decode or screenshot failure
    draws: int = 0                  # surface_drawn events seen before it
    grab: typing.Optional[int] = None    # grab sequence number
    reason: typing.Optional[str] = None  # draw, settle, request, periodic
    grab_s: typing.Optional[float] = None    # the screenshot call
    queued_s: typing.Optional[float] = None  # waiting for the judge
    judge_s: typing.Optional[float] = None   # decode + QR + hash

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


def _is_connection_closed(exc):
    from kerbside_tempest_plugin.ryll import client as ryll_client
    return isinstance(exc, ryll_client.RyllConnectionClosed)


def _is_not_found(exc):
    from kerbside_tempest_plugin.digest import errors
    return isinstance(exc, errors.QrNotFound)


@dataclasses.dataclass
class Grab:
    """A screenshot on its way from the grabber to the judge."""
    seq: int                        # grab sequence number (every grab)
    at: float                       # seconds since start, when asked for
    grab_s: float                   # the screenshot call
    draws: int                      # surface_drawn events seen before it
    reason: str                     # draw, settle, request, periodic
    data: typing.Optional[bytes] = dataclasses.field(default=None,
                                                     repr=False)
    fmt: str = 'png'
    width: int = 0
    height: int = 0
    error: typing.Optional[str] = None
    queued_at: float = 0.0


def shot_bytes(shot):
    """(format, bytes, width, height) of what a screenshot call returned
    (a ryll Screenshot, or anything with ``.png`` or ``.data``).
    """
    fmt = getattr(shot, 'format', None)
    if fmt == 'rgba':
        return ('rgba', shot.data, int(shot.width), int(shot.height))
    png = getattr(shot, 'png', None)
    if png is None:
        png = getattr(shot, 'data', shot)
    return ('png', png, getattr(shot, 'width', 0) or 0,
            getattr(shot, 'height', 0) or 0)


def image_array(fmt, data, width=0, height=0):
    """An HxWx3/4 uint8 array of a grab: raw rgba is a view, PNG is
    decoded (digest.qr.load_image; ImageError on junk).
    """
    from kerbside_tempest_plugin.digest import qr
    if fmt == 'rgba':
        from kerbside_tempest_plugin.digest import errors as derrors
        import numpy as np
        if len(data) != width * height * 4 or not width:
            raise derrors.ImageError('rgba grab is %d bytes, not %dx%dx4'
                                     % (len(data), width, height))
        return np.frombuffer(data, dtype=np.uint8).reshape(height, width,
                                                           4)
    return qr.load_image(data)


def judge_image(rgb, is_new, thorough, times=None, clock=time.monotonic):
    """Analyse a decoded frame the pipelined way; a FrameAnalysis.

    The QR region first; the full-frame QR search only when `thorough`
    (the judge has nothing waiting). The full-frame hash check when the
    frame counter is new (``is_new(counter)``) or when `thorough`; else
    framebuffer_hash_ok is None (not checked). `times` (a dict) gets the
    seconds spent in 'qr' and 'hash'. Raises what digest.frame.analyse
    raises.
    """
    from kerbside_tempest_plugin.digest import errors as derrors
    from kerbside_tempest_plugin.digest import fbhash
    from kerbside_tempest_plugin.digest import frame
    from kerbside_tempest_plugin.digest import payload as pl
    from kerbside_tempest_plugin.digest import qr
    t0 = clock()
    try:
        hit = qr.find_digest(rgb, full_frame=False)
    except derrors.QrNotFound:
        if not thorough:
            raise
        hit = qr.find_digest(rgb, region_first=False, full_frame=True)
    digest = pl.decode(hit.payload)
    t1 = clock()
    height, width = rgb.shape[:2]
    ok = computed = None
    if (thorough or is_new(digest.frame_counter)) and \
            hit.origin == fbhash.digest_origin(width, height):
        computed = fbhash.framebuffer_hash(rgb)
        ok = computed == digest.framebuffer_hash
    if times is not None:
        times['qr'] = t1 - t0
        if computed is not None:
            times['hash'] = clock() - t1
    return frame.FrameAnalysis(digest, hit.origin, hit.size, hit.method,
                               ok, (width, height), computed)


def _png_of(fmt, data, width, height):
    if fmt == 'png' or data is None:
        return data
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.frombuffer('RGBA', (width, height), data, 'raw', 'RGBA', 0,
                     1).save(buf, 'PNG', compress_level=1)
    return buf.getvalue()


def _median(values):
    values = sorted(values)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else \
        (values[mid - 1] + values[mid]) / 2.0


class DigestStream:
    """Capture and decode the guest's digest continuously.

    `client` needs ``add_listener(fn)``/``remove_listener(fn)`` (events
    with ``.name``) and ``screenshot()`` returning an object with ``.png``
    (or ``.data``, or a ryll Screenshot); a ``ControlClient`` subscribed
    to ``surface_drawn``.

    quiet_s: the settle grab comes this long after the last draw;
    periodic_s: grab at least this often even without draws;
    min_interval_s: the least time between two grabs (0: as fast as ryll
    answers);
    max_pending: grabs waiting for the judge before the oldest is dropped;
    fmt: the screenshot format, 'png' or 'rgba';
    keep_png: keep the PNG of every new digest (for beat screenshots);
    analyse: a replacement for the staged analysis, called with the PNG
    bytes (it then decides everything itself);
    on_digest: called with each new CapturedDigest (on the judge thread).
    max_delay_s is accepted for callers of the settling capture it
    replaced, and unused.
    """

    def __init__(self, client, quiet_s=0.04, max_delay_s=None,
                 periodic_s=1.0, min_interval_s=0.0, keep_png=True,
                 analyse=None, on_digest=None, clock=time.monotonic,
                 max_pending=16, fmt='png', stop_drain_s=2.0):
        if fmt not in ('png', 'rgba'):
            raise ValueError('fmt must be png or rgba, not %r' % (fmt,))
        if max_pending < 1:
            raise ValueError('max_pending must be at least 1')
        self._client = client
        self.quiet_s = quiet_s
        self.periodic_s = periodic_s
        self.min_interval_s = min_interval_s
        self.max_pending = max_pending
        self.fmt = fmt
        self.stop_drain_s = stop_drain_s
        self.keep_png = keep_png
        self._analyse = analyse
        self._on_digest = on_digest
        self._clock = clock
        self._cond = threading.Condition()      # digests and captures
        self._qcond = threading.Condition()     # the grab queue
        self._queue = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._requested = False
        self._drawn = False
        self._grabber = None
        self._judge_thread = None
        self._grabber_done = False
        self._end_reason = None
        self._stop_deadline = None
        self.started_at = None
        self.started_wall = None
        self.digests = []
        self.captures = []
        self._seen = set()
        self.draws = 0
        self._last_draw_at = float('-inf')
        self._settled_mark = float('-inf')
        self._last_grab_at = float('-inf')
        self._prev_data = None
        self._last_shot = None
        self._last_png_cache = None
        self.grabs = 0
        self.unchanged = 0
        self.dropped = 0
        self.drops = []                 # (grab seq, at) of dropped grabs
        # (grab seq, at, seq of the grab it repeated) of unchanged grabs:
        # how long a frame was still on screen after its judged grab
        self.unchanged_grabs = []
        self._prev_seq = None
        self.max_queued = 0
        self.times = {k: [] for k in ('grab', 'queued', 'decode', 'qr',
                                      'hash', 'judge')}
        self.decode_failures = 0
        self.screenshot_failures = 0
        self.repeats = 0
        self.errors = collections.Counter()
        self.last_error = None
        self.last_png_at = None
        self.closed_reason = None
        self._listening = False

    # -- lifecycle

    def start(self):
        if self._grabber is not None:
            return self
        self.started_at = self._clock()
        self.started_wall = time.time()
        self._client.add_listener(self._on_event)
        self._listening = True
        self.request_capture()          # a first capture straight away
        self._judge_thread = threading.Thread(
            target=self._run_judge, name='digest-judge', daemon=True)
        self._judge_thread.start()
        self._grabber = threading.Thread(target=self._run_grabber,
                                         name='digest-grab', daemon=True)
        self._grabber.start()
        return self

    def stop(self, timeout=10.0):
        """Stop grabbing, judge what is queued (for at most stop_drain_s,
        the rest is dropped and counted); never raises. Returns True if
        both threads ended.
        """
        if not self._stop.is_set():
            self._stop_deadline = self._clock() + self.stop_drain_s
        self._stop.set()
        self._wake.set()
        if self._listening:
            try:
                self._client.remove_listener(self._on_event)
            except Exception:
                pass
            self._listening = False
        deadline = time.monotonic() + timeout
        ended = True
        for t in (self._grabber, self._judge_thread):
            if t is None:
                continue
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                ended = False
                LOG.warning('digest %s thread still running after %.1f s '
                            '(a screenshot call is stuck?)', t.name,
                            timeout)
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
        return (self._grabber is not None and self._grabber.is_alive()
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
            self._drawn = True
            self._wake.set()

    def request_capture(self):
        """Ask for a grab soon, whether or not anything was drawn."""
        self._requested = True
        self._wake.set()

    @property
    def last_png(self):
        """The PNG of the latest grab (encoded on demand for rgba)."""
        shot = self._last_shot
        if shot is None:
            return None
        if shot[0] == 'png':
            return shot[1]
        cache = self._last_png_cache
        if cache is None or cache[0] is not shot:
            cache = (shot, _png_of(*shot))
            self._last_png_cache = cache
        return cache[1]

    # -- the grabber

    def _run_grabber(self):
        try:
            while not self._stop.is_set():
                reason = self._next_reason()
                if reason is None or self._stop.is_set():
                    continue
                gap = self.min_interval_s - (self._clock() -
                                             self._last_grab_at)
                if gap > 0:
                    self._stop.wait(gap)
                if not self._grab_once(reason):
                    break
        except Exception as e:  # never die silently
            LOG.exception('digest grab thread failed')
            self._end_reason = 'capture thread failed: %r' % (e,)
        finally:
            with self._qcond:
                self._grabber_done = True
                self._qcond.notify_all()

    def _next_reason(self):
        """Why to grab now, or None after waiting for a reason."""
        self._wake.clear()
        now = self._clock()
        if self._requested:
            self._requested = False
            return 'request'
        if self._drawn:
            self._drawn = False
            return 'draw'
        due = [self._last_grab_at + self.periodic_s]
        if self._last_draw_at > self._settled_mark:
            due.append(self._last_draw_at + self.quiet_s)
            if now >= due[-1]:
                return 'settle'
        if now >= due[0]:
            return 'periodic'
        self._wake.wait(max(0.0, min(due) - now))
        return None

    def _screenshot(self):
        if self.fmt == 'png':
            return self._client.screenshot()
        return self._client.screenshot(fmt=self.fmt)

    def _grab_once(self, reason):
        """One screenshot, queued for the judge. False when it is over."""
        t0 = self._clock()
        draws = self.draws
        seq = self.grabs
        self.grabs += 1
        if t0 >= self._last_draw_at + self.quiet_s:
            self._settled_mark = self._last_draw_at
        self._last_grab_at = t0
        at = t0 - self.started_at
        try:
            shot = self._screenshot()
        except Exception as e:
            if _is_connection_closed(e):
                self._end_reason = 'control connection closed: %s' % e
                return False
            self.screenshot_failures += 1
            self.errors['screenshot %s' % type(e).__name__] += 1
            self.last_error = 'screenshot failed: %s' % e
            self._enqueue(Grab(seq, at, self._clock() - t0, draws, reason,
                               error=self.last_error))
            self._stop.wait(0.2)
            return True
        fmt, data, width, height = shot_bytes(shot)
        grab_s = self._clock() - t0
        self.times['grab'].append(grab_s)
        self._last_shot = (fmt, data, width, height)
        self.last_png_at = at
        unchanged = reason in ('draw', 'settle') and data == self._prev_data
        self._prev_data = data
        if unchanged:
            self.unchanged += 1     # the same pixels: the same verdict
            self.unchanged_grabs.append((seq, at, self._prev_seq))
        else:
            self._prev_seq = seq
            self._enqueue(Grab(seq, at, grab_s, draws, reason, data, fmt,
                               width, height))
        self._discard_queued_draws()
        return True

    def _enqueue(self, grab):
        """Queue a grab; drop the oldest waiting one when the queue is
        full (the judge fell behind), counting it.
        """
        with self._qcond:
            while len(self._queue) >= self.max_pending:
                old = self._queue.popleft()
                self.dropped += 1
                self.drops.append((old.seq, old.at))
            grab.queued_at = self._clock()
            self._queue.append(grab)
            self.max_queued = max(self.max_queued, len(self._queue))
            self._qcond.notify_all()

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

    # -- the judge

    def pending(self):
        """Grabs waiting for the judge."""
        with self._qcond:
            return len(self._queue)

    def _run_judge(self):
        try:
            while True:
                with self._qcond:
                    while not self._queue and not self._grabber_done:
                        self._qcond.wait(0.5)
                    if not self._queue:
                        break
                    grab = self._queue.popleft()
                    behind = bool(self._queue)
                if self._stop_deadline is not None and \
                        self._clock() > self._stop_deadline:
                    self.dropped += 1           # no time left at stop
                    self.drops.append((grab.seq, grab.at))
                    continue
                self._judge(grab, behind)
        except Exception as e:  # never die silently
            LOG.exception('digest judge thread failed')
            self._end_reason = 'capture thread failed: %r' % (e,)
        finally:
            with self._cond:
                if self.closed_reason is None and not self._stop.is_set():
                    self.closed_reason = (self._end_reason or
                                          'capture thread ended')
                self._cond.notify_all()

    def _analyse_grab(self, grab, behind, times):
        if self._analyse is not None:
            return self._analyse(_png_of(grab.fmt, grab.data, grab.width,
                                         grab.height))
        t0 = self._clock()
        rgb = image_array(grab.fmt, grab.data, grab.width, grab.height)
        times['decode'] = self._clock() - t0
        return judge_image(rgb, lambda fc: fc not in self._seen,
                           thorough=not behind, times=times,
                           clock=self._clock)

    def _judge(self, grab, behind):
        """Decode one grab and keep what it shows."""
        t0 = self._clock()
        index = len(self.captures)      # only this thread appends
        base = dict(grab=grab.seq, reason=grab.reason, grab_s=grab.grab_s,
                    queued_s=t0 - grab.queued_at, draws=grab.draws)
        self.times['queued'].append(base['queued_s'])
        if grab.error is not None:
            self._record(Capture(index, grab.at, grab.grab_s,
                                 error=grab.error, judge_s=0.0, **base))
            return
        times = {}
        try:
            analysis = self._analyse_grab(grab, behind, times)
        except Exception as e:
            self.decode_failures += 1
            kind = 'not found' if _is_not_found(e) else type(e).__name__
            self.errors['decode %s' % kind] += 1
            self.last_error = 'decode failed: %s' % e
            judge_s = self._clock() - t0
            size = (grab.width, grab.height) if grab.fmt == 'rgba' else \
                _png_size(grab.data)
            self._record(Capture(index, grab.at, grab.grab_s + judge_s,
                                 frame_size=size, error=self.last_error,
                                 judge_s=judge_s, **base))
            return
        judge_s = self._clock() - t0
        for k, v in times.items():
            self.times[k].append(v)
        self.times['judge'].append(judge_s)
        fc = analysis.digest.frame_counter
        cap = Capture(index, grab.at, grab.grab_s + judge_s,
                      frame_size=tuple(analysis.frame_size),
                      frame_counter=fc, new=fc not in self._seen,
                      framebuffer_hash_ok=analysis.framebuffer_hash_ok,
                      judge_s=judge_s, **base)
        new = None
        with self._cond:
            self.captures.append(cap)
            if cap.new:
                self._seen.add(fc)
                png = _png_of(grab.fmt, grab.data, grab.width,
                              grab.height) if self.keep_png else None
                new = CapturedDigest(len(self.digests), index, grab.at,
                                     self.started_wall + grab.at, analysis,
                                     png)
                self.digests.append(new)
            else:
                self.repeats += 1
            self._cond.notify_all()
        if new is not None and self._on_digest is not None:
            try:
                self._on_digest(new)
            except Exception:
                LOG.exception('on_digest callback failed')

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

    def wait_for(self, predicate, timeout, what, since=0, health=None):
        """Return the first digest (index >= `since`) matching `predicate`.

        Scans what was already captured, then waits for new digests until
        `timeout` seconds have passed. Raises CaptureTimeout saying what it
        waited for and what it saw, or StreamClosed when the connection
        closed first. `health()`, asked at least twice a second, may return
        an exception to raise at once (scenario.liveness: a frozen display,
        a key never registered, a lost channel).
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
                if health is not None:
                    failure = health()
                    if failure is not None:
                        raise failure
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
            'grabs_total': self.grabs,
            'unchanged_total': self.unchanged,
            'dropped_total': self.dropped,
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
        if summary.get('dropped_total'):
            parts.append('%d grab(s) dropped unjudged (the judge fell '
                         'behind)' % summary['dropped_total'])
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

    def timing_stats(self):
        """Median and max milliseconds per stage (grab, queued, decode,
        qr, hash, judge) with their counts, and the pipeline counters.
        """
        out = {}
        for k, values in self.times.items():
            values = list(values)
            out[k] = {'n': len(values),
                      'median_ms': None if not values else
                      round(1000 * _median(values), 3),
                      'max_ms': None if not values else
                      round(1000 * max(values), 3)}
        out.update(grabs=self.grabs, unchanged=self.unchanged,
                   dropped=self.dropped, max_queued=self.max_queued,
                   max_pending=self.max_pending, format=self.fmt)
        return out

    def missed_frames(self, refresh_count, limit=500):
        """Every frame counter 1..refresh_count never seen, with the gap
        it fell in: the last grab showing an earlier frame (a judged grab,
        or an unchanged grab repeating it) and the first showing a later
        one, the milliseconds between their requests, and
        what happened to the grabs in between (undecodable, dropped
        unjudged, or skipped as unchanged). `grab_ms` (the median grab)
        says whether the gap was shorter than one grab. At most `limit`
        rows.
        """
        if not refresh_count:
            return []
        with self._cond:
            caps = list(self.captures)
        drops = sorted(self.drops)
        still = {}                      # grab seq -> last unchanged copy
        for _, at, base in list(self.unchanged_grabs):
            still[base] = max(at, still.get(base, at))
        seen = [c for c in caps if c.frame_counter is not None]
        counters = {c.frame_counter for c in seen}
        grab_ms = _median(self.times['grab'])
        grab_ms = None if grab_ms is None else 1000 * grab_ms
        out = []
        for m in range(1, int(refresh_count) + 1):
            if m in counters:
                continue
            if len(out) >= limit:
                break
            before = None
            after = None
            for c in seen:
                if c.frame_counter < m:
                    before = c
                elif c.frame_counter > m and after is None:
                    after = c
                    break
            lo = before.grab if before is not None else -1
            hi = after.grab if after is not None else self.grabs
            # the last moment `before` was still on screen: its own grab
            # or the last unchanged grab that repeated it
            lo_at = 0.0 if before is None else still.get(before.grab,
                                                         before.at)
            failed = sum(1 for c in caps if c.error and c.grab is not None
                         and lo < c.grab < hi)
            dropped = sum(1 for seq, _ in drops if lo < seq < hi)
            between = max(0, hi - lo - 1)
            gap_ms = None if after is None else 1000 * (after.at - lo_at)
            row = {
                'frame': m,
                'after_frame': before.frame_counter if before else None,
                'after_at_s': None if before is None else round(lo_at, 4),
                'before_frame': after.frame_counter if after else None,
                'before_at_s': None if after is None else round(after.at,
                                                                4),
                'gap_ms': None if gap_ms is None else round(gap_ms, 1),
                'grabs_between': between,
                'undecodable_between': failed,
                'dropped_between': dropped,
                # (no decoded grab lies between: it would be before or
                # after), so the rest were skipped as unchanged
                'unchanged_between': max(0, between - failed - dropped),
                'grab_ms': None if grab_ms is None else round(grab_ms, 1),
            }
            row['why'] = _why_missed(row)
            out.append(row)
        return out


def fidelity_evidence(stream, results=()):
    """What report.md and report.html show under the capture fidelity:
    the guest's refresh count (from the capture_fidelity check result,
    an object or its JSON form), every missed frame with its gap, and the
    pipeline's counters and stage times. None without a stream.
    """
    if stream is None:
        return None
    count = None
    for r in results or ():
        name = getattr(r, 'name', None) or (r.get('name')
                                            if isinstance(r, dict) else None)
        data = getattr(r, 'data', None)
        if data is None and isinstance(r, dict):
            data = r.get('data')
        if name == 'capture_fidelity':
            count = (data or {}).get('refresh_count')
    return {'refresh_count': count,
            'distinct': len({cd.frame_counter for cd in stream.snapshot()}),
            'missed': stream.missed_frames(count) if count else [],
            'pipeline': stream.timing_stats()}


def _why_missed(row):
    if row['after_frame'] is None:
        return 'before the first decoded grab'
    if row['before_frame'] is None:
        return 'after the last decoded grab'
    if row['dropped_between']:
        return '%d grab(s) in the gap dropped unjudged' % \
            row['dropped_between']
    if row['undecodable_between']:
        return '%d grab(s) in the gap undecodable (QR half-painted?)' % \
            row['undecodable_between']
    grab = row['grab_ms']
    if grab and row['gap_ms'] is not None and row['gap_ms'] <= 2 * grab:
        return 'shorter than one grab (%.1f ms gap, %.1f ms grab)' % (
            row['gap_ms'], grab)
    return ('never on ryll\'s screen: it went from frame %d to frame %d in '
            'one update (the draws in the %.1f ms gap were all grabbed, %d '
            'unchanged; median grab %.1f ms)' % (
                row['after_frame'], row['before_frame'], row['gap_ms'],
                row['unchanged_between'], grab or 0.0))


def missed_frames_lines(rows, refresh_count=None):
    """Plain-text lines for a report: one per missed frame."""
    lines = []
    for r in rows:
        lines.append(
            'frame %d: between frame %s at %s s and frame %s at %s s, gap '
            '%s ms (median grab %s ms), %d grab(s) between (%d '
            'undecodable, %d dropped, %d unchanged): %s' % (
                r['frame'], _or_dash(r['after_frame']),
                _or_dash(r['after_at_s']), _or_dash(r['before_frame']),
                _or_dash(r['before_at_s']), _or_dash(r['gap_ms']),
                _or_dash(r['grab_ms']), r['grabs_between'],
                r['undecodable_between'], r['dropped_between'],
                r['unchanged_between'], r['why']))
    return lines


def _or_dash(value):
    return '-' if value is None else str(value)


def _png_size(png):
    """(width, height) from a PNG's IHDR, or None."""
    try:
        if png[:8] == b'\x89PNG\r\n\x1a\n' and png[12:16] == b'IHDR':
            return (int.from_bytes(png[16:20], 'big'),
                    int.from_bytes(png[20:24], 'big'))
    except Exception:
        pass
    return None

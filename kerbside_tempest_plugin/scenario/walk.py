"""The beats of the Sextant walks, driven over ryll's control socket.

A `Walker` sends keys and pastes through a ControlClient and waits, beat by
beat, for a digest in the DigestStream that shows the expected record. The
walks (functions taking a Walker) are:

- canonical: Awaiting, Enter, the 19 boot lines and the bootloader prompt,
  `i`, paste the secret (wait for paste_completed), Enter, Parked, Enter;
- wrong_paste: as canonical, but a wrong paste first (paste_received
  correct=false and the attempt indicator), then the right one;
- retry: `r` twice at the bootloader prompt (decision attempts 1 and 2,
  the prompt re-rendered each time), then `i` (attempt 3), then on;
- mode_key: `4` in Awaiting (mode_switch to 1280x720, the QR moves and the
  decoder follows), then the canonical walk at that size.

Every walk ends with the Enter in Parked that powers the guest off (ryll
exits and the control connection gets EOF, which is expected there). Each
walk has the ordered sequence its serial drain must hold
(`expected(name)`, sextant.expect items).

Beats are judged on records in the digest's raw window (2 to 4 records,
newest first). A record can scroll out of the window between two captures
(contract section 7.2). Then the channel hash decides: if the beat's
channel, chained from its value before the beat with the expected event
(all fields, `t` taken from the records seen since), equals a later
digest's hash, the event provably happened and the beat passes as
*inferred*; the report says so. The chains check over the serial drain
later proves the whole history either way.
"""

import dataclasses
import logging
import re
import time
import typing

from kerbside_tempest_plugin.scenario import capture as cap
from kerbside_tempest_plugin.scenario import checks
from kerbside_tempest_plugin.scenario import keyhops
from kerbside_tempest_plugin.scenario import liveness as liveness_mod
from kerbside_tempest_plugin.scenario import starvation
from kerbside_tempest_plugin.sextant import contract

LOG = logging.getLogger(__name__)

PASTE_SECRET = contract.PASTE_SECRET
WRONG_PASTE = 'sextant{GOODBYE_OPERATOR}'
PROMPT_ROW = contract.BOOTLOADER_PROMPT_ROW
PASTE_PROMPT_ROW = contract.PASTE_PROMPT_ROW
WRONG_INDICATOR_ROW = contract.PASTE_PROMPT_ROW + 1   # "(wrong, attempt N)"
MODE_KEY = '4'
MODE_SIZE = contract.MODE_KEYS[MODE_KEY]
# Pacing a paste on qemu's PS/2 trace (Walker._paced_paste): at most
# PACE_WINDOW of the queue's 16 bytes in flight, the trace polled every
# PACE_POLL_S, and a chunk's bytes waited for PACE_BOUND_S of the path's
# CPU-available time at most.
PACE_WINDOW = 12
PACE_POLL_S = 0.005
PACE_BOUND_S = 2.0
DRAIN_END_RE = re.compile(r'type=refresh_stats[^\r\n]*\r?\n')


@dataclasses.dataclass
class Beat:
    """One beat of a walk, as it happened."""
    index: int
    name: str
    what: str
    started: float                  # stream clock, seconds
    ended: float = None
    ok: bool = False
    inferred: bool = False
    frame_counter: int = None
    frame_size: tuple = None
    records: typing.List[str] = dataclasses.field(default_factory=list)
    error: str = None
    screenshot: str = None          # file name in the artifact dir
    note: str = None

    @property
    def elapsed(self):
        return None if self.ended is None else self.ended - self.started

    def describe(self):
        if self.ok:
            return '%s: frame %s after %.2f s%s' % (
                self.name, self.frame_counter, self.elapsed,
                ' (inferred)' if self.inferred else '')
        return '%s: FAILED: %s' % (self.name, self.error)

    def to_json(self):
        out = dataclasses.asdict(self)
        out['elapsed'] = self.elapsed
        return out


def pacing_on():
    """Pacing pastes on qemu's PS/2 trace is on unless $KTP_PACE_KEYS
    says no (lane.env_flag: 0/false/no/off; benchmarks compare the two).
    """
    from kerbside_tempest_plugin.lane import lane as lane_mod
    return lane_mod.env_flag('KTP_PACE_KEYS', True)


def queue_bytes(char):
    """Bytes `char` puts in qemu's PS/2 queue as ryll types it (OVMF's
    translated set 2, docs/plans/keys-under-load.md): its make and its
    break, and a Shift's make and break around it when it needs one.
    """
    from kerbside_tempest_plugin.sextant import keys as keys_mod
    return 4 if keys_mod.needs_shift(char) else 2


def paste_chunks(text, window=None):
    """`text` cut into runs whose queue bytes fit `window`."""
    window = PACE_WINDOW if window is None else window
    out, cur, size = [], '', 0
    for c in text:
        n = queue_bytes(c)
        if cur and size + n > window:
            out.append(cur)
            cur, size = '', 0
        cur += c
        size += n
    if cur:
        out.append(cur)
    return out


def _hash_moved(channel):
    def moved(cd):
        return cd.hashes.get(channel, 0) != 0
    return moved


def _proven(w, since, channel, make):
    """A predicate: the digest's `channel` hash equals the chain from the
    hash before the beat (the last digest before `since`) extended by
    `make(t)` for some `t` seen in the records since then. This proves the
    event happened, with all its fields, even when it left the raw window
    before any capture saw it.
    """
    before = w.stream.snapshot()[:since]
    if not before:
        return lambda cd: False
    base = before[-1].hashes.get(channel)

    def proves(cd):
        from kerbside_tempest_plugin.digest import chains
        want = cd.hashes.get(channel)
        if want is None or want == base:
            return False
        ts = {e.timestamp_ms for d in w.stream.snapshot()[since:cd.index + 1]
              for e in d.events if e.timestamp_ms is not None}
        return any(chains.crc32c_continue(make(t).tlv(), base) == want
                   for t in sorted(ts))
    return proves


def _shows(kind, **fields):
    """cap.shows, which can also say which record it matched (`record`),
    so a failure names what the guest showed rather than the test.
    """
    pred = cap.shows(kind, **fields)
    pred.record = lambda cd: cd.shows(kind, **fields)
    return pred


def _any(*preds):
    def either(cd):
        return any(p(cd) for p in preds)
    either.__name__ = ' or '.join(getattr(p, '__name__', 'predicate')
                                  for p in preds)
    either.alternatives = preds
    return either


def held(pred, cd):
    """What in digest `cd` made `pred` hold, as short texts: for each
    alternative of an `_any` that holds on its own, the record it matched
    (described), else its name. Records matched by two alternatives are
    named once.
    """
    out = []
    for p in getattr(pred, 'alternatives', None) or (pred,):
        try:
            if not p(cd):
                continue
        except Exception:
            continue
        if getattr(p, 'alternatives', None):
            texts = held(p, cd)
        else:
            record = getattr(p, 'record', None)
            event = record(cd) if record is not None else None
            texts = [cap.describe_event(event) if event is not None else
                     getattr(p, '__name__', 'a failure').replace(
                         'shows ', '', 1)]
        out += [t for t in texts if t not in out]
    return out


def timeout_message(e, what, elapsed):
    """A beat's timeout, short: what it waited for, and what the guest
    last showed (the last digest's frame counter and records), or that
    no new digest came in N captures. `e` is the CaptureTimeout (or
    StreamClosed) of DigestStream.wait_for, whose summary is used.
    """
    s = getattr(e, 'summary', None) or {}
    if 'captures' not in s:
        return str(e)
    if isinstance(e, cap.StreamClosed):
        head = 'the capture stopped (%s) after %.1f s waiting for %s' % (
            s.get('closed_reason') or 'stopped', elapsed, what)
    else:
        head = 'timed out after %.1f s waiting for %s' % (elapsed, what)
    bad = []
    if s.get('decode_failures'):
        bad.append('%d undecodable' % s['decode_failures'])
    if s.get('screenshot_failures'):
        bad.append('%d screenshot failure(s)' % s['screenshot_failures'])
    if bad and s.get('last_error'):
        bad.append('last error: %s' % s['last_error'])
    bad = ' (%s)' % ', '.join(bad) if bad else ''
    last = s.get('last')
    if last is None:
        return '%s; no digest decoded in %d capture(s)%s' % (
            head, s['captures'], bad)
    shown = 'frame %d, %.1f s old: %s' % (
        last['frame_counter'], last['age_s'], '; '.join(last['records']))
    if not s.get('digests'):
        return '%s; no new digest in %d capture(s)%s; the guest last ' \
            'showed (before the beat began) %s' % (head, s['captures'], bad,
                                                   shown)
    return '%s; the guest last showed %s (%d new digest(s) in %d ' \
        'capture(s)%s)' % (head, shown, s['digests'], s['captures'], bad)


def _all(*preds):
    def both(cd):
        return all(p(cd) for p in preds)
    return both


class Walker:
    """Drives one guest through beats and keeps the beat log."""

    def __init__(self, client, stream, artifacts=None, step_timeout=90.0,
                 paste_secret=PASTE_SECRET,
                 char_delay_ms=contract.PASTE_CHAR_DELAY_MS, log=None,
                 on_beat=None, key_bound_s=liveness_mod.DEFAULT_BOUND_S,
                 ryll_log=None, probe=None, path_pids=None, ps2_trace=None):
        self.client = client
        self.stream = stream
        self.artifacts = artifacts
        self.step_timeout = step_timeout
        self.paste_secret = paste_secret
        self.char_delay_ms = char_delay_ms
        self.beats = []
        self.quiet_windows = []
        self.keys = []              # (stream time, key) sent
        self._log = log or LOG.info
        # Called with each Beat as it lands (passed or failed): the
        # console's `walk NAME` prints them step by step.
        self._on_beat = on_beat
        self.powered_off = False
        # Judges every wait: a frozen display, a key never registered, a
        # lost channel (scenario.liveness); None: key_bound_s=0. With
        # `path_pids` ({role: [pid]} of qemu, the proxy, ryll, the
        # harness) its bound counts the path's CPU-available time, and a
        # wait the machine starved ends before the step timeout as
        # PathStarved (scenario.starvation).
        path = starvation.PathClock(path_pids, clock=stream.now) \
            if path_pids is not None else None
        # qemu's PS/2 trace, read while typing: a paste is typed in
        # chunks that fit qemu's queue, each once the guest has read the
        # last (`_paced_paste`); None: one ryll paste at its pace.
        self.ps2 = keyhops.Ps2Gauge(ps2_trace) if ps2_trace else None
        self.pacing = []            # per paste: the chunks and their waits
        self.liveness = liveness_mod.Liveness(
            stream, bound_s=key_bound_s, ryll_log=ryll_log,
            probe=probe, path=path,
            cap_s=max(step_timeout - 5.0, key_bound_s)
            if path is not None else None) if key_bound_s else None

    # -- primitives

    def log(self, msg, *args):
        self._log(msg % args if args else msg)

    def _landed(self, beat):
        if self._on_beat is not None:
            try:
                self._on_beat(beat)
            except Exception:
                LOG.exception('on_beat callback failed')

    def press(self, key):
        """Explicit down, then up with the release code."""
        self.keys.append((self.stream.now(), key))
        if self.liveness is not None:
            self.liveness.key_sent(key)
        self.client.send_key(key)

    def paste(self, text):
        """Type `text`; return only after paste_completed (of every chunk,
        when paced).
        """
        self.keys.append((self.stream.now(), 'paste(%d chars)' % len(text)))
        sample = None
        if self.liveness is not None:
            sample = self.liveness.key_sent('paste(%d chars)' % len(text))
        try:
            if self.ps2 is not None:
                sent = self._paced_paste(text)
            else:
                sent = self.client.paste(text,
                                         char_delay_ms=self.char_delay_ms)
        except Exception as e:
            found = self.liveness and self.liveness.paste_failed(sample, e)
            if found is not None:
                raise found from e
            raise
        if sent != len(text):
            raise AssertionError('ryll typed %r of the %d characters pasted'
                                 % (sent, len(text)))
        return sent

    def _paced_paste(self, text):
        """`text` as ryll pastes of chunks of at most PACE_WINDOW queue
        bytes, each sent once qemu's trace shows every byte of the chunks
        before it read by the guest (or dropped): a burst of delayed keys
        can then never hold more than the queue's 16 bytes
        (docs/plans/keys-under-load.md). A chunk whose bytes do not all
        reach qemu within PACE_BOUND_S of the path's CPU-available time
        (a key lost on the way) is not waited for longer: typing goes on
        and the guest's paste shows the loss, which keyhops puts on its
        hop. Nothing is typed twice.
        """
        gauge = self.ps2
        record = {'chars': len(text), 'chunks': [], 'window': PACE_WINDOW}
        self.pacing.append(record)
        chunks = paste_chunks(text)
        try:
            replay = gauge.poll()
        except keyhops.KeyHopsError as e:
            # our instrument broke, not the console: no pacing (keyhops
            # reports the bad line after the walk)
            replay, chunks = gauge.replay, [text]
            unreadable = 'trace unreadable, typed unpaced: %s' % e
        else:
            unreadable = None
        base = replay.bytes_read + replay.trace.drops
        events = replay.events
        owed = 0
        sent = 0
        while chunks:
            chunk = chunks.pop(0)
            t0 = self.stream.now()
            try:
                if unreadable:
                    raise keyhops.KeyHopsError(unreadable)
                waited, state, short = self._absorbed(base + owed)
            except keyhops.KeyHopsError as e:
                chunk += ''.join(chunks)
                chunks = []
                unreadable = unreadable or \
                    'trace unreadable, the rest typed unpaced: %s' % e
                waited, state, short = self.stream.now() - t0, unreadable, 0
            base -= short           # bytes that will not come: not owed
            if short and gauge.replay.events == events:
                # not one key event since the paste began: the trace is
                # not being written (not a lost key); type the rest at
                # ryll's pace rather than wait for each chunk
                chunk += ''.join(chunks)
                chunks = []
                state = 'no trace: qemu wrote no key event in %.1f s; ' \
                    'the rest typed unpaced' % waited
            n = self.client.paste(chunk, char_delay_ms=self.char_delay_ms)
            sent += n or 0
            owed += sum(queue_bytes(c) for c in chunk)
            record['chunks'].append({
                'chars': len(chunk), 'at': round(t0, 3),
                'waited_s': round(waited, 3), 'before': state})
        return sent

    def _absorbed(self, target):
        """Wait until the guest read (or the queue dropped) `target` key
        bytes since the trace began; (seconds waited, 'read' | 'lost: ...',
        the bytes still missing).
        The bound counts the path's CPU-available time (liveness's clock)
        when there is one; liveness is asked between polls, so a lost
        channel still fails at once.
        """
        t0 = self.stream.now()
        path = self.liveness.path if self.liveness is not None else None
        deadline = time.monotonic() + max(PACE_BOUND_S * 20, 60.0)
        last_check = 0.0
        while True:
            replay = self.ps2.poll()
            have = replay.bytes_read + replay.trace.drops
            if have >= target:
                return self.stream.now() - t0, 'read', 0
            now = self.stream.now()
            if now - last_check >= 0.25:
                last_check = now
                if self.liveness is not None:
                    failure = self.liveness.check()
                    if isinstance(failure, liveness_mod.ChannelLost):
                        raise failure
                waited = now - t0
                if waited >= PACE_BOUND_S:
                    avail = path.since(t0, path.sample()).available_s \
                        if path is not None and path.available else waited
                    if avail >= PACE_BOUND_S or time.monotonic() > deadline:
                        return waited, 'lost: %d of the keys\' queue ' \
                            'bytes were still unread after %.1f s (%.1f s ' \
                            'of CPU-available time)' % (
                                target - have, waited, avail), target - have
            time.sleep(PACE_POLL_S)

    def beat(self, name, what, predicate, implied_by=None, since=None,
             timeout=None, fail_on=None, meaning=None):
        """Wait for a digest (index >= since) showing what `predicate`
        tests; `implied_by` accepts a later digest that proves it;
        `fail_on` ends the wait at once with a failure (a digest proving
        the beat can no longer happen, such as a rejected paste).
        """
        since = self.stream.mark() if since is None else since
        timeout = self.step_timeout if timeout is None else timeout
        beat = Beat(len(self.beats), name, what, self.stream.now())
        self.beats.append(beat)

        def ok(cd):
            return predicate(cd) or (implied_by is not None and
                                     implied_by(cd))

        def accept(cd):
            return ok(cd) or (fail_on is not None and fail_on(cd))
        t0 = time.monotonic()
        health = None
        if self.liveness is not None:
            self.liveness.beat_started(name)
            health = self.liveness.check
        try:
            try:
                cd = self.stream.wait_for(accept, timeout, what,
                                          since=since, health=health)
            except liveness_mod.LivenessFailure:
                raise           # its message is already the one cause
            except cap.CaptureTimeout as e:
                raise type(e)(timeout_message(e, what,
                                              time.monotonic() - t0),
                              what=e.what, summary=e.summary) from e
            if not ok(cd):
                raise AssertionError(
                    'waiting for %s, the guest showed %s instead%s (frame '
                    '%d at %.2f s: %s)' % (
                        what, ' and '.join(held(fail_on, cd)) or
                        'a failure', ': %s' % meaning if meaning else '',
                        cd.frame_counter, cd.at,
                        '; '.join(cd.records_text())))
        except AssertionError as e:
            beat.ended = self.stream.now()
            beat.error = str(e)
            beat.screenshot = self._save_last('%02d-%s-TIMEOUT'
                                              % (beat.index, name))
            self.log('beat %s FAILED: %s', name, e)
            self._landed(beat)
            raise
        beat.ended = self.stream.now()
        beat.ok = True
        beat.inferred = not predicate(cd)
        beat.frame_counter = cd.frame_counter
        beat.frame_size = cd.frame_size
        beat.records = cd.records_text()
        beat.screenshot = self._save_png('%02d-%s' % (beat.index, name),
                                         cd.png)
        self.log('beat %s: frame %d at %.2f s%s: %s', name,
                 cd.frame_counter, cd.at,
                 ' (inferred)' if beat.inferred else '',
                 '; '.join(beat.records))
        self._landed(beat)
        return cd

    def quiet(self, label, within=5, timeout=None):
        """Keep capturing a quiescent screen until the framebuffer hash
        matches or `within` checked captures were made; record the window
        for checks.check_framebuffer_hash. Never fails by itself.
        """
        start = len(self.stream.captures)
        deadline = time.monotonic() + (timeout or within * 1.5 + 3)
        while time.monotonic() < deadline and self.stream.running:
            caps = [c for c in self.stream.captures[start:]
                    if c.framebuffer_hash_ok is not None]
            if any(c.framebuffer_hash_ok for c in caps) or \
                    len(caps) >= within:
                break
            self.stream.request_capture()
            time.sleep(0.3)
        window = checks.QuietWindow(label, start, None, within)
        self.quiet_windows.append(window)
        return window

    def end_quiet(self):
        """Close the open quiet window at the current capture."""
        if self.quiet_windows and self.quiet_windows[-1].end is None:
            w = self.quiet_windows[-1]
            self.quiet_windows[-1] = dataclasses.replace(
                w, end=len(self.stream.captures))

    def power_off(self):
        """The final Enter in Parked: the guest drains and powers off."""
        from kerbside_tempest_plugin.ryll import client as ryll_client
        self.end_quiet()
        beat = Beat(len(self.beats), 'power-off',
                    'Enter in Parked (drain, ACPI power-off)',
                    self.stream.now())
        self.beats.append(beat)
        try:
            self.press('enter')
            if self.liveness is not None:
                self.liveness.beat_started('power-off')
                self.liveness.forget_pending()  # no redraw is owed
        except ryll_client.RyllConnectionClosed as e:
            # Expected: the guest powers off, qemu exits, ryll exits and
            # the control connection reaches EOF, maybe before the key-up.
            beat.note = 'connection closed during the key: %s' % e
        except ryll_client.RyllError as e:
            beat.note = 'ryll error after the key (power-off race): %s' % e
        beat.ended = self.stream.now()
        beat.ok = True
        self.powered_off = True
        self.log('power-off key sent%s', ' (%s)' % beat.note
                 if beat.note else '')
        self._landed(beat)

    # -- artifacts

    def _save_png(self, stem, png):
        if self.artifacts is None or not png:
            return None
        try:
            return self.artifacts.save_png(stem, png)
        except Exception as e:
            LOG.warning('could not save %s: %s', stem, e)
            return None

    def _save_last(self, stem):
        return self._save_png(stem, self.stream.last_png)


# --------------------------------------------------------------- beats


def awaiting(w):
    cd = w.beat('awaiting', 'any digest on the Awaiting screen (the QR '
                'pipeline is live)', lambda cd: True, since=0)
    w.quiet('awaiting')
    return cd


def enter_to_booting(w):
    from kerbside_tempest_plugin.digest import events as ev
    since = w.stream.mark()
    w.end_quiet()
    w.press('enter')
    return w.beat(
        'booting', 'scene_transition awaiting->booting after Enter',
        cap.shows('scene_transition', from_='awaiting',
                  to=lambda v: v in ('booting', 'stream_exercise')),
        # Proven by the transition hash; or, for the stream-exercise
        # variant (two transitions), boot lines with the hash moved.
        implied_by=_any(
            _proven(w, since, 'scene_transition',
                    lambda t: ev.SceneTransition(t, 'awaiting', 'booting')),
            _all(cap.shows('line_rendered'),
                 _hash_moved('scene_transition'))),
        since=since)


def boot_lines_to_prompt(w, since):
    cd = w.beat('bootloader-prompt', 'line_rendered row %d (the bootloader '
                'prompt, after the 19 boot lines and 2 preamble rows)'
                % PROMPT_ROW, cap.shows('line_rendered', row=PROMPT_ROW),
                since=since)
    rows = set()
    for d in w.stream.snapshot()[since:cd.index + 1]:
        rows.update(e.row for e in d.events
                    if getattr(e, 'kind', None) == 'line_rendered')
    w.beats[-1].note = 'boot rows seen in digests: %d of 21 (%s)' % (
        len(rows & set(range(21))), _ranges(sorted(rows)))
    return cd


def ignore(w, attempt=1):
    from kerbside_tempest_plugin.digest import events as ev
    since = w.stream.mark()
    w.press('i')
    return w.beat(
        'ignore', 'bootloader_decision choice=ignore attempt=%d' % attempt,
        cap.shows('bootloader_decision', choice='ignore', attempt=attempt),
        implied_by=_proven(w, since, 'bootloader_decision',
                           lambda t: ev.BootloaderDecision(t, 'ignore',
                                                           attempt)),
        since=since)


def retry(w, attempt):
    """`r` at the prompt; wait for the decision, then the prompt again."""
    since = w.stream.mark()
    w.press('r')
    cd = w.beat('retry-%d' % attempt,
                'bootloader_decision choice=retry attempt=%d' % attempt,
                cap.shows('bootloader_decision', choice='retry',
                          attempt=attempt), since=since)
    ev = cd.shows('bootloader_decision', choice='retry', attempt=attempt)
    t0 = ev.timestamp_ms
    w.beat('prompt-%d' % (attempt + 1),
           'the prompt re-rendered (line_rendered row %d after t=%d)'
           % (PROMPT_ROW, t0),
           cap.shows('line_rendered', row=PROMPT_ROW,
                     timestamp_ms=lambda t: t > t0), since=cd.index)
    return cd


def paste_and_submit(w, text, correct):
    from kerbside_tempest_plugin.digest import events as ev
    since = w.stream.mark()
    w.paste(text)
    w.press('enter')
    proof = _proven(w, since, 'paste_received',
                    lambda t: ev.PasteReceived(t, len(text), correct))
    if correct:
        return w.beat(
            'paste-accepted', 'paste_received correct=true len=%d'
            % len(text), cap.shows('paste_received', correct=True,
                                   len=len(text)), implied_by=proof,
            since=since, fail_on=_any(
                _shows('paste_received', correct=False),
                _shows('paste_received', len=lambda n: n != len(text)),
                _shows('bootloader_timeout')),
            meaning='the keys the guest took over the inputs channel are '
            'not the %d typed' % len(text))
    cd = w.beat('paste-rejected', 'paste_received correct=false len=%d'
                % len(text), cap.shows('paste_received', correct=False,
                                       len=len(text)), implied_by=proof,
                since=since, fail_on=_any(
                    _shows('paste_received', correct=True),
                    _shows('paste_received',
                           len=lambda n: n != len(text))))
    w.beat('wrong-indicator', 'the attempt indicator (line_rendered row '
           '%d) after the wrong paste' % WRONG_INDICATOR_ROW,
           cap.shows('line_rendered', row=WRONG_INDICATOR_ROW),
           since=cd.index)
    return cd


def parked(w, since):
    cd = w.beat('parked', 'scene_transition booting->parked',
                cap.shows('scene_transition', from_='booting', to='parked'),
                since=since)
    w.quiet('parked')
    return cd


def mode_key(w, key=MODE_KEY, size=MODE_SIZE):
    since = w.stream.mark()
    w.end_quiet()
    w.press(key)
    cd = w.beat('mode-%dx%d' % size, 'mode_switch applied=%dx%d after key '
                '%r, decoded at the moved QR' % (size + (key,)),
                _all(cap.shows('mode_switch', applied=tuple(size)),
                     lambda cd: cd.frame_size == tuple(size)),
                since=since)
    origin = cd.origin
    w.beats[-1].note = 'QR found at %s in a %dx%d frame' % (
        origin, cd.frame_size[0], cd.frame_size[1])
    # The toast expires after 1.5 s and repaints; the capture continues.
    w.beat('mode-settled', 'a later digest at %dx%d (capture continues '
           'after the toast repaint)' % size,
           lambda d: d.frame_size == tuple(size) and
           d.frame_counter > cd.frame_counter + 2, since=cd.index + 1)
    w.quiet('awaiting-%dx%d' % size)
    return cd


# --------------------------------------------------------------- walks


def _walk(w, mode_key_first=False, retries=0, wrong_paste_first=False):
    """The canonical walk, with its optional variations."""
    awaiting(w)
    if mode_key_first:
        mode_key(w)
    booted = enter_to_booting(w)
    boot_lines_to_prompt(w, booted.index)
    for attempt in range(1, retries + 1):
        retry(w, attempt)
    ignore(w, attempt=retries + 1)
    if wrong_paste_first:
        paste_and_submit(w, WRONG_PASTE, correct=False)
    accepted = paste_and_submit(w, w.paste_secret, correct=True)
    parked(w, accepted.index)
    w.power_off()


def canonical(w):
    _walk(w)


def wrong_paste(w):
    _walk(w, wrong_paste_first=True)


def retry_path(w, retries=2):
    _walk(w, retries=retries)


def mode_switch(w):
    _walk(w, mode_key_first=True)


# --------------------------------------------------------------- drains


def _expected(decisions=(('ignore', 1),), pastes=((23, True),), prefix=()):
    """The ordered drain sequence of a walk (sextant.expect items): the
    canonical walk of contract section 4.3 with its bootloader decisions,
    pastes and leading mode keys varied.
    """
    from kerbside_tempest_plugin.sextant import expect as ex
    items = list(prefix) + [ex.Rec('keypress'), ex.LEAVE_AWAITING,
                            ex.AtLeast(10, ex.Rec('line'))]
    items += [ex.Rec('bootloader_decision', choice=c, attempt=a)
              for c, a in decisions]
    items += [ex.Rec('paste', len=n, correct=ok) for n, ok in pastes]
    items += [ex.transition('booting', 'parked'), ex.Rec('keypress'),
              ex.transition('parked', 'parked'), ex.Rec('refresh_stats')]
    return tuple(items)


def _canonical_expected():
    from kerbside_tempest_plugin.sextant import expect as ex
    return ex.CANONICAL_WALK


def _mode_prefix():
    from kerbside_tempest_plugin.sextant import expect as ex
    return (ex.Rec('keypress', unicode=ord(MODE_KEY)),
            ex.Rec('mode_switch', applied=list(MODE_SIZE)))


WALKS = {
    # The canonical sequence is the contract's own (sextant.expect).
    'canonical': (canonical, lambda: _canonical_expected()),
    'wrong_paste': (wrong_paste, lambda: _expected(
        pastes=((len(WRONG_PASTE), False), (23, True)))),
    'retry': (retry_path, lambda: _expected(
        decisions=(('retry', 1), ('retry', 2), ('ignore', 3)))),
    'mode_switch': (mode_switch, lambda: _expected(prefix=_mode_prefix())),
}


def expected(name):
    """The ordered drain sequence walk `name` must leave."""
    return WALKS[name][1]()


def run_walk(name, walker):
    WALKS[name][0](walker)


def _ranges(values):
    out = []
    for v in values:
        if out and v == out[-1][1] + 1:
            out[-1][1] = v
        else:
            out.append([v, v])
    return ','.join('%d' % a if a == b else '%d-%d' % (a, b)
                    for a, b in out) or 'none'

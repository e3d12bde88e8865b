"""Every frame state that reached the client, verified (issue 18 §2).

The framebuffer-hash check (checks.check_framebuffer_hash) judges the
harness's screenshots on the quiet Awaiting and Parked screens only, so
a damaged draw that a later draw covers passes, and lasting damage is
told as "no early match on the quiescent screen(s)". This check replays
ryll's display capture of the test (``ryll/capture-display.pcap``) with
spice.draw and judges every frame whose QR reached the wire.

A *wire state* is the client's screen after the pcap records of the
server's direction that came less than GAP apart (one qemu refresh; ryll
reads it in pieces). For each state that changed, the QR region is
decoded (contract §2) and the screen outside it hashed (§1.6,
digest.fbhash). Frame N is **verified** when some state showing QR N
hashes to N's trailer. A frame no state verifies is, by the first rule
that holds for a state showing its QR:

- **torn** (explained) when the state hashes as a later frame: the
  guest's next drawing arrived before its QR;
- **damaged** when it hashes as the last verified frame: none of N's
  drawing arrived (a missing draw), unless a later state of N shows the
  drawing (then torn: the update reached the wire in pieces, the QR's
  first);
- else one connected change (or a line of them, all, all but one) taken
  from the last verified screen before it, or from one of the next
  verified screens, makes it hash as N. Then it is **torn** (taken from
  before, and a later verified frame shows what the wire showed),
  **trailing** (taken from after, and a later frame shows it: the mode
  toast, the Retry text; or the wire kept its old pixels there, which is
  how the cursor redrawn after a repaint looks, and a dropped cursor
  draw too: contract §7 pitfall 7), torn when every pixel of the
  change is either kept from before N or shown by a later frame (both
  at once: the next frame's drawing arriving in pieces beside the kept
  cursor), torn again when the wire's pixels
  there are in no verified frame but were drawn over while the wire
  kept drawing with no pause over DRAWING_PAUSE (the
  guest was still drawing), and **damaged** otherwise (a corrupted draw,
  located to the pixel);
- **unexplained** otherwise: alone, *unverifiable*; LASTING or more in a
  row, or up to the end of the capture, **lasting damage**, told from
  the first with the draws that came with it.

docs/plans/frame-verification.md has the rule and the measurements.

The check fails on damage with one message naming the frame counter,
its time in the walk, the beat it fell in and the rectangle. A capture
it cannot replay (none kept, compressed images, a cut or garbled file)
makes it NOT RUN with the reason, never FAIL.
"""

import collections
import dataclasses
import logging
import os
import time
import typing

import numpy as np

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.digest import errors as digest_errors
from kerbside_tempest_plugin.digest import fbhash
from kerbside_tempest_plugin.digest import payload as pl
from kerbside_tempest_plugin.digest import qr
from kerbside_tempest_plugin.scenario import checks
from kerbside_tempest_plugin.scenario import evidence
from kerbside_tempest_plugin.scenario import qr_tiles
from kerbside_tempest_plugin.spice import draw
from kerbside_tempest_plugin.spice import wire

LOG = logging.getLogger(__name__)

NAME = 'frame_states'
CAPTURE = os.path.join(evidence.EVIDENCE_DIR, 'capture-display.pcap')
SPICE_SERVER_PORT = 5900
# ryll asks spice-server for auto-glz unless told otherwise, and that
# overrides qemu's image-compression=off: the replay needs bitmaps.
RYLL_ARGS = ('--preferred-compression', 'off')

GAP = 0.002                 # s: records closer than this are one state
CELL = 8                    # px: the grid changes are grouped on
MAX_COMPONENTS = 16         # connected changes tried per comparison
LATER_TRIES = 6             # later verified states tried per state
MAX_PENDING = 16            # unverified frames examined in detail
STATES_KEPT = 3             # ... and states of each: the first, the first
#                             changed one, and the last two (_unverified)
HASH_BUDGET = 800           # candidate hashes per capture, at most
FRAME_BUDGET = 400          # ... and per unverified frame (clean: <= 95)
LASTING = 2                 # unexplained frames in a row: damage
# s: new pixels drawn over with no longer pause between draws: torn
DRAWING_PAUSE = 0.1
# ms: a guest whose own slowest refresh (hash, encode, draw) took longer
# was starved; the rules above that time its drawing do not judge it
# (the matrix's walks at load 1.3-3.6: 10-66 ms; 8-16 guests on 2 cores:
# 120-660 ms, and those rules failed 15 of 58 healthy walks)
STARVED_MS = 100
# A timing finding is not judged either when one process of the
# display's path (qemu, kerbside-proxy, ryll) had its most starved thread
# wait for a CPU PATH_SHARE or more of the time from PATH_BEFORE before
# the finding to PATH_AFTER after (scenario.starvation): a path kept off
# the CPU that much delays draws past the rules' 0.1 s without any
# fault. Idle (the fault matrix, load 1.2-2): 1-5 % per process over
# such a window; 4 guests on 2 cores: 80 % and more over a whole walk.
PATH_SHARE = 0.3
PATH_BEFORE, PATH_AFTER = 0.5, 1.0
PATH_ROLES = ('qemu', 'kerbside-proxy', 'ryll')

VERIFIED, TORN, TRAILING = 'verified', 'torn', 'trailing'
DAMAGED, UNVERIFIABLE, LASTING_DAMAGE = ('damaged', 'unverifiable',
                                         'lasting damage')
UNEXPLAINED = 'unexplained'     # while classifying; DAMAGED in the end
MISSING, LATER_SCREEN, KEPT = 'missing', 'later screen', 'kept'
EXPLAINED = (TORN, TRAILING)
BLANK = -1                  # Snapshot.frame of a cleared (black) screen


class CaptureUnreadable(errors.HarnessError):
    """A display capture the check cannot replay; `why` is short."""

    def __init__(self, why):
        self.why = why
        super().__init__(why)


# ----------------------------------------------------------------- input


def display_records(data, server_port=SPICE_SERVER_PORT):
    """[(time, [wire.Unit])] for each pcap record of the server's
    direction of a display channel captured after its link (ryll's
    ``--capture``), and the bytes left over in a message cut at the end.
    Raises CaptureUnreadable for a file that is not such a capture.
    """
    try:
        _, packets = evidence.read_pcap(data)
    except evidence.EvidenceError as e:
        raise CaptureUnreadable('the display capture is unreadable: %s'
                                % e) from None
    negotiation = wire.Negotiation()
    # The capture starts after the link: name its messages as display's.
    negotiation.mess = wire.LinkMess(0, wire.CHANNEL_TYPES['display'], 0,
                                     (), ())
    framer = wire.Framer(wire.S2C, negotiation, skip_link=True, mini=True)
    out = []
    for p in packets:
        parsed = evidence.tcp_payload(p.data)
        if not parsed or parsed[0] != server_port or not parsed[2]:
            continue
        try:
            units = framer.feed(parsed[2])
        except wire.WireError as e:
            raise CaptureUnreadable('the display capture is not SPICE '
                                    'framing: %s' % e) from None
        out.append((p.ts, units))
    return out, framer.pending()


# ------------------------------------------------------------- the replay


@dataclasses.dataclass
class State:
    """One wire state that showed a decodable QR."""
    index: int
    t: float
    frame: int
    size: typing.Tuple[int, int]
    hash: int                           # of the screen outside the QR
    hash_ok: bool
    # the draws outside the QR since the last verified state
    window: typing.Optional[draw.Rect]


@dataclasses.dataclass
class Snapshot:
    """A verified state's screen, kept while an unverified one needs it."""
    frame: int
    t: float
    pixels: np.ndarray = dataclasses.field(repr=False)


@dataclasses.dataclass
class Finding:
    """The one change that makes an unverified state hash as the guest's
    frame: `rect` and `mask` (of that rectangle) where the wire differed,
    and the snapshot whose pixels there give the hash (`later`: after the
    state, else the last verified one before it).
    """
    rect: draw.Rect
    mask: np.ndarray = dataclasses.field(repr=False)
    source: Snapshot = dataclasses.field(repr=False)
    later: bool = False


@dataclasses.dataclass
class Pending:
    """A state whose hash did not match, with what explaining it needs."""
    state: State
    pixels: np.ndarray = dataclasses.field(repr=False)
    earlier: typing.Optional[Snapshot]
    expected: int
    later: typing.List[Snapshot] = dataclasses.field(default_factory=list)
    tried: set = dataclasses.field(default_factory=set, repr=False)
    # which of _explain's rules held, where the verdict alone does not
    # tell: MISSING (the previous screen under this QR), LATER_SCREEN
    # (a later frame's screen under it), KEPT (the wire kept its pixels
    # where the guest hashed others)
    rule: typing.Optional[str] = None
    pinned: bool = False            # kept whatever comes after (above)


@dataclasses.dataclass
class FrameVerdict:
    frame: int
    status: str
    t: float                         # first state showing it (pcap time)
    states: int
    rect: typing.Optional[draw.Rect] = None
    how: str = ''
    # qr_tiles.COLOUR / STALE_TILE: holds however slow the guest was;
    # TIMING: a rule that assumes the guest finishes drawing promptly
    evidence: str = qr_tiles.TIMING

    def to_json(self):
        out = dataclasses.asdict(self)
        out['rect'] = self.rect.to_json() if self.rect else None
        return out


@dataclasses.dataclass
class FrameReport:
    frames: typing.List[FrameVerdict]
    states: int                      # wire states that changed
    undecodable: int                 # ... whose QR did not decode
    messages: typing.Dict[str, int]
    images: typing.Dict[str, int]
    hashes: int                      # framebuffer hashes computed
    cut_bytes: int
    seconds: float = 0.0
    unreplayable: typing.Optional[str] = None
    budget_spent: bool = False
    # the QR region's states, module by module (qr_tiles): whole,
    # painting, overtaken, damaged, unjudged
    qr_states: typing.Dict[str, int] = dataclasses.field(
        default_factory=dict)

    def counts(self):
        c = collections.Counter(f.status for f in self.frames)
        return {k: c.get(k, 0) for k in (VERIFIED, TORN, TRAILING,
                                         UNVERIFIABLE, DAMAGED,
                                         LASTING_DAMAGE)}

    @property
    def damaged(self):
        return [f for f in self.frames if f.status in (DAMAGED,
                                                       LASTING_DAMAGE)]


def qr_rect(width, height):
    """The digest region of a WxH screen (contract §2.3)."""
    ox, oy = fbhash.digest_origin(width, height)
    return draw.Rect(ox, oy, fbhash.REGION_PX, fbhash.REGION_PX)


def decode_qr(surface):
    """The digest (payload.Digest) in a draw.Surface's QR region, or
    None when it does not decode.
    """
    return decode_qr_payload(surface)[0]


def decode_qr_payload(surface):
    """(payload.Digest, its bytes) of a draw.Surface's QR region, or
    (None, None) when it does not decode.
    """
    try:
        hit = qr.find_digest(surface.rgb(), full_frame=False)
        return pl.decode(hit.payload), hit.payload
    except digest_errors.DigestError:
        return None, None


def _hash(pixels):
    return fbhash.framebuffer_hash(pixels[:, :, 2::-1])


def _rgb_diff(a, b):
    """HxW bool: where two BGRX screens differ in B, G or R."""
    x = a.view('<u4')[:, :, 0] ^ b.view('<u4')[:, :, 0]
    return (x & 0x00ffffff) != 0


def components(a, b, qr_rect, limit=MAX_COMPONENTS):
    """The connected changes between two same-sized BGRX screens outside
    the QR region: [(bounding Rect, mask of that rectangle)], smallest
    first, grouped on a CELL-pixel grid with 8-connectivity; then each
    band of changes whose rows overlap (a line of text: its words are
    apart), as one.
    """
    diff = _rgb_diff(a, b)
    diff[qr_rect.slices] = False
    h, w = diff.shape
    gh, gw = -(-h // CELL), -(-w // CELL)
    padded = np.zeros((gh * CELL, gw * CELL), dtype=bool)
    padded[:h, :w] = diff
    grid = padded.reshape(gh, CELL, gw, CELL).any(axis=(1, 3))
    seen = np.zeros_like(grid)
    found = []
    for gy, gx in zip(*np.nonzero(grid)):
        if seen[gy, gx]:
            continue
        seen[gy, gx] = True
        stack = [(gy, gx)]
        cells = []
        while stack:
            cy, cx = stack.pop()
            cells.append((cy, cx))
            for ny in (cy - 1, cy, cy + 1):
                for nx in (cx - 1, cx, cx + 1):
                    if 0 <= ny < gh and 0 <= nx < gw and grid[ny, nx] \
                            and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        found.append(cells)
    out = []
    for cells in found:
        ys = np.array([c[0] for c in cells])
        xs = np.array([c[1] for c in cells])
        y0, x0 = int(ys.min()), int(xs.min())
        cmask = np.zeros((int(ys.max()) - y0 + 1, int(xs.max()) - x0 + 1),
                         dtype=bool)
        cmask[ys - y0, xs - x0] = True
        cell_rect = draw.Rect(x0 * CELL, y0 * CELL, cmask.shape[1] * CELL,
                              cmask.shape[0] * CELL).intersect(
                                  draw.Rect(0, 0, w, h))
        local = np.kron(cmask, np.ones((CELL, CELL), dtype=bool))[
            :cell_rect.h, :cell_rect.w] & diff[cell_rect.slices]
        py, px = np.nonzero(local)
        rect = draw.Rect.from_ltrb(
            cell_rect.x + int(px.min()), cell_rect.y + int(py.min()),
            cell_rect.x + int(px.max()) + 1,
            cell_rect.y + int(py.max()) + 1)
        out.append((rect, local[rect.y - cell_rect.y:rect.bottom -
                                cell_rect.y, rect.x - cell_rect.x:
                                rect.right - cell_rect.x]))
    out.sort(key=lambda c: c[0].w * c[0].h)
    out = out[:limit]
    # A line of text is several components (the spaces between words):
    # components whose rows overlap also go together, as one band.
    bands = []
    for rect, mask in sorted(out, key=lambda c: c[0].y):
        if bands and rect.y < bands[-1][1].bottom:
            bands[-1][0].append((rect, mask))
            bands[-1][1] = bands[-1][1].union(rect)
        else:
            bands.append([[(rect, mask)], rect])
    for parts, rect in bands:
        if len(parts) > 1:
            mask = np.zeros((rect.h, rect.w), dtype=bool)
            for r, m in parts:
                mask[r.y - rect.y:r.bottom - rect.y,
                     r.x - rect.x:r.right - rect.x] |= m
            out.append((rect, mask))
    return out


class Verifier:
    """Feeds a display capture's records through a draw.Replay, judging
    each changed wire state; `finish()` explains the frames no state
    verified and gives the FrameReport.
    """

    def __init__(self, hash_budget=HASH_BUDGET, gap=GAP):
        self.replay = draw.Replay()
        self.gap = gap
        self._last_t = None
        self.states = 0
        self.undecodable = 0
        self.hashes = 0
        self.budget = hash_budget
        self.frame_budget = FRAME_BUDGET
        self.budget_spent = self.ran_out = False
        self.by_frame: typing.Dict[int, typing.List[State]] = {}
        self.expected: typing.Dict[int, int] = {}
        self.verified = set()
        self.pending: typing.List[Pending] = []
        self.draw_log: typing.List[typing.Tuple[float, draw.Rect]] = []
        self.last_verified: typing.Optional[Snapshot] = None
        self._qr_touched = self._other_touched = False
        self._window = None
        self._digest = None
        self._hash = None
        self.tiles = qr_tiles.Judge()

    # -- one record ------------------------------------------------------
    def feed(self, t, units):
        if self._last_t is not None and t - self._last_t >= self.gap:
            self.settle()
        self._last_t = t
        for unit in units:
            drawn = self.replay.apply(unit)
            surface = self.replay.primary
            if surface is None:
                continue
            if drawn.created is not None and drawn.created.primary:
                self._new_geometry()
                continue
            if drawn.rect is None or drawn.surface_id != \
                    surface.surface_id:
                continue
            region = qr_rect(surface.width, surface.height)
            if drawn.rect.overlaps(region):
                self._qr_touched = True
            if drawn.rect.intersect(region) != drawn.rect:
                self._other_touched = True
                self.draw_log.append((t, drawn.rect))
                self._window = drawn.rect.union(self._window) \
                    if self._window else drawn.rect

    def settle(self):
        """Judge the screen as the records so far left it (feed() does so
        once the next record comes GAP or more later; finish() at the end).
        """
        if self._qr_touched or self._other_touched:
            self._checkpoint(self._last_t)

    def _new_geometry(self):
        self._qr_touched = self._other_touched = True
        self._window = None
        self._digest = None
        self._hash = None
        self.last_verified = None
        self.tiles.new_geometry()

    def _checkpoint(self, t):
        surface = self.replay.primary
        self.states += 1
        if self._qr_touched:
            self._digest, payload = decode_qr_payload(surface)
            self.tiles.observe(t, None if self._digest is None else
                               self._digest.frame_counter, payload, surface)
        elif self._other_touched:
            self.tiles.elsewhere(t)
        if self._other_touched:
            self._hash = None           # the screen outside the QR moved
        self._qr_touched = self._other_touched = False
        if self._digest is None:
            self.undecodable += 1
            return
        digest = self._digest
        n = digest.frame_counter
        if n in self.verified:
            return          # a later state of a verified frame: not needed
        if self._hash is None:
            self._hash = _hash(surface.pixels)
            self.hashes += 1
        state = State(self.states, t, n, (surface.width, surface.height),
                      self._hash, self._hash == digest.framebuffer_hash,
                      self._window)
        if state.hash_ok:
            self._window = None
        self.by_frame.setdefault(n, []).append(state)
        self.expected[n] = digest.framebuffer_hash
        if state.hash_ok:
            self._verified(state, surface)
        elif n not in self.verified:
            self._unverified(state, surface)

    def _unverified(self, state, surface):
        """Keep the state for finish(): the first of a frame, the first
        whose screen differs from the first's (where the frame's drawing
        arrived after its QR, when it did: _classify), and the last
        STATES_KEPT - 1 others, for at most MAX_PENDING frames.
        """
        mine = [p for p in self.pending if p.state.frame == state.frame]
        if not mine and len({p.state.frame for p in self.pending}) >= \
                MAX_PENDING:
            return
        pinned = not mine or (state.hash != mine[0].state.hash and
                              sum(p.pinned for p in mine) == 1)
        rest = [p for p in mine if not p.pinned]
        if not pinned and len(rest) >= STATES_KEPT - 1:
            self.pending.remove(rest[0])
        self.pending.append(Pending(state, surface.pixels.copy(),
                                    self.last_verified,
                                    self.expected[state.frame],
                                    pinned=pinned))

    def _verified(self, state, surface):
        self.verified.add(state.frame)
        snap = Snapshot(state.frame, state.t, surface.pixels.copy())
        keep = []
        for p in self.pending:
            if p.state.frame == state.frame:
                continue                    # that frame is verified now
            keep.append(p)
            if p.state.size == state.size and len(p.later) < LATER_TRIES:
                p.later.append(snap)
        self.pending = keep
        self.last_verified = snap

    # -- the verdicts ----------------------------------------------------
    def finish(self, cut_bytes=0):
        self.settle()
        verdicts = []
        pending = collections.defaultdict(list)
        for p in self.pending:
            pending[p.state.frame].append(p)
        run = 0                 # unexplained frames in a row so far
        for n in sorted(self.by_frame):
            states = self.by_frame[n]
            v = FrameVerdict(n, VERIFIED, states[0].t, len(states))
            if n in self.verified:
                run = 0
            elif run > LASTING:
                # Lasting damage already: no search for the rest of it.
                v.status = UNVERIFIABLE
                v.how = 'not examined (frames before it did not match)'
            else:
                self._classify(v, pending.get(n, []))
                run = run + 1 if v.status in (UNVERIFIABLE, UNEXPLAINED) \
                    else 0
            verdicts.append(v)
        _lasting(verdicts, self.by_frame)
        by_number = {v.frame: v for v in verdicts}
        for d in self.tiles.finish():
            v = by_number.get(d.frame)
            if v is None:
                continue
            if v.status not in (DAMAGED, LASTING_DAMAGE) or (
                    v.evidence == qr_tiles.TIMING and
                    d.evidence != qr_tiles.TIMING):
                v.status, v.rect, v.how = DAMAGED, d.rect, d.how
                v.evidence = d.evidence
        return FrameReport(
            verdicts, self.states, self.undecodable,
            dict(self.replay.counts), dict(self.replay.images),
            self.hashes, cut_bytes, budget_spent=self.ran_out,
            qr_states=dict(self.tiles.counts))

    def _classify(self, v, pendings):
        """The frame's verdict from its unverified states: damaged if any
        state shows damage, explained if any state is explained, else
        unexplained (UNVERIFIABLE, maybe LASTING_DAMAGE later).
        """
        explained = None
        self.frame_budget = FRAME_BUDGET
        self.budget_spent = False
        verdicts = []
        for p in pendings:
            verdict = self._explain(p)
            if verdict is None:
                verdict = _foreign(p)
                if verdict is not None:
                    v.evidence = qr_tiles.COLOUR
            verdicts.append((p, verdict))
        for i, (p, verdict) in enumerate(verdicts):
            if verdict is None:
                continue
            drawn = [q for q, w in verdicts[i + 1:] if w is not None and
                     w[0] != DAMAGED and q.rule != LATER_SCREEN] \
                if p.rule == MISSING else []
            if drawn:
                # The QR arrived before the frame's own drawing, which a
                # later state of the same frame shows, explained by the
                # frame's own hash (not by the next frame's screen: that
                # is how a dropped draw the next frame covers looks, and
                # stays damage): an update in pieces. (A later state with
                # the wire's pixels kept somewhere, the cursor of a
                # repaint, counts: a draw dropped there is not told apart
                # from it whichever way the pieces came.)
                verdict = (TORN, p.state.window, 'the QR of frame %d '
                           'arrived %.3f s before its drawing, which a '
                           'later state of it shows: an update caught in '
                           'pieces' % (p.state.frame,
                                       drawn[0].state.t - p.state.t))
            if verdict[0] == DAMAGED:
                v.status, v.rect, v.how = verdict
                return
            explained = explained or verdict
        if explained is not None:
            v.status, v.rect, v.how = explained
            return
        v.status = UNVERIFIABLE
        if not pendings:
            v.how = 'not examined (over %d unverified frames)' % MAX_PENDING
        elif self.budget_spent:
            v.how = 'the hash budget ran out'
        else:
            v.status = UNEXPLAINED
            v.how = ('no one change explains the hash: the wire showed a '
                     'screen the guest never hashed')

    def _explain(self, p):
        """(status, rect, how) for one unverified state, or None."""
        n = p.state.frame
        later = sorted(m for m, h in self.expected.items()
                       if h == p.state.hash and m > n)
        if later:
            p.rule = LATER_SCREEN
            return (TORN, p.state.window, 'the wire showed frame %d\'s '
                    'screen under QR %d: drawn after the refresh, caught '
                    'before the QR was redrawn' % (later[0], n))
        e = p.earlier
        if e is not None and self.expected.get(e.frame) == p.state.hash:
            p.rule = MISSING
            return (DAMAGED, p.state.window, 'the wire still showed frame '
                    '%d\'s screen under QR %d: the drawing of frame %d did '
                    'not arrive (a missing draw)' % (e.frame, n, n))
        f = None
        if e is not None and e.pixels.shape == p.pixels.shape:
            f = self._try(p, e, False)
        for snap in p.later:
            if f is not None:
                break
            f = self._try(p, snap, True)
        if f is None:
            # A repaint clears to black: what the guest hashed there may
            # be the cleared screen, not any frame's (the cursor redrawn
            # after the toast's repaint).
            f = self._try(p, Snapshot(BLANK, p.state.t, np.zeros_like(
                p.pixels)), True)
        if f is None:
            return None
        r = f.rect.slices
        # Where the wire still has the pixels from before frame n (only
        # asked when the guest's pixels came from a later screen or black)
        kept = np.zeros(f.mask.shape, dtype=bool)
        if f.later and e is not None and e.pixels.shape == p.pixels.shape:
            kept = ~_rgb_diff(p.pixels[r], e.pixels[r])
        if kept[f.mask].all():
            # The wire kept its pixels there; the guest hashed others. A
            # dropped draw looks so, and so does the cursor the guest
            # redraws without a refresh after a repaint (contract §7
            # pitfall 7): not told apart, so not called damage.
            p.rule = KEPT
            return (TRAILING, f.rect, 'the wire kept the pixels from '
                    'before frame %d at %s where the guest hashed others '
                    '(%s): redrawn after the refresh, or a draw that did '
                    'not arrive (not told apart)' % (
                        n, f.rect, _source(f)))
        seen = np.zeros(f.mask.shape, dtype=bool)
        for snap in p.later:
            seen |= ~_rgb_diff(p.pixels[r], snap.pixels[r])
        # The rule above for part of the change: kept pixels beside ones
        # a later frame shows (the trailing cursor of a repaint beside
        # the next frame's drawing, arrived in pieces).
        kept &= ~seen
        if not (seen | kept)[f.mask].all():
            life = self._lifetime(p.state.t, f.rect,
                                  f.mask & ~(seen | kept))
            if life is not None and life[1] <= DRAWING_PAUSE:
                return (TORN, f.rect, 'the wire showed pixels at %s that '
                        'no verified frame holds, for %.3f s until drawn '
                        'over, with draws at most %.3f s apart: the guest '
                        'was still drawing there' % (f.rect, life[0],
                                                     life[1]))
            return (DAMAGED, f.rect, 'the wire showed pixels at %s that no '
                    'verified frame holds, for %s; with %s the hash '
                    'matches: a corrupted draw' % (
                        f.rect, 'the rest of the capture' if life is None
                        else '%.3f s (a pause of %.3f s without a draw)' %
                        life, _source(f)))
        if kept[f.mask].any():
            return (TORN, f.rect, 'the wire showed at %s the guest\'s next '
                    'drawing in part (a later frame shows it) and kept the '
                    'pixels from before frame %d where it had not arrived '
                    '(with %s the hash matches): a refresh caught between '
                    'two pieces of an update' % (f.rect, n, _source(f)))
        if not f.later:
            return (TORN, f.rect, 'drawn after the refresh at %s, caught '
                    'before the QR was redrawn (with %s the hash matches; '
                    'a later frame shows them)' % (f.rect, _source(f)))
        return (TRAILING, f.rect, 'drawn after the refresh at %s (with %s '
                'the hash matches; a later frame shows them)' % (
                    f.rect, _source(f)))

    def _lifetime(self, t, rect, mask):
        """How long the pixels of `mask` (of `rect`), on the wire at `t`,
        stayed there: (seconds from the last draw over them at or before
        `t` until later draws have covered every one, the longest pause
        between two draws outside the QR in that time), or None if they
        are never covered.
        """
        ys, xs = np.nonzero(mask)
        box = draw.Rect.from_ltrb(rect.x + int(xs.min()),
                                  rect.y + int(ys.min()),
                                  rect.x + int(xs.max()) + 1,
                                  rect.y + int(ys.max()) + 1)
        painted = max((at for at, drawn in self.draw_log
                       if at <= t and drawn.overlaps(box)), default=t)
        left = mask.copy()
        last, pause = painted, 0.0
        for at, drawn in self.draw_log:
            if at <= painted:
                continue
            pause = max(pause, at - last)
            last = at
            if at <= t or not drawn.overlaps(box):
                continue
            a = drawn.intersect(rect)
            left[a.y - rect.y:a.bottom - rect.y,
                 a.x - rect.x:a.right - rect.x] = False
            if not left.any():
                return at - painted, pause
        return None

    def _spend(self):
        if self.budget <= 0 or self.frame_budget <= 0:
            self.budget_spent = self.ran_out = True
            return False
        self.budget -= 1
        self.frame_budget -= 1
        return True

    def _try(self, p, snap, later):
        """The Finding if taking `snap`'s pixels for one connected change
        of `p` (or a line of them, or all of them, or all but one) gives
        the guest's hash; else None.
        """
        source = snap.pixels
        parts = components(p.pixels, source, qr_rect(*p.state.size))
        candidates = list(parts)
        if len(parts) > 1:
            everything = np.zeros(p.pixels.shape[:2], dtype=bool)
            for rect, mask in parts:
                everything[rect.slices] |= mask
            box = parts[0][0]
            for rect, _ in parts[1:]:
                box = box.union(rect)
            candidates.append((box, everything[box.slices]))
            if len(parts) > 2:
                for rect, mask in parts:
                    rest = everything[box.slices].copy()
                    rest[rect.y - box.y:rect.bottom - box.y,
                         rect.x - box.x:rect.right - box.x] &= ~mask
                    candidates.append((box, rest))
        for rect, mask in candidates:
            if not mask.any():
                continue
            new = source[rect.slices][mask]
            key = (rect, mask.tobytes(), new.tobytes())
            if key in p.tried:          # the same screen from another one
                continue
            p.tried.add(key)
            if not self._spend():
                continue
            area = p.pixels[rect.slices]
            kept = area.copy()
            area[mask] = new
            self.hashes += 1
            matched = _hash(p.pixels) == p.expected
            area[...] = kept
            if matched:
                ys, xs = np.nonzero(mask)
                tight = draw.Rect.from_ltrb(
                    rect.x + int(xs.min()), rect.y + int(ys.min()),
                    rect.x + int(xs.max()) + 1, rect.y + int(ys.max()) + 1)
                return Finding(tight, mask[
                    tight.y - rect.y:tight.bottom - rect.y,
                    tight.x - rect.x:tight.right - rect.x], snap, later)
        return None


def _foreign(p):
    """(DAMAGED, rect, how) when a state no rule explains shows, where it
    differs from the verified screen before it, colours that none of the
    verified screens around it holds: a corrupted draw, however soon the
    guest's drawing covered it (in 105 clean captures no state was left
    unexplained; a corrupted paste-echo draw covered 0.03 s later was).
    Else None.
    """
    snaps = [s for s in [p.earlier] + p.later
             if s is not None and s.pixels.shape == p.pixels.shape]
    if not snaps:
        return None
    diff = _rgb_diff(p.pixels, snaps[0].pixels)
    diff[qr_rect(*p.state.size).slices] = False     # qr_tiles' part
    if not diff.any():
        return None
    palette = np.zeros(1 << 24, dtype=bool)
    for snap in snaps:
        palette[snap.pixels.view('<u4')[:, :, 0].ravel() & 0xffffff] = True
    colours = p.pixels.view('<u4')[:, :, 0] & 0xffffff
    odd = diff & ~palette[colours]
    if not odd.any():
        return None
    ys, xs = np.nonzero(odd)
    rect = draw.Rect.from_ltrb(int(xs.min()), int(ys.min()),
                               int(xs.max()) + 1, int(ys.max()) + 1)
    return (DAMAGED, rect, 'the wire showed %d pixel(s) at %s in colours '
            'that no verified frame around it holds (a corrupted draw)' % (
                int(odd.sum()), rect))


def _source(finding):
    """Whose pixels, taken where the wire differed, give the hash."""
    if finding.source.frame == BLANK:
        return 'black there (a cleared screen)'
    return "frame %d's pixels there" % finding.source.frame


def _lasting(verdicts, by_frame):
    """Frames no search explained, alone or in a row, are damage: one
    alone is DAMAGED, LASTING or more in a row (or any running to the end
    of the capture) LASTING_DAMAGE, told at the first of them. Either way
    the rectangle is that of the draws outside the QR that reached the
    wire between the last verified state and it. A frame the search did
    not reach (UNVERIFIABLE) counts in a row, not alone.
    """
    runs = []
    run = []
    for v in verdicts:
        if v.status in (UNVERIFIABLE, UNEXPLAINED):
            run.append(v)
            continue
        if run:
            runs.append((run, False))
        run = []
    if run:
        runs.append((run, True))
    for run, to_end in runs:
        first = run[0]
        window = next((s.window for s in by_frame[first.frame]
                       if s.window), None)
        where = ('the damage is within %s, the draws outside the QR that '
                 'reached the wire with frame %d' % (window, first.frame)
                 if window else 'no draw outside the QR came with frame '
                 '%d' % first.frame)
        if len(run) < LASTING and not to_end:
            if first.status == UNEXPLAINED:
                first.status, first.rect = DAMAGED, window
                first.how = '%s; %s' % (first.how, where)
            continue
        for v in run:
            v.status = LASTING_DAMAGE
            v.rect = window
        first.how = ('frames %d to %d (%d frame(s)%s) never match their '
                     'hash; %s' % (
                         run[0].frame, run[-1].frame, len(run),
                         ', to the end of the capture' if to_end else '',
                         where))


def verify(data):
    """FrameReport of a display capture's bytes. Raises CaptureUnreadable
    (unreadable, not SPICE, a garbled draw) or draw.Unreplayable.
    """
    t0 = time.monotonic()
    records, cut = display_records(data)
    v = Verifier()
    try:
        for t, units in records:
            v.feed(t, units)
    except draw.DrawError as e:
        raise CaptureUnreadable('a display message does not hold what its '
                                'type says: %s' % e) from None
    report = v.finish(cut)
    report.seconds = time.monotonic() - t0
    return report


# ----------------------------------------------------------------- check


def _beat_at(beats, at):
    """The name of the beat that was running at stream time `at`."""
    name = None
    for b in beats or ():
        started = getattr(b, 'started', None)
        if started is None:
            started = b.get('started') if isinstance(b, dict) else None
        if started is not None and started <= at:
            name = getattr(b, 'name', None) or (
                b.get('name') if isinstance(b, dict) else None)
    return name


def clock_offset(report, seen):
    """Seconds to add to a capture time (ryll's pcap clock starts at its
    own origin) to get the walk's stream clock, from `seen`: (frame
    counter, stream time) of the frames the harness saw. The harness sees
    a frame only after the wire delivered it, so the smallest lag between
    the two is the offset (plus the shortest grab, a few ms). None
    without a frame in common.
    """
    first = {f.frame: f.t for f in report.frames}
    lags = [at - first[n] for n, at in seen or () if n in first]
    return min(lags) if lags else None


def _where(v, offset, beats):
    if offset is None:
        return 'at %.3f s of the capture' % v.t
    at = v.t + offset
    beat = _beat_at(beats, at)
    return '%.2f s into the walk%s' % (at, ', beat %s' % beat if beat
                                       else '')


def starved(slowest_refresh_ms):
    """Was the guest too slow for the rules that time its drawing? Its
    own slowest refresh (the drain's refresh_stats max_us, in ms) over
    STARVED_MS: the rules assume it finishes drawing within DRAWING_PAUSE.
    """
    return slowest_refresh_ms is not None and \
        slowest_refresh_ms > STARVED_MS


def _path_gate(report, offset, path_waited):
    """Timing findings at a moment the display's path waited for a CPU
    PATH_SHARE of the time or more become unverifiable, saying so.
    `path_waited`: (t0, t1, roles) -> seconds, on the walk's clock
    (PathClock.waited).
    """
    if path_waited is None or offset is None:
        return
    for f in report.frames:
        if f.status not in (DAMAGED, LASTING_DAMAGE) or \
                f.evidence != qr_tiles.TIMING:
            continue
        at = f.t + offset
        window = PATH_BEFORE + PATH_AFTER
        waited = path_waited(at - PATH_BEFORE, at + PATH_AFTER, PATH_ROLES)
        if waited >= PATH_SHARE * window:
            f.status = UNVERIFIABLE
            f.how = 'not judged, the display\'s path (qemu, the proxy, ' \
                'ryll) waited for a CPU %.2f s of the %.1f s around it: ' \
                '%s' % (waited, window, f.how)


def judge(report, seen=(), beats=(), name=NAME, slowest_refresh_ms=None,
          drained=True, path_waited=None):
    """The CheckResult of a FrameReport: fails on damage, naming the
    first damaged frame, its time in the walk and the beat (`seen`: the
    frames the harness saw, as (frame counter, stream time), to put the
    capture on the walk's clock; `beats`: the walk's beats) and its
    rectangle. `path_waited` (PathClock.waited) takes timing findings
    out where the display's path was kept from a CPU (_path_gate).
    """
    offset = clock_offset(report, seen)
    _path_gate(report, offset, path_waited)
    if starved(slowest_refresh_ms) or not drained:
        # `drained` False: the walk stopped before the guest's drain, so
        # its refresh costs are unknown (and the walk failed already)
        why = ('the guest was starved (its slowest refresh took %.0f ms, '
               'over %d)' % (slowest_refresh_ms, STARVED_MS) if drained
               else 'the walk stopped before the drain told how slow the '
               'guest was')
        for f in report.frames:
            if f.status in (DAMAGED, LASTING_DAMAGE) and \
                    f.evidence == qr_tiles.TIMING:
                f.status = UNVERIFIABLE
                f.how = 'not judged, %s: %s' % (why, f.how)
    counts = report.counts()
    explained = counts[TORN] + counts[TRAILING]
    data = {'frames_on_wire': len(report.frames), 'counts': counts,
            'wire_states': report.states,
            'undecodable_states': report.undecodable,
            'hashes': report.hashes, 'seconds': round(report.seconds, 3),
            'messages': report.messages, 'images': report.images,
            'cut_bytes': report.cut_bytes, 'clock_offset_s': offset,
            'qr_states': report.qr_states,
            'slowest_refresh_ms': slowest_refresh_ms,
            'frames': [f.to_json() for f in report.frames
                       if f.status != VERIFIED]}
    for f in data['frames']:
        at = None if offset is None else f['t'] + offset
        f['at_s'] = None if at is None else round(at, 3)
        f['beat'] = None if at is None else _beat_at(beats, at)
    summary = ('%d frames on the wire: %d verified, %d explained (torn '
               '%d, trailing %d), %d unverifiable, %d damaged' % (
                   len(report.frames), counts[VERIFIED], explained,
                   counts[TORN], counts[TRAILING], counts[UNVERIFIABLE],
                   counts[DAMAGED] + counts[LASTING_DAMAGE]))
    details = ['frame %d %s (%s): %s%s' % (
        f.frame, f.status, _where(f, offset, beats),
        f.how, '' if f.rect is None else ' [rect %s]' % f.rect)
        for f in report.frames if f.status != VERIFIED and f.how]
    if not report.frames:
        if not report.states:
            return checks.CheckResult.not_run(
                name, 'the display capture holds no draw', data=data)
        return checks.CheckResult(
            name, False, 'no QR decoded on the wire in %d states that drew '
            '(%d messages replayed): the client never showed a digest' % (
                report.states, sum(report.messages.values())),
            details=[summary], data=data)
    damaged = report.damaged
    if damaged:
        first = damaged[0]
        message = 'frame %d damaged %s: %s' % (
            first.frame, _where(first, offset, beats), first.how)
        if first.rect is not None:
            message += '; rect (x, y, w, h) = (%d, %d, %d, %d)' % (
                first.rect.x, first.rect.y, first.rect.w, first.rect.h)
        if len(damaged) > 1:
            message += ' (%d damaged frames in all)' % len(damaged)
        return checks.CheckResult(name, False, message,
                                  details=[summary] + details, data=data)
    return checks.CheckResult(name, True, summary, details=details,
                              data=data)


def check_capture(path, seen=(), beats=(), name=NAME,
                  slowest_refresh_ms=None, drained=True, path_waited=None):
    """The per-frame check on the display capture at `path` (a test's
    ``ryll/capture-display.pcap``). NOT RUN, with the reason, when there
    is none or it cannot be replayed; never raises for a bad capture.
    """
    if not path or not os.path.exists(path):
        withheld = path and os.path.exists(path + '.withheld.txt')
        return checks.CheckResult.not_run(
            name, 'no display capture%s' % (
                ' (withheld by the secret scan)' if withheld else
                ': ryll kept none ([kerbside] ryll_capture off?)'))
    try:
        with open(path, 'rb') as f:
            data = f.read()
        report = verify(data)
    except CaptureUnreadable as e:
        return checks.CheckResult.not_run(name, e.why)
    except draw.Unreplayable as e:
        return checks.CheckResult.not_run(
            name, 'the display capture holds %s: only uncompressed draws '
            'replay exactly (qemu image-compression=off and ryll %s)' % (
                e.what, ' '.join(RYLL_ARGS)), data={'unreplayable': e.what})
    except OSError as e:
        return checks.CheckResult.not_run(name, 'cannot read the display '
                                          'capture: %s' % e)
    except Exception as e:      # a bug here must not cost the run's report
        LOG.exception('the frame check failed on %s', path)
        return checks.CheckResult.not_run(name, 'the check raised %s: %s' % (
            type(e).__name__, e))
    return judge(report, seen=seen, beats=beats, name=name,
                 slowest_refresh_ms=slowest_refresh_ms, drained=drained,
                 path_waited=path_waited)


REPORT_COLUMNS = ('frame', 'verdict', 's into the walk', 'beat',
                  'rect (x, y, w, h)', 'why')


def report_section(results):
    """What report.md and report.html show of this check: None without
    it, else {'verdict', 'headline', 'rows'}: the verdict, one line with
    the counts and the check's time, and per frame that did not verify a
    row of REPORT_COLUMNS as text. `results`: CheckResults or their JSON.
    """
    for r in results or ():
        j = r.to_json() if isinstance(r, checks.CheckResult) else r
        if j.get('name') != NAME:
            continue
        data = j.get('data') or {}
        seconds = data.get('seconds')
        verdict = checks.verdict_of(j)
        rows = [(str(f.get('frame')), f.get('status') or '',
                 '-' if f.get('at_s') is None else '%.3f' % f['at_s'],
                 f.get('beat') or '-',
                 '(%d, %d, %d, %d)' % tuple(f['rect']) if f.get('rect')
                 else '-', f.get('how') or '')
                for f in data.get('frames') or ()]
        return {'verdict': verdict, 'rows': rows,
                'headline': '%s: %s%s' % (
                    verdict, j.get('summary'), '' if seconds is None else
                    ' (checked in %.2f s)' % seconds)}
    return None


def ryll_args(options):
    """ryll arguments for a replayable display capture (none when ryll
    keeps no capture: evidence.EvidenceOptions.capture off).
    """
    return list(RYLL_ARGS) if options.capture else []


def kept(path):
    """Did ryll keep a display capture at `path` (or the secret scan
    withhold it)?
    """
    return os.path.exists(path) or os.path.exists(path + '.withheld.txt')


def advisory(result):
    """True for this check NOT RUN: a capture that cannot be replayed (none
    kept, compressed images) says nothing about the proxy, so it does not
    fail the run; the reason is in the report.
    """
    return result.name == NAME and result.passed is None

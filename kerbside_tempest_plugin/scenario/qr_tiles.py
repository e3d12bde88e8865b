"""The digest's own region, verified module by module (issue 18 §2).

The frame check (scenario/frames.py) hashes the screen outside the
180x180 digest region; inside it, the QR's error correction decodes past
a damaged or missing tile, so a draw lost there went unseen. This module
judges the region itself: the QR a state decodes as frame N is drawn
again from N's payload (digest/render.py: version 5-L, one byte segment,
4 px modules, green on black; contract §2) with the mask the state's own
format modules name, and compared module by module.

A wire state of the region decoded as frame N is judged against its
neighbours *on the wire* (a frame the guest drew between two refreshes
never reached it): B before, A after.

- **damaged** at once when a pixel has a colour the guest never paints
  there (a corrupted draw);
- **whole** when every module is N's;
- **damaged** at once when some modules are neither N's, B's nor A's
  while B = N-1 and A = N+1: nothing unseen could have left them, so an
  older frame's tile never got replaced;
- **damaged** when the other modules are all B's (*painting*) or all
  A's (*overtaken*) and a later wire state, at least REFRESH_SPLIT
  after, drew elsewhere but not in the region: qemu sends what changed
  since its last refresh, so it had nothing of the QR left to send and
  the client should have had it whole;
- else, when the region moved again within DRAWING_PAUSE, it was caught
  mid-drawing: *painting*, *overtaken* or *unjudged* (a real Sextant
  draws its 2,025 modules one blit each, contract §2.2; qemu's refresh
  races the guest's blit); modules partly green (text drawn in the cells
  under the QR, contract §2.3) wait up to TEXT_PAUSE for the guest's
  hash and the QR's redraw;
- **damaged** when it stayed longer, or to the end of the capture: the
  guest always finishes its QR when it stops drawing.

A frame whose every state was *painting*, between N-1 and N+1 on the
wire, was never whole there: when its stale modules are not where a
guest drawing in row or column order would still have to go, a tile of
N did not arrive and N+1 covered it: damage.

A state of the region that does not decode, after a frame that did, is
damage when it holds a foreign colour, or (not black: a clear is the
guest's; not text under the QR) when it stayed past DRAWING_PAUSE or a
refresh after it drew elsewhere only. To the end of the capture it is
not judged: the guest may clear the screen as it powers off.

Measured on 209 clean captures (bundled and blit guests, both routes,
every walk, benign faults): no frame flagged; mid-drawing states left
within 0.067 s.

The 2 colours are exact: the replay is lossless (frames.RYLL_ARGS).
"""

import dataclasses
import functools
import typing

import numpy as np

from kerbside_tempest_plugin.digest import fbhash
from kerbside_tempest_plugin.spice import draw

GRID = fbhash.REGION_PX // fbhash.MODULE_PX      # 45 modules, quiet zone in
QUIET = fbhash.QR_BORDER_MODULES
SIZE = 37                                       # version 5
FG_BGR = np.array(fbhash.FG[::-1], dtype=np.uint8)
MAX_FORMAT_ERRORS = 3       # of 30 format modules, for a readable mask
# s: a state the region left sooner was caught mid-drawing (measured: at
# most 0.067 s over 209 clean captures; frames.DRAWING_PAUSE is the same)
DRAWING_PAUSE = 0.1
# s: states closer than this after one may be the same refresh, read in
# pieces (records within frames.GAP are one state already)
REFRESH_SPLIT = 0.01
# s: text under the QR waits for the guest's hash and the QR's redraw
# (at most 0.061 s measured at load 1-4; a starved guest is slower)
TEXT_PAUSE = 1.0

WHOLE, PAINTING, OVERTAKEN = 'whole', 'painting', 'overtaken'
DAMAGED, UNJUDGED = 'damaged', 'unjudged'
MIXED = 'mixed'             # a kind only: modules partly green
STALE = 'stale'             # a kind only: an older frame's modules
# What a finding rests on: COLOUR and STALE hold however slow the guest
# was; TIMING assumes it finishes its drawing within DRAWING_PAUSE, which
# a starved guest does not (frames.judge leaves those unjudged then).
COLOUR, STALE_TILE, TIMING = 'colour', 'stale', 'timing'


def _format_positions():
    """(rows, cols) in the 45-module grid of both copies of the format
    information (15 bits each, around the finder patterns).
    """
    cells = [(8, c) for c in (0, 1, 2, 3, 4, 5, 7, 8)]
    cells += [(r, 8) for r in (0, 1, 2, 3, 4, 5, 7)]
    cells += [(8, c) for c in range(SIZE - 8, SIZE)]
    cells += [(r, 8) for r in range(SIZE - 7, SIZE)]
    rows = np.array([r + QUIET for r, _ in cells])
    cols = np.array([c + QUIET for _, c in cells])
    return rows, cols


FORMAT = _format_positions()


@functools.lru_cache(maxsize=256)
def expected(payload, mask):
    """The 45x45 module grid (True = green) the guest paints for
    `payload` with `mask`.
    """
    import qrcode
    from qrcode import util

    qr = qrcode.QRCode(version=5,
                       error_correction=qrcode.constants.ERROR_CORRECT_L,
                       box_size=1, border=QUIET, mask_pattern=mask)
    qr.add_data(util.QRData(bytes(payload), mode=util.MODE_8BIT_BYTE))
    qr.make(fit=False)
    grid = np.array(qr.get_matrix(), dtype=bool)
    grid.setflags(write=False)
    return grid


@functools.lru_cache(maxsize=1)
def _format_templates():
    """The format modules of each of the 8 masks (payload-free)."""
    return np.array([expected(b'\0', m)[FORMAT] for m in range(8)])


def read_mask(dark, mixed):
    """The mask a module grid's format modules name, or None."""
    seen = dark[FORMAT]
    wrong = (_format_templates() != seen).sum(axis=1) + \
        mixed[FORMAT].sum()
    best = int(np.argmin(wrong))
    return best if wrong[best] <= MAX_FORMAT_ERRORS else None


@dataclasses.dataclass
class Grid:
    """One state of the region, as modules."""
    dark: np.ndarray = dataclasses.field(repr=False)     # all 16 px green
    mixed: np.ndarray = dataclasses.field(repr=False)    # green and black
    foreign: typing.Optional[draw.Rect]                  # other colours


def grid_of(region):
    """The Grid of a 180x180 BGRX (or BGR) region."""
    bgr = region[:, :, :3]
    green = (bgr == FG_BGR).all(axis=2)
    black = ~bgr.any(axis=2)
    foreign = ~(green | black)
    shape = (GRID, fbhash.MODULE_PX, GRID, fbhash.MODULE_PX)
    dark = green.reshape(shape).all(axis=(1, 3))
    light = black.reshape(shape).all(axis=(1, 3))
    box = None
    if foreign.any():
        ys, xs = np.nonzero(foreign)
        box = draw.Rect.from_ltrb(int(xs.min()), int(ys.min()),
                                  int(xs.max()) + 1, int(ys.max()) + 1)
    return Grid(dark, ~(dark | light), box)


@dataclasses.dataclass
class Seen:
    """A state of the region that decoded as `frame`."""
    t: float
    frame: int
    payload: bytes = dataclasses.field(repr=False)
    grid: Grid = dataclasses.field(repr=False)
    mask: typing.Optional[int]
    origin: typing.Tuple[int, int]
    lasted: typing.Optional[float] = None     # s until the region moved
    evidence: str = TIMING
    # s after it of the states that drew only outside the region
    elsewhere: typing.List[float] = dataclasses.field(default_factory=list)
    status: str = ''
    rect: typing.Optional[draw.Rect] = None     # screen px
    how: str = ''


@dataclasses.dataclass
class QrDamage:
    frame: int
    t: float
    rect: typing.Optional[draw.Rect]
    how: str
    evidence: str = TIMING


class Judge:
    """Collects the region's states (observe) and judges them (finish)
    epoch by epoch: a new screen geometry starts a new epoch.
    """

    def __init__(self):
        self.epochs: typing.List[typing.List[Seen]] = [[]]
        self.counts = {}
        self._open = None
        # the region's states that did not decode, after a frame that
        # did; Seen.frame is that frame
        self.undecoded: typing.List[Seen] = []

    def new_geometry(self):
        self._open = None
        if self.epochs[-1]:
            self.epochs.append([])

    def elsewhere(self, t):
        """A wire state at `t` drew outside the region only."""
        if self._open is not None:
            self._open.elsewhere.append(t - self._open.t)

    def observe(self, t, frame, payload, surface):
        """Take the state of `surface` (a draw.Surface) whose QR decoded
        as `frame` with `payload` (bytes); `frame` None: the region
        changed and does not decode.
        """
        if self._open is not None:
            self._open.lasted = t - self._open.t
            # a state that drew elsewhere less than REFRESH_SPLIT before
            # this one was the same refresh, read in pieces (qemu sends
            # a refresh top to bottom: text rows above the QR first);
            # it did not draw elsewhere *instead of* the QR
            cut = self._open.lasted - REFRESH_SPLIT
            self._open.elsewhere = [e for e in self._open.elsewhere
                                    if e <= cut]
            self._open = None
        ox, oy = fbhash.digest_origin(surface.width, surface.height)
        region = surface.pixels[oy:oy + fbhash.REGION_PX,
                                ox:ox + fbhash.REGION_PX]
        if region.shape[:2] != (fbhash.REGION_PX, fbhash.REGION_PX):
            return                      # a screen too small: not judged
        grid = grid_of(region)
        if frame is None:
            if self.epochs[-1]:     # before the epoch's first QR: nothing
                self._open = Seen(t, self.epochs[-1][-1].frame, b'', grid,
                                  None, (ox, oy))
                self.undecoded.append(self._open)
            return
        self._open = Seen(t, frame, bytes(payload), grid,
                          read_mask(grid.dark, grid.mixed), (ox, oy))
        self.epochs[-1].append(self._open)

    # -- judging ---------------------------------------------------------
    def finish(self):
        """[QrDamage], one per damaged frame (its first damage)."""
        found = {}
        counts = dict.fromkeys((WHOLE, PAINTING, OVERTAKEN, DAMAGED,
                                UNJUDGED), 0)
        for i, epoch in enumerate(self.epochs):
            final = i == len(self.epochs) - 1
            masks = {}
            for s in epoch:
                if s.mask is not None:
                    masks.setdefault(s.frame, (s.payload, s.mask))

            def grid(n):
                return expected(*masks[n]) if n in masks else None

            # The neighbours on the wire: a frame the guest drew between
            # two refreshes never reached it, and the client's pixels
            # were the last frame the wire did show.
            shown = sorted({s.frame for s in epoch})
            before = dict(zip(shown[1:], shown))
            after = dict(zip(shown, shown[1:]))
            for s in epoch:
                self._judge(s, grid(s.frame), before.get(s.frame),
                            after.get(s.frame), grid, final=final)
            for s in epoch:
                counts[s.status] += 1
                if s.status == DAMAGED:
                    _keep(found, QrDamage(s.frame, s.t, s.rect, s.how,
                                          s.evidence))
            for d in _never_whole(epoch, grid, before, after):
                _keep(found, d)
        for s in self.undecoded:
            self._judge_undecoded(s)
            counts[s.status] += 1
            if s.status == DAMAGED:
                _keep(found, QrDamage(s.frame, s.t, s.rect, s.how,
                                      s.evidence))
        self.counts = counts
        return [found[n] for n in sorted(found)]

    def _judge_undecoded(self, s):
        """A state of the region that did not decode, after frame
        `s.frame` did: damaged when it holds a colour the guest never
        paints there, or when it was not the guest's own doing (black:
        a clear; partly green modules: text under the QR, for up to
        TEXT_PAUSE) and either stayed past DRAWING_PAUSE or a refresh
        after it drew elsewhere but not there (qemu had nothing left of
        the region to send). To the end of the capture it is not judged:
        the guest may clear the screen as it powers off.
        """
        g = s.grid
        ox, oy = s.origin
        s.status = UNJUDGED
        if _corrupted(s, 'the QR region after frame %d did not decode and '
                      'held' % s.frame):
            return
        if not g.dark.any() and not g.mixed.any():
            return                      # cleared: the guest's own
        if s.lasted is None:
            return
        if g.mixed.any() and s.lasted <= TEXT_PAUSE:
            return
        later = [e for e in s.elsewhere if e >= REFRESH_SPLIT]
        if s.lasted <= DRAWING_PAUSE and not later:
            return
        s.status = DAMAGED
        s.rect = draw.Rect(ox, oy, fbhash.REGION_PX, fbhash.REGION_PX)
        s.how = ('the QR region after frame %d did not decode for %.3f s%s '
                 '(a draw in the QR that did not arrive, or a damaged one)'
                 % (s.frame, s.lasted, '' if not later else
                    ', and a refresh %.3f s into it drew elsewhere but not '
                    'there' % later[0]))

    def _judge(self, s, mine, before, after, grid, final=True):
        if _corrupted(s, 'the QR region of frame %d held' % s.frame):
            return
        kind, why = self._kind(s, mine, before, after, grid)
        if kind == WHOLE:
            s.status = WHOLE
            return
        if kind == STALE:
            s.status = DAMAGED
            s.how = ('the QR of frame %d showed %s, frames %d to %d all '
                     'on the wire: a tile that did not arrive' % (
                         s.frame, why, s.frame - 1, s.frame + 1))
            s.evidence = STALE_TILE
            return
        later = [e for e in s.elsewhere if e >= REFRESH_SPLIT]
        if kind in (PAINTING, OVERTAKEN) and later:
            # qemu sends what changed since its last refresh: one that
            # drew elsewhere and not here had nothing left of the QR to
            # send, so the client should have had it whole.
            s.status = DAMAGED
            s.how = ('the QR of frame %d showed %s, and a refresh %.3f s '
                     'later drew elsewhere but not there: qemu had sent '
                     'the whole QR (a draw in the QR that did not arrive)'
                     % (s.frame, why, later[0]))
            return
        if s.lasted is not None and s.lasted <= DRAWING_PAUSE:
            # The region moved again at once: caught mid-drawing.
            s.status = kind if kind in (PAINTING, OVERTAKEN) else UNJUDGED
            s.how = 'in progress (%s; the region moved %.3f s later)' % (
                why, s.lasted)
            return
        if kind == MIXED and s.lasted is not None and \
                s.lasted <= TEXT_PAUSE:
            # Text drawn under the QR (contract §2.3) stays until the
            # guest has hashed the screen and redraws the QR: slower on a
            # starved guest. A proxy's lost draw leaves whole modules.
            s.status = UNJUDGED
            s.how = '%s for %.3f s: text under the QR before its redraw' % (
                why, s.lasted)
            return
        if s.lasted is None:
            # up to a new screen mode, or the end: the guest powers off
            # after its last QR, and qemu's last refresh may have caught
            # that QR half drawn (a hog beside the walk showed it)
            s.status = UNJUDGED
            s.how = '%s, to the %s' % (why, 'end of the capture' if final
                                       else 'next screen mode')
            return
        s.status = DAMAGED
        s.how = ('the QR of frame %d stayed for %.3f s with %s: a draw in '
                 'the QR that did not arrive, or a damaged one' % (
                     s.frame, s.lasted, why))

    def _kind(self, s, mine, before, after, grid):
        """(kind, what differs): WHOLE, PAINTING (the other modules are
        those of the frame before on the wire), OVERTAKEN (the next's),
        MIXED, else DAMAGED with a description. `before`, `after`: those
        frames' numbers (None: none).
        """
        g = s.grid
        if mine is None or s.mask is None:
            s.rect = None
            return DAMAGED, 'format modules that name no mask'
        bad = (g.dark != mine) | g.mixed
        if not bad.any():
            return WHOLE, ''
        s.rect = self._rect(s, bad)
        if g.mixed.any():
            s.rect = self._rect(s, g.mixed)
            return MIXED, 'modules at %s that are not whole modules' % (
                s.rect,)
        older, newer = grid(before), grid(after)
        for other, kind, n in ((older, PAINTING, before),
                               (newer, OVERTAKEN, after)):
            if other is not None and not (bad & (g.dark != other)).any():
                return kind, 'frame %d\'s modules at %s' % (n, s.rect)
        if older is not None and newer is not None:
            odd = bad & (g.dark != older) & (g.dark != newer)
            if not odd.any():
                return DAMAGED, ('frame %d\'s and frame %d\'s modules '
                                 'together at %s' % (before, after, s.rect))
            s.rect = self._rect(s, odd)
            why = ('modules at %s that are neither its own nor frame '
                   '%d\'s or %d\'s' % (s.rect, before, after))
            if before == s.frame - 1 and after == s.frame + 1:
                # No frame between them left the wire unseen: an older
                # frame's tile that the drawing since never replaced.
                return STALE, why
            return DAMAGED, why
        return DAMAGED, 'modules at %s that are not its own' % (s.rect,)

    @staticmethod
    def _rect(s, modules):
        ys, xs = np.nonzero(modules)
        px = fbhash.MODULE_PX
        ox, oy = s.origin
        return draw.Rect.from_ltrb(ox + int(xs.min()) * px,
                                   oy + int(ys.min()) * px,
                                   ox + (int(xs.max()) + 1) * px,
                                   oy + (int(ys.max()) + 1) * px)


def _corrupted(s, what):
    """Mark `s` DAMAGED when its region holds a colour the guest never
    paints there (`what` starts the message); True if so.
    """
    r = s.grid.foreign
    if r is None:
        return False
    ox, oy = s.origin
    s.status, s.evidence = DAMAGED, COLOUR
    s.rect = draw.Rect(ox + r.x, oy + r.y, r.w, r.h)
    s.how = '%s colours the guest never paints there at %s (a corrupted ' \
        'draw)' % (what, s.rect)
    return True


def _keep(found, d):
    """Keep a frame's first damage, unless a later one rests on evidence
    that holds however slow the guest was and the first does not.
    """
    first = found.get(d.frame)
    if first is None or (first.evidence == TIMING and
                         d.evidence != TIMING):
        found[d.frame] = d


def _raster_suffix(stale, changed):
    """Are the `stale` modules (still N-1's) the last of N's `changed`
    modules in row-major or column-major order: where a guest drawing
    module by module would have got to?
    """
    for st, ch in ((stale, changed), (stale.T, changed.T)):
        fresh = np.flatnonzero((ch & ~st).ravel())
        left = np.flatnonzero(st.ravel())
        if not len(left) or not len(fresh) or fresh.max() < left.min():
            return True
    return False


def _never_whole(epoch, grid, before, after):
    """QrDamage for frames whose every state was PAINTING (each left at
    once, so judged mid-drawing) and so never whole on the wire before
    the next frame on the wire, when the modules still the previous
    frame's in N's last state are not where a guest drawing in raster
    order would still have to go: a tile of N that did not arrive, which
    the next frame's drawing then covered. `before`, `after`: frame ->
    its neighbour on the wire.
    """
    by_frame = {}
    for s in epoch:
        by_frame.setdefault(s.frame, []).append(s)
    for n, mine in sorted(by_frame.items()):
        if after.get(n) != n + 1 or before.get(n) != n - 1 or \
                any(s.status != PAINTING for s in mine):
            continue
        own, older = grid(n), grid(before.get(n))
        if own is None or older is None:
            continue
        last = mine[-1]
        stale = last.grid.dark != own
        if _raster_suffix(stale, own != older):
            continue
        rect = Judge._rect(last, stale)
        yield QrDamage(n, last.t, rect, (
            'the QR of frame %d was never whole on the wire: its %d '
            'state(s) kept frame %d\'s modules at %s, not where a guest '
            'drawing in order would still be, until frame %d drew over '
            'them (a draw in the QR that did not arrive)' % (
                n, len(mine), before[n], rect, after[n])))

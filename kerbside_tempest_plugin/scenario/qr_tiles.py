"""The digest's own region, verified module by module (issue 18 §2).

The frame check (scenario/frames.py) hashes the screen outside the
180x180 digest region; inside it, the QR's error correction decodes past
a damaged or missing tile, so a draw lost there went unseen. This module
judges the region itself: the QR a state decodes as frame N is drawn
again from N's payload (digest/render.py: version 5-L, one byte segment,
4 px modules, green on black; contract §2) with the mask the state's own
format modules name, and compared module by module.

A wire state of the region (decoded as frame N) is:

- **damaged** at once when a pixel has a colour the guest never paints
  there (a corrupted draw);
- **whole** when every module is N's;
- else, when the region moved again within DRAWING_PAUSE, caught
  mid-drawing: **painting** when the other modules are all N-1's (N was
  being drawn over N-1: a real Sextant draws its 2,025 modules one blit
  each, contract §2.2, and qemu's refresh may split a draw), **overtaken**
  when they are all N+1's (N was whole underneath), **unjudged**
  otherwise (a neighbour the wire skipped);
- **unjudged** too when modules are partly green (text drawn under the
  QR, contract §2.3) and the QR was redrawn within TEXT_PAUSE: the text
  waits for the guest's hash of the screen, slower on a starved guest;
- **damaged** when it stayed longer, or to the end of the capture, and
  was not whole: the guest leaves a whole QR whenever it stops drawing.

And a frame whose every state was *painting*, followed directly by
N+1, was never whole on the wire. When the modules still N-1's in its
last state are where a guest drawing in row or column order would still
have to go, that is drawing caught by the refresh; anywhere else it is a
tile of N that did not arrive, which N+1's drawing covered: damage.

Measured on 145 clean captures (bundled and blit guests, both routes):
mid-drawing states left within 0.061 s; no frame flagged.

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
# most 0.061 s over 156 clean walks; frames.DRAWING_PAUSE is the same)
DRAWING_PAUSE = 0.1
# s: text under the QR waits for the guest's hash and the QR's redraw
# (at most 0.061 s measured; a starved guest is slower)
TEXT_PAUSE = 1.0

WHOLE, PAINTING, OVERTAKEN = 'whole', 'painting', 'overtaken'
DAMAGED, UNJUDGED = 'damaged', 'unjudged'
MIXED = 'mixed'             # a kind only: modules partly green


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
    status: str = ''
    rect: typing.Optional[draw.Rect] = None     # screen px
    how: str = ''


@dataclasses.dataclass
class QrDamage:
    frame: int
    t: float
    rect: typing.Optional[draw.Rect]
    how: str


class Judge:
    """Collects the region's states (observe) and judges them (finish)
    epoch by epoch: a new screen geometry starts a new epoch.
    """

    def __init__(self):
        self.epochs: typing.List[typing.List[Seen]] = [[]]
        self.counts = {}
        self._open = None

    def new_geometry(self):
        self._open = None
        if self.epochs[-1]:
            self.epochs.append([])

    def observe(self, t, frame, payload, surface):
        """Take the state of `surface` (a draw.Surface) whose QR decoded
        as `frame` with `payload` (bytes); `frame` None: the region
        changed and does not decode.
        """
        if self._open is not None:
            self._open.lasted = t - self._open.t
            self._open = None
        if frame is None:
            return
        ox, oy = fbhash.digest_origin(surface.width, surface.height)
        region = surface.pixels[oy:oy + fbhash.REGION_PX,
                                ox:ox + fbhash.REGION_PX]
        if region.shape[:2] != (fbhash.REGION_PX, fbhash.REGION_PX):
            return                      # a screen too small: not judged
        grid = grid_of(region)
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

            for s in epoch:
                self._judge(s, grid(s.frame), grid(s.frame - 1),
                            grid(s.frame + 1), final=final)
            for s in epoch:
                counts[s.status] += 1
                if s.status == DAMAGED:
                    found.setdefault(s.frame, QrDamage(s.frame, s.t, s.rect,
                                                       s.how))
            for d in _never_whole(epoch, grid):
                found.setdefault(d.frame, d)
        self.counts = counts
        return [found[n] for n in sorted(found)]

    def _judge(self, s, mine, before, after, final=True):
        g = s.grid
        ox, oy = s.origin
        if g.foreign is not None:
            r = g.foreign
            s.status, s.rect = DAMAGED, draw.Rect(ox + r.x, oy + r.y,
                                                  r.w, r.h)
            s.how = ('the QR region of frame %d held colours the guest '
                     'never paints there at %s (a corrupted draw)' % (
                         s.frame, s.rect))
            return
        kind, why = self._kind(s, mine, before, after)
        if kind == WHOLE:
            s.status = WHOLE
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
        if s.lasted is None and not final:
            s.status = UNJUDGED
            s.how = '%s, up to a new screen mode' % why
            return
        s.status = DAMAGED
        s.how = ('the QR of frame %d stayed %s with %s: a draw in the QR '
                 'that did not arrive, or a damaged one' % (
                     s.frame, 'to the end of the capture' if s.lasted is
                     None else 'for %.3f s' % s.lasted, why))

    def _kind(self, s, mine, before, after):
        """(kind, what differs): WHOLE, PAINTING (the other modules are
        N-1's), OVERTAKEN (N+1's), else DAMAGED with a description.
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
        for other, kind, n in ((before, PAINTING, s.frame - 1),
                               (after, OVERTAKEN, s.frame + 1)):
            if other is not None and not (bad & (g.dark != other)).any():
                return kind, 'frame %d\'s modules at %s' % (n, s.rect)
        if before is not None and after is not None:
            odd = bad & (g.dark != before) & (g.dark != after)
            if not odd.any():
                return DAMAGED, ('frame %d\'s and frame %d\'s modules '
                                 'together at %s' % (s.frame - 1,
                                                     s.frame + 1, s.rect))
            s.rect = self._rect(s, odd)
            return DAMAGED, ('modules at %s that are neither its own nor '
                             'frame %d\'s or %d\'s' % (
                                 s.rect, s.frame - 1, s.frame + 1))
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


def _never_whole(epoch, grid):
    """QrDamage for frames whose every state was PAINTING (each left at
    once, so judged mid-drawing) and so never whole on the wire, when the
    next frame followed directly and the modules still N-1's in N's last
    state are not where a guest drawing in raster order would still have
    to go: a tile of N that did not arrive, which N+1's drawing then
    covered. (A frame followed by a skipped one is not judged: what the
    wire showed between is unknown.)
    """
    by_frame = {}
    for s in epoch:
        by_frame.setdefault(s.frame, []).append(s)
    for n, mine in sorted(by_frame.items()):
        if n + 1 not in by_frame or any(s.status != PAINTING for s in mine):
            continue
        own, older = grid(n), grid(n - 1)
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
                n, len(mine), n - 1, rect, n + 1)))

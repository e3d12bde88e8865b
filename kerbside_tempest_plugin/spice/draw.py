"""SPICE display draws, replayed onto framebuffers.

What a display channel's server messages do to the client's pixels, for
a capture of the wire to be replayed pixel-exact (the per-frame check,
scenario.frames; benchmarks/wire_frames.py). It builds on `spice.wire`:
`Replay.apply(unit)` takes the wire.Units of the server-to-client
direction of one display channel, in order.

What qemu sends for a guest on `-vga qxl` in VGA mode (what OVMF drives),
with image compression off (qemu's `image-compression=off` and a client
that asks for `off`, or none): `surface_create` (the primary surface,
32-bit xRGB) and `draw_copy` with uncompressed top-down 32-bit bitmaps,
one per changed 32 px column run of the guest's framebuffer, plus
messages that put no pixels anywhere (`mark`, `monitors_config`,
`inval_all_palettes`, `set_ack`, `ping`). The replay does those, and the
few other draws that are as simple to do exactly: `draw_fill` with a
solid brush, `copy_bits`, `draw_blackness`/`draw_whiteness`, images
cached by the server and sent again `from_cache`, 16, 24 and 32-bit
bitmaps, clip rectangles.

Anything else raises `Unreplayable` naming what was seen (a compressed
image: `glz_rgb (102)`, a video stream, a ROP other than put, a mask):
that capture cannot be replayed exactly, which is not a fault of the
wire. Bytes that do not hold what the message type says raise
`DrawError` (a wire.WireError): a cut or garbled capture.

The facts are spice-protocol's (spice/enums.h, spice.proto; integers
little-endian, pointers are u32 offsets into the message body).
"""

import dataclasses
import struct
import typing

import numpy as np

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.spice import wire

# Display channel, server to client.
MSG = {name: wire.message_type('display', wire.S2C, name) for name in (
    'mode', 'mark', 'reset', 'copy_bits', 'inval_list',
    'inval_all_pixmaps', 'inval_palette', 'inval_all_palettes',
    'stream_create', 'draw_fill', 'draw_copy', 'draw_blackness',
    'draw_whiteness', 'surface_create', 'surface_destroy')}
# Messages that change no pixel (or only caches we do not keep).
NO_PIXELS = frozenset(['mark', 'reset', 'inval_palette',
                       'inval_all_palettes', 'monitors_config',
                       'stream_activate_report', 'set_ack', 'ping',
                       'wait_for_channels', 'disconnecting', 'notify',
                       'list', 'migrate', 'migrate_data'])

IMAGE_TYPES = {0: 'bitmap', 1: 'quic', 100: 'lz_plt', 101: 'lz_rgb',
               102: 'glz_rgb', 103: 'from_cache', 104: 'surface',
               105: 'jpeg', 106: 'from_cache_lossless',
               107: 'zlib_glz_rgb', 108: 'jpeg_alpha', 109: 'lz4'}
IMAGE_BITMAP, IMAGE_FROM_CACHE, IMAGE_FROM_CACHE_LOSSLESS = 0, 103, 106
IMAGE_CACHE_ME = 1

BITMAP_FORMATS = {1: '1bit_le', 2: '1bit_be', 3: '4bit_le', 4: '4bit_be',
                  5: '8bit', 6: '16bit', 7: '24bit', 8: '32bit', 9: 'rgba',
                  10: '8bit_a'}
BITMAP_16BIT, BITMAP_24BIT, BITMAP_32BIT, BITMAP_RGBA = 6, 7, 8, 9
BITMAP_PAL_FROM_CACHE = 2
BITMAP_TOP_DOWN = 4

ROPD_OP_PUT = 1 << 3
CLIP_NONE, CLIP_RECTS = 0, 1
BRUSH_NONE, BRUSH_SOLID = 0, 1
SURFACE_PRIMARY = 1
SURFACE_FORMATS_32 = (32, 96)           # 32_xRGB, 32_ARGB

RECT = struct.Struct('<iiii')           # top, left, bottom, right
IMAGE_DESCRIPTOR = struct.Struct('<QBBII')
BITMAP_HEADER = struct.Struct('<BBIII')
SURFACE_CREATE = struct.Struct('<IIIII')
# A screen bigger than this is not a screen.
MAX_SIDE = 16384


class DrawError(wire.WireError):
    """A display message whose bytes do not hold what its type says."""


class Unreplayable(errors.HarnessError):
    """A well-formed draw the replay cannot render exactly (a compressed
    image, a video stream, a ROP other than put). `what` says what it
    was, e.g. "draw_copy with a glz_rgb (102) image".
    """

    def __init__(self, what):
        self.what = what
        super().__init__('cannot replay %s' % what)


@dataclasses.dataclass(frozen=True)
class Rect:
    """x, y, w, h in pixels."""
    x: int
    y: int
    w: int
    h: int

    @classmethod
    def from_ltrb(cls, left, top, right, bottom):
        return cls(left, top, max(0, right - left), max(0, bottom - top))

    @property
    def right(self):
        return self.x + self.w

    @property
    def bottom(self):
        return self.y + self.h

    @property
    def empty(self):
        return self.w <= 0 or self.h <= 0

    def intersect(self, other):
        return Rect.from_ltrb(max(self.x, other.x), max(self.y, other.y),
                              min(self.right, other.right),
                              min(self.bottom, other.bottom))

    def union(self, other):
        if other is None or other.empty:
            return self
        if self.empty:
            return other
        return Rect.from_ltrb(min(self.x, other.x), min(self.y, other.y),
                              max(self.right, other.right),
                              max(self.bottom, other.bottom))

    def overlaps(self, other):
        return not self.intersect(other).empty

    @property
    def slices(self):
        """(rows, columns) to index an HxW array with."""
        return slice(self.y, self.bottom), slice(self.x, self.right)

    def __str__(self):
        return '(x=%d, y=%d, w=%d, h=%d)' % (self.x, self.y, self.w, self.h)

    def to_json(self):
        return [self.x, self.y, self.w, self.h]


@dataclasses.dataclass
class Surface:
    """A surface's pixels: HxWx4 uint8 in the wire's order B, G, R, X."""
    surface_id: int
    width: int
    height: int
    primary: bool
    pixels: np.ndarray

    @classmethod
    def blank(cls, surface_id, width, height, primary=True):
        return cls(surface_id, width, height, primary,
                   np.zeros((height, width, 4), dtype=np.uint8))

    @property
    def bounds(self):
        return Rect(0, 0, self.width, self.height)

    def rgb(self):
        """An HxWx3 RGB view (no copy) for digest.qr and digest.fbhash."""
        return self.pixels[:, :, 2::-1]

    def copy(self):
        return dataclasses.replace(self, pixels=self.pixels.copy())


@dataclasses.dataclass
class Drawn:
    """What one message did: the message name, the surface it drew on
    and the rectangle it changed there (None for a message that draws
    nothing, e.g. `mark`), and for surface_create/destroy the surface.
    """
    name: str
    surface_id: typing.Optional[int] = None
    rect: typing.Optional[Rect] = None
    created: typing.Optional[Surface] = None
    destroyed: bool = False


class _Reader:
    """Bounds-checked reads out of one message body."""

    def __init__(self, body, what):
        self.body = body
        self.what = what

    def unpack(self, fmt, off):
        try:
            return fmt.unpack_from(self.body, off)
        except struct.error:
            raise DrawError('%s: %d bytes at offset %d run past its %d-byte '
                            'body' % (self.what, fmt.size, off,
                                      len(self.body))) from None

    def u8(self, off):
        return self.unpack(_U8, off)[0]

    def u16(self, off):
        return self.unpack(_U16, off)[0]

    def u32(self, off):
        return self.unpack(_U32, off)[0]

    def rect(self, off):
        top, left, bottom, right = self.unpack(RECT, off)
        return Rect.from_ltrb(left, top, right, bottom)

    def bytes(self, off, n):
        if off < 0 or off + n > len(self.body):
            raise DrawError('%s: %d bytes at offset %d run past its %d-byte '
                            'body' % (self.what, n, off, len(self.body)))
        return self.body[off:off + n]


_U8 = struct.Struct('<B')
_U16 = struct.Struct('<H')
_U32 = struct.Struct('<I')
_POINT = struct.Struct('<ii')


class Replay:
    """The client's surfaces after each display message of one channel.

    `apply(unit)` returns a Drawn. `primary` is the primary surface (the
    screen) or None before the first surface_create. `counts` counts the
    messages by name; `images` the images drawn by type name.
    """

    def __init__(self):
        self.surfaces: typing.Dict[int, Surface] = {}
        self.cache: typing.Dict[int, np.ndarray] = {}
        self.counts: typing.Dict[str, int] = {}
        self.images: typing.Dict[str, int] = {}

    @property
    def primary(self) -> typing.Optional[Surface]:
        return next((s for s in self.surfaces.values() if s.primary), None)

    def apply(self, unit: wire.Unit) -> Drawn:
        if unit.kind != 'message':
            return Drawn(unit.kind)
        name = wire.message_name('display', wire.S2C, unit.type)
        self.counts[name] = self.counts.get(name, 0) + 1
        handler = getattr(self, '_' + name, None)
        if handler is not None:
            return handler(_Reader(unit.body, '%s at stream byte %d' % (
                name, unit.offset)), name)
        if name in NO_PIXELS:
            return Drawn(name)
        if name in ('inval_list', 'inval_all_pixmaps'):
            self.cache.clear()
            return Drawn(name)
        if name.startswith('stream_'):
            raise Unreplayable('a video stream (%s, lossy)' % name)
        if unit.type in wire.DISPLAY_DRAWS or name.startswith(('draw_',
                                                               'gl_')):
            raise Unreplayable('%s (not replayed)' % name)
        # Anything unknown to us that carries no draw: no pixels.
        return Drawn(name)

    # -- surfaces ---------------------------------------------------------
    def _surface_create(self, r, name):
        sid, width, height, fmt, flags = r.unpack(SURFACE_CREATE, 0)
        if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
            raise DrawError('%s: a %dx%d surface' % (r.what, width, height))
        if fmt not in SURFACE_FORMATS_32:
            raise Unreplayable('surface format %d (only 32-bit surfaces '
                               'are replayed)' % fmt)
        surface = Surface.blank(sid, width, height,
                                primary=bool(flags & SURFACE_PRIMARY))
        self.surfaces[sid] = surface
        return Drawn(name, sid, surface.bounds, created=surface)

    def _surface_destroy(self, r, name):
        sid = r.u32(0)
        self.surfaces.pop(sid, None)
        return Drawn(name, sid, destroyed=True)

    # -- the common part of every draw -----------------------------------
    def _base(self, r):
        """(surface, box, clip rects or None, offset after the base)."""
        sid = r.u32(0)
        box = r.rect(4)
        clip_type = r.u8(20)
        off = 21
        clips = None
        if clip_type == CLIP_RECTS:
            n = r.u32(off)
            off += 4
            if n > 65536:
                raise DrawError('%s: %d clip rectangles' % (r.what, n))
            clips = [r.rect(off + 16 * i) for i in range(n)]
            off += 16 * n
        elif clip_type != CLIP_NONE:
            raise DrawError('%s: clip type %d' % (r.what, clip_type))
        surface = self.surfaces.get(sid)
        if surface is None:
            raise DrawError('%s: draws on surface %d, which was never '
                            'created' % (r.what, sid))
        return surface, box, clips, off

    @staticmethod
    def _areas(surface, box, clips):
        """The parts of `box` to paint: inside the surface and the clip."""
        box = box.intersect(surface.bounds)
        if clips is None:
            return [box] if not box.empty else []
        out = []
        for c in clips:
            a = box.intersect(c)
            if not a.empty:
                out.append(a)
        return out

    def _no_mask(self, r, off, name):
        flags = r.u8(off)
        bitmap = r.u32(off + 9)
        if bitmap:
            raise Unreplayable('%s with a mask (flags %d)' % (name, flags))

    @staticmethod
    def _rop(rop, name):
        if rop != ROPD_OP_PUT:
            raise Unreplayable('%s with ROP descriptor 0x%x (only put is '
                               'replayed)' % (name, rop))

    def _drawn(self, name, surface, areas):
        rect = None
        for a in areas:
            rect = a if rect is None else rect.union(a)
        return Drawn(name, surface.surface_id, rect)

    # -- draws -------------------------------------------------------------
    def _draw_copy(self, r, name):
        surface, box, clips, off = self._base(r)
        image_at = r.u32(off)
        src = r.rect(off + 4)
        rop = r.u16(off + 20)
        scale = r.u8(off + 22)
        self._no_mask(r, off + 23, name)
        self._rop(rop, name)
        del scale   # only matters when the sizes differ, refused below
        pixels = self._image(r, image_at, name)
        if (src.w, src.h) != (box.w, box.h):
            raise Unreplayable('%s scaling %dx%d to %dx%d' % (
                name, src.w, src.h, box.w, box.h))
        ih, iw = pixels.shape[:2]
        if src.x < 0 or src.y < 0 or src.right > iw or src.bottom > ih:
            raise DrawError('%s: source area %s outside its %dx%d image' % (
                r.what, src, iw, ih))
        areas = self._areas(surface, box, clips)
        for a in areas:
            sy, sx = src.y + a.y - box.y, src.x + a.x - box.x
            surface.pixels[a.slices] = pixels[sy:sy + a.h, sx:sx + a.w]
        return self._drawn(name, surface, areas)

    def _draw_fill(self, r, name):
        surface, box, clips, off = self._base(r)
        brush = r.u8(off)
        if brush == BRUSH_SOLID:
            color = r.u32(off + 1)
            off += 5
        elif brush == BRUSH_NONE:
            color = None
            off += 1
        else:
            raise Unreplayable('%s with a pattern brush' % name)
        rop = r.u16(off)
        self._no_mask(r, off + 2, name)
        self._rop(rop, name)
        if color is None:
            return Drawn(name, surface.surface_id)
        areas = self._areas(surface, box, clips)
        value = np.frombuffer(struct.pack('<I', color), dtype=np.uint8)
        for a in areas:
            surface.pixels[a.slices] = value
        return self._drawn(name, surface, areas)

    def _solid(self, r, name, value):
        surface, box, clips, off = self._base(r)
        self._no_mask(r, off, name)
        areas = self._areas(surface, box, clips)
        for a in areas:
            surface.pixels[a.slices] = value
        return self._drawn(name, surface, areas)

    def _draw_blackness(self, r, name):
        return self._solid(r, name, 0)

    def _draw_whiteness(self, r, name):
        return self._solid(r, name, 255)

    def _copy_bits(self, r, name):
        surface, box, clips, off = self._base(r)
        sx, sy = r.unpack(_POINT, off)
        src = Rect(sx, sy, box.w, box.h)
        if src.intersect(surface.bounds) != src:
            raise DrawError('%s: source %s outside the %dx%d surface' % (
                r.what, src, surface.width, surface.height))
        moved = surface.pixels[src.slices].copy()
        areas = self._areas(surface, box, clips)
        for a in areas:
            y0, x0 = a.y - box.y, a.x - box.x
            surface.pixels[a.slices] = moved[y0:y0 + a.h, x0:x0 + a.w]
        return self._drawn(name, surface, areas)

    # -- images ------------------------------------------------------------
    def _image(self, r, at, name):
        """The image at body offset `at` as HxWx4 B, G, R, X."""
        if not at:
            raise DrawError('%s: no image' % r.what)
        image_id, itype, flags, width, height = r.unpack(IMAGE_DESCRIPTOR,
                                                         at)
        tname = IMAGE_TYPES.get(itype, 'type-%d' % itype)
        self.images[tname] = self.images.get(tname, 0) + 1
        if itype in (IMAGE_FROM_CACHE, IMAGE_FROM_CACHE_LOSSLESS):
            cached = self.cache.get(image_id)
            if cached is None:
                raise DrawError('%s: image %d from the cache was never '
                                'cached' % (r.what, image_id))
            return cached
        if itype != IMAGE_BITMAP:
            raise Unreplayable('%s with a %s (%d) image' % (
                name, tname, itype))
        pixels = self._bitmap(r, at + IMAGE_DESCRIPTOR.size, name)
        if flags & IMAGE_CACHE_ME:
            self.cache[image_id] = pixels
        return pixels

    def _bitmap(self, r, off, name):
        fmt, flags, width, height, stride = r.unpack(BITMAP_HEADER, off)
        off += BITMAP_HEADER.size
        off += 8 if flags & BITMAP_PAL_FROM_CACHE else 4
        bpp = {BITMAP_16BIT: 2, BITMAP_24BIT: 3, BITMAP_32BIT: 4,
               BITMAP_RGBA: 4}.get(fmt)
        if bpp is None:
            raise Unreplayable('%s with a %s bitmap' % (
                name, BITMAP_FORMATS.get(fmt, 'format-%d' % fmt)))
        if width > MAX_SIDE or height > MAX_SIDE or stride < width * bpp:
            raise DrawError('%s: a %dx%d bitmap with stride %d' % (
                r.what, width, height, stride))
        data = r.bytes(off, stride * height)
        rows = np.frombuffer(data, dtype=np.uint8).reshape(height, stride)
        rows = rows[:, :width * bpp]
        if not flags & BITMAP_TOP_DOWN:
            rows = rows[::-1]
        if bpp == 4:
            return rows.reshape(height, width, 4)
        out = np.zeros((height, width, 4), dtype=np.uint8)
        if bpp == 3:
            out[:, :, :3] = rows.reshape(height, width, 3)
        else:
            v = rows.view('<u2').reshape(height, width).astype(np.uint16)
            for i, shift in enumerate((0, 5, 10)):        # x555: B, G, R
                c = (v >> shift) & 0x1f
                out[:, :, i] = (c << 3) | (c >> 2)
        return out


# -- building messages (tests, and whoever needs a display stream) ---------


def pack_surface_create(width, height, surface_id=0, fmt=32,
                        primary=True):
    return wire.pack_message(MSG['surface_create'], SURFACE_CREATE.pack(
        surface_id, width, height, fmt, SURFACE_PRIMARY if primary else 0))


def pack_draw_copy(bgrx, x, y, surface_id=0, image_type=IMAGE_BITMAP,
                   image_id=1, clips=None, rop=ROPD_OP_PUT):
    """A draw_copy of `bgrx` (HxWx4 uint8, B, G, R, X) at (x, y): an
    uncompressed top-down 32-bit bitmap, as qemu sends it; another
    `image_type` carries the same descriptor and no data.
    """
    h, w = bgrx.shape[:2]
    base = struct.pack('<I', surface_id) + RECT.pack(y, x, y + h, x + w)
    if clips:
        base += struct.pack('<BI', CLIP_RECTS, len(clips)) + b''.join(
            RECT.pack(c.y, c.x, c.bottom, c.right) for c in clips)
    else:
        base += struct.pack('<B', CLIP_NONE)
    copy_len = 4 + RECT.size + 2 + 1 + 1 + 8 + 4
    image_at = len(base) + copy_len
    copy = struct.pack('<I', image_at) + RECT.pack(0, 0, h, w) + \
        struct.pack('<HB', rop, 0) + struct.pack('<BiiI', 0, 0, 0, 0)
    desc = IMAGE_DESCRIPTOR.pack(image_id, image_type, 0, w, h)
    if image_type != IMAGE_BITMAP:
        return wire.pack_message(MSG['draw_copy'], base + copy + desc)
    bm = BITMAP_HEADER.pack(BITMAP_32BIT, BITMAP_TOP_DOWN, w, h, w * 4) + \
        struct.pack('<I', 0)
    return wire.pack_message(MSG['draw_copy'], base + copy + desc + bm +
                             np.ascontiguousarray(bgrx, np.uint8).tobytes())


def bgrx_of(rgb):
    """HxWx3 RGB to HxWx4 B, G, R, 0."""
    rgb = np.asarray(rgb)
    out = np.zeros(rgb.shape[:2] + (4,), dtype=np.uint8)
    out[:, :, :3] = rgb[:, :, 2::-1]
    return out

"""Locate and decode the digest QR code in a frame (contract §2).

Region first: the guest always paints the 180x180 digest at (W-196, H-212),
green on black, so the region is cut out, its luma inverted
(255 - mean(R,G,B)) and handed to zxing-cpp. When that finds nothing (a mode
change in flight, another guest layout) the whole frame is searched.

zxing-cpp is imported lazily so importing this package never needs it. The
payload is read from `Barcode.bytes`, never `.text` (it is binary).
"""

import dataclasses
import io
import os
import typing

import numpy as np

from kerbside_tempest_plugin.digest import errors
from kerbside_tempest_plugin.digest import fbhash
from kerbside_tempest_plugin.digest import payload as pl

REGION = 'region'
FULL_FRAME = 'full_frame'
QR_VERSION5_MODULES = 37


@dataclasses.dataclass(frozen=True)
class QrHit:
    payload: bytes
    origin: typing.Tuple[int, int]   # top-left of the region (quiet zone)
    size: typing.Tuple[int, int]     # region width, height in px
    method: str                      # REGION or FULL_FRAME
    frame_size: typing.Tuple[int, int] = (0, 0)


def load_image(src) -> np.ndarray:
    """Return an HxWx3 uint8 RGB array.

    Accepts PNG (or any PIL-readable) bytes, a path, a PIL image or an
    RGB/RGBA array. Raises ImageError for anything unusable.
    """
    if isinstance(src, np.ndarray):
        arr = src
    elif isinstance(src, (bytes, bytearray, memoryview, str, os.PathLike)):
        from PIL import Image
        try:
            if isinstance(src, (str, os.PathLike)):
                with open(src, 'rb') as f:
                    data = f.read()
            else:
                data = bytes(src)
            with Image.open(io.BytesIO(data)) as img:
                arr = np.asarray(img if img.mode in ('RGB', 'RGBA')
                                 else img.convert('RGB'))
        except OSError as e:
            raise errors.ImageError('cannot read image %s: %s'
                                    % (_describe(src), e)) from None
        except Exception as e:  # PIL raises assorted types on junk
            raise errors.ImageError('cannot decode image %s: %s: %s'
                                    % (_describe(src), type(e).__name__,
                                       e)) from None
    elif hasattr(src, 'convert') and hasattr(src, 'size'):
        try:
            arr = np.asarray(src.convert('RGB'))
        except Exception as e:
            raise errors.ImageError('cannot convert PIL image: %s' % e) \
                from None
    else:
        raise errors.ImageError('unsupported image source type %s'
                                % type(src).__name__)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or 0 in arr.shape[:2]:
        raise errors.ImageError('image must be HxWx3 (RGB) or HxWx4 (RGBA),'
                                ' got shape %s' % (arr.shape,))
    if arr.dtype != np.uint8:
        raise errors.ImageError('image must be uint8, got %s' % arr.dtype)
    return arr[:, :, :3]


def _describe(src):
    if isinstance(src, (str, os.PathLike)):
        return repr(os.fspath(src))
    return '(%d bytes)' % len(src)


def inverted_luma(rgb) -> np.ndarray:
    """255 - mean(R,G,B): the green-on-black QR becomes dark-on-light."""
    # Channel by channel into one uint16 buffer: ~7x faster than
    # astype().sum(axis=2) on a strided crop.
    total = np.add(rgb[:, :, 0], rgb[:, :, 1], dtype=np.uint16)
    total += rgb[:, :, 2]
    total //= 3
    return np.subtract(255, total).astype(np.uint8)


def _read(gray, fast):
    import zxingcpp
    kwargs = {}
    if fast:
        kwargs = dict(try_rotate=False, try_downscale=False,
                      try_invert=False)
    gray = np.ascontiguousarray(gray)
    try:
        found = zxingcpp.read_barcodes(
            gray, formats=zxingcpp.BarcodeFormat.QRCode, **kwargs)
    except TypeError:
        # zxing-cpp 2.x has no try_invert; the image is inverted already.
        kwargs.pop('try_invert', None)
        found = zxingcpp.read_barcodes(
            gray, formats=zxingcpp.BarcodeFormat.QRCode, **kwargs)
    return [b for b in found
            if b.valid and b.format == zxingcpp.BarcodeFormat.QRCode]


def _is_digest(data):
    return data[:4] == pl.MAGIC


def _region_of(barcode, frame_w, frame_h):
    """Estimate the region (quiet zone included) from the symbol corners."""
    pos = barcode.position
    xs = [p.x for p in (pos.top_left, pos.top_right, pos.bottom_right,
                        pos.bottom_left)]
    ys = [p.y for p in (pos.top_left, pos.top_right, pos.bottom_right,
                        pos.bottom_left)]
    w = max(xs) - min(xs) + 1
    h = max(ys) - min(ys) + 1
    quiet_x = w * fbhash.QR_BORDER_MODULES / QR_VERSION5_MODULES
    quiet_y = h * fbhash.QR_BORDER_MODULES / QR_VERSION5_MODULES
    x0 = max(0, int(round(min(xs) - quiet_x)))
    y0 = max(0, int(round(min(ys) - quiet_y)))
    return ((x0, y0), (int(round(w + 2 * quiet_x)),
                       int(round(h + 2 * quiet_y))))


def find_digest(image, region_first=True, full_frame=True) -> QrHit:
    """Find the Sextant digest QR in `image` (anything load_image takes).

    Only QR codes whose payload starts with the SXDG magic count; other QR
    codes in the frame are ignored. Raises QrNotFound.
    """
    rgb = load_image(image)
    height, width = rgb.shape[:2]
    others = 0
    if region_first:
        ox, oy = fbhash.digest_origin(width, height)
        crop = rgb[oy:oy + fbhash.REGION_PX, ox:ox + fbhash.REGION_PX]
        if crop.shape[0] >= 21 and crop.shape[1] >= 21:
            for barcode in _read(inverted_luma(crop), fast=True):
                data = bytes(barcode.bytes)
                if _is_digest(data):
                    return QrHit(data, (ox, oy),
                                 (crop.shape[1], crop.shape[0]), REGION,
                                 (width, height))
                others += 1
    if full_frame:
        others = 0
        for barcode in _read(inverted_luma(rgb), fast=False):
            data = bytes(barcode.bytes)
            if _is_digest(data):
                origin, size = _region_of(barcode, width, height)
                expected = fbhash.digest_origin(width, height)
                if (abs(origin[0] - expected[0]) <= fbhash.MODULE_PX
                        and abs(origin[1] - expected[1]) <= fbhash.MODULE_PX
                        and abs(size[0] - fbhash.REGION_PX)
                        <= fbhash.MODULE_PX):
                    # The guest's own placement: report it exactly.
                    origin = expected
                    size = (fbhash.REGION_PX, fbhash.REGION_PX)
                return QrHit(data, origin, size, FULL_FRAME, (width, height))
            others += 1
    where = 'the digest region' if not full_frame else 'the frame'
    if others:
        raise errors.QrNotFound('%d QR code(s) in %s but none carries an '
                                'SXDG digest' % (others, where))
    raise errors.QrNotFound('no QR code found in %s (%dx%d)'
                            % (where, width, height))

"""Framebuffer hash (contract §1.6) and the digest rectangle geometry.

CRC32C over rows y = 0..H-1 of pixels as bytes B,G,R,0, skipping the
180x180 digest rectangle, with rows capped at 1920 px.
"""

import crc32c
import numpy as np

from kerbside_tempest_plugin.digest import errors

REGION_PX = 180
MODULE_PX = 4
QR_BORDER_MODULES = 4
RIGHT_MARGIN = 16
BOTTOM_MARGIN = 16 + 16   # margin plus one text row
MAX_WIDTH = 1920
FG = (51, 150, 51)
BG = (0, 0, 0)


def digest_origin(width, height):
    """Top-left pixel of the digest region (saturating, as the guest)."""
    return (max(0, width - (RIGHT_MARGIN + REGION_PX)),
            max(0, height - (BOTTOM_MARGIN + REGION_PX)))


def _rgb(image):
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
        raise errors.ImageError(
            'framebuffer must be an HxWx3 or HxWx4 uint8 array, got %s %s'
            % (arr.dtype, arr.shape))
    return arr


def framebuffer_hash(rgb) -> int:
    """Recompute the trailer hash from a lossless RGB(A) frame."""
    arr = _rgb(rgb)
    height, width = arr.shape[:2]
    cap = min(width, MAX_WIDTH)
    # B,G,R,0 per pixel, already capped at MAX_WIDTH.
    bgr0 = np.zeros((height, cap, 4), dtype=np.uint8)
    bgr0[:, :, 0] = arr[:, :cap, 2]
    bgr0[:, :, 1] = arr[:, :cap, 1]
    bgr0[:, :, 2] = arr[:, :cap, 0]

    ox, oy = digest_origin(width, height)
    y0, y1 = min(oy, height), min(oy + REGION_PX, height)
    x0, x1 = min(ox, cap), min(ox + REGION_PX, cap)
    value = crc32c.crc32c(bgr0[:y0].tobytes())
    if x1 > x0:
        band = np.concatenate((bgr0[y0:y1, :x0], bgr0[y0:y1, x1:]), axis=1)
    else:
        band = bgr0[y0:y1]
    value = crc32c.crc32c(np.ascontiguousarray(band).tobytes(), value)
    return crc32c.crc32c(bgr0[y1:].tobytes(), value)

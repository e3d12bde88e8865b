"""Reference renderer: draw a payload exactly as the guest does (§2).

QR version 5, ECC L, one byte-mode segment, automatic mask, 4 px modules,
4-module quiet zone inside the 180x180 region, green (51,150,51) on black,
placed at (W-196, H-212). Used to synthesise test frames.
"""

import numpy as np

from kerbside_tempest_plugin.digest import errors
from kerbside_tempest_plugin.digest import fbhash
from kerbside_tempest_plugin.digest import payload as pl


def qr_matrix(payload, border=fbhash.QR_BORDER_MODULES):
    """The module matrix (True = dark) with `border` quiet modules."""
    import qrcode
    from qrcode import util

    payload = bytes(payload)
    if len(payload) > pl.CAPACITY:
        raise errors.EncodeError(
            'payload is %d bytes; V5-L byte mode holds at most %d'
            % (len(payload), pl.CAPACITY))
    qr = qrcode.QRCode(version=5,
                       error_correction=qrcode.constants.ERROR_CORRECT_L,
                       box_size=1, border=border)
    qr.add_data(util.QRData(payload, mode=util.MODE_8BIT_BYTE))
    qr.make(fit=False)
    return np.array(qr.get_matrix(), dtype=bool)


def render_region(payload) -> np.ndarray:
    """The 180x180 RGB digest region the guest paints."""
    modules = qr_matrix(payload)
    mask = np.kron(modules, np.ones((fbhash.MODULE_PX, fbhash.MODULE_PX),
                                    dtype=bool))
    region = np.zeros(mask.shape + (3,), dtype=np.uint8)
    region[mask] = fbhash.FG
    return region


def render_frame(payload, width=1024, height=768, frame=None,
                 origin=None) -> np.ndarray:
    """Draw the digest into `frame` (copied) or a black WxH RGB frame.

    `origin` overrides the guest placement (for frames of other layouts).
    """
    if frame is None:
        frame = np.zeros((height, width, 3), dtype=np.uint8)
    else:
        frame = np.array(np.asarray(frame)[:, :, :3], dtype=np.uint8)
        height, width = frame.shape[:2]
    ox, oy = origin if origin is not None else fbhash.digest_origin(
        width, height)
    region = render_region(payload)
    h = min(fbhash.REGION_PX, height - oy)
    w = min(fbhash.REGION_PX, width - ox)
    if h <= 0 or w <= 0:
        raise errors.ImageError('digest region at (%d,%d) lies outside a '
                                '%dx%d frame' % (ox, oy, width, height))
    frame[oy:oy + h, ox:ox + w] = region[:h, :w]
    return frame


def render_guest_frame(frame_counter, hashes, ring, background=None,
                       width=1024, height=768) -> np.ndarray:
    """Compose a frame as the guest would: hash first, then draw the QR.

    The framebuffer hash is taken over `background` (with the digest
    rectangle excluded, so it does not matter what is there) and put in the
    trailer of the payload drawn.
    """
    if background is None:
        background = np.zeros((height, width, 3), dtype=np.uint8)
    fb = fbhash.framebuffer_hash(background)
    data = pl.encode(frame_counter, hashes, ring, fb)
    return render_frame(data, frame=background)

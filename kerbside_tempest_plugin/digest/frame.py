"""One call for the common case: analyse a frame for its digest."""

import dataclasses
import typing

from kerbside_tempest_plugin.digest import fbhash
from kerbside_tempest_plugin.digest import payload as pl
from kerbside_tempest_plugin.digest import qr


@dataclasses.dataclass(frozen=True)
class FrameAnalysis:
    digest: pl.Digest
    origin: typing.Tuple[int, int]
    size: typing.Tuple[int, int]
    method: str
    # True/False when the trailer hash was recomputed from the frame; None
    # when it was not checked (disabled, or the QR is not where the guest
    # paints it so the exclusion rectangle is unknown).
    framebuffer_hash_ok: typing.Optional[bool]
    frame_size: typing.Tuple[int, int] = (0, 0)
    framebuffer_hash_computed: typing.Optional[int] = None

    def to_json(self):
        out = {'found': True, 'origin': list(self.origin),
               'size': list(self.size), 'method': self.method,
               'frame_size': list(self.frame_size)}
        out.update(self.digest.to_json())
        out['framebuffer_hash_ok'] = self.framebuffer_hash_ok
        out['framebuffer_hash_computed'] = self.framebuffer_hash_computed
        return out


def analyse(image, check_hash=True, full_frame=True) -> FrameAnalysis:
    """Locate, decode and parse the digest in `image`; verify the trailer.

    Raises QrNotFound when no digest QR is present and another DigestError
    subclass when the QR payload is not a valid digest.
    """
    rgb = qr.load_image(image)
    hit = qr.find_digest(rgb, full_frame=full_frame)
    digest = pl.decode(hit.payload)
    height, width = rgb.shape[:2]
    ok = computed = None
    if check_hash and hit.origin == fbhash.digest_origin(width, height):
        computed = fbhash.framebuffer_hash(rgb)
        ok = computed == digest.framebuffer_hash
    return FrameAnalysis(digest, hit.origin, hit.size, hit.method, ok,
                         (width, height), computed)

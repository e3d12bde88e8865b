"""Framebuffer hash (contract §1.6) against a plain row-by-row reference."""

import crc32c
import numpy as np
import pytest

from kerbside_tempest_plugin.digest import errors
from kerbside_tempest_plugin.digest import fbhash


def reference_hash(rgb):
    """Straight transcription of §1.6, one scanline at a time."""
    height, width = rgb.shape[:2]
    ox = max(0, width - 196)
    oy = max(0, height - 212)
    value = 0
    for y in range(height):
        row = bytearray()
        for x0, x1 in ([(0, ox), (ox + 180, width)]
                       if oy <= y < oy + 180 else [(0, width)]):
            x1 = min(x1, 1920)
            for px in rgb[y, x0:x1] if x1 > x0 else []:
                row += bytes((px[2], px[1], px[0], 0))
        value = crc32c.crc32c(bytes(row), value)
    return value


def noisy(width, height, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize('width,height', [(200, 230), (211, 260)])
def test_matches_reference_small(width, height):
    img = noisy(width, height, width)
    assert fbhash.framebuffer_hash(img) == reference_hash(img)


def test_matches_reference_wide_mode_is_capped():
    # 2100 px wide: the rectangle straddles the 1920 px cap.
    img = noisy(2100, 220, 1)
    assert fbhash.framebuffer_hash(img) == reference_hash(img)
    img2 = img.copy()
    img2[:, 1920:] = 0          # beyond the cap: not hashed
    assert fbhash.framebuffer_hash(img2) == fbhash.framebuffer_hash(img)


def test_known_solid_black_value():
    # All-black 1024x768 minus the rectangle: CRC32C of zero bytes.
    n = (1024 * 768 - 180 * 180) * 4
    img = np.zeros((768, 1024, 3), dtype=np.uint8)
    assert fbhash.framebuffer_hash(img) == crc32c.crc32c(bytes(n))


def test_rectangle_excluded_margin_included():
    img = noisy(1024, 768, 3)
    base = fbhash.framebuffer_hash(img)
    inside = img.copy()
    inside[556:736, 828:1008] = 7          # the digest rectangle
    assert fbhash.framebuffer_hash(inside) == base
    margin = img.copy()
    margin[600, 1010] = (1, 2, 3)          # right strip in a band row
    assert fbhash.framebuffer_hash(margin) != base
    below = img.copy()
    below[740, 900] ^= 1                   # just below the rectangle
    assert fbhash.framebuffer_hash(below) != base


def test_rgba_alpha_is_ignored():
    img = noisy(300, 300, 4)
    rgba = np.dstack([img, np.full((300, 300), 17, np.uint8)])
    assert fbhash.framebuffer_hash(rgba) == fbhash.framebuffer_hash(img)


@pytest.mark.parametrize('w,h,origin', [
    (640, 480, (444, 268)), (800, 600, (604, 388)),
    (1024, 768, (828, 556)), (1280, 720, (1084, 508)),
    (1280, 1024, (1084, 812)), (1920, 1080, (1724, 868)),
    (100, 100, (0, 0)),
])
def test_digest_origin(w, h, origin):
    assert fbhash.digest_origin(w, h) == origin


def test_bad_array_is_typed_error():
    with pytest.raises(errors.ImageError):
        fbhash.framebuffer_hash(np.zeros((4, 4), np.uint8))

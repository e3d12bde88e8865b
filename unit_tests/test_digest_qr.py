"""QR location/decoding, the reference renderer and frame.analyse."""

import io

import numpy as np
from PIL import Image
import pytest

from kerbside_tempest_plugin.digest import errors
from kerbside_tempest_plugin.digest import events as ev
from kerbside_tempest_plugin.digest import fbhash
from kerbside_tempest_plugin.digest import frame
from kerbside_tempest_plugin.digest import payload as pl
from kerbside_tempest_plugin.digest import qr
from kerbside_tempest_plugin.digest import render
from unit_tests import digest_fixtures as fx


def png_bytes(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format='PNG')
    return buf.getvalue()


def test_matrix_is_version5_with_quiet_zone():
    m = render.qr_matrix(fx.GOLDEN_MIXED)
    assert m.shape == (45, 45)
    assert not m[:4].any() and not m[-4:].any()
    assert not m[:, :4].any() and not m[:, -4:].any()
    # Finder pattern top-left corner module is dark.
    assert m[4, 4] and m[4, 10] and m[10, 4]


def test_render_region_geometry_and_palette():
    region = render.render_region(fx.GOLDEN_EMPTY)
    assert region.shape == (180, 180, 3)
    colours = {tuple(c) for c in region.reshape(-1, 3)}
    assert colours == {(0, 0, 0), (51, 150, 51)}
    assert (region[:16] == 0).all()         # quiet zone, 4 modules
    assert (region[16:20, 16:20] == (51, 150, 51)).all()


def test_decoded_symbol_is_v5_l_byte_mode():
    import zxingcpp
    frame_rgb = render.render_frame(fx.GOLDEN_MIXED)
    crop = frame_rgb[556:736, 828:1008]
    [b] = zxingcpp.read_barcodes(qr.inverted_luma(crop))
    assert b.bytes == fx.GOLDEN_MIXED
    assert b.extra['Version'] == '5'
    assert b.ec_level == 'L'


def test_render_rejects_oversize_payload():
    with pytest.raises(errors.EncodeError):
        render.render_region(bytes(107))


@pytest.mark.parametrize('size', fx.SCREEN_SIZES)
def test_region_first_for_every_screen_size(size):
    w, h = size
    img = render.render_frame(fx.GOLDEN_MIXED, w, h)
    hit = qr.find_digest(img)
    assert hit.payload == fx.GOLDEN_MIXED
    assert hit.method == qr.REGION
    assert hit.origin == fbhash.digest_origin(w, h)
    assert hit.size == (180, 180)


def test_full_frame_fallback_reports_location():
    img = render.render_frame(fx.GOLDEN_SINGLE_KEYPRESS, 1024, 768,
                              origin=(100, 200))
    hit = qr.find_digest(img)
    assert hit.method == qr.FULL_FRAME
    assert hit.payload == fx.GOLDEN_SINGLE_KEYPRESS
    assert abs(hit.origin[0] - 100) <= 2 and abs(hit.origin[1] - 200) <= 2
    assert abs(hit.size[0] - 180) <= 4
    with pytest.raises(errors.QrNotFound):
        qr.find_digest(img, full_frame=False)


def test_frame_from_old_mode_found_after_resize():
    # The QR sits where a 640x480 guest put it, in a 1024x768 surface.
    img = np.zeros((768, 1024, 3), np.uint8)
    img[:480, :640] = render.render_frame(fx.GOLDEN_EMPTY, 640, 480)
    a = frame.analyse(img)
    assert a.method == qr.FULL_FRAME
    assert a.framebuffer_hash_ok is None


@pytest.mark.parametrize('kind', ['png_bytes', 'path', 'pil', 'rgb',
                                  'rgba'])
def test_load_image_sources(kind, tmp_path):
    img = render.render_frame(fx.GOLDEN_EMPTY, 640, 480)
    if kind == 'png_bytes':
        src = png_bytes(img)
    elif kind == 'path':
        src = tmp_path / 'f.png'
        src.write_bytes(png_bytes(img))
    elif kind == 'pil':
        src = Image.fromarray(img)
    elif kind == 'rgb':
        src = img
    else:
        src = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    loaded = qr.load_image(src)
    assert loaded.shape == (480, 640, 3)
    assert (loaded == img).all()
    assert frame.analyse(src).digest.raw == fx.GOLDEN_EMPTY


@pytest.mark.parametrize('src', [
    b'not a png', b'', 'no/such/file.png', 42,
    np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32),
    np.zeros((0, 5, 3), np.uint8),
])
def test_load_image_bad_input_is_typed(src):
    with pytest.raises(errors.ImageError):
        qr.load_image(src)


def test_analyse_verifies_framebuffer_hash():
    rng = np.random.default_rng(5)
    bg = np.zeros((768, 1024, 3), np.uint8)
    bg[16:400, 16:500] = rng.integers(0, 2, (384, 484, 1)) * \
        np.array(fbhash.FG, np.uint8)
    img = render.render_guest_frame(9, {}, [ev.LineRendered(1, 1)], bg)
    a = frame.analyse(img)
    assert a.framebuffer_hash_ok is True
    assert a.origin == (828, 556) and a.size == (180, 180)
    assert a.digest.frame_counter == 9
    stale = img.copy()
    stale[20, 20] = (1, 1, 1)
    b = frame.analyse(stale)
    assert b.framebuffer_hash_ok is False
    assert b.framebuffer_hash_computed != b.digest.framebuffer_hash
    assert frame.analyse(stale, check_hash=False).framebuffer_hash_ok is None


def test_other_qr_code_is_not_a_digest():
    img = render.render_frame(b'https://example.com/not-a-digest')
    with pytest.raises(errors.QrNotFound) as info:
        qr.find_digest(img)
    assert 'none carries an SXDG digest' in str(info.value)


def test_other_qr_code_beside_the_digest_is_ignored():
    img = render.render_frame(b'hello', origin=(50, 50))
    img = render.render_frame(fx.GOLDEN_MIXED, frame=img)
    assert qr.find_digest(img).payload == fx.GOLDEN_MIXED
    img = render.render_frame(fx.GOLDEN_MIXED, origin=(300, 300))
    img = render.render_frame(b'decoy', frame=img)
    hit = qr.find_digest(img)
    assert hit.payload == fx.GOLDEN_MIXED and hit.method == qr.FULL_FRAME


def test_corrupt_digest_in_qr_raises_digest_error():
    bad = b'SXDG\x01' + fx.GOLDEN_EMPTY[5:]
    with pytest.raises(errors.UnsupportedVersion):
        frame.analyse(render.render_frame(bad))


@pytest.mark.parametrize('seed', range(4))
def test_random_images_raise_qr_not_found(seed):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    with pytest.raises(errors.QrNotFound):
        frame.analyse(img)


def test_blank_frame():
    with pytest.raises(errors.QrNotFound):
        frame.analyse(np.zeros((768, 1024, 3), np.uint8))


def test_tiny_frame():
    with pytest.raises(errors.QrNotFound):
        frame.analyse(np.zeros((5, 5, 3), np.uint8))


def test_analysis_to_json_shape():
    a = frame.analyse(render.render_frame(fx.GOLDEN_MIXED))
    j = a.to_json()
    assert j['origin'] == [828, 556] and j['size'] == [180, 180]
    assert j['frame_counter'] == 0xDEADBEEF
    assert j['hashes'] == fx.MIXED_HASHES
    assert j['framebuffer_hash'] == 0x12345678
    assert j['framebuffer_hash_ok'] is False
    assert pl.decode(a.digest.raw) == a.digest

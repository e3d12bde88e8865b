"""scenario.qr_tiles: the digest's own region, checked module by module.

The QR's error correction decodes past a damaged tile and the
framebuffer hash skips the region, so before this a draw lost or
corrupted inside the QR passed (faults run 3's two misses). The real
capture of test_scenario_frames gets a tile corrupted and a tile dropped
the way the relay does it; small synthetic captures show each rule.
"""

import struct

import numpy as np
import pytest

from kerbside_tempest_plugin.digest import fbhash
from kerbside_tempest_plugin.digest import payload as pl
from kerbside_tempest_plugin.digest import render
from kerbside_tempest_plugin.scenario import checks
from kerbside_tempest_plugin.scenario import frames
from kerbside_tempest_plugin.scenario import qr_tiles
from kerbside_tempest_plugin.spice import draw

from unit_tests import test_scenario_frames as tf

clean = tf.clean
walk = tf.walk


def qr_draws(data):
    """[(index, time, Rect)] of the draws inside the 1024x768 QR."""
    region = frames.qr_rect(1024, 768)
    return [d for d in tf.draws(data)
            if d[2].intersect(region) == d[2]]


# -- the real capture -------------------------------------------------------


def test_the_clean_capture_has_every_qr_state_whole_or_mid_drawing(
        clean, walk, tmp_path):
    result = tf.check(clean, walk, tmp_path)
    assert result.verdict == checks.PASS, result.message()
    states = result.data['qr_states']
    assert states['damaged'] == 0
    assert states['whole'] > 50
    assert sum(states.values()) >= result.data['frames_on_wire']


def test_a_corrupted_qr_tile_fails_at_its_frame(clean, walk, tmp_path):
    # A tile of the QR the next frame covers: the QR still decodes (its
    # error correction) and the hash skips the region.
    i, t, rect = qr_draws(clean)[30]
    result = tf.check(tf.corrupt(clean, i, row=2, col=2, pixels=4), walk,
                      tmp_path)
    assert result.verdict == checks.FAIL, result.summary
    assert 'held colours the guest never paints there' in result.summary
    bad = [f for f in result.data['frames'] if f['status'] == 'damaged']
    x, y, w, h = bad[0]['rect']
    assert rect.intersect(draw.Rect(x, y, w, h)) == draw.Rect(x, y, w, h)
    assert (w, h) == (4, 1)


def test_a_qr_tile_dropped_on_a_quiet_screen_stays_and_fails(
        clean, walk, tmp_path):
    # frame 55's QR (the Parked screen's first) loses a tile; the wire
    # shows frame 54's modules there for 0.218 s, until the cursor blinks
    i, t, rect = [d for d in qr_draws(clean)
                  if d[2] == draw.Rect(896, 600, 32, 20) and 7.2 < d[1]][0]
    result = tf.check(tf.drop(clean, i), walk, tmp_path)
    assert result.verdict == checks.FAIL, result.summary
    assert result.summary.startswith('frame 55 damaged 7.')
    assert "the QR of frame 55 stayed for 0.218 s with frame 54's " \
        'modules at (x=896, y=600, w=24, h=20)' in result.summary
    # a starved guest (its slowest refresh over 100 ms) may leave its QR
    # half drawn that long itself: then the rule does not judge it
    starved = frames.check_capture(
        str(tmp_path / 'capture-display.pcap'), seen=walk['seen'],
        beats=walk['beats'], slowest_refresh_ms=150)
    assert starved.verdict == checks.PASS, starved.summary
    assert 'not judged, the guest was starved (its slowest refresh took ' \
        '150 ms, over 100)' in ' '.join(starved.details)


def test_a_dropped_tile_where_the_path_waited_for_a_cpu_is_not_judged(
        clean, walk, tmp_path):
    """The same dropped tile, with the display's path (here qemu) kept
    off the CPU around it: unverifiable, saying so; kept off only far
    from it, or only the harness waiting: it still fails.
    """
    i, t, rect = [d for d in qr_draws(clean)
                  if d[2] == draw.Rect(896, 600, 32, 20) and 7.2 < d[1]][0]
    tf.check(tf.drop(clean, i), walk, tmp_path)
    calls = []

    def waited_near(t0, t1, roles):
        calls.append((t0, t1, roles))
        return 0.6 if 'qemu' in roles else 0.0

    def check(waited):
        return frames.check_capture(
            str(tmp_path / 'capture-display.pcap'), seen=walk['seen'],
            beats=walk['beats'], path_waited=waited)
    gated = check(waited_near)
    assert gated.verdict == checks.PASS, gated.summary
    assert "not judged, the display's path (qemu, the proxy, ryll) waited " \
        'for a CPU 0.60 s of the 1.5 s around it' in ' '.join(gated.details)
    t0, t1, roles = calls[0]
    assert t1 - t0 == pytest.approx(frames.PATH_BEFORE + frames.PATH_AFTER)
    assert 'harness' not in roles
    # the matrix's idle walks: 0.11 s in such a window (fault missed)
    assert check(lambda t0, t1, roles: 0.11).verdict == checks.FAIL
    assert check(lambda t0, t1, roles: 0.6 if 'harness' in roles
                 else 0.0).verdict == checks.FAIL


def test_the_last_qr_of_the_capture_is_not_judged(clean, walk, tmp_path):
    # the guest powers off after its last QR, and qemu's last refresh may
    # have caught it half drawn (seen beside a CPU hog)
    last = qr_draws(clean)[-1]
    result = tf.check(tf.drop(clean, last[0]), walk, tmp_path)
    assert result.verdict == checks.PASS, result.summary


def test_a_corrupted_qr_tile_fails_even_for_a_starved_guest(
        clean, walk, tmp_path):
    i, t, rect = qr_draws(clean)[30]
    tf.check(tf.corrupt(clean, i, row=2, col=2, pixels=4), walk, tmp_path)
    result = frames.check_capture(
        str(tmp_path / 'capture-display.pcap'), seen=walk['seen'],
        beats=walk['beats'], slowest_refresh_ms=500)
    assert result.verdict == checks.FAIL
    assert 'held colours the guest never paints there' in result.summary


# -- the rules on synthetic captures ----------------------------------------

W, H = tf.W, tf.H


def qr_screen(counter):
    """Frame `counter` over a screen of its own (so its trailer, and
    much of its QR, differ from its neighbours').
    """
    box = (80, 16 + 8 * counter, 8, 8)
    return tf.with_qr(counter, tf.screen(tf.A, box))


def grid(screen):
    ox, oy = fbhash.digest_origin(W, H)
    region = screen[oy:oy + fbhash.REGION_PX, ox:ox + fbhash.REGION_PX]
    return qr_tiles.grid_of(region[:, :, ::-1]).dark


def tile_where(old, *others):
    """A 5x4 tile of the symbol's data area holding a module where `old`
    differs from every one of `others`.
    """
    differs = np.ones((qr_tiles.GRID, qr_tiles.GRID), dtype=bool)
    for o in others:
        differs &= grid(old) != grid(o)
    for my in range(14, 30):
        for mx in range(14, 30):
            if differs[my:my + 4, mx:mx + 5].any():
                return (mx, my, 5, 4)
    raise AssertionError('no such tile')


def mixed(base, other, modules):
    """`base` with the modules (mx, my, mw, mh) of the QR grid (quiet zone
    included) taken from `other`.
    """
    out = base.copy()
    ox, oy = fbhash.digest_origin(W, H)
    mx, my, mw, mh = modules
    px = fbhash.MODULE_PX
    ys = slice(oy + my * px, oy + (my + mh) * px)
    xs = slice(ox + mx * px, ox + (mx + mw) * px)
    out[ys, xs] = other[ys, xs]
    return out


def verdicts(*screens, gap):
    report = frames.verify(tf.capture(*screens, gap=gap))
    return tf.status(report), report


BOTTOM = (4, 38, 37, 3)     # the last three rows of the symbol


def test_a_qr_wholly_drawn_is_whole_and_the_frames_verify():
    status, report = verdicts(qr_screen(1), qr_screen(2), qr_screen(3),
                              gap=0.3)
    assert status == {1: 'verified', 2: 'verified', 3: 'verified'}
    assert report.qr_states['whole'] == 3


@pytest.mark.parametrize('gap', [0.3, 0.05])
def test_a_tile_two_frames_old_is_damage_however_short(gap):
    # frames 2, 3 and 4 all reached the wire: nothing unseen could have
    # left frame 1's modules there
    s1, s2, s3, s4 = (qr_screen(n) for n in (1, 2, 3, 4))
    tile = tile_where(s1, s2, s3, s4)
    status, report = verdicts(s1, s2, s3, mixed(s3, s1, tile), s4,
                              gap=gap)
    assert status[3] == 'damaged', status
    how = [f for f in report.frames if f.frame == 3][0].how
    assert "neither its own nor frame 2's or 4's, frames 2 to 4 all on " \
        'the wire: a tile that did not arrive' in how
    # with frame 2 never on the wire, those could be its modules
    status, report = verdicts(s1, mixed(s3, s1, tile), s4, gap=gap)
    assert (status[3] == 'damaged') == (gap > qr_tiles.DRAWING_PAUSE)


def test_drawing_caught_in_order_is_not_damage():
    # A guest drawing module by module, caught with its last rows still
    # the older frame's, then whole: painting.
    s1, s2, s3 = (qr_screen(n) for n in (1, 2, 3))
    status, report = verdicts(s1, mixed(s2, s1, BOTTOM), s2, s3, gap=0.05)
    assert status == {1: 'verified', 2: 'verified', 3: 'verified'}
    assert report.qr_states['painting'] == 1
    # ... and never whole on the wire before the next frame: still
    # where a guest drawing in order would be, so not damage
    status, report = verdicts(s1, mixed(s2, s1, BOTTOM), s3, gap=0.05)
    assert 'damaged' not in status.values(), status


def test_a_tile_that_never_arrived_before_the_next_frame_is_damage():
    s1, s2, s3 = (qr_screen(n) for n in (1, 2, 3))
    status, report = verdicts(s1, mixed(s2, s1, tile_where(s1, s2)), s3,
                              gap=0.05)
    assert status[2] == 'damaged', status
    how = [f for f in report.frames if f.frame == 2][0].how
    assert how.startswith('the QR of frame 2 was never whole on the wire')


def test_a_mid_drawing_state_that_stays_is_damage():
    s1, s2, s3 = (qr_screen(n) for n in (1, 2, 3))
    status, report = verdicts(s1, mixed(s2, s1, BOTTOM), s3, gap=0.3)
    assert status[2] == 'damaged'
    assert "with frame 1's modules at" in [
        f for f in report.frames if f.frame == 2][0].how


def test_a_foreign_colour_in_the_region_is_damage_at_once():
    s1, s2, s3 = (qr_screen(n) for n in (1, 2, 3))
    bad = s2.copy()
    ox, oy = fbhash.digest_origin(W, H)
    bad[oy + 90, ox + 90:ox + 93] = (200, 10, 10)
    status, report = verdicts(s1, bad, s2, s3, gap=0.02)
    assert status[2] == 'damaged'
    assert [f for f in report.frames if f.frame == 2][0].rect == \
        draw.Rect(ox + 90, oy + 90, 3, 1)


# -- the pieces -------------------------------------------------------------


def payload(counter):
    return pl.encode(counter, {}, [], 0)


@pytest.mark.parametrize('mask', range(8))
def test_the_mask_is_read_from_the_format_modules(mask):
    grid = qr_tiles.expected(payload(7), mask)
    assert qr_tiles.read_mask(grid, np.zeros_like(grid)) == mask
    # a few format modules lost still read
    broken = grid.copy()
    broken[qr_tiles.FORMAT[0][:2], qr_tiles.FORMAT[1][:2]] ^= True
    assert qr_tiles.read_mask(broken, np.zeros_like(grid)) == mask
    assert qr_tiles.read_mask(~grid, np.zeros_like(grid)) is None


def test_the_expected_grid_is_what_the_guest_renders():
    data = payload(11)
    region = render.render_region(data)
    grid = qr_tiles.grid_of(region[:, :, ::-1])
    assert grid.foreign is None and not grid.mixed.any()
    mask = qr_tiles.read_mask(grid.dark, grid.mixed)
    assert np.array_equal(grid.dark, qr_tiles.expected(data, mask))


def test_text_under_the_qr_waiting_for_the_redraw_is_not_damage():
    # A glyph drawn in a text cell under the QR (contract §2.3) stays
    # until the guest has hashed the screen and redraws the QR; a
    # starved guest takes longer than a refresh for that.
    s1, s2 = (qr_screen(n) for n in (1, 2))
    ox, oy = fbhash.digest_origin(W, H)
    text = s1.copy()
    text[oy + 150:oy + 160, ox + 10:ox + 13] = fbhash.FG
    status, report = verdicts(s1, text, s2, gap=0.3)
    assert 'damaged' not in status.values(), status
    assert report.qr_states['unjudged'] == 1
    # ... but left so longer than the guest's hash could take, it is
    status, report = verdicts(s1, text, s2, gap=1.5)
    assert status[1] == 'damaged'


def capture_of(*steps, gap=0.05, at=None):
    """A pcap of draws: each step a screen drawn whole, or (screen, (x,
    y, w, h)) drawing only that rectangle of it; `gap` s apart, or at
    the offsets `at` (one per step, from the surface's creation).
    """
    records = [draw.pack_surface_create(W, H)]
    for step in steps:
        screen, box = step if isinstance(step, tuple) else (step, None)
        if box is None:
            records.append(draw.pack_draw_copy(draw.bgrx_of(screen), 0, 0))
        else:
            x, y, w, h = box
            records.append(draw.pack_draw_copy(
                draw.bgrx_of(screen[y:y + h, x:x + w]), x, y))
    body = struct.pack('>IHHiIII', 0xa1b2c3d4, 2, 4, 0, 0, 262144, 1)
    for k, payload in enumerate(records):
        eth = b'\0' * 12 + b'\x08\x00'
        ip = bytes([0x45, 0]) + b'\0' * 7 + bytes([6]) + b'\0' * 10
        tcp = struct.pack('>HH', 5900, 10002) + b'\0' * 8 + \
            bytes([0x50]) + b'\0' * 7
        frame = eth + ip + tcp + payload
        t = 1.0 + (gap * k if at is None or k == 0 else at[k - 1])
        body += struct.pack('>IIII', int(t), int(round(t % 1 * 1e6)),
                            len(frame), len(frame)) + frame
    return body


def test_a_refresh_that_drew_elsewhere_proves_the_qr_was_sent_whole():
    # Frame 2's QR caught with frame 1's tile; 0.03 s later a refresh
    # draws outside the QR only: qemu had nothing left of the QR to send.
    s1, s2, s3 = (qr_screen(n) for n in (1, 2, 3))
    partial = mixed(s2, s1, tile_where(s1, s2))
    moved = partial.copy()
    moved[200:208, 16:24] = fbhash.FG
    report = frames.verify(capture_of(s1, partial, (moved, (16, 200, 8, 8)),
                                      s3, gap=0.03))
    assert tf.status(report)[2] == 'damaged'
    assert "drew elsewhere but not there: qemu had sent the whole QR" in [
        f for f in report.frames if f.frame == 2][0].how
    # without that refresh the same state is drawing in progress
    report = frames.verify(capture_of(s1, partial, s2, s3, gap=0.03))
    assert 'damaged' not in tf.status(report).values()


def test_a_refresh_read_in_pieces_is_not_one_that_drew_elsewhere():
    """Seen on a clean walk: qemu's refresh reached the wire as two
    states 4.5 ms apart, the text rows above the QR first, then the rest
    of the QR. The first piece did not draw elsewhere *instead of* the
    QR: only a state with no QR draw within REFRESH_SPLIT after it
    proves qemu had nothing left of the QR to send.
    """
    s1, s2, s3 = (qr_screen(n) for n in (1, 2, 3))
    partial = mixed(s2, s1, tile_where(s1, s2))
    moved = partial.copy()
    moved[200:208, 16:24] = fbhash.FG
    done = s2.copy()
    done[200:208, 16:24] = fbhash.FG
    steps = (s1, partial, (moved, (16, 200, 8, 8)), done, s3)
    split = frames.verify(capture_of(
        *steps, at=(0.05, 0.1, 0.13, 0.1345, 0.35)))
    assert 'damaged' not in tf.status(split).values(), [
        f.how for f in split.frames]
    # the same text draw with the QR's rest a refresh (30 ms) later
    apart = frames.verify(capture_of(
        *steps, at=(0.05, 0.1, 0.13, 0.16, 0.35)))
    assert tf.status(apart)[2] == 'damaged'


def test_a_qr_that_stops_decoding_and_stays_is_damage():
    s1, s2 = qr_screen(1), qr_screen(2)
    ox, oy = fbhash.digest_origin(W, H)
    broken = s1.copy()
    # whole modules, guest colours, but half the symbol a checkerboard
    for my in range(4, 24):
        for mx in range(4, 41):
            colour = fbhash.FG if (mx + my) % 2 else (0, 0, 0)
            broken[oy + 4 * my:oy + 4 * my + 4,
                   ox + 4 * mx:ox + 4 * mx + 4] = colour
    assert frames.decode_qr(type('S', (), {'rgb': lambda self: broken})()
                            ) is None
    status, report = verdicts(s1, broken, s2, gap=0.3)
    assert status[1] == 'damaged'
    assert 'the QR region after frame 1 did not decode for 0.300 s' in \
        report.frames[0].how
    # caught mid-drawing (the region moved on at once) it is not
    status, report = verdicts(s1, broken, s2, gap=0.05)
    assert 'damaged' not in status.values()

"""scenario.frames: every frame state that reached the client, verified.

The fixture is a real display capture: ryll's ``capture-display.pcap`` of
a clean canonical walk on the direct route (unit_tests/fixtures/display/
README.md). The faults are put into it the way a broken proxy would: one
draw's bitmap bytes corrupted, one draw message dropped; the verdicts
must follow. Small synthetic captures show each rule on its own.
"""

import gzip
import json
import os
import struct

import numpy as np
import pytest

from kerbside_tempest_plugin.digest import render
from kerbside_tempest_plugin.scenario import checks
from kerbside_tempest_plugin.scenario import evidence
from kerbside_tempest_plugin.scenario import frames
from kerbside_tempest_plugin.scenario import html_report
from kerbside_tempest_plugin.scenario import report as report_mod
from kerbside_tempest_plugin.spice import draw
from kerbside_tempest_plugin.spice import wire

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, 'fixtures', 'display', 'canonical-direct')
PARKED_CURSOR = draw.Rect(320, 400, 32, 16)      # text cell (38, 24)
BOOT_LINE_11 = 194                               # y of row 11's glyphs
PROMPT_ROW = 354                                 # y of row 21's glyphs


@pytest.fixture(scope='module')
def clean():
    with gzip.open(FIXTURE + '.pcap.gz') as f:
        return f.read()


@pytest.fixture(scope='module')
def walk():
    with open(FIXTURE + '.json') as f:
        return json.load(f)


# -- rewriting a capture, as a proxy would have -------------------------------


def server_units(data):
    """[(record time, wire.Unit)] of the server's direction."""
    records, _ = frames.display_records(data)
    return [(t, u) for t, units in records for u in units]


def draws(data):
    """[(index into server_units, time, Rect)] of the draw_copy messages."""
    rp = draw.Replay()
    out = []
    for i, (t, u) in enumerate(server_units(data)):
        d = rp.apply(u)
        if d.name == 'draw_copy':
            out.append((i, t, d.rect))
    return out


def rewrite(data, edit):
    """The capture with its server stream changed by `edit(stream) ->
    (stream, shift)`, `shift` mapping old stream offsets to new; each
    record keeps its place and its share of the stream.
    """
    endian = '>' if data[:4] == b'\xa1\xb2\xc3\xd4' else '<'
    _, packets = evidence.read_pcap(data)
    spans, stream = [], b''
    for p in packets:
        sport, _, payload = evidence.tcp_payload(p.data)
        if sport != frames.SPICE_SERVER_PORT:
            payload = b''           # the client's: kept as it is
        spans.append((p, len(stream), len(payload)))
        stream += payload
    new, shift = edit(stream)
    out = bytearray(data[:24])
    for p, start, n in spans:
        head = p.data[:len(p.data) - n]
        body = new[shift(start):shift(start + n)]
        if n and not body:
            continue
        frame = head + body
        sec = int(p.ts)
        usec = min(999999, int(round((p.ts - sec) * 1e6)))
        out += struct.pack(endian + 'IIII', sec, usec, len(frame),
                           len(frame)) + frame
    return bytes(out)


def corrupt(data, index, row=7, col=20, pixels=8):
    """Flip the B, G, R bytes of `pixels` pixels of message `index`'s
    bitmap (a 32-bit top-down bitmap, as qemu sends: the last bytes of
    the message), from (`col`, `row`) of the bitmap.
    """
    unit = server_units(data)[index][1]
    rect = [r for i, t, r in draws(data) if i == index][0]

    def edit(stream):
        buf = bytearray(stream)
        start = unit.offset + len(unit.raw) - rect.w * rect.h * 4
        at = start + (row * rect.w + col) * 4
        for i in range(at, at + 4 * pixels):
            if (i - at) % 4 != 3:
                buf[i] ^= 0x5a
        return bytes(buf), lambda x: x
    return rewrite(data, edit)


def drop(data, index):
    """Message `index` never arrives."""
    unit = server_units(data)[index][1]

    def edit(stream):
        a, n = unit.offset, len(unit.raw)
        return stream[:a] + stream[a + n:], \
            lambda x: x if x <= a else max(a, x - n)
    return rewrite(data, edit)


def check(data, walk, tmp_path):
    path = tmp_path / 'capture-display.pcap'
    path.write_bytes(data)
    return frames.check_capture(str(path), seen=walk['seen'],
                                beats=walk['beats'])


def status(report):
    return {f.frame: f.status for f in report.frames}


# -- the real capture ---------------------------------------------------------


def test_the_clean_capture_passes_every_frame_verified_or_torn(
        clean, walk, tmp_path):
    result = check(clean, walk, tmp_path)
    assert result.verdict == checks.PASS, result.message()
    counts = result.data['counts']
    assert result.data['frames_on_wire'] == 55
    assert counts['verified'] == 51 and counts['torn'] == 4
    assert counts['damaged'] == counts['lasting damage'] == 0
    assert result.summary == ('55 frames on the wire: 51 verified, 4 '
                              'explained (torn 4, trailing 0), 0 '
                              'unverifiable, 0 damaged')
    # the torn ones are named with their time in the walk and their beat
    torn = {f['frame']: f for f in result.data['frames']}
    assert sorted(torn) == [26, 53, 56, 57]
    assert torn[57]['beat'] == 'parked' and 7 < torn[57]['at_s'] < 8
    assert 'the wire showed frame 58\'s screen under QR 57' in \
        torn[57]['how']
    # the capture is on the walk's clock: ryll started just before it
    assert -0.5 < result.data['clock_offset_s'] < 0
    assert result.data['images'] == {'bitmap': result.data['messages'][
        'draw_copy']}


def test_the_fixture_is_the_draws_qemu_sends_uncompressed(clean):
    rp = draw.Replay()
    for _, u in server_units(clean):
        rp.apply(u)
    assert set(rp.counts) == {'set_ack', 'ping', 'inval_all_palettes',
                              'surface_create', 'monitors_config', 'mark',
                              'draw_copy'}
    assert set(rp.images) == {'bitmap'}


def test_a_corrupted_draw_that_a_later_draw_covers_fails_at_its_frame(
        clean, walk, tmp_path):
    # The first Parked cursor draw; the next cursor draw covers it 0.12 s
    # later. The quiet-screen hash check never saw this (issue 18).
    first, then = [(i, t) for i, t, r in draws(clean)
                   if r == PARKED_CURSOR]
    result = check(corrupt(clean, first[0]), walk, tmp_path)
    assert result.verdict == checks.FAIL
    assert result.summary.startswith('frame 57 damaged 7.')
    assert 's into the walk, beat parked: the wire showed pixels at ' \
        '(x=320, y=400, w=28, h=16) that no verified frame holds, for ' \
        '0.124 s' in result.summary
    assert 'rect (x, y, w, h) = (320, 400, 28, 16)' in result.summary
    # the next frame shows the same 8 corrupted pixels, exactly located
    bad = {f['frame']: f for f in result.data['frames']}
    assert bad[58]['status'] == 'damaged' and bad[58]['rect'] == [
        340, 407, 8, 1]


def test_a_corrupted_draw_at_the_end_is_located_to_the_pixel(
        clean, walk, tmp_path):
    last = [i for i, t, r in draws(clean) if r == PARKED_CURSOR][-1]
    result = check(corrupt(clean, last), walk, tmp_path)
    assert result.verdict == checks.FAIL
    assert result.summary.startswith('frame 59 damaged ')
    assert 'for the rest of the capture' in result.summary
    # 8 pixels of the bitmap's row 7 from its column 20
    assert result.summary.endswith('rect (x, y, w, h) = (340, 407, 8, 1)')


def test_a_corrupted_boot_line_is_lasting_damage_from_its_frame(
        clean, walk, tmp_path):
    i, t, rect = [d for d in draws(clean) if d[2].y == BOOT_LINE_11][2]
    result = check(corrupt(clean, i), walk, tmp_path)
    assert result.verdict == checks.FAIL
    # the first frame: the corrupted pixels exactly, by their colours
    assert result.summary.startswith(
        'frame 15 damaged 2.71 s into the walk, beat bootloader-prompt: '
        'the wire showed 8 pixel(s) at (x=116, y=201, w=8, h=1) in '
        'colours that no verified frame around it holds (a corrupted '
        'draw)')
    assert result.summary.endswith('(43 damaged frames in all)')
    assert draw.Rect(116, 201, 8, 1).intersect(rect) == \
        draw.Rect(116, 201, 8, 1)
    # every frame on the wire after it is damaged too
    after = [f.status for f in frames.verify(corrupt(clean, i)).frames
             if f.frame >= 15]
    assert len(after) == 43 and set(after) <= {'damaged', 'lasting damage'}
    # dropped, the line is lasting damage from its frame
    result = check(drop(clean, i), walk, tmp_path)
    assert result.summary.startswith(
        'frame 15 damaged 2.71 s into the walk, beat bootloader-prompt: '
        'frames 15 to 59 (43 frame(s), to the end of the capture) never '
        'match their hash; the damage is within (x=32, y=194, w=352, '
        'h=13), the draws outside the QR that reached the wire with frame '
        '15; rect (x, y, w, h) = (32, 194, 352, 13)')


def test_a_damaged_prompt_the_next_key_redraws_fails_at_its_frame(
        clean, walk, tmp_path):
    # The R/I/A prompt (row 21) waits for a key with no refresh; `i` then
    # draws the intro sentence over it. The damage was on the screen for
    # the whole wait, in one frame that nothing explains.
    i, t, rect = [d for d in draws(clean) if d[2].y == PROMPT_ROW][3]
    result = check(drop(clean, i), walk, tmp_path)
    assert result.verdict == checks.FAIL
    assert result.summary.startswith(
        'frame 25 damaged 4.8') and 'beat bootloader-prompt: no one ' \
        'change explains the hash' in result.summary
    assert result.summary.endswith('rect (x, y, w, h) = (0, 354, 608, '
                                   '13)')
    assert draw.Rect(0, 354, 608, 13).intersect(rect) == rect
    # corrupted, its pixels are found by their colours
    result = check(corrupt(clean, i), walk, tmp_path)
    assert result.summary.startswith('frame 25 damaged 4.8')
    assert result.summary.endswith('in colours that no verified frame '
                                   'around it holds (a corrupted draw); '
                                   'rect (x, y, w, h) = (148, 361, 8, 1)')


def test_a_dropped_draw_fails(clean, walk, tmp_path):
    last = [i for i, t, r in draws(clean) if r == PARKED_CURSOR][-1]
    result = check(drop(clean, last), walk, tmp_path)
    assert result.verdict == checks.FAIL
    assert result.summary.startswith('frame 59 damaged ')
    assert "the wire still showed frame 58's screen under QR 59: the " \
        'drawing of frame 59 did not arrive (a missing draw)' in \
        result.summary
    i = [d for d in draws(clean) if d[2].y == BOOT_LINE_11][2][0]
    result = check(drop(clean, i), walk, tmp_path)
    assert result.verdict == checks.FAIL
    assert result.summary.startswith('frame 15 damaged ')


# -- captures that cannot be judged: NOT RUN, typed, never a traceback ------


def test_a_cut_capture_is_not_run(clean, walk, tmp_path):
    result = check(clean[:len(clean) // 2], walk, tmp_path)
    assert result.verdict == checks.NOT_RUN
    assert result.summary.startswith('not run (the display capture is '
                                     'unreadable: pcap record at byte ')
    assert frames.advisory(result)


def test_garbled_captures_are_not_run(clean, walk, tmp_path):
    result = check(b'not a pcap at all' * 10, walk, tmp_path)
    assert result.summary == ("not run (the display capture is unreadable: "
                              "not a classic pcap (magic b'not '))")
    # a message header that says 1 GB: not SPICE framing
    unit = server_units(clean)[10][1]

    def edit(stream):
        buf = bytearray(stream)
        struct.pack_into('<I', buf, unit.offset + 2, 1 << 30)
        return bytes(buf), lambda x: x
    result = check(rewrite(clean, edit), walk, tmp_path)
    assert result.verdict == checks.NOT_RUN
    assert 'not SPICE framing' in result.summary
    # a draw whose body is too short for its image
    i = draws(clean)[5][0]
    unit = server_units(clean)[i][1]

    def shorten(stream):
        buf = bytearray(stream)
        struct.pack_into('<I', buf, unit.offset + 2, 60)
        return bytes(buf[:unit.offset + 66] + buf[unit.offset + len(
            unit.raw):]), lambda x: x if x <= unit.offset + 66 else max(
                unit.offset + 66, x - len(unit.raw) + 66)
    result = check(rewrite(clean, shorten), walk, tmp_path)
    assert result.verdict == checks.NOT_RUN
    assert result.summary.startswith('not run (a display message does not '
                                     'hold what its type says: draw_copy')


def test_a_compressed_capture_is_not_run_naming_the_image_type(
        clean, walk, tmp_path):
    # someone else's cloud: qemu sends GLZ. The image type byte of the
    # first draw is changed (its data no longer matters: it is refused).
    unit = server_units(clean)[draws(clean)[0][0]][1]

    def edit(stream):
        buf = bytearray(stream)
        image_at = struct.unpack_from('<I', unit.body, 21)[0]
        buf[unit.offset + unit.header_len + image_at + 8] = 102
        return bytes(buf), lambda x: x
    result = check(rewrite(clean, edit), walk, tmp_path)
    assert result.verdict == checks.NOT_RUN
    assert result.summary.startswith(
        'not run (the display capture holds draw_copy with a glz_rgb (102) '
        'image: only uncompressed draws replay exactly')
    assert result.data['unreplayable'] == \
        'draw_copy with a glz_rgb (102) image'


def test_no_capture_is_not_run(tmp_path):
    result = frames.check_capture(str(tmp_path / 'nothing.pcap'))
    assert result.verdict == checks.NOT_RUN and frames.advisory(result)
    assert not frames.kept(str(tmp_path / 'nothing.pcap'))


def test_random_damage_to_the_file_never_raises(clean, walk, tmp_path):
    rng = np.random.default_rng(18)
    for _ in range(12):
        buf = bytearray(clean[:400000])
        for at in rng.integers(24, len(buf), 20):
            buf[at] = int(rng.integers(0, 256))
        cut = int(rng.integers(24, len(buf)))
        result = check(bytes(buf[:cut]), walk, tmp_path)
        assert result.verdict in (checks.PASS, checks.FAIL,
                                  checks.NOT_RUN)


# -- the rules, one at a time, on synthetic captures --------------------------

W, H = 320, 240


def screen(*boxes):
    """A black WxH RGB screen with green boxes (x, y, w, h)."""
    rgb = np.zeros((H, W, 3), np.uint8)
    for x, y, w, h in boxes:
        rgb[y:y + h, x:x + w] = (51, 150, 51)
    return rgb


def with_qr(counter, hashed, shown=None):
    """The screen `shown` (default: `hashed`) with the QR of frame
    `counter` whose trailer is the hash of `hashed`.
    """
    qr = render.render_guest_frame(counter, {}, [], background=hashed,
                                   width=W, height=H)
    out = (hashed if shown is None else shown).copy()
    region = frames.qr_rect(W, H)
    out[region.slices] = qr[region.slices]
    return out


def capture(*screens, gap=0.05):
    """A pcap whose records each draw one whole screen."""
    records = [draw.pack_surface_create(W, H)]
    records += [draw.pack_draw_copy(draw.bgrx_of(s), 0, 0) for s in screens]
    out = struct.pack('>IHHiIII', 0xa1b2c3d4, 2, 4, 0, 0, 262144, 1)
    for k, payload in enumerate(records):
        eth = b'\0' * 12 + b'\x08\x00'
        ip = bytes([0x45, 0]) + b'\0' * 7 + bytes([6]) + b'\0' * 10
        tcp = struct.pack('>HH', 5900, 10002) + b'\0' * 8 + bytes([0x50]) \
            + b'\0' * 7
        frame = eth + ip + tcp + payload
        t = 1.0 + gap * k
        out += struct.pack('>IIII', int(t), int(round(t % 1 * 1e6)),
                           len(frame), len(frame)) + frame
    return out


A = (16, 16, 40, 16)
B = (16, 48, 40, 16)
C = (16, 80, 40, 16)


def test_a_screen_ahead_of_its_qr_is_torn():
    # the guest drew B after frame 2's refresh; the wire caught it before
    # the QR of frame 3 was drawn
    s1 = screen(A)
    s2 = screen(A, B)
    report = frames.verify(capture(with_qr(1, s1), with_qr(1, s1, s2),
                                   with_qr(2, s2)))
    assert status(report) == {1: 'verified', 2: 'verified'}
    report = frames.verify(capture(with_qr(1, s1), with_qr(2, s1, s2),
                                   with_qr(3, s2)))
    assert status(report) == {1: 'verified', 2: 'torn', 3: 'verified'}
    assert "the wire showed frame 3's screen under QR 2" in \
        report.frames[1].how


def test_new_pixels_no_frame_holds_are_damage_and_located():
    s1 = screen(A)
    s2 = screen(A, B)
    bad = s2.copy()
    bad[50:52, 20:24] = (200, 0, 0)
    report = frames.verify(capture(with_qr(1, s1), with_qr(2, s2, bad),
                                   with_qr(3, s2), gap=0.3))
    assert status(report) == {1: 'verified', 2: 'damaged', 3: 'verified'}
    assert report.frames[1].rect == draw.Rect(20, 50, 4, 2)
    assert 'a corrupted draw' in report.frames[1].how


def test_pixels_drawn_after_the_refresh_and_hashed_later_are_trailing():
    # the mode toast: drawn after frame 2's refresh (its hash has no C),
    # gone again at frame 4, hashed with it by frame 3
    s1 = screen(A)
    s3 = screen(A, C)
    report = frames.verify(capture(
        with_qr(1, s1), with_qr(2, s1, s3), with_qr(3, s3),
        with_qr(4, s1), gap=0.3))
    assert status(report)[2] in frames.EXPLAINED
    assert report.counts()['damaged'] == 0


def test_the_cursor_kept_through_a_repaint_is_trailing_not_damage():
    # frame 2 is the repaint when the toast expires: hashed with the
    # toast gone and the cursor cell cleared; the cursor is drawn again
    # after the refresh, so the wire kept it. Frame 3 writes text there:
    # only black (the cleared screen) gives frame 2's hash.
    cursor, toast = (16, 112, 8, 16), (16, 200, 64, 16)
    s1 = screen(A, cursor, toast)
    s3 = screen(A, (16, 112, 40, 16), B)
    report = frames.verify(capture(
        with_qr(1, s1), with_qr(2, screen(A), screen(A, cursor)),
        with_qr(3, s3), gap=0.3))
    assert status(report) == {1: 'verified', 2: 'trailing', 3: 'verified'}
    assert 'black there (a cleared screen)' in report.frames[1].how
    assert report.frames[1].rect == draw.Rect(16, 112, 8, 16)


def test_the_kept_cursor_beside_the_next_drawing_in_pieces_is_torn():
    # CI, mode switch: the repaint's frame 2 is hashed with the cursor
    # cell cleared while the wire keeps the cursor (trailing). Then the
    # next frame's text arrives in pieces: the piece right of the cursor
    # cell is on the wire, the cell itself not yet, under QR 2. Black
    # there gives frame 2's hash, the cursor pixels are in no later
    # frame; they are the wire's pixels from before: explained, not a
    # corrupted draw (before the fix: damaged, "no verified frame holds").
    cursor, text = (16, 112, 8, 16), (18, 114, 38, 12)
    toast = (16, 200, 64, 16)
    report = frames.verify(capture(
        with_qr(1, screen(A, cursor, toast)),
        with_qr(2, screen(A), screen(A, cursor, (24, 114, 32, 12))),
        with_qr(3, screen(A, text)), gap=0.3))
    assert status(report) == {1: 'verified', 2: 'torn', 3: 'verified'}
    assert 'kept the pixels from before frame 2' in report.frames[1].how


def test_new_pixels_beside_kept_ones_are_still_damage():
    # the same, but the piece that arrived is in no frame at all
    cursor, toast = (16, 112, 8, 16), (16, 200, 64, 16)
    bad = screen(A, cursor)
    bad[114:126, 24:56] = (200, 0, 0)
    report = frames.verify(capture(
        with_qr(1, screen(A, cursor, toast)),
        with_qr(2, screen(A), screen(A, cursor)),
        with_qr(2, screen(A), bad),
        with_qr(3, screen(A, (18, 114, 38, 12))), gap=0.3))
    assert status(report)[2] == 'damaged'


def test_a_qr_ahead_of_its_drawing_that_a_later_state_shows_is_torn():
    # qemu sends an update's rectangles in pieces, the QR's before one
    # that ends lower: the wire shows QR 2 over frame 1's screen, then
    # frame 2's drawing arrives (with the cursor kept: frame 2 is never
    # verified). A missing draw only if no later state shows it.
    cursor = (16, 112, 8, 16)
    s1 = screen(A, cursor)
    report = frames.verify(capture(
        with_qr(1, s1), with_qr(2, screen(A, B), s1),
        with_qr(2, screen(A, B), screen(A, B, cursor)),
        with_qr(3, screen(A, B, C)), gap=0.3))
    assert status(report) == {1: 'verified', 2: 'torn', 3: 'verified'}
    assert 'arrived 0.300 s before its drawing' in report.frames[1].how
    # the drawing never arrives: a missing draw, damage
    report = frames.verify(capture(
        with_qr(1, s1), with_qr(2, screen(A, B), s1),
        with_qr(2, screen(A, B), s1),
        with_qr(3, screen(A, B, C)), gap=0.3))
    assert status(report)[2] == 'damaged'
    assert 'a missing draw' in report.frames[1].how


def test_one_frame_no_change_explains_is_damage():
    # the wire showed B two pixels off; the guest's B never reaches the
    # wire again (frame 3 clears it)
    s1 = screen(A)
    off = screen(A, (18, 50, 40, 16))
    report = frames.verify(capture(
        with_qr(1, s1), with_qr(2, screen(A, B), off),
        with_qr(3, screen(C)), gap=0.3))
    assert status(report) == {1: 'verified', 2: 'damaged', 3: 'verified'}
    assert report.frames[1].how.startswith(
        'no one change explains the hash: the wire showed a screen the '
        'guest never hashed; the damage is within (x=0, y=0, w=320, h=240)')


def test_unexplained_frames_in_a_row_are_lasting_damage():
    s1 = screen(A)
    bad = screen(A, (100, 100, 3, 3))
    report = frames.verify(capture(
        with_qr(1, s1), with_qr(2, screen(A, B), bad),
        with_qr(3, screen(A, B, C), bad), gap=0.3))
    assert status(report) == {1: 'verified', 2: 'lasting damage',
                              3: 'lasting damage'}
    assert report.frames[1].how.startswith(
        'frames 2 to 3 (2 frame(s), to the end of the capture) never match')


def test_draws_but_never_a_qr_is_a_failure_not_a_pass(tmp_path):
    path = tmp_path / 'capture-display.pcap'
    path.write_bytes(capture(screen(A), screen(A, B)))
    result = frames.check_capture(str(path))
    assert result.verdict == checks.FAIL
    assert result.summary == ('no QR decoded on the wire in 3 states that '
                              'drew (3 messages replayed): the client never '
                              'showed a digest')


# -- the report -------------------------------------------------------------


def test_the_reports_show_the_per_frame_summary(clean, walk, tmp_path):
    last = [i for i, t, r in draws(clean) if r == PARKED_CURSOR][-1]
    result = check(corrupt(clean, last), walk, tmp_path)
    md = '\n'.join(report_mod.frame_states_md([result]))
    assert md.startswith('### Frames on the wire\n\nFAIL: frame 59 damaged')
    assert '| 59 | damaged | 7.' in md and '(340, 407, 8, 1)' in md
    html = html_report._frame_states([result.to_json()])
    assert '<section id="frame-states">' in html and 'damaged' in html
    assert report_mod.frame_states_md([]) == []
    # NOT RUN does not fail the run: the run's verdict ignores it
    text = report_mod.render('t', {}, [checks.CheckResult.not_run(
        frames.NAME, 'no capture')])
    assert '**Verdict: PASS**' in text


def test_ryll_is_asked_for_uncompressed_images_only_with_a_capture():
    from kerbside_tempest_plugin.scenario import evidence as ev
    assert frames.ryll_args(ev.EvidenceOptions()) == [
        '--preferred-compression', 'off']
    assert frames.ryll_args(ev.OFF) == []


def test_the_display_stream_is_cut_by_spice_wire(clean):
    records, cut = frames.display_records(clean)
    assert cut == 0
    names = {u.name for _, units in records for u in units}
    assert 'draw_copy' in names and 'surface_create' in names
    assert all(isinstance(u, wire.Unit) for _, us in records for u in us)


def test_a_corrupted_draw_the_guest_redraws_at_once_is_still_damage(
        clean, walk, tmp_path):
    # A block of the prompt line that the next refresh redraws 0.063 s
    # later, while the guest keeps drawing: its pixels in no verified
    # frame look like drawing in progress, but their colours are ones no
    # verified screen around them holds.
    i, t, rect = [d for d in draws(clean)
                  if d[2] == draw.Rect(96, PROMPT_ROW, 32, 10)][0]
    result = check(corrupt(clean, i, row=2, col=2, pixels=4), walk,
                   tmp_path)
    assert result.verdict == checks.FAIL
    assert result.summary.startswith('frame 25 damaged 4.')
    assert 'the wire showed 4 pixel(s) at (x=98, y=356, w=4, h=1) in ' \
        'colours that no verified frame around it holds (a corrupted ' \
        'draw)' in result.summary

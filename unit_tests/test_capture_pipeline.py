"""The grab/judge pipeline of DigestStream: the bound on grabs waiting
for the judge (oldest dropped, counted), judging in grab order, dedupe by
frame counter and by unchanged bytes, the rgba format, and the missed
frames with their gaps. Real rendered frames, real decoding; only the
ryll client is scripted.
"""

import threading
import time
import types

import numpy as np
import pytest

from kerbside_tempest_plugin.digest import frame
from kerbside_tempest_plugin.digest import render
from kerbside_tempest_plugin.ryll import client as ryll_client
from kerbside_tempest_plugin.scenario import capture as cap
from unit_tests import scenario_fakes as fakes

W, H = 320, 240


def frame_rgb(fc, shade=0):
    bg = np.zeros((H, W, 3), np.uint8)
    bg[:8, :8] = shade        # outside the QR: different bytes, same fc
    return render.render_guest_frame(fc, {}, [], bg, width=W, height=H)


def frame_png(fc, shade=0):
    return fakes.png_bytes(frame_rgb(fc, shade))


BLANK = fakes.png_bytes(np.zeros((H, W, 3), np.uint8))


class SeqClient:
    """Serves `shots` in order (bytes, or exceptions), then closes the
    connection. `before(n)` runs before serving call n (to hold a call).
    """

    def __init__(self, shots, before=None, fmt_seen=None):
        self.shots = list(shots)
        self.calls = 0
        self.listeners = []
        self.before = before
        self.fmts = []

    def add_listener(self, fn):
        self.listeners.append(fn)

    def remove_listener(self, fn):
        self.listeners.remove(fn)

    def draw(self):
        for fn in list(self.listeners):
            fn(types.SimpleNamespace(name='surface_drawn', data={}))

    def screenshot(self, fmt='png'):
        n = self.calls
        self.calls += 1
        self.fmts.append(fmt)
        if self.before is not None:
            self.before(n)
        if n >= len(self.shots):
            raise ryll_client.RyllConnectionClosed('EOF', reason='eof')
        shot = self.shots[n]
        if isinstance(shot, Exception):
            raise shot
        if fmt == 'rgba':
            return types.SimpleNamespace(format='rgba', width=W, height=H,
                                         data=shot)
        return types.SimpleNamespace(png=shot)


def wait_closed(stream, timeout=20):
    deadline = time.monotonic() + timeout
    while stream.closed_reason is None:
        assert time.monotonic() < deadline, 'stream never closed'
        time.sleep(0.01)


def test_a_stalled_judge_drops_the_oldest_grabs_and_counts_them():
    judging = threading.Event()
    gate = threading.Event()

    def analyse(png):
        judging.set()
        assert gate.wait(20)
        return frame.analyse(png)

    def before(n):
        if n == 1:                  # hold grab 1 until grab 0 is judged
            assert judging.wait(20)
    shots = [frame_png(fc) for fc in range(1, 31)]
    client = SeqClient(shots, before=before)
    stream = cap.DigestStream(client, periodic_s=0.0, max_pending=4,
                              analyse=analyse).start()
    try:
        deadline = time.monotonic() + 20
        while client.calls <= len(shots):       # every shot, then EOF
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert stream.pending() == 4            # the bound held
        assert stream.closed_reason is None     # not before it is judged
        gate.set()
        wait_closed(stream)
    finally:
        gate.set()
        stream.stop()
    # Grab 0 was being judged; of the 29 that queued behind it only the
    # newest 4 were kept: the 25 oldest were dropped, oldest first.
    assert [c.frame_counter for c in stream.captures] == [1, 27, 28, 29, 30]
    assert [c.grab for c in stream.captures] == [0, 26, 27, 28, 29]
    assert stream.dropped == 25
    assert [seq for seq, _ in stream.drops] == list(range(1, 26))
    assert stream.max_queued == 4
    assert 'control connection closed' in stream.closed_reason
    summary = stream.summary()
    assert summary['dropped_total'] == 25
    assert '25 grab(s) dropped unjudged' in stream.describe(summary)


def test_waiters_see_frames_judged_after_the_connection_closed():
    gate = threading.Event()

    def analyse(png):
        assert gate.wait(20)
        return frame.analyse(png)
    client = SeqClient([frame_png(fc) for fc in (1, 2, 3)])
    stream = cap.DigestStream(client, periodic_s=0.0,
                              analyse=analyse).start()
    try:
        while client.calls <= 3:
            time.sleep(0.01)
        threading.Timer(0.2, gate.set).start()
        cd = stream.wait_for(lambda cd: cd.frame_counter == 3, 10, 'frame 3')
        assert cd.frame_counter == 3
        with pytest.raises(cap.StreamClosed):
            stream.wait_for(lambda cd: False, 10, 'nothing',
                            since=stream.mark())
    finally:
        gate.set()
        stream.stop()


def test_a_slow_judge_keeps_grab_order_and_dedupes_by_frame_counter():
    counters = [1, 1, 2, 2, 2, 3, 4, 4, 5]
    shots = [frame_png(fc, shade=i) for i, fc in enumerate(counters)]

    def analyse(png):
        time.sleep(0.01)            # slower than the grabs
        return frame.analyse(png)
    client = SeqClient(shots)
    stream = cap.DigestStream(client, periodic_s=0.0, max_pending=64,
                              analyse=analyse).start()
    try:
        wait_closed(stream)
    finally:
        stream.stop()
    assert stream.dropped == 0
    assert [c.frame_counter for c in stream.captures] == counters
    assert [c.grab for c in stream.captures] == list(range(len(counters)))
    assert [c.index for c in stream.captures] == list(range(len(counters)))
    assert [c.new for c in stream.captures] == [
        True, False, True, False, False, True, True, False, True]
    assert [cd.frame_counter for cd in stream.digests] == [1, 2, 3, 4, 5]
    assert [cd.capture_index for cd in stream.digests] == [0, 2, 5, 6, 8]
    assert stream.repeats == 4
    ats = [c.at for c in stream.captures]
    assert ats == sorted(ats)
    assert all(c.queued_s is not None and c.grab_s is not None
               for c in stream.captures)


def test_repeats_are_hashed_only_when_the_judge_is_idle():
    gate = threading.Event()
    first = threading.Event()
    shots = [frame_png(1, shade=i) for i in range(6)]

    def before(n):
        if n == 1:
            assert first.wait(20)

    real = cap.judge_image

    def slow_first(rgb, is_new, thorough, times=None, clock=time.monotonic):
        first.set()
        assert gate.wait(20)
        return real(rgb, is_new, thorough, times, clock)
    client = SeqClient(shots, before=before)
    stream = cap.DigestStream(client, periodic_s=0.0, max_pending=64)
    cap.judge_image = slow_first
    try:
        stream.start()
        while client.calls <= len(shots):
            time.sleep(0.01)
        gate.set()
        wait_closed(stream)
    finally:
        cap.judge_image = real
        gate.set()
        stream.stop()
    verdicts = [c.framebuffer_hash_ok for c in stream.captures]
    # The new frame is always hashed; the repeats judged with grabs still
    # waiting are not; the last one (nothing behind it) is.
    assert verdicts[0] is True
    assert verdicts[1:-1] == [None] * 4
    assert verdicts[-1] is True
    assert stream.fb_stats() == {'checked': 2, 'matched': 2, 'unchecked': 4}


def test_unchanged_draw_grabs_are_counted_not_judged():
    png = frame_png(1)
    client = SeqClient([png] * 50 + [frame_png(2)])
    stream = cap.DigestStream(client, periodic_s=60, quiet_s=0.02).start()
    try:
        stream.wait_for(lambda cd: True, 10, 'first')
        for _ in range(10):
            client.draw()
            time.sleep(0.01)
        time.sleep(0.2)
    finally:
        stream.stop()
    assert client.calls >= 3            # the draws did cause grabs
    assert stream.unchanged == client.calls - 1
    assert len(stream.captures) == 1
    assert stream.grabs == client.calls


def test_rgba_grabs_decode_and_keep_a_png():
    rgba = [np.dstack([frame_rgb(fc), np.full((H, W), 255, np.uint8)])
            .tobytes() for fc in (4, 5)]
    client = SeqClient(rgba)
    stream = cap.DigestStream(client, periodic_s=0.0, fmt='rgba').start()
    try:
        wait_closed(stream)
    finally:
        stream.stop()
    assert set(client.fmts) == {'rgba'}
    assert [cd.frame_counter for cd in stream.digests] == [4, 5]
    assert all(c.framebuffer_hash_ok for c in stream.captures)
    assert stream.digests[0].png.startswith(b'\x89PNG')
    assert frame.analyse(stream.last_png).digest.frame_counter == 5
    with pytest.raises(ValueError):
        cap.DigestStream(client, fmt='jpeg')


def test_missed_frames_name_the_gap_and_what_fell_in_it():
    shots = [frame_png(1), frame_png(2), BLANK, BLANK, frame_png(5),
             frame_png(6), frame_png(8)]
    client = SeqClient(shots)
    stream = cap.DigestStream(client, periodic_s=0.0).start()
    try:
        wait_closed(stream)
    finally:
        stream.stop()
    rows = stream.missed_frames(9)
    assert [r['frame'] for r in rows] == [3, 4, 7, 9]
    three, four, seven, nine = rows
    assert (three['after_frame'], three['before_frame']) == (2, 5)
    assert three['grabs_between'] == 2
    assert three['undecodable_between'] == 2
    assert 'undecodable' in three['why']
    assert four['gap_ms'] == three['gap_ms']
    assert (seven['after_frame'], seven['before_frame']) == (6, 8)
    assert seven['grabs_between'] == 0
    assert seven['gap_ms'] == pytest.approx(
        1000 * (stream.captures[6].at - stream.captures[5].at), abs=0.2)
    assert seven['grab_ms'] is not None
    assert nine['before_frame'] is None
    assert nine['why'] == 'after the last decoded grab'
    lines = cap.missed_frames_lines(rows)
    assert lines[2].startswith('frame 7: between frame 6 at ')
    assert stream.missed_frames(0) == []
    assert stream.missed_frames(2) == []


def test_reports_list_each_missed_frame_with_its_gap():
    from kerbside_tempest_plugin.scenario import checks
    from kerbside_tempest_plugin.scenario import html_report
    from kerbside_tempest_plugin.scenario import report
    client = SeqClient([frame_png(1), BLANK, frame_png(3), frame_png(5)])
    stream = cap.DigestStream(client, periodic_s=0.0).start()
    try:
        wait_closed(stream)
    finally:
        stream.stop()
    results = [checks.capture_fidelity(stream.snapshot(), 5)]
    evidence = cap.fidelity_evidence(stream, results)
    assert evidence['refresh_count'] == 5
    assert [r['frame'] for r in evidence['missed']] == [2, 4]
    md = '\n'.join(report.missed_frames_md(evidence))
    assert '2 of the 5 frames the guest drew were never seen' in md
    assert '| 2 | 1 @ ' in md and '| 1 / 0 / 0 |' in md
    assert '| 4 | 3 @ ' in md
    # The HTML section is built from the JSON form alone.
    json_form = __import__('json').loads(__import__('json').dumps(
        cap.fidelity_evidence(stream, [r.to_json() for r in results])))
    page = html_report._missed(json_form)
    assert 'id="missed-frames"' in page
    assert page.count('<tr><td>') == 2
    page = html_report._missed(dict(json_form, missed=[dict(
        json_form['missed'][0], gap_ms=None, before_frame=None)]))
    assert '<td>-</td>' in page and '<td></td>' not in page
    assert 'undecodable' in page
    assert cap.fidelity_evidence(None, results) is None


def test_a_gap_starts_at_the_last_unchanged_grab_of_the_frame_before():
    client = SeqClient([frame_png(1)] * 6 + [frame_png(3)])
    stream = cap.DigestStream(client, periodic_s=60, quiet_s=0.5).start()
    try:
        stream.wait_for(lambda cd: True, 10, 'first')
        deadline = time.monotonic() + 10
        while stream.closed_reason is None:
            assert time.monotonic() < deadline
            client.draw()
            time.sleep(0.02)
    finally:
        stream.stop()
    assert stream.unchanged == 5
    assert [c.frame_counter for c in stream.captures] == [1, 3]
    (row,) = stream.missed_frames(3)
    last_copy = stream.unchanged_grabs[-1][1]
    assert last_copy > stream.captures[0].at + 0.05
    assert row['after_at_s'] == round(last_copy, 4)
    assert row['gap_ms'] == pytest.approx(
        1000 * (stream.captures[1].at - last_copy), abs=0.2)
    assert row['unchanged_between'] == 5

"""DigestStream on synthetic frames rendered with digest.render."""

import time
import types

import pytest

from kerbside_tempest_plugin.digest import events as ev
from kerbside_tempest_plugin.ryll import client as ryll_client
from kerbside_tempest_plugin.scenario import capture as cap
from unit_tests import scenario_fakes as fakes


class ScriptedClient:
    """Serves a fixed list of PNGs (or exceptions), then repeats the last."""

    def __init__(self, shots):
        self.shots = list(shots)
        self.listeners = []
        self.calls = 0

    def add_listener(self, fn):
        self.listeners.append(fn)

    def remove_listener(self, fn):
        self.listeners.remove(fn)

    def draw(self):
        for fn in list(self.listeners):
            fn(types.SimpleNamespace(name='surface_drawn', data={}))

    def screenshot(self):
        i = min(self.calls, len(self.shots) - 1)
        self.calls += 1
        shot = self.shots[i]
        if isinstance(shot, Exception):
            raise shot
        return types.SimpleNamespace(png=shot)


@pytest.fixture
def guest():
    g = fakes.FakeGuest(scale=0.05)
    yield g
    g.off = True


def test_dedupes_frames_and_records_every_capture(guest):
    client = fakes.FakeClient(guest)
    with cap.DigestStream(client, periodic_s=0.05) as stream:
        stream.wait_for(lambda cd: True, 10, 'first digest')
        time.sleep(0.4)                    # several captures, same frame
    assert len(stream.captures) >= 3
    assert [cd.frame_counter for cd in stream.digests] == [1]
    assert stream.repeats == len(stream.captures) - 1
    assert all(c.framebuffer_hash_ok for c in stream.captures)
    assert stream.digests[0].png.startswith(b'\x89PNG')


def test_wait_for_a_record_after_keys(guest):
    client = fakes.FakeClient(guest)
    with cap.DigestStream(client) as stream:
        stream.wait_for(lambda cd: True, 10, 'first digest')
        mark = stream.mark()
        guest.scale = 1.0
        client.send_key('4')
        cd = stream.wait_for(cap.shows('mode_switch', applied=(1280, 720)),
                             10, 'mode switch', since=mark)
    assert cd.frame_size == (1280, 720)
    assert cd.origin == (1280 - 196, 720 - 212)
    assert cd.framebuffer_hash_ok is True
    assert cd.shows('keypress', unicode=ord('4'))


def test_since_ignores_stale_digests(guest):
    client = fakes.FakeClient(guest)
    with cap.DigestStream(client) as stream:
        first = stream.wait_for(lambda cd: True, 10, 'first digest')
        with pytest.raises(cap.CaptureTimeout):
            stream.wait_for(lambda cd: cd is first, 0.3, 'the first again',
                            since=stream.mark())


def test_timeout_message_says_what_and_what_was_seen(guest):
    client = fakes.FakeClient(guest)
    with cap.DigestStream(client, periodic_s=0.05) as stream:
        with pytest.raises(cap.CaptureTimeout) as info:
            stream.wait_for(cap.shows('paste_received', correct=True), 0.5,
                            'paste_received correct=true')
    msg = str(info.value)
    assert 'timed out after 0.' in msg
    assert 'waiting for paste_received correct=true' in msg
    assert 'saw 1 new digest(s) (frames 1..1)' in msg
    assert 'capture(s) (0 decode failure(s)' in msg
    assert 'last digest: frame 1' in msg
    assert '(no records)' in msg
    assert info.value.summary['digests'] == 1


def test_decode_failures_are_counted_and_reported():
    blank = fakes.png_bytes(__import__('numpy').zeros((480, 640, 3), 'u1'))
    client = ScriptedClient([blank, b'not a png'])
    with cap.DigestStream(client, periodic_s=0.05) as stream:
        with pytest.raises(cap.CaptureTimeout) as info:
            stream.wait_for(lambda cd: True, 0.5, 'any digest')
    msg = str(info.value)
    assert 'saw 0 new digest(s)' in msg
    assert 'no digest decoded at all' in msg
    assert stream.decode_failures >= 2
    assert 'decode not found' in stream.errors
    assert 'last error: decode failed' in msg
    assert stream.captures[0].frame_size == (640, 480)


def test_connection_closed_ends_waits_early():
    client = ScriptedClient([ryll_client.RyllConnectionClosed('EOF')])
    stream = cap.DigestStream(client, periodic_s=0.05).start()
    t0 = time.monotonic()
    with pytest.raises(cap.StreamClosed) as info:
        stream.wait_for(lambda cd: True, 30, 'any digest')
    assert time.monotonic() - t0 < 5
    assert 'control connection closed' in str(info.value)
    assert stream.stop()


def test_screenshot_errors_are_survived():
    good = fakes.png_bytes(fakes.render.render_guest_frame(
        7, {}, [ev.Keypress(1, 13, 0)]))
    client = ScriptedClient([ryll_client.RyllRpcError('no_such_surface',
                                                      'not yet'), good])
    with cap.DigestStream(client, periodic_s=0.05) as stream:
        cd = stream.wait_for(lambda cd: True, 5, 'any digest')
    assert cd.frame_counter == 7
    assert stream.screenshot_failures == 1
    assert stream.captures[0].error.startswith('screenshot failed')


def test_stale_framebuffer_hash_is_a_mismatch(guest):
    guest.stale_fb = True
    client = fakes.FakeClient(guest)
    with cap.DigestStream(client) as stream:
        cd = stream.wait_for(lambda cd: True, 10, 'first digest')
    assert cd.framebuffer_hash_ok is False
    assert stream.fb_stats()['matched'] == 0


def test_draws_trigger_captures_after_the_burst_settles():
    shots = []
    for fc in range(1, 4):
        shots.append(fakes.png_bytes(fakes.render.render_guest_frame(
            fc, {}, [])))
    client = ScriptedClient(shots)
    stream = cap.DigestStream(client, periodic_s=60, quiet_s=0.05).start()
    try:
        stream.wait_for(lambda cd: True, 5, 'first')   # the start capture
        for _ in range(2):
            for _ in range(20):                          # a burst of draws
                client.draw()
                time.sleep(0.005)
            time.sleep(0.2)
        cd = stream.wait_for(lambda cd: cd.frame_counter == 3, 5, 'frame 3')
    finally:
        stream.stop()
    assert cd.frame_counter == 3
    # One capture per settled burst (plus the first), not one per draw.
    assert len(stream.captures) <= 4
    assert stream.draws == 40


def test_record_matches_fields_and_callables():
    e = ev.SceneTransition(5, 'awaiting', 'booting')
    assert cap.record_matches(e, 'scene_transition', from_='awaiting')
    assert not cap.record_matches(e, 'scene_transition', to='parked')
    assert cap.record_matches(e, 'scene_transition',
                              timestamp_ms=lambda t: t > 4)
    assert not cap.record_matches(e, 'keypress')
    assert not cap.record_matches(e, 'scene_transition', nope=1)
    assert cap.describe_event(e) == \
        'scene_transition@t=5 from=awaiting to=booting'
    m = ev.ModeSwitch(1, 1280, 720, 1280, 720)
    assert cap.record_matches(m, 'mode_switch', applied=(1280, 720))
    assert not cap.record_matches(m, 'mode_switch', applied=(1024, 768))


def test_stop_never_raises_and_is_idempotent(guest):
    stream = cap.DigestStream(fakes.FakeClient(guest)).start()
    assert stream.stop()
    assert stream.stop()
    assert not guest.listeners

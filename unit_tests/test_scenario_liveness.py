"""scenario.liveness: each failure it names, on a fake digest stream and a
real ryll log file; and a clean key is never judged.
"""

import types

import pytest

from kerbside_tempest_plugin.scenario import capture as cap
from kerbside_tempest_plugin.scenario import liveness


class Stream:
    def __init__(self):
        self.digests = []
        self.t = 0.0

    def now(self):
        return self.t

    def frame(self, counter, keypress, at=None):
        self.digests.append(types.SimpleNamespace(
            frame_counter=counter, at=self.t if at is None else at,
            hashes={'keypress': keypress}))


@pytest.fixture
def st():
    s = Stream()
    s.frame(10, 0xAAAA)
    return s


def test_a_registered_key_is_never_judged(st):
    live = liveness.Liveness(st, bound_s=2)
    st.t = 1.0
    live.key_sent('enter')
    live.beat_started('booting')
    st.t = 1.1
    st.frame(11, 0xBBBB)
    st.t = 60.0
    assert live.check() is None
    ev = live.evidence()
    assert ev['keys'][0]['registered_s'] == pytest.approx(0.1)
    assert ev['per_beat']['booting']['n'] == 1 and not ev['unregistered']


def test_frames_without_the_key_name_the_key(st):
    live = liveness.Liveness(st, bound_s=2)
    st.t = 1.0
    live.key_sent('i')
    live.beat_started('ignore')
    st.t = 1.5
    st.frame(11, 0xAAAA)            # a refresh, same keypress chain
    st.t = 2.9
    assert live.check() is None     # within the bound
    st.t = 3.1
    e = live.check()
    assert isinstance(e, liveness.KeyNotRegistered)
    assert isinstance(e, cap.CaptureTimeout) and isinstance(e,
                                                            AssertionError)
    assert 'key 1 (i) at beat ignore never registered' in str(e)


def test_no_frame_and_the_guest_moved_on_is_a_frozen_display(st):
    live = liveness.Liveness(st, bound_s=2,
                             probe=lambda f: (f + 5, 'guest at %d' % (f + 5)))
    st.t = 1.0
    live.key_sent('enter')
    live.beat_started('booting')
    st.t = 3.5
    e = live.check()
    assert isinstance(e, liveness.DisplayFrozen)
    assert str(e).startswith('display frozen for 2.5 s after key 1 (enter) '
                             'at beat booting') and 'guest at 15' in str(e)


def test_no_frame_and_the_guest_did_not_move_is_a_key_not_taken(st):
    live = liveness.Liveness(st, bound_s=2, probe=lambda f: (f, 'same'))
    st.t = 1.0
    live.key_sent('enter')
    st.t = 3.5
    e = live.check()
    assert isinstance(e, liveness.KeyNotRegistered)
    assert 'was not taken by the guest' in str(e)


def test_without_a_probe_it_says_it_cannot_tell(st):
    live = liveness.Liveness(st, bound_s=2)
    live.key_sent('enter')
    st.t = 2.5
    e = live.check()
    assert isinstance(e, liveness.DisplayFrozen)
    assert 'no view of the guest' in str(e)


def test_a_probe_that_raises_does_not_hide_the_finding(st):
    def probe(_f):
        raise OSError('QMP gone')
    live = liveness.Liveness(st, bound_s=1, probe=probe)
    live.key_sent('enter')
    st.t = 2
    e = live.check()
    assert isinstance(e, liveness.DisplayFrozen) and 'QMP gone' in str(e)


def test_one_repaint_registers_every_earlier_key(st):
    live = liveness.Liveness(st, bound_s=2)
    live.key_sent('a')
    st.t = 0.05
    live.key_sent('b')
    st.t = 0.3
    st.frame(11, 0xCCCC)
    st.t = 10
    assert live.check() is None
    assert live.evidence()['unregistered'] == []


def test_power_off_keys_are_forgotten(st):
    live = liveness.Liveness(st, bound_s=1)
    live.key_sent('enter')
    live.forget_pending()
    st.t = 5
    assert live.check() is None


def test_a_channel_error_in_ryll_log_is_a_lost_channel(st, tmp_path):
    log = tmp_path / 'ryll.stdout'
    log.write_text('\x1b[2m2026\x1b[0m INFO Stats: marks=1\n')
    live = liveness.Liveness(st, bound_s=5, ryll_log=str(log))
    live.beat_started('paste-accepted')
    assert live.check() is None
    with open(log, 'a') as f:
        f.write('\x1b[31mERROR\x1b[0m session: display: channel error: '
                'Connection reset by peer (os error 104)\n')
        f.write('half a line')
    e = live.check()
    assert isinstance(e, liveness.ChannelLost)
    assert isinstance(e, cap.StreamClosed)
    assert str(e).startswith('the display channel was lost at beat '
                             'paste-accepted') and 'reset by peer' in str(e)


def test_lines_after_ryll_was_told_to_stop_are_not_losses(st, tmp_path):
    log = tmp_path / 'ryll.stdout'
    log.write_text('')
    live = liveness.Liveness(st, bound_s=5, ryll_log=str(log))
    log.write_text('INFO session: cancel requested\nERROR session: display: '
                   'channel error: peer closed connection\n')
    assert live.check() is None
    assert live.check() is None


def test_a_missing_log_is_no_loss(st, tmp_path):
    live = liveness.Liveness(st, bound_s=5,
                             ryll_log=str(tmp_path / 'none'))
    assert live.check() is None


def test_screendump_probe_compares_frames(tmp_path, monkeypatch):
    from kerbside_tempest_plugin.digest import frame
    counters = iter([30, 20])
    monkeypatch.setattr(frame, 'analyse', lambda p: types.SimpleNamespace(
        digest=types.SimpleNamespace(frame_counter=next(counters))))
    guest = types.SimpleNamespace(screendump=lambda p: None)
    probe = liveness.screendump_probe(guest, str(tmp_path / 's.png'))
    first = probe(25)
    assert first[0] == 30 and 'do not reach the client' in first[1]
    assert probe(25) == (20, 'the guest\'s own screen (QMP screendump) is '
                         'at frame 20 too')
    assert liveness.screendump_probe(object(), 'x') is None


def test_wait_for_raises_what_health_returns():
    stream = cap.DigestStream.__new__(cap.DigestStream)
    import threading
    stream._cond = threading.Condition()
    stream.digests = []
    stream.captures = []
    stream.closed_reason = None
    stream._stop = threading.Event()
    stream._clock = lambda: 0.0
    boom = liveness.DisplayFrozen('display frozen for 6.0 s', what='b')
    with pytest.raises(liveness.DisplayFrozen, match='frozen for 6.0'):
        stream.wait_for(lambda cd: False, 90, 'anything',
                        health=lambda: boom)


def test_a_paste_that_never_completes_names_the_keys(st):
    live = liveness.Liveness(st, bound_s=6)
    s = live.key_sent('paste(23 chars)')
    st.t = 7.5
    st.frame(11, 0xAAAA)
    e = live.paste_failed(s, RuntimeError('timed out after 7.44 s; hint'))
    assert isinstance(e, liveness.KeyNotRegistered)
    assert str(e).startswith('the keys of the paste do not reach the guest')
    assert 'the guest registered none' in str(e)
    assert 'timed out after 7.44 s' in str(e) and 'hint' not in str(e)


def test_a_paste_that_stalls_midway_says_when_keys_stopped(st):
    live = liveness.Liveness(st, bound_s=6)
    s = live.key_sent('paste(23 chars)')
    st.t = 0.5
    st.frame(11, 0xBBBB)
    st.t = 0.6
    st.frame(12, 0xCCCC)
    st.t = 8.0
    st.frame(13, 0xCCCC)
    live.beat_started('ignore')
    e = live.paste_failed(s, RuntimeError('timed out; hint'))
    assert isinstance(e, liveness.InputsStalled)
    assert str(e).startswith('the inputs path stopped taking keys '
                             'mid-paste after beat ignore')
    assert 'stopped moving 0.6 s into the walk (7.4 s before' in str(e)


def test_without_a_sample_ryll_error_stands(st):
    live = liveness.Liveness(st, bound_s=6)
    assert live.paste_failed(None, RuntimeError('x')) is None

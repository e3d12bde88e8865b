"""Property tests: history -> encode -> render -> locate -> decode."""

from hypothesis import given, settings, HealthCheck, strategies as st
import numpy as np
import pytest

from kerbside_tempest_plugin.digest import chains
from kerbside_tempest_plugin.digest import events as ev
from kerbside_tempest_plugin.digest import frame
from kerbside_tempest_plugin.digest import payload as pl
from kerbside_tempest_plugin.digest import render
from unit_tests import digest_fixtures as fx
from unit_tests import digest_strategies as ds

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def expected_window(history):
    window = []
    used = 0
    for e in reversed(history):
        size = len(e.tlv())
        if used + size > pl.RAW_BUDGET:
            break
        window.insert(0, e)
        used += size
    return window


@settings(max_examples=300, **SETTINGS)
@given(ds.history(max_size=30), ds.u32, ds.u32)
def test_payload_round_trip(history, counter, fb):
    data = pl.encode_history(counter, history, fb)
    assert len(data) <= pl.CAPACITY
    d = pl.decode(data)
    assert list(d.events) == expected_window(history)
    assert d.hashes == chains.ChannelChains.replay(history).hashes
    assert (d.frame_counter, d.framebuffer_hash) == (counter, fb)
    assert d.record_count == 8 + len(d.events)
    assert pl.encode(counter, d.hashes, d.events, fb) == data


@pytest.mark.parametrize('kind', sorted(ds.BY_KIND))
@settings(max_examples=6, **SETTINGS)
@given(data=st.data())
def test_frame_round_trip_every_kind_and_size(kind, data):
    history = data.draw(ds.history(kind, max_size=6))
    w, h = data.draw(st.sampled_from(fx.SCREEN_SIZES))
    counter = data.draw(ds.u32)
    bg = np.zeros((h, w, 3), np.uint8)
    # Some "text" on screen so the framebuffer hash is not trivial.
    y, x = data.draw(st.integers(0, h - 17)), data.draw(st.integers(0, w - 9))
    bg[y:y + 16, x:x + 8] = (51, 150, 51)
    hashes = chains.ChannelChains.replay(history)
    img = render.render_guest_frame(counter, hashes, history, bg)
    a = frame.analyse(img)
    assert a.method == 'region'
    assert a.origin == (w - 196, h - 212)
    assert a.framebuffer_hash_ok is True
    assert list(a.digest.events) == expected_window(history)
    assert a.digest.hashes == hashes.hashes
    assert a.digest.frame_counter == counter
    # The newest event is always in the window (every record fits alone).
    assert a.digest.events[-1] == history[-1]
    assert a.digest.events[-1].kind == kind


@settings(max_examples=200, **SETTINGS)
@given(ds.any_event)
def test_event_tlv_round_trip(event):
    tlv = event.tlv()
    assert tlv[0] == event.TAG and tlv[1] == len(tlv) - 2
    assert ev.BY_TAG[tlv[0]].from_value(tlv[2:], 2) == event

"""The fault relay through a real lane: one fault of each class, each
failing the real scenario walk (scenario.runner.run_scenario, as the
tempest test runs it) for its own reason, and a clean walk through the
same relay passing.

Classes (spice.faults' actions): drop (a key; a draw), corrupt (a tile
of the digest's QR), stall and delay (the display), cut (the display
channel), duplicate (a keystroke), reorder (two pasted keys); fragment
(the inputs in 1-byte writes) is benign and must pass. The lane is the
kerbside route with the relay on its hypervisor leg (then plain SPICE);
the relay's log of each walk must hold the injection.
"""

import re
import time

import pytest

from kerbside_tempest_plugin.lane import lane as lane_mod
from kerbside_tempest_plugin.scenario import runner
from unit_tests.conftest import require_kerbside_lane

pytestmark = pytest.mark.integration


@pytest.fixture(scope='module')
def lane(tmp_path_factory):
    require_kerbside_lane()
    the_lane = lane_mod.Lane(str(tmp_path_factory.mktemp('lane')),
                             route='kerbside', relay=True)
    try:
        the_lane.up()
        yield the_lane
    finally:
        the_lane.down()


@pytest.fixture(scope='module')
def image():
    from kerbside_tempest_plugin import guest_images
    return guest_images.sextant_image()


def walk(lane, image, tmp_path, spec):
    lane.clear_faults()
    if spec:
        lane.arm_fault(spec)
    t0 = time.time()
    r = runner.run_scenario(lane, 'canonical', 'kerbside', image,
                            str(tmp_path), boot_timeout=120,
                            log=lambda m: None)
    injected = [e for e in lane.fault_log(since=t0)
                if e.get('event') == 'inject']
    return r, injected


def test_a_clean_walk_through_the_relay_passes(lane, image, tmp_path):
    r, injected = walk(lane, image, tmp_path, None)
    assert r.passed, r.failure_message()
    assert injected == []
    assert lane.info()['hypervisor_tls'] is False


def test_input_in_one_byte_writes_is_benign(lane, image, tmp_path):
    # the fragment class: what arrives is the same, in 1-byte pieces
    r, injected = walk(lane, image, tmp_path,
                       'fragment,channel=inputs,size=1,count=all')
    assert injected, 'the relay fragmented nothing'
    assert r.passed, r.failure_message()


@pytest.mark.parametrize('spec,cause', [
    ('drop,channel=inputs,type=key_down,nth=2',
     r'^beat ignore: key 2 \(i\) at beat ignore (was not taken|never '
     r'registered)'),
    ('drop,channel=display,type=draw_copy,after_keys=3,'
     'outside=828:556:180:180',
     r'^frame_states: frame \d+ damaged'),
    # a tile of the digest's own QR: its error correction decodes past it
    ('corrupt,channel=display,type=draw_copy,after_keys=3,'
     'inside=828:556:180:180',
     r'^frame_states: frame \d+ damaged.*QR region'),
    ('stall,channel=display,after_keys=2,duration=20',
     r'^beat ignore: display frozen for \d+\.\d s after key 2 \(i\)'),
    ('cut,channel=display,after_keys=3',
     r'display (frozen|channel was lost)'),
    ('duplicate,channel=inputs,after_keys=4,nth=2,span=2',
     r'^beat paste-accepted: .*paste_received.*correct=false'),
    ('reorder,channel=inputs,type=key_down,nth=12',
     r'^beat paste-accepted: .*paste_received.*correct=false'),
    ('delay,channel=display,after_keys=2,ms=10000',
     r'^beat ignore: display frozen for \d+\.\d s after key 2 \(i\)'),
], ids=['key-lost', 'draw-dropped', 'qr-tile-corrupted',
        'display-stalled', 'display-cut', 'keystroke-repeated',
        'keys-swapped', 'display-delayed'])
def test_a_fault_fails_the_walk_for_its_reason(lane, image, tmp_path, spec,
                                               cause):
    r, injected = walk(lane, image, tmp_path, spec)
    assert injected, 'the relay injected nothing for %s' % spec
    assert not r.passed, 'the walk passed with %s injected: %s' % (
        spec, injected[:2])
    assert re.search(cause, r.cause() or ''), r.cause()

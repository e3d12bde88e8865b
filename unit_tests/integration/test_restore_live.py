"""Boot once, restore per guest, for real (qemu, OVMF, ryll; direct
route, no Kerbside): a restored guest is, to both oracles, a guest that
booted (docs/plans/fast-feedback.md).

On one lane with guest_restore: the canonical walk on the cold guest
(which the lane saves at Awaiting) and on a guest restored from that
save, each judged by every check of the scenario. Then the two are
compared as the oracles see them: the output before the drain (banner,
mode list) byte for byte, the drain's records with `t` left out, the
restored guest's frame counter going on from the save, and the chains
replayed from each drain equal to each walk's last digest. And the guard:
a guest touched before its save is refused.
"""

import json
import os

import pytest

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin.lane import lane as lane_mod
from kerbside_tempest_plugin.scenario import runner
from kerbside_tempest_plugin.sextant import contract
from kerbside_tempest_plugin.sextant import drain as drain_mod
from kerbside_tempest_plugin.sextant import keys
from kerbside_tempest_plugin.tests.scenario import guest_restore

pytestmark = pytest.mark.integration


def _image():
    from kerbside_tempest_plugin import guest_images
    return guest_images.sextant_image()


def _serial(result):
    with open(os.path.join(result.artifact_dir, 'guest__serial.log'),
              'rb') as f:
        text = f.read().decode('utf-8', 'replace')
    return text, drain_mod.parse(text)


def _before_drain(text):
    first = text.find(' type=')
    return text[:text.rfind('\n', 0, first) + 1]


def _shape(drain):
    return [(r.type, sorted(r.fields.items())) for r in drain.records]


def test_restored_guest_is_a_booted_guest_to_both_oracles(tmp_path):
    image = _image()
    with lane_mod.Lane(str(tmp_path / 'lane'), route='direct',
                       kerbside=False,
                       guest_restore=guest_restore.awaiting_untouched) \
            as lane:
        cold = runner.run_scenario(lane, 'canonical', 'direct', image,
                                   str(tmp_path / 'art'), name='cold')
        g1 = lane.guest
        warm = runner.run_scenario(lane, 'canonical', 'direct', image,
                                   str(tmp_path / 'art'), name='warm')
        g2 = lane.guest
    assert g1.saved_as is not None and g1.restored_from is None
    assert g2.restored_from is g1.saved_as and g2.saved_as is None
    assert cold.passed, cold.failure_message()
    assert warm.passed, warm.failure_message()
    assert cold.verdicts() == warm.verdicts()
    assert all(cold.verdicts().values())
    ctext, cdrain = _serial(cold)
    wtext, wdrain = _serial(warm)
    # the boot output the restored guest's file starts with is the
    # saved guest's, byte for byte
    assert contract.BANNER in _before_drain(wtext)
    assert _before_drain(ctext) == _before_drain(wtext)
    assert _shape(cdrain) == _shape(wdrain)
    # its frame counter goes on from the save (no reset to 1): the first
    # digest seen is the one on screen at the save, or a later one
    saved_frame = int(g1.saved_as.note.split('frame ')[1].split(',')[0])
    with open(os.path.join(warm.artifact_dir, 'digests.jsonl')) as f:
        first_seen = json.loads(f.readline())['frame_counter']
    assert first_seen >= saved_frame
    assert wdrain.refresh_stats.fields['count'] > first_seen
    assert os.path.exists(os.path.join(g2.artifact_dir, 'restore.json'))


def test_a_guest_touched_before_its_save_is_refused(tmp_path):
    """The guard's fault: a key reaches the guest before the save."""
    image = _image()
    pressed = []

    def touch_then_check(guest):
        if contract.BANNER not in guest.serial.read():
            return None
        if not pressed:
            guest.send_key_qmp(keys.scancode('Enter'))
            pressed.append(True)
            return None
        return guest_restore.awaiting_untouched(guest)

    with lane_mod.Lane(str(tmp_path / 'lane'), route='direct',
                       kerbside=False, guest_restore=touch_then_check) \
            as lane:
        with pytest.raises(errors.ProviderError, match='not untouched'):
            lane.boot_guest(image, name='touched',
                            banner=contract.BANNER, timeout=60)
        assert not lane.provider.saved
